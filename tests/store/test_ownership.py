"""DESIGN 3.7: one owner at a time per run."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

import nbdurable
from nbdurable import _lease, _records, _store
from nbdurable._process import STATE
from tests.retries.test_interruption import _starts, _worker
from tests.waiting import eventually


def test_three_processes_never_run_a_step_twice(tmp_path: Path) -> None:
    """Three processes start the same run at once: each step executes once; callers get the output or LOCKED."""
    store, logs = tmp_path / "store", tmp_path / "logs"
    logs.mkdir()
    procs = [_worker(store, logs, "--step-seconds", "0.2") for _ in range(3)]
    outs = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        outs.append(out.strip())
    assert [_starts(logs, s) for s in "abcd"] == [1, 1, 1, 1]
    assert set(outs) <= {"22", "LOCKED"}
    assert "22" in outs


def test_second_process_gets_run_locked_error(tmp_path: Path) -> None:
    """While a live process owns a run, another one fails fast with RunLockedError naming it."""
    store, logs = tmp_path / "store", tmp_path / "logs"
    logs.mkdir()
    owner = _worker(store, logs, "--hang-in", "b")
    try:
        eventually(lambda: _starts(logs, "b") > 0, 30, "step b to start")
        client = nbdurable.Client("crash", store=store)

        @client.create_function(fn_id="pipeline")
        def pipeline(ctx: nbdurable.ContextSync) -> None:
            ctx.step.run("a", lambda: 1)

        with pytest.raises(nbdurable.RunLockedError, match=f"pid {owner.pid}"):
            pipeline.run({"job": 1})
        assert client.runs("pipeline")[0].status is nbdurable.RunStatus.RUNNING
    finally:
        owner.kill()
        owner.wait()
        _store.Store.forget(store)


def _completed_run_now_owned_by(client: nbdurable.Client, owner: _records.Owner) -> nbdurable.Function[int]:
    """A function whose completed run is then marked RUNNING under a forged owner."""

    @client.create_function(fn_id="t")
    def t(ctx: nbdurable.ContextSync) -> int:
        return ctx.step.run("a", lambda: 5)

    t.run()
    key = _store.run_key(client.app_id, "t", client.runs("t")[0].id)
    rec, payload = client.store.get_run(key)
    client.store.put(key, rec.model_copy(update={"status": nbdurable.RunStatus.RUNNING, "owner": owner}), payload)
    return t


def test_dead_owner_lease_is_taken_over(client: nbdurable.Client) -> None:
    """A RUNNING record whose owner pid is gone reads INTERRUPTED and the next run takes it over."""
    ghost = _records.Owner(host=_lease.HOST, pid=2**22 + 7, started=1.0, token="x")
    t = _completed_run_now_owned_by(client, ghost)
    assert client.runs("t")[0].status is nbdurable.RunStatus.INTERRUPTED
    assert t.run() == 5
    assert client.runs("t")[0].status is nbdurable.RunStatus.COMPLETED


def test_resumed_step_says_its_previous_attempt_never_finished(client: nbdurable.Client) -> None:
    """The step recorded in flight by a dead owner executes again, marked as such in the view."""
    count = {"a": 0}

    @client.create_function(fn_id="t")
    def t(ctx: nbdurable.ContextSync) -> int:
        return ctx.step.run("a", lambda: count.__setitem__("a", count["a"] + 1) or 5)

    run_id = t.run_id_for(t.event_for(None, None))
    key = _store.run_key(client.app_id, "t", run_id)
    now = client.clock.now()
    ghost = _records.Owner(host=_lease.HOST, pid=2**22 + 7, started=1.0, token="x")
    event = _records.EventRecord(name="run/t", data={}, id="e", ts=1)
    rec = _records.RunRecord(
        app=client.app_id,
        function_id="t",
        run_id=run_id,
        status=nbdurable.RunStatus.RUNNING,
        event=event,
        created_at=now,
        updated_at=now,
        owner=ghost,
        current_step="a",
        current_since=now,
    )
    client.store.put(key, rec)
    assert "'a' was in flight" in client.runs("t")[0].note
    run = t.start()
    assert run.wait(10) == 5
    assert count["a"] == 1
    assert run.steps[0].note == "previous attempt never finished"


def test_live_foreign_owner_is_respected(client: nbdurable.Client) -> None:
    """A lease held by a live process (here: pid 1 with its real start time) is never taken over."""
    started = _lease.start_time(1)
    assert started is not None
    t = _completed_run_now_owned_by(client, _records.Owner(host=_lease.HOST, pid=1, started=started, token="x"))
    assert client.runs("t")[0].status is nbdurable.RunStatus.RUNNING
    with pytest.raises(nbdurable.RunLockedError):
        t.run()


@pytest.mark.parametrize("made_again", [False, True], ids=["same client", "client made again"])
def test_a_second_run_in_the_same_process_attaches(client: nbdurable.Client, made_again: bool) -> None:
    """run() of a run in flight in this process waits for it (also from a client a re-run cell made again)."""
    release = threading.Event()
    entered = threading.Event()
    calls = {"slow": 0}

    def slow() -> str:
        calls["slow"] += 1
        entered.set()
        release.wait(10)
        return "done"

    def define(on: nbdurable.Client) -> nbdurable.Function[Any]:
        @on.create_function(fn_id="slow")
        def fn(ctx: nbdurable.ContextSync) -> Any:
            return ctx.step.run("slow", slow)

        return fn

    first = define(client)
    run = first.start()
    assert entered.wait(10)
    second = (
        define(nbdurable.Client(client.app_id, store=client.store_path, clock=client.clock)) if made_again else first
    )
    results: list[Any] = []
    attached = threading.Event()
    STATE.run_hooks.append(lambda _run: attached.set())  # a blocking run() shows the run it waits for
    try:
        waiter = threading.Thread(target=lambda: results.append(second.run()), daemon=True)
        waiter.start()
        assert attached.wait(10)  # the waiter attached while the run is still in flight
    finally:
        STATE.run_hooks.pop()
    release.set()
    waiter.join(10)
    assert run.wait(10) == "done"
    assert results == ["done"]
    assert calls["slow"] == 1


def test_an_execution_that_lost_its_lease_stops_and_writes_nothing(client: nbdurable.Client) -> None:
    """Taken over while stalled (as another host may after 30 s): it stops before its next step, record untouched."""
    calls = {"b": 0}
    usurper = _records.Owner(host="elsewhere", pid=1, started=1.0, token="theirs")

    def stall() -> str:
        key = _store.run_key(client.app_id, "t", client.runs("t")[0].id)
        rec, payload = client.store.get_run(key)
        client.store.put(key, rec.model_copy(update={"owner": usurper}), payload)
        client.clock.advance(60)  # type: ignore[attr-defined]  # the next heartbeat is due
        eventually(_heartbeat_saw_it, 5, "the heartbeat to see the lease taken")
        return "a"

    def _heartbeat_saw_it() -> bool:
        from nbdurable._lease import heartbeat

        return any(beat.__self__.lease.lost for beat in list(heartbeat()._active))

    @client.create_function(fn_id="t")
    def t(ctx: nbdurable.ContextSync) -> str:
        ctx.step.run("a", stall)
        return ctx.step.run("b", lambda: calls.__setitem__("b", calls["b"] + 1) or "b")

    with pytest.raises(nbdurable.RunLockedError, match="taken over"):
        t.run()
    assert calls["b"] == 0
    key = _store.run_key(client.app_id, "t", client.runs("t")[0].id)
    rec, _ = client.store.get_run(key)
    assert rec.owner == usurper
    assert rec.status is nbdurable.RunStatus.RUNNING
