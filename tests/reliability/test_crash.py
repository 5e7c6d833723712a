"""Process death at random moments: a worker is SIGKILLed mid-run and resumed until the run completes.

Each trial runs the 20-step workflow of ``workload`` in worker processes, kills each worker
with SIGKILL after a seeded random delay, and starts a new worker on the same store, until
one finishes. Then the completed run is run again a few times, killed during start-up (a
re-run cell), and once more to the end. After every worker's death the store is opened cold
and every record read.
Scale with ``NBDURABLE_TRIALS`` (``make reliability`` runs 200 trials).
"""

from __future__ import annotations

import json
import random
import signal
import time
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

import diskcache
import pytest

import nbdurable
from nbdurable import _lease, _store
from nbdurable._types import RunStatus
from nbdurable.testing import FakeClock
from tests.reliability import workload as w

CTX = w.context()
MAX_LIVES = 60
"""A trial's last worker is never killed (in practice a trial needs a handful)."""
RERUNS = 3
"""Once the run completed, it is run again this many times with a kill during start-up, then once more."""

COUNTERS = (
    "trials",
    "worker processes",
    "kills (SIGKILL)",
    "kills inside a step handler",
    "kills after a handler returned, before its record was written",
    "kills elsewhere (start-up, between steps, run end)",
    "kills while re-running the completed run",
    "most kills in one trial",
    "step executions",
    "re-executions of the step in flight at a kill",
    "records read back after kills",
    "steps lost",
    "duplicate executions after completion",
    "outputs differing from the uninterrupted run",
)


def _life(store: Path, logdir: Path, seed: int) -> BaseProcess:
    mode = "async" if seed % 2 else "sync"  # odd trials drive the async face
    return CTX.Process(target=w.life, args=(str(store), str(logdir), seed, mode), daemon=True)


def _uninterrupted(root: Path, seed: int) -> tuple[list[str], float]:
    """The workflow's output when nothing interrupts it, and how long the worker took."""
    logdir = root / "logs"
    logdir.mkdir(parents=True)
    p = _life(root / "store", logdir, seed)
    began = time.monotonic()
    p.start()
    p.join(60)
    took = time.monotonic() - began
    assert p.exitcode == 0
    return json.loads((logdir / "output.json").read_text()), took


@pytest.fixture(scope="module")
def timing(tmp_path_factory: pytest.TempPathFactory) -> tuple[float, float]:
    """How long a whole run takes in a worker here, and how long a worker that only replays takes.

    Start-up kills are drawn within the replay-only time, so they land at every point of
    start-up (lease, store reads, replay) on fast and slow machines alike.
    """
    root = tmp_path_factory.mktemp("timing")
    _uninterrupted(root / "warm-up", -2)  # starts the forkserver: not part of a worker's time
    out, full = _uninterrupted(root, -1)
    assert out == w.expected_output(-1)
    p = _life(root / "store", root / "logs", -1)
    began = time.monotonic()
    p.start()
    p.join(60)
    replay = time.monotonic() - began
    assert p.exitcode == 0
    assert all(len(entries) == 2 for entries in w.read_logs(str(root / "logs"))), "a replay executed a step"
    w.figures("crash timing").update(
        {"whole run in one worker (s)": round(full, 3), "replay-only worker (s)": round(replay, 3)}
    )
    return full, replay


def _wait_until_started(p: BaseProcess, log: Path) -> None:
    """Return once worker ``p`` logged the start of the step whose log is ``log`` (or it ended)."""
    pid = f"start {p.pid}\n".encode()
    while p.is_alive():
        try:
            if pid in log.read_bytes():
                return
        except FileNotFoundError:
            pass
        time.sleep(0.0005)


@pytest.mark.parametrize("trial", range(w.TRIALS))
def test_killed_run_resumes_to_the_same_output_and_never_reruns_a_completed_step(
    trial: int, tmp_path: Path, timing: tuple[float, float]
) -> None:
    """SIGKILL at random moments loses no step, reruns no completed step, and ends with the same output."""
    fig = w.figures("crash")
    for name in COUNTERS:
        fig.setdefault(name, 0)
    _, replay = timing
    rng = random.Random(trial)
    seed = trial
    reference, _ = _uninterrupted(tmp_path / "reference", seed)

    store, logdir = tmp_path / "store", tmp_path / "logs"
    logdir.mkdir()
    completed: set[str] = set()
    seen = [0] * w.STEPS
    executions = [0] * w.STEPS
    kills_in_flight = [0] * w.STEPS
    kills = 0
    finished_once = False
    reruns = 0
    fig["trials"] += 1
    for life in range(MAX_LIVES):
        p = _life(store, logdir, seed)
        final = life == MAX_LIVES - 1 or reruns == RERUNS
        p.start()
        if final:
            p.join(60)
        elif finished_once:  # the run is complete: run it again (a re-run cell), killed in its start-up
            reruns += 1
            p.join(rng.uniform(0.0, replay))
        elif rng.random() < 0.2:  # during start-up (lease, store reads, replay) or the run's end
            p.join(rng.uniform(0.0, replay))
        elif len(completed) < w.STEPS:  # while step j executes, or soon after it
            j = rng.randrange(len(completed), w.STEPS)
            _wait_until_started(p, logdir / f"step-{j:02d}.log")
            p.join(rng.uniform(0.0, 1.5 * w.STEP_SECONDS))
        else:  # every step is stored: let this worker finish the run
            p.join(60)
        if p.exitcode is None:
            p.kill()  # SIGKILL
            p.join()
        fig["worker processes"] += 1
        killed = p.exitcode == -signal.SIGKILL
        assert killed or p.exitcode == 0, f"worker exited with {p.exitcode}"

        state = w.inspect_store(str(store))
        fig["records read back after kills"] += state["records"] if killed else 0
        now_completed: set[str] = state["completed"]
        fig["steps lost"] += len(completed - now_completed)
        assert completed <= now_completed, f"recorded steps disappeared: {sorted(completed - now_completed)}"
        assert now_completed == {f"step-{i:02d}" for i in range(len(now_completed))}, "completed steps not a prefix"

        in_flight: list[tuple[int, list[tuple[str, int]]]] = []
        for i, entries in enumerate(w.read_logs(str(logdir))):
            new = entries[seen[i] :]
            seen[i] = len(entries)
            assert all(pid == p.pid for _, pid in new), f"step {i} logged by another process: {new}"
            starts = sum(what == "start" for what, _ in new)
            executions[i] += starts
            fig["step executions"] += starts
            if f"step-{i:02d}" in completed:
                fig["duplicate executions after completion"] += starts
            assert starts <= 1, f"step {i} started {starts} times in one worker"
            if starts and f"step-{i:02d}" not in now_completed:
                in_flight.append((i, new))

        (run,) = state["runs"] or (None,)
        if killed:
            kills += 1
            fig["kills (SIGKILL)"] += 1
            assert len(in_flight) <= 1, f"several steps in flight at one kill: {in_flight}"
            if not in_flight:
                fig["kills elsewhere (start-up, between steps, run end)"] += 1
            elif ("end", p.pid) in in_flight[0][1]:
                fig["kills after a handler returned, before its record was written"] += 1
            else:
                fig["kills inside a step handler"] += 1
            for i, _ in in_flight:
                kills_in_flight[i] += 1
            if finished_once:
                fig["kills while re-running the completed run"] += 1
            if run is not None:  # a dead owner's run reads as INTERRUPTED, or it had completed
                status = _lease.effective_status(run, time.time())
                assert status in (RunStatus.INTERRUPTED, RunStatus.COMPLETED), status
        else:
            assert not in_flight, f"a step executed but was not recorded: {in_flight}"
            assert run is not None
            assert run.status is RunStatus.COMPLETED
            assert run.owner is None
        completed = now_completed
        if not killed:
            if final:
                break
            finished_once = True

    fig["most kills in one trial"] = max(fig["most kills in one trial"], kills)
    output = json.loads((logdir / "output.json").read_text())
    fig["outputs differing from the uninterrupted run"] += output != reference
    assert output == reference == w.expected_output(seed)
    assert len(completed) == w.STEPS
    for i in range(w.STEPS):
        extra = executions[i] - 1
        fig["re-executions of the step in flight at a kill"] += extra
        assert 0 <= extra <= kills_in_flight[i], (i, executions[i], kills_in_flight[i])
    assert fig["duplicate executions after completion"] == 0
    assert fig["steps lost"] == 0


def test_dying_while_taking_the_lease_keeps_a_run_record_stored_in_a_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Regression (found by the trials above): a run whose output is over 32 KB has its record in a file.

    diskcache deleted that file when the next execution's lease write ended, before the
    lease transaction committed: a process killed in between left the row pointing at no
    file, the run read as absent, and every completed step executed again. Here the
    "kill" is a KeyboardInterrupt right after the deletion, which rolls the transaction back.
    """
    client = nbdurable.Client("lease-file", store=str(tmp_path / "store"), clock=FakeClock())
    try:
        calls: list[str] = []

        @client.create_function(fn_id="f")
        def f(ctx: nbdurable.ContextSync) -> list[str]:
            return [ctx.step.run("big", lambda: calls.append("big") or "x" * 40_000)]

        assert f.run(run_id="r") == ["x" * 40_000]
        real_remove = diskcache.Disk.remove

        def remove_then_die(self: Any, file_path: str) -> None:
            real_remove(self, file_path)
            raise KeyboardInterrupt

        monkeypatch.setattr(diskcache.Disk, "remove", remove_then_die)
        with pytest.raises(KeyboardInterrupt):
            f.run(run_id="r")
        monkeypatch.undo()
        key = _store.run_key("lease-file", "f", "r")
        assert client.store.get_run(key) is not _store.MISSING, "the run record was lost"
        assert f.run(run_id="r") == ["x" * 40_000]
        assert calls == ["big"], "a completed step executed again"
    finally:
        _store.Store.forget(tmp_path / "store")
