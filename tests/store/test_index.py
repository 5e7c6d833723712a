"""The run index: listings, lookups and interrupted runs read what they return, and tell the truth."""

from __future__ import annotations

import datetime
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

import nbdurable
from nbdurable import _events, _index, _lease, _records, _store
from nbdurable._commands import Commands
from nbdurable._store import Store
from nbdurable.testing import FakeClock, temporary_client
from tests.indexcheck import assert_index_matches, make_legacy
from tests.waiting import eventually


def _three(client: nbdurable.Client, calls: list[str] | None = None, fn_id: str = "f") -> nbdurable.Function[Any]:
    log: list[str] = [] if calls is None else calls

    @client.create_function(fn_id=fn_id, retries=0)
    def f(ctx: nbdurable.ContextSync) -> int:
        a = ctx.step.run("a", lambda: log.append("a") or 1)
        b = ctx.step.run("b", lambda: log.append("b") or a + 1)
        return ctx.step.run("c", lambda: log.append("c") or b + 1)

    return f


class _Decodes:
    """Counts run records decoded (what a listing costs, whatever the store holds)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.runs = 0
        real = Store.decode

        def counting(store: Store, key: str, raw: Any, model: Any) -> Any:
            if model is _records.RunRecord:
                self.runs += 1
            return real(store, key, raw, model)

        monkeypatch.setattr(Store, "decode", counting)


def _many(client: nbdurable.Client, clock: FakeClock, n: int) -> nbdurable.Function[Any]:
    fn = _three(client)
    for i in range(n):
        clock.advance(1)
        fn.run(run_id=f"r{i:03d}")
    return fn


# --- what a listing reads ----------------------------------------------------------------------


def test_a_limited_listing_reads_only_the_runs_it_returns(
    client: nbdurable.Client, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``runs(limit=5)`` of 60 stored runs decodes 5 run records: the newest, newest first."""
    _many(client, clock, 60)
    decodes = _Decodes(monkeypatch)
    got = client.runs("f", limit=5)
    assert [r.id for r in got] == ["r059", "r058", "r057", "r056", "r055"]
    assert decodes.runs == 5


def test_get_run_reads_one_record(client: nbdurable.Client, clock: FakeClock, monkeypatch: pytest.MonkeyPatch) -> None:
    """``get_run`` finds a run by id among many by reading its record alone."""
    _many(client, clock, 40)
    decodes = _Decodes(monkeypatch)
    run = client.get_run("r017")
    assert run is not None
    assert run.id == "r017"
    assert decodes.runs == 1
    assert client.get_run("nope") is None


def test_get_run_finds_a_run_of_any_function(client: nbdurable.Client) -> None:
    """A run id is looked up across the app's functions."""
    _three(client, fn_id="one").run(run_id="x")
    _three(client, fn_id="two").run(run_id="y")
    run = client.get_run("y")
    assert run is not None
    assert run.function_id == "two"


def test_finding_interrupted_runs_reads_only_runs_not_finished(
    client: nbdurable.Client, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The ``%load_ext`` notice reads the runs not finished, not every completed one."""
    _many(client, clock, 30)
    dead = _records.Owner(host=_lease.HOST, pid=2**22 + 11, started=1.0, token="gone")
    _put_running(client, "f", "stuck", dead, clock.now())
    decodes = _Decodes(monkeypatch)
    notice = Commands(lambda: [client], lambda _line: None, lambda _t: None)
    notice.store_path = client.store_path
    assert "f/stuck" in notice.interrupted_notice()
    assert decodes.runs == 1


def _put_running(client: nbdurable.Client, fn_id: str, run_id: str, owner: _records.Owner, now: float) -> None:
    event = _records.EventRecord(name="run/x", data={}, id="e", ts=1)
    rec = _records.RunRecord(
        app=client.app_id,
        function_id=fn_id,
        run_id=run_id,
        status=nbdurable.RunStatus.RUNNING,
        event=event,
        created_at=now,
        updated_at=now,
        owner=owner,
    )
    client.store.put(_store.run_key(client.app_id, fn_id, run_id), rec)


# --- filters ---------------------------------------------------------------------------------


def test_listing_filters_by_function_and_status(client: nbdurable.Client, clock: FakeClock) -> None:
    """Function and status filters, and a status as shown (a dead owner's run is INTERRUPTED)."""
    _many(client, clock, 3)

    @client.create_function(fn_id="bad", retries=0)
    def bad(ctx: nbdurable.ContextSync) -> None:
        ctx.step.run("x", lambda: 1 // 0)

    clock.advance(1)
    with pytest.raises(nbdurable.RunFailedError):
        bad.run(run_id="b1")
    dead = _records.Owner(host=_lease.HOST, pid=2**22 + 11, started=1.0, token="gone")
    clock.advance(1)
    _put_running(client, "f", "stuck", dead, clock.now())
    assert [r.id for r in client.runs(status="FAILED")] == ["b1"]
    assert [r.id for r in client.runs("f", status="COMPLETED")] == ["r002", "r001", "r000"]
    assert [r.id for r in client.runs(status="INTERRUPTED")] == ["stuck"]
    assert client.runs(status="RUNNING") == []
    assert [r.id for r in client.runs(limit=2)] == ["stuck", "b1"]
    assert client.runs(limit=0) == []
    with pytest.raises(ValueError, match="limit"):
        client.runs(limit=-1)


# --- listings tell the truth -----------------------------------------------------------------


def test_listed_runs_have_their_steps(client: nbdurable.Client) -> None:
    """A listed run's steps are those ``get_run`` gives (read when first asked for)."""
    f = _three(client)
    f.run(run_id="r")
    listed = f.runs()[0]
    fetched = client.get_run("r")
    assert fetched is not None
    assert [s.key for s in listed.steps] == [s.key for s in fetched.steps] == ["a", "b", "c"]
    assert listed.counts() == {"COMPLETED": 3}


def test_runs_table_counts_steps_as_show_lists_them(client: nbdurable.Client) -> None:
    """``%nbdurable runs`` gives each run's stored steps by status, as ``show`` lists them."""

    @client.create_function(fn_id="half", retries=0)
    def half(ctx: nbdurable.ContextSync) -> None:
        ctx.step.run("ok", lambda: 1)
        ctx.step.run("boom", lambda: 1 // 0)

    with pytest.raises(nbdurable.RunFailedError):
        half.run(run_id="h")
    lines: list[str] = []
    tables: list[dict[str, str]] = []
    commands = Commands(lambda: [client], lines.append, tables.append)
    commands.store_path = client.store_path
    commands("runs")
    row = tables[-1]["text/plain"].splitlines()[1].split()
    assert row[:6] == ["test", "half", "h", "FAILED", "2", "(1"]
    commands("show h")
    shown = tables[-1]["text/plain"].splitlines()[1:]
    assert len(shown) == 2


def test_a_killed_run_lists_its_completed_steps(tmp_path: Path) -> None:
    """A run whose process was SIGKILLed mid-run lists as INTERRUPTED with the steps it completed."""
    store = tmp_path / "store"
    flag = tmp_path / "in-c"
    code = textwrap.dedent(
        f"""
        import time, nbdurable
        c = nbdurable.Client("k", store={str(store)!r})
        @c.create_function(fn_id="f")
        def f(ctx):
            ctx.step.run("a", lambda: 1)
            ctx.step.run("b", lambda: 2)
            def c_():
                open({str(flag)!r}, "w").close()
                time.sleep(600)
            ctx.step.run("c", c_)
        f.run(run_id="killed")
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", code])
    try:

        def at_step_c() -> bool:
            assert proc.poll() is None, "the worker died before step c"
            return flag.exists()

        eventually(at_step_c, 60, "the worker to reach step c")
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    with temporary_client(store, app_id="k") as client:
        (run,) = client.runs()
        assert run.status is nbdurable.RunStatus.INTERRUPTED
        assert [s.key for s in run.steps if s.status is nbdurable.StepStatus.COMPLETED] == ["a", "b"]
        tables: list[dict[str, str]] = []
        commands = Commands(lambda: [client], lambda _line: None, tables.append)
        commands.store_path = str(store)
        commands("runs")
        assert tables[-1]["text/plain"].splitlines()[1].split()[3:5] == ["INTERRUPTED", "2"]
        assert_index_matches(str(store))


# --- the index follows every write ---------------------------------------------------------


def test_counters_follow_invalidate_and_clear(client: nbdurable.Client) -> None:
    """Forgetting steps and clearing runs keeps the index equal to the records."""
    f = _three(client)
    f.run(run_id="r1")
    f.run(run_id="r2")
    f.invalidate("r1", from_step="b")
    (entry,) = _index.find(client.store, "r1")
    assert entry.counts() == {"COMPLETED": 1}
    assert_index_matches(client.store_path)
    assert f.clear("r2") == 1
    assert [e.record.run_id for e in _index.runs(client.store)] == ["r1"]
    assert_index_matches(client.store_path)


def test_a_run_written_without_the_index_is_taken_in(client: nbdurable.Client) -> None:
    """A run record written by code that knows no index (an older nbdurable) is listed all the same."""
    f = _three(client)
    f.run(run_id="r1")
    got = client.store.get_run(_store.run_key("test", "f", "r1"))
    assert got is not _store.MISSING
    assert got is not _store.CORRUPT
    rec = got[0].model_copy(update={"run_id": "r9", "updated_at": got[0].updated_at + 10})
    client.store.cache.set(_store.run_key("test", "f", "r9"), rec.model_dump_json().encode() + b"\n")
    client.store.cache.set(
        _store.step_prefix("test", "f", "r9") + "a", client.store.cache.get(_store.step_prefix("test", "f", "r1") + "a")
    )
    assert [r.id for r in client.runs()] == ["r9", "r1"]
    (entry,) = _index.find(client.store, "r9")
    assert entry.counts() == {"COMPLETED": 1}
    assert_index_matches(client.store_path)


def test_a_corrupt_run_record_leaves_the_listing_and_comes_back_when_rewritten(client: nbdurable.Client) -> None:
    """An unreadable run record is not listed (with a warning); executing the run again lists it with its steps."""
    calls: list[str] = []
    f = _three(client, calls)
    f.run(run_id="r")
    client.store.cache.set(_store.run_key("test", "f", "r"), b"\x00garbage")
    with pytest.warns(RuntimeWarning, match="cannot be read"):
        assert client.runs() == []
    with pytest.warns(RuntimeWarning, match="cannot be read"):
        assert f.run(run_id="r") == 3
    assert calls == ["a", "b", "c"]
    (entry,) = _index.find(client.store, "r")
    assert entry.counts() == {"COMPLETED": 3}
    assert_index_matches(client.store_path)


# --- clearing old runs -------------------------------------------------------------------------


def test_clear_older_than_drops_old_runs_with_their_data(client: nbdurable.Client, clock: FakeClock) -> None:
    """``clear(older_than=...)`` deletes runs not updated for that long, records and data files; keeps the rest."""
    np = pytest.importorskip("numpy")

    @client.create_function(fn_id="d")
    def d(ctx: nbdurable.ContextSync) -> Any:
        return ctx.step.run("arr", lambda: np.zeros(1000))

    d.run(run_id="old")
    old_folder = Path(client.store_path) / client.store.data.folder("test", "d", "old")
    assert any(old_folder.iterdir())
    clock.advance(8 * 86400)
    d.run(run_id="new")
    assert client.clear(older_than=datetime.timedelta(days=7)) == 1
    assert [r.id for r in client.runs()] == ["new"]
    assert not old_folder.exists()
    assert client.store.keys(_store.step_prefix("test", "d", "old")) == []
    assert_index_matches(client.store_path)


def test_clear_older_than_never_touches_a_run_in_flight(client: nbdurable.Client, clock: FakeClock) -> None:
    """An old run that is executing (here, or held by a live process elsewhere) is skipped."""
    f = _three(client)
    f.run(run_id="done")
    alive = _lease.new_owner()
    _put_running(client, "f", "elsewhere", alive, clock.now())
    clock.advance(30 * 86400)
    try:
        assert client.clear(older_than=datetime.timedelta(days=7)) == 1
    finally:
        _lease.retire_owner(alive)
    assert [r.id for r in client.runs()] == ["elsewhere"]


def test_clear_needs_a_function_or_an_age(client: nbdurable.Client) -> None:
    """``Client.clear()`` with neither would delete everything: refused with the fix."""
    with pytest.raises(ValueError, match="older_than"):
        client.clear()


def test_clear_command_older_than(client: nbdurable.Client, clock: FakeClock) -> None:
    """``%nbdurable clear --all --older-than 7d`` deletes the old runs and says how many."""
    f = _three(client)
    f.run(run_id="old")
    clock.advance(8 * 86400)
    f.run(run_id="new")
    lines: list[str] = []
    commands = Commands(lambda: [client], lines.append, lambda _t: None)
    commands.store_path = client.store_path
    commands("clear --all --older-than 7d")
    assert lines[-1] == "cleared 1 run(s) of every function not updated for 7d"
    assert [r.id for r in client.runs()] == ["new"]


# --- upgrading a store written before the index -------------------------------------------------


FIXTURE = Path(__file__).parent / "fixtures" / "store-v0"


def test_a_store_from_before_the_index_lists_every_run_after_the_upgrade(tmp_path: Path) -> None:
    """A store written by the format before the index (fixtures/store-v0) is upgraded in place, losing nothing."""
    path = tmp_path / "store"
    shutil.copytree(FIXTURE, path)
    with temporary_client(path, app_id="notebook") as client:
        runs = client.runs()
        assert [r.id for r in runs] == [
            "killed", "waited", "array", "big", "failed",
            "done-9", "done-8", "done-7", "done-6", "done-5", "done-4", "done-3", "done-2", "done-1", "done-0",
        ]  # fmt: skip
        statuses = {r.id: r.status.value for r in runs}
        assert statuses["killed"] == "INTERRUPTED"
        assert statuses["failed"] == "FAILED"
        assert all(statuses[f"done-{i}"] == "COMPLETED" for i in range(10))
        killed = client.get_run("killed")
        assert killed is not None
        assert [s.key for s in killed.steps if s.status is nbdurable.StepStatus.COMPLETED] == ["extract", "transform"]
        done = client.get_run("done-4")
        assert done is not None
        assert done.output == [2, 4, 6, 4]
        big = client.get_run("big")
        assert big is not None
        assert big.output == "x" * 50_000
        (failed,) = _index.find(client.store, "failed")
        assert failed.counts() == {"COMPLETED": 1, "FAILED": 1}
        assert [rec.name for _, rec in _events.events_after(client.store, "notebook", 0)] == ["app/approved"]
    with temporary_client(path, app_id="other-app") as other:
        assert [r.id for r in other.runs()] == ["hello"]
    assert assert_index_matches(str(path)) == 16


def test_an_upgraded_store_replays_its_runs(tmp_path: Path) -> None:
    """After the upgrade, re-running a stored run replays every step (nothing executes again)."""
    np = pytest.importorskip("numpy")
    path = tmp_path / "store"
    shutil.copytree(FIXTURE, path)
    calls: list[str] = []
    with temporary_client(path, app_id="notebook", clock=FakeClock(1_700_100_000.0)) as client:

        @client.create_function(fn_id="etl", on_change="ignore")  # the counters changed the steps' code
        def etl(ctx: nbdurable.ContextSync) -> list[int]:
            a = ctx.step.run("extract", lambda: calls.append("extract") or [1, 2, 3])
            b = ctx.step.run("transform", lambda: calls.append("transform") or [x * 2 for x in a])
            return ctx.step.run("load", lambda: calls.append("load") or [*b, ctx.event.data.get("n", 0)])

        @client.create_function(fn_id="array", on_change="ignore")
        def array(ctx: nbdurable.ContextSync) -> Any:
            return ctx.step.run("zeros", lambda: calls.append("zeros") or np.zeros(1))

        assert etl.run({"n": 3}, run_id="done-3") == [2, 4, 6, 3]
        assert array.run(run_id="array").tolist() == list(range(1000))
        assert calls == []
        assert etl.run(run_id="killed") == [2, 4, 6, 0]
        assert calls == ["load"]  # the killed run resumes at its step in flight
        assert client.runs(limit=1)[0].id == "killed"
    assert_index_matches(str(path))


def test_an_upgrade_rebuilds_what_it_finds(tmp_path: Path) -> None:
    """A store turned back into the old format (index dropped) is indexed again, equal to its records."""
    with temporary_client(tmp_path / "store", clock=FakeClock()) as client:
        f = _three(client)
        for i in range(5):
            f.run(run_id=f"r{i}")
        f.invalidate("r2", from_step="c")
    make_legacy(str(tmp_path / "store"))
    with temporary_client(tmp_path / "store", clock=FakeClock()) as client:
        assert [r.id for r in client.runs()] == ["r4", "r3", "r2", "r1", "r0"]
        (entry,) = _index.find(client.store, "r2")
        assert entry.counts() == {"COMPLETED": 2}
    assert assert_index_matches(str(tmp_path / "store")) == 5
