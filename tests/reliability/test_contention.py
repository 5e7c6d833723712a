"""Single owner per run: contending processes and threads, dead owners, live owners.

Four processes of four threads each start the same run at the same moment: every step
executes exactly once, and every caller gets the run's output or a clear RunLockedError.
A lease whose owner died is taken over; a live owner's lease never is, not even when its
heartbeat looks stale.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

import nbdurable
from nbdurable import _lease, _records, _store
from nbdurable._records import Owner, RunRecord
from nbdurable._store import Store
from nbdurable._types import RunStatus
from tests.reliability import workload as w

CTX = w.context()
PROCESSES = 4
THREADS = 4
STEPS = 8
STEP_SECONDS = 0.02
ROUNDS = max(2, w.TRIALS // 20)
LOCKED_WORDS = ("is being executed by another process", "pid", "Fix:")


def _starts(logdir: Path, steps: int) -> list[list[int]]:
    """Per step, the pids that started it."""
    return [[pid for what, pid in entries if what == "start"] for entries in w.read_logs(str(logdir), steps)]


@pytest.fixture
def dirs(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    logdir = tmp_path / "logs"
    logdir.mkdir()
    store = tmp_path / "store"
    yield store, logdir
    Store.forget(store)


@pytest.mark.parametrize("round_", range(ROUNDS))
def test_processes_and_threads_starting_one_run_execute_each_step_once(round_: int, dirs: tuple[Path, Path]) -> None:
    """4 processes x 4 threads call run() at once: one execution, same output or RunLockedError for all."""
    fig = w.figures("contention")
    for name in ("rounds", "callers", "callers given the output", "callers given RunLockedError", "other outcomes"):
        fig.setdefault(name, 0)
    fig.setdefault("step executions", 0)
    fig.setdefault("duplicate step executions", 0)
    store, logdir = dirs
    seed = 1000 + round_
    gate, results = CTX.Event(), CTX.Queue()
    procs = [
        CTX.Process(
            target=w.contend,
            args=(str(store), str(logdir), seed, STEPS, STEP_SECONDS, THREADS, gate, results),
            daemon=True,
        )
        for _ in range(PROCESSES)
    ]
    for p in procs:
        p.start()
    ready = [results.get(timeout=60) for _ in procs]
    assert all(r[0] == "ready" for r in ready)
    gate.set()
    outcomes: list[tuple[str, Any]] = []
    for _ in procs:
        tag, _pid, got = results.get(timeout=60)
        assert tag == "done"
        outcomes += got
    for p in procs:
        p.join(30)
        assert p.exitcode == 0

    expected = w.expected_output(seed, STEPS)
    oks = [value for tag, value in outcomes if tag == "ok"]
    locked = [value for tag, value in outcomes if tag == "locked"]
    others = [o for o in outcomes if o[0] not in ("ok", "locked")]
    starts = _starts(logdir, STEPS)
    fig["rounds"] += 1
    fig["callers"] += len(outcomes)
    fig["callers given the output"] += len(oks)
    fig["callers given RunLockedError"] += len(locked)
    fig["other outcomes"] += len(others)
    fig["step executions"] += sum(map(len, starts))
    fig["duplicate step executions"] += sum(max(0, len(s) - 1) for s in starts)

    assert len(outcomes) == PROCESSES * THREADS
    assert not others
    assert oks, "no caller got the output"
    assert all(value == expected for value in oks)
    for message in locked:
        assert all(word in message for word in LOCKED_WORDS), message
    assert all(len(s) == 1 for s in starts), starts

    client = nbdurable.Client(w.APP, store=str(store))
    assert w.define(client, str(logdir), STEPS, STEP_SECONDS).run({"seed": seed}, run_id=f"contend-{seed}") == expected
    assert _starts(logdir, STEPS) == starts, "a replay after the contention executed a step"


def _park(store: Path, logdir: Path, seed: int, step: int) -> Any:
    """A worker executing the workflow, parked inside ``step`` until its flag file is removed."""
    flag = logdir / f"{w.BLOCK_FLAG}-{step:02d}"
    flag.touch()
    p = CTX.Process(target=w.life, args=(str(store), str(logdir), seed), daemon=True)
    p.start()
    w.wait_for(lambda: (logdir / f"{flag.name}.reached").exists() or not p.is_alive())
    assert p.is_alive()
    return p, flag


def _run_record(store: Path, seed: int) -> RunRecord:
    raw = Store(str(store))
    try:
        got = raw.get_run(_store.run_key(w.APP, w.FN_ID, f"trial-{seed}"))
    finally:
        raw.cache.close()
    assert got is not _store.MISSING
    assert got is not _store.CORRUPT
    return got[0]  # type: ignore[no-any-return]


def test_lease_of_a_killed_owner_is_taken_over(dirs: tuple[Path, Path]) -> None:
    """A worker SIGKILLed inside step 3 leaves an INTERRUPTED run; the next caller resumes it."""
    store, logdir = dirs
    seed = 7
    p, flag = _park(store, logdir, seed, 3)
    # The heartbeat records the step in flight once it has run a while.
    w.wait_for(lambda: _run_record(store, seed).current_step == "step-03")
    p.kill()
    p.join()
    flag.unlink()

    client = nbdurable.Client(w.APP, store=str(store))
    seen = client.get_run(f"trial-{seed}")
    assert seen is not None
    assert seen.status is RunStatus.INTERRUPTED
    assert "step-03" in seen.note
    run = w.define(client, str(logdir)).start({"seed": seed}, run_id=f"trial-{seed}")
    assert run.wait(30) == w.expected_output(seed)
    starts = _starts(logdir, w.STEPS)
    assert starts[:3] == [[p.pid]] * 3, "a step completed before the kill ran again"
    assert starts[3] == [p.pid, os.getpid()], "the step in flight must run again, once"
    assert all(s == [os.getpid()] for s in starts[4:])
    step3 = next(s for s in run.steps if s.key == "step-03")
    assert step3.note == "previous attempt never finished"
    assert [s.status for s in run.steps[:3]] == [nbdurable.StepStatus.REPLAYED] * 3


def test_live_owner_keeps_its_lease_even_with_a_stale_heartbeat(dirs: tuple[Path, Path]) -> None:
    """While the owner lives (even stopped, heartbeat an hour old), others get RunLockedError."""
    store, logdir = dirs
    seed = 8
    p, flag = _park(store, logdir, seed, 3)
    w.wait_for(lambda: _run_record(store, seed).current_step == "step-03")  # its last write for 5 s
    client = nbdurable.Client(w.APP, store=str(store))
    fn = w.define(client, str(logdir))
    with pytest.raises(nbdurable.RunLockedError) as first:
        fn.run({"seed": seed}, run_id=f"trial-{seed}")
    assert all(word in str(first.value) for word in LOCKED_WORDS)
    assert f"pid {p.pid}" in str(first.value)

    os.kill(p.pid, signal.SIGSTOP)
    try:
        key = _store.run_key(w.APP, w.FN_ID, f"trial-{seed}")

        def stale(got: Any) -> tuple[RunRecord, bytes]:
            rec = got[0]
            return rec.model_copy(update={"heartbeat_at": rec.heartbeat_at - 3600}), b""

        client.store.update_run(key, stale)
        with pytest.raises(nbdurable.RunLockedError):
            fn.run({"seed": seed}, run_id=f"trial-{seed}")
    finally:
        os.kill(p.pid, signal.SIGCONT)
    flag.unlink()
    p.join(30)
    assert p.exitcode == 0
    starts = _starts(logdir, w.STEPS)
    assert all(s == [p.pid] for s in starts), starts
    assert fn.run({"seed": seed}, run_id=f"trial-{seed}") == w.expected_output(seed)
    assert _starts(logdir, w.STEPS) == starts


def _forge_lease(client: nbdurable.Client, owner: Owner, heartbeat_at: float) -> None:
    now = time.time()
    rec = RunRecord(
        app=client.app_id,
        function_id="f",
        run_id="r",
        status=RunStatus.RUNNING,
        event=_records.EventRecord(name="run/f", data={}, id="e", ts=1),
        created_at=now,
        updated_at=now,
        owner=owner,
        heartbeat_at=heartbeat_at,
    )
    client.store.put(_store.run_key(client.app_id, "f", "r"), rec)


def _one_step(client: nbdurable.Client) -> Any:
    calls: list[int] = []

    @client.create_function(fn_id="f")
    def f(ctx: nbdurable.ContextSync) -> int:
        return ctx.step.run("only", lambda: calls.append(1) or len(calls))

    return f, calls


@pytest.mark.parametrize(
    ("who", "taken_over"),
    [
        ("live pid, same start time", False),
        ("live pid, other start time (pid reused)", True),
        ("other host, fresh heartbeat", False),
        ("other host, heartbeat older than the lease", True),
    ],
)
def test_forged_leases(tmp_path: Path, who: str, taken_over: bool) -> None:
    """A lease is taken over only when its owner is provably gone: pid reuse and expired remote heartbeats."""
    client = nbdurable.Client("lease", store=str(tmp_path / "store"))
    try:
        parent = psutil.Process(os.getppid())
        now = time.time()
        if who.startswith("live pid"):
            started = parent.create_time() if "same" in who else parent.create_time() - 1000
            owner = Owner(host=_lease.HOST, pid=parent.pid, started=started, token="t")
            heartbeat = now - 3600  # on this host only the process's existence counts
        else:
            owner = Owner(host="elsewhere.example", pid=1, started=1.0, token="t")
            heartbeat = now - 1 if "fresh" in who else now - _lease.LEASE_SECONDS - 1
        _forge_lease(client, owner, heartbeat)
        f, calls = _one_step(client)
        if taken_over:
            assert f.run(run_id="r") == 1
            assert calls == [1]
        else:
            with pytest.raises(nbdurable.RunLockedError):
                f.run(run_id="r")
            assert calls == []
    finally:
        Store.forget(tmp_path / "store")
