"""run / run_async / start from plain code and from inside a running event loop (as in Jupyter)."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

import nbdurable
from tests.durable import MODES, Counter, define


def _two_steps(count: Counter) -> Any:
    def body(ctx: Any) -> Any:
        a = yield ("a", count.returning("a", 20))
        b = yield ("b", count.returning("b", 22))
        return a + b

    return body


@pytest.mark.parametrize("mode", MODES)
async def test_blocking_run_inside_a_running_loop(client: nbdurable.Client, mode: str) -> None:
    """fn.run() blocks and works while the caller's event loop runs (a Jupyter cell)."""
    count = Counter()
    fn = define(client, mode, _two_steps(count))
    assert fn.run() == 42
    assert fn.run() == 42
    assert count.calls == {"a": 1, "b": 1}


@pytest.mark.parametrize("mode", MODES)
async def test_run_async(client: nbdurable.Client, mode: str) -> None:
    """await fn.run_async() works for sync and async bodies."""
    count = Counter()
    fn = define(client, mode, _two_steps(count))
    assert await fn.run_async() == 42
    assert await fn.run_async() == 42
    assert count.calls == {"a": 1, "b": 1}


@pytest.mark.parametrize("mode", MODES)
def test_start_returns_at_once_and_wait_gives_the_output(client: nbdurable.Client, mode: str) -> None:
    """start() runs in the background (a thread here) and Run.wait() returns its output."""
    gate = threading.Event()

    def gated() -> int:
        gate.wait(10)
        return 7

    fn = define(client, mode, lambda ctx: (yield ("g", gated)))
    run = fn.start()
    assert run.status in (nbdurable.RunStatus.QUEUED, nbdurable.RunStatus.RUNNING)
    assert not run.done
    gate.set()
    assert run.wait(10) == 7
    assert run.status is nbdurable.RunStatus.COMPLETED
    assert run.output == 7


async def test_start_inside_a_loop_is_a_task(client: nbdurable.Client) -> None:
    """An async function started inside a running loop runs as a task; the loop stays free."""
    ticks: list[int] = []

    async def slow() -> int:
        await asyncio.sleep(0.05)
        return 1

    @client.create_function(fn_id="bg")
    async def bg(ctx: nbdurable.Context) -> int:
        return await ctx.step.run("slow", slow)

    run = bg.start()
    assert not [t for t in threading.enumerate() if t.name.startswith("nbdurable-bg")]  # a task, not a thread
    while not run.done:
        ticks.append(1)
        await asyncio.sleep(0.01)
    assert await run == 1
    assert ticks


def test_failed_background_run_raises_on_wait(client: nbdurable.Client) -> None:
    """A background run's failure is kept in its Run and raised by wait()."""
    fn = define(client, "sync", lambda ctx: (yield ("x", Counter().failing("x", 9))), retries=0)
    run = fn.start()
    with pytest.raises(nbdurable.RunFailedError):
        run.wait(10)
    assert run.status is nbdurable.RunStatus.FAILED


def test_async_handler_in_a_sync_function(client: nbdurable.Client) -> None:
    """StepSync.run accepts an async handler and runs it to completion."""

    async def fetch() -> int:
        await asyncio.sleep(0)
        return 3

    @client.create_function(fn_id="mixed")
    def mixed(ctx: nbdurable.ContextSync) -> int:
        return ctx.step.run("fetch", fetch)

    assert mixed.run() == 3


def test_executor_runs_sync_handlers(client: nbdurable.Client) -> None:
    """A client executor runs step handlers off the caller's thread."""
    from concurrent.futures import ThreadPoolExecutor

    seen: list[str] = []
    with ThreadPoolExecutor(1, thread_name_prefix="pool") as pool:
        client.executor = pool

        @client.create_function(fn_id="ex")
        def ex(ctx: nbdurable.ContextSync) -> int:
            return ctx.step.run("t", lambda: seen.append(threading.current_thread().name) or 1)

        assert ex.run() == 1
    assert seen[0].startswith("pool")


def test_nested_steps_are_refused_on_an_executor_too(client: nbdurable.Client) -> None:
    """A handler running on the client's thread pool still cannot call step.run."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(2) as pool:
        client.executor = pool

        @client.create_function(fn_id="nest", retries=0)
        def nest(ctx: nbdurable.ContextSync) -> Any:
            return ctx.step.run("outer", lambda: ctx.step.run("inner", lambda: 1))

        with pytest.raises(nbdurable.RunFailedError) as info:
            nest.run()
    assert isinstance(info.value.__cause__, nbdurable.NestedStepError)
