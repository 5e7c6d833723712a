"""DESIGN section 4: the store never evicts, never crashes on bad records, and explains itself."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import diskcache
import pytest

import nbdurable
from nbdurable import _diskcompat, _records, _store
from nbdurable.testing import temporary_client
from tests.waiting import waiting_step


def _define(client: nbdurable.Client, calls: list[str]) -> nbdurable.Function[int]:
    @client.create_function(fn_id="s")
    def s(ctx: nbdurable.ContextSync) -> int:
        a = ctx.step.run("a", lambda: calls.append("a") or 1)
        return ctx.step.run("b", lambda: calls.append("b") or a + 1)

    return s


def test_eviction_is_off(client: nbdurable.Client) -> None:
    """diskcache's default culling above 1 GB is turned off for the store."""
    assert client.store.cache.eviction_policy == "none"
    assert client.store.cache.cull_limit == 0


def test_corrupt_step_record_executes_again_with_a_warning(client: nbdurable.Client) -> None:
    """Garbage under a step key is treated as absent: the step re-executes, the run completes."""
    calls: list[str] = []
    fn = _define(client, calls)
    assert fn.run() == 2
    prefix = _store.step_prefix(client.app_id, "s", client.runs("s")[0].id)
    client.store.cache.set(prefix + "a", b"\x00garbage")
    with pytest.warns(RuntimeWarning, match="cannot be read"):
        assert fn.run() == 2
    assert calls == ["a", "b", "a"]


def test_corrupt_run_record_never_loses_steps(client: nbdurable.Client) -> None:
    """A corrupt run record is rewritten; the stored steps still replay."""
    calls: list[str] = []
    fn = _define(client, calls)
    fn.run()
    run_id = client.runs("s")[0].id
    client.store.cache.set(_store.run_key(client.app_id, "s", run_id), "not even bytes")
    with pytest.warns(RuntimeWarning, match="cannot be read"):
        assert fn.run() == 2
    assert calls == ["a", "b"]


def test_unreadable_output_executes_again(client: nbdurable.Client) -> None:
    """A step record whose payload does not decode re-executes with a warning."""
    calls: list[str] = []
    fn = _define(client, calls)
    fn.run()
    key = _store.step_prefix(client.app_id, "s", client.runs("s")[0].id) + "b"
    rec, _ = client.store.get_step(key)
    client.store.put(key, rec, b"{not json")
    with pytest.warns(RuntimeWarning, match="cannot be rebuilt"):
        assert fn.run() == 2
    assert calls == ["a", "b", "b"]


def test_future_schema_version_is_a_store_error(client: nbdurable.Client) -> None:
    """A record from a newer nbdurable is not overwritten: StoreError says to upgrade."""
    calls: list[str] = []
    fn = _define(client, calls)
    fn.run()
    key = _store.step_prefix(client.app_id, "s", client.runs("s")[0].id) + "a"
    raw = client.store.cache.get(key)
    header, payload = raw.split(b"\n", 1)
    future = header.replace(b'"v":1', b'"v":99,"newfield":1') + b"\n" + payload
    client.store.cache.set(key, future)
    with pytest.raises(nbdurable.RunFailedError) as info:
        fn.run()
    assert isinstance(info.value.__cause__, nbdurable.StoreError)
    assert "upgrade nbdurable" in str(info.value.__cause__)
    assert client.store.cache.get(key) == future


def test_store_path_that_is_a_file(tmp_path: Path) -> None:
    """A store path naming a file is a StoreError naming the path and the fix."""
    target = tmp_path / "afile"
    target.write_text("x")
    client = nbdurable.Client("x", store=target)
    with pytest.raises(nbdurable.StoreError, match=r"afile.*Fix"):
        _ = client.store


def test_unwritable_store_path(tmp_path: Path) -> None:
    """A store under a path that cannot be created is a StoreError naming it."""
    blocker = tmp_path / "blocker"
    blocker.write_text("x")
    client = nbdurable.Client("x", store=blocker / "inside")
    with pytest.raises(nbdurable.StoreError, match="inside"):
        _ = client.store


def test_write_failure_keeps_earlier_work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A full disk while storing a step fails with StoreError; earlier steps still replay."""
    calls: list[str] = []
    with temporary_client(tmp_path / "s") as client:
        fn = _define(client, calls)
        fn.run()
        fn.invalidate(client.runs("s")[0].id, from_step="b")
        real_write = _diskcompat.write_value

        def full(cache: diskcache.Cache, key: str, value: bytes, *args: object, **kwargs: object) -> None:
            if key.endswith("\x1fb"):
                import sqlite3

                raise sqlite3.OperationalError("database or disk is full")
            real_write(cache, key, value, *args, **kwargs)

        monkeypatch.setattr(_diskcompat, "write_value", full)
        with pytest.raises(nbdurable.RunFailedError) as info:
            fn.run()
        assert isinstance(info.value.__cause__, nbdurable.StoreError)
        assert "free disk space" in str(info.value.__cause__)
        monkeypatch.setattr(_diskcompat, "write_value", real_write)
        assert fn.run() == 2
        assert calls == ["a", "b", "b", "b"]


def test_store_env_variable_sets_the_default_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """NBDURABLE_STORE overrides ./.nbdurable."""
    monkeypatch.setenv("NBDURABLE_STORE", os.fspath(tmp_path / "env-store"))
    assert nbdurable.Client("x").store_path == os.fspath(tmp_path / "env-store")


@pytest.mark.parametrize(
    "fields",
    [
        {"kind": "run", "attempts": 2, "serializer": "json", "fingerprint": "ab"},
        {"kind": "run", "attempts": 1, "serializer": "json", "fingerprint": None},
        {"kind": "invoke", "attempts": 3, "serializer": "pickle", "fingerprint": "0123456789abcdef"},
        {"kind": "run", "attempts": 1, "serializer": "json", "fingerprint": 'a"b'},
        {"kind": "run", "attempts": 1, "serializer": "data", "fingerprint": "ab", "data": ("npy", "data/x/y.npy", 9)},
    ],
)
def test_fast_completed_step_header_reads_as_the_same_record(client: nbdurable.Client, fields: dict) -> None:
    """The hot-path writer of COMPLETED steps produces exactly the StepRecord a reader expects."""
    data = fields.pop("data", None)
    ref = _records.DataRef(codec=data[0], file=data[1], size=data[2]) if data else None
    client.store.put_completed_step("k", started_at=1.5, ended_at=2.0, payload=b"[1]", data=ref, **fields)
    rec, payload = client.store.get_step("k")
    expected = _records.StepRecord(status="COMPLETED", started_at=1.5, ended_at=2.0, duration=0.5, data=ref, **fields)
    assert rec == expected
    assert payload == b"[1]"


def test_a_trivial_step_record_is_small(client: nbdurable.Client) -> None:
    """Fields at their default are left out of a completed step's header: about 140 bytes, not 200."""
    client.store.put_completed_step(
        "k",
        kind="run",
        attempts=1,
        started_at=1764750000.123456,
        ended_at=1764750000.12349,
        serializer="json",
        fingerprint="0123456789abcdef",
        payload=b"1",
    )
    head = client.store.cache.get("k").split(b"\n")[0]
    assert len(head) <= 145, head
    assert b'"kind"' not in head
    assert b'"attempts"' not in head


def test_plain_arguments_of_other_types_are_other_fingerprints() -> None:
    """1, 1.0, True and "1" are different arguments, so a switch between them is a code change."""
    from nbdurable._fingerprint import fingerprint

    def handler(x: object) -> object:
        return x

    prints = {fingerprint(handler, (arg,)) for arg in (1, 1.0, True, "1", None, b"1")}
    assert len(prints) == 6


def test_damaged_outputs_of_sends_waits_and_invokes_execute_again(client: nbdurable.Client) -> None:
    """A stored send_event / wait_for_event / invoke whose payload is damaged runs again with a warning."""
    sent: list[str] = []

    @client.create_function(fn_id="child")
    def child(ctx: nbdurable.ContextSync) -> int:
        return ctx.step.run("c", lambda: 7)

    @client.create_function(fn_id="f")
    def f(ctx: nbdurable.ContextSync) -> list[object]:
        ids = ctx.step.send_event("notify", nbdurable.Event("app/x", {}))
        sent.extend(ids)
        got = ctx.step.wait_for_event("w", event="app/never", timeout=10)
        return [len(ids), got, ctx.step.invoke("kid", function=child)]

    run = f.start()
    waiting_step(run, "w")
    client.clock.advance(1)  # type: ignore[attr-defined]  # the wait times out
    assert run.wait(10) == [1, None, 7]
    prefix = _store.step_prefix(client.app_id, "f", run.id)
    for key in ("notify", "w", "kid"):
        raw = client.store.cache.get(prefix + key)
        cut = raw.index(b"\n")
        client.store.cache.set(prefix + key, raw[: cut + 1] + b"\x00garbage")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run = f.start()
        waiting_step(run, "w")
        client.clock.advance(1)  # type: ignore[attr-defined]
        assert run.wait(10) == [1, None, 7]
    damaged = sorted(str(w.message).split("'")[1] for w in caught if "cannot be rebuilt" in str(w.message))
    assert damaged == ["kid", "notify", "w"]
    assert len(sent) == 2  # the damaged send was sent again (at-least-once), not lost


def test_cached_fingerprints_of_calls_with_arguments_equal_the_full_ones(client: nbdurable.Client) -> None:
    """A step called with arguments gets the fingerprint ``fingerprint`` gives, cached or not (stored ones hold)."""
    from nbdurable._engine import Execution
    from nbdurable._fingerprint import fingerprint

    def handler(x: int, y: str) -> int:
        return x

    @client.create_function(fn_id="f")
    def f(ctx: nbdurable.ContextSync) -> None: ...

    state = client.run_state("f", "r", nbdurable.Event("x"), (client.where[0], client.where[1], "f", "r"))
    ex = Execution(client, f, state)
    for args in [(1, "a"), (2, "b"), (1, "a"), ([1], "list")]:
        assert ex.handler_meta(handler, args, None)[1] == fingerprint(handler, args)
