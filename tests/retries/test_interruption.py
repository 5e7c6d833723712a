"""DESIGN 3.6: interruption is never a failure, and a killed process is resumed."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import nbdurable
from nbdurable._process import STATE
from nbdurable.testing import FakeClock
from tests.durable import MODES, Counter, define
from tests.waiting import eventually

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("mode", MODES)
def test_keyboard_interrupt_is_not_a_failure(client: nbdurable.Client, clock: FakeClock, mode: str) -> None:
    """Ctrl-C in a step: run INTERRUPTED, no retry consumed, the next run resumes there."""
    count = Counter()
    interrupted = {"once": True}

    def stoppable() -> str:
        count.hit("b")
        if interrupted.pop("once", False):
            raise KeyboardInterrupt
        return "b"

    def body(ctx: Any) -> Any:
        a = yield ("a", count.returning("a", "a"))
        b = yield ("b", stoppable)
        return a + b

    fn = define(client, mode, body, retries=0)
    with pytest.raises(KeyboardInterrupt):
        fn.run()
    run = client.runs("f")[0]
    assert run.status is nbdurable.RunStatus.INTERRUPTED
    assert clock.slept == []
    assert fn.run() == "ab"
    assert count.calls == {"a": 1, "b": 2}


async def test_task_cancellation_is_an_interruption(client: nbdurable.Client) -> None:
    """Cancelling the task of an async run leaves it INTERRUPTED, resumable, nothing stored as failed."""
    started = asyncio.Event()
    count = Counter()

    async def slow() -> str:
        count.hit("slow")
        started.set()
        await asyncio.sleep(30)
        return "slow"

    @client.create_function(fn_id="cancel", retries=0)
    async def cancel(ctx: nbdurable.Context) -> str:
        return await ctx.step.run("slow", slow)

    task = asyncio.ensure_future(cancel.run_async())
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert client.runs("cancel")[0].status is nbdurable.RunStatus.INTERRUPTED
    run = client.get_run(client.runs("cancel")[0].id)
    assert run is not None
    assert all(s.status is not nbdurable.StepStatus.FAILED for s in run.steps)


def _worker(store: Path, logs: Path, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.workers.pipeline", str(store), str(logs), *extra],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _starts(logs: Path, step: str) -> int:
    path = logs / f"{step}.log"
    return len(path.read_text().splitlines()) if path.exists() else 0


def test_process_dying_mid_step_is_resumed_by_a_new_process(tmp_path: Path) -> None:
    """os._exit inside step c: the next process replays a and b, runs c once more, then d."""
    store, logs = tmp_path / "store", tmp_path / "logs"
    logs.mkdir()
    first = _worker(store, logs, "--die-in", "c")
    _, err = first.communicate(timeout=60)
    assert first.returncode == 9, err
    assert [_starts(logs, s) for s in "abcd"] == [1, 1, 1, 0]

    client = nbdurable.Client("crash", store=store)
    runs = client.runs("pipeline")
    assert runs[0].status is nbdurable.RunStatus.INTERRUPTED
    assert "'c'" in runs[0].note

    second = _worker(store, logs)
    out, err = second.communicate(timeout=60)
    assert second.returncode == 0, err
    assert json.loads(out) == 22
    assert [_starts(logs, s) for s in "abcd"] == [1, 1, 2, 1]
    assert client.runs("pipeline")[0].status is nbdurable.RunStatus.COMPLETED
    nbdurable._store.Store.forget(store)


def test_sigkill_mid_step_then_resume(tmp_path: Path) -> None:
    """kill -9 while step b hangs: the run reads INTERRUPTED and a new process finishes it."""
    store, logs = tmp_path / "store", tmp_path / "logs"
    logs.mkdir()
    first = _worker(store, logs, "--hang-in", "b")
    eventually(lambda: _starts(logs, "b") > 0, 30, "step b to start")
    os.kill(first.pid, signal.SIGKILL)
    first.wait(timeout=30)

    client = nbdurable.Client("crash", store=store)
    assert client.runs("pipeline")[0].status is nbdurable.RunStatus.INTERRUPTED
    second = _worker(store, logs)
    out, err = second.communicate(timeout=60)
    assert second.returncode == 0, err
    assert json.loads(out) == 22
    assert [_starts(logs, s) for s in "abcd"] == [1, 2, 1, 1]
    nbdurable._store.Store.forget(store)


async def test_cancelling_run_async_of_a_sync_function_interrupts_it(client: nbdurable.Client) -> None:
    """The worker thread of a cancelled run_async stops at its next step: INTERRUPTED, resumable, nothing lost."""
    import threading

    entered = threading.Event()
    release = threading.Event()
    count = Counter()

    def slow() -> str:
        count.hit("slow")
        entered.set()
        release.wait(10)
        return "slow"

    @client.create_function(fn_id="bg", retries=0)
    def bg(ctx: nbdurable.ContextSync) -> list[str]:
        return [ctx.step.run("slow", slow), ctx.step.run("next", count.returning("next", "next"))]

    shown: list[nbdurable.Run[Any]] = []
    STATE.run_hooks.append(shown.append)
    task = asyncio.ensure_future(bg.run_async())
    await asyncio.to_thread(entered.wait, 10)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    release.set()
    STATE.run_hooks.remove(shown.append)
    run = shown[0]
    await asyncio.to_thread(eventually, lambda: run.done)
    assert run.status is nbdurable.RunStatus.INTERRUPTED
    assert count.calls == {"slow": 1}
    assert await bg.run_async() == ["slow", "next"]
    assert count.calls == {"slow": 1, "next": 1}


def test_an_interrupted_step_reads_interrupted_and_says_so_when_it_resumes(client) -> None:
    """Ctrl-C mid-step: the step shows INTERRUPTED (not running); the next execution says it never finished."""
    stop = {"b": True}

    def b() -> str:
        if stop.pop("b", False):
            raise KeyboardInterrupt
        return "B"

    @client.create_function(fn_id="two")
    def two(ctx: nbdurable.ContextSync) -> list[str]:
        return [ctx.step.run("a", lambda: "A"), ctx.step.run("b", b)]

    shown: list[nbdurable.Run[Any]] = []
    STATE.run_hooks.append(shown.append)
    try:
        with pytest.raises(KeyboardInterrupt):
            two.run()
        assert [(s.label, s.status) for s in shown[0].steps] == [
            ("a", nbdurable.StepStatus.COMPLETED),
            ("b", nbdurable.StepStatus.INTERRUPTED),
        ]
        assert two.run() == ["A", "B"]
    finally:
        STATE.run_hooks.remove(shown.append)
    assert shown[1].steps[1].note == "previous attempt never finished"
