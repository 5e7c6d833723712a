"""Hostile and mistaken input: each case gets an error naming what is wrong and the fix.

Where a store is involved, nothing stored before the bad input is lost: earlier steps still
replay afterwards. The unpicklable ``%%step`` variable belongs to the notebook layer's
tests. docs/RELIABILITY.md has the table of these cases and the errors users see.
"""

from __future__ import annotations

import datetime as _dt
import json
import sqlite3
import warnings
from pathlib import Path
from typing import Any

import diskcache
import pydantic
import pytest

import nbdurable
from nbdurable import _diskcompat, _records, _store
from nbdurable._store import Store
from nbdurable.testing import FakeClock, simulate_restart
from tests.durable import Counter
from tests.mounts import remount as _remount
from tests.mounts import tmpfs as _tmpfs


def _three_steps(client: nbdurable.Client, count: Counter, fn_id: str = "f", **options: Any) -> Any:
    """A function whose steps a, b, c return their names (b returns ``count.b_value`` if set)."""

    @client.create_function(fn_id=fn_id, **options)
    def f(ctx: nbdurable.ContextSync) -> list[Any]:
        return [ctx.step.run(n, count.returning(n, n)) for n in ("a", "b", "c")]

    return f


def _step_key(client: nbdurable.Client, step: str, fn_id: str = "f", run_id: str = "r") -> str:
    return _store.step_prefix(client.app_id, fn_id, run_id) + step


def _assert_says(message: str, *words: str) -> None:
    for word in words:
        assert word in message, f"{word!r} not in: {message}"


# --- step.run arguments ---------------------------------------------------------------------


@pytest.mark.parametrize("bad", ["", None, 3, ["a"]])
def test_step_id_must_be_a_non_empty_str(client: nbdurable.Client, bad: Any) -> None:
    """An empty or non-str step id: ValueError showing the value and a correct call; nothing runs."""
    count = Counter()

    @client.create_function(fn_id="f")
    def f(ctx: nbdurable.ContextSync) -> Any:
        return ctx.step.run(bad, count.returning("x", 1))

    with pytest.raises(nbdurable.RunFailedError) as info:
        f.run()
    cause = info.value.__cause__
    assert type(cause) is ValueError
    _assert_says(str(cause), "step id must be a non-empty str", repr(bad), "Fix: ctx.step.run('fetch-users'")
    assert count["x"] == 0


def test_handler_must_be_callable(client: nbdurable.Client) -> None:
    """A value instead of a function (fetch(arg) instead of fetch): TypeError naming the step and the fix."""

    @client.create_function(fn_id="f")
    def f(ctx: nbdurable.ContextSync) -> Any:
        return ctx.step.run("fetch", 42)

    with pytest.raises(nbdurable.RunFailedError) as info:
        f.run()
    cause = info.value.__cause__
    assert type(cause) is TypeError
    _assert_says(str(cause), "'fetch'", "must be callable", "int", "Fix: pass the function itself")


def test_non_json_output_fails_the_step_at_once(client: nbdurable.Client) -> None:
    """A step returning an object JSON cannot hold: OutputUnserializableError, no retry, fix named."""
    calls = Counter()

    def make() -> Any:
        calls.hit("make")
        return object()

    @client.create_function(fn_id="f", retries=4)
    def f(ctx: nbdurable.ContextSync) -> Any:
        return ctx.step.run("make", make)

    with pytest.raises(nbdurable.RunFailedError) as info:
        f.run()
    cause = info.value.__cause__
    assert isinstance(cause, nbdurable.OutputUnserializableError)
    _assert_says(str(cause), "'make'", "builtins.object", "json", "Fix:", 'serializer="pickle"')
    assert info.value.step_id == "make"
    assert calls["make"] == 1
    assert client.clock.slept == []  # type: ignore[attr-defined]


class Point(pydantic.BaseModel):
    x: int


def _point() -> Point:
    return {"x": "abc"}  # type: ignore[return-value]


def _when() -> _dt.datetime:
    return "yesterday"  # type: ignore[return-value]


def _ints() -> list[int]:
    return ["a"]  # type: ignore[list-item]


@pytest.mark.parametrize(("handler", "shown"), [(_point, "dict"), (_when, "str"), (_ints, "str")])
def test_output_not_matching_its_annotation(client: nbdurable.Client, handler: Any, shown: str) -> None:
    """A handler annotated ``-> Point`` returning a dict: OutputUnserializableError naming both types."""

    @client.create_function(fn_id="f")
    def f(ctx: nbdurable.ContextSync) -> Any:
        return ctx.step.run("shape", handler)

    with pytest.raises(nbdurable.RunFailedError) as info:
        f.run()
    cause = info.value.__cause__
    assert isinstance(cause, nbdurable.OutputUnserializableError)
    message = str(cause)
    _assert_says(message, "'shape'", "does not match its output type", "Fix: return a", "output_type=")
    # The detail says what was expected and what came instead, not just pydantic's heading.
    _assert_says(message, "Expected", f"input_type={shown}")


def test_100_mb_output_is_stored_and_replayed(client: nbdurable.Client) -> None:
    """A 100 MB output is stored (in a file beside the database) and replays without running again."""
    count = Counter()
    size = 100 * 2**20

    def big() -> str:
        count.hit("big")
        return "x" * size

    @client.create_function(fn_id="f")
    def f(ctx: nbdurable.ContextSync) -> list[int]:
        small = ctx.step.run("small", count.returning("small", 1))
        return [small, len(ctx.step.run("big", big))]

    assert f.run(run_id="r") == [1, size]
    restarted = simulate_restart(client)

    @restarted.create_function(fn_id="f")
    def f2(ctx: nbdurable.ContextSync) -> list[int]:
        small = ctx.step.run("small", count.returning("small", 1))
        return [small, len(ctx.step.run("big", big))]

    assert f2.run(run_id="r") == [1, size]
    assert count.calls == {"small": 1, "big": 1}
    Store.forget(restarted.store_path)


def test_nested_step_run_is_refused_without_retrying(client: nbdurable.Client) -> None:
    """step.run inside a handler: NestedStepError naming both steps, not retried (it can never succeed)."""
    count = Counter()

    @client.create_function(fn_id="nest", retries=4)
    def nest(ctx: nbdurable.ContextSync) -> Any:
        def outer() -> Any:
            count.hit("outer")
            return ctx.step.run("inner", count.returning("inner", 1))

        return ctx.step.run("outer", outer)

    with pytest.raises(nbdurable.RunFailedError) as info:
        nest.run()
    cause = info.value.__cause__
    assert isinstance(cause, nbdurable.NestedStepError)
    _assert_says(str(cause), "'inner'", "'outer'", "cannot be nested", "Fix:")
    assert count.calls == {"outer": 1}
    assert client.clock.slept == []  # type: ignore[attr-defined]


def test_step_run_outside_a_durable_function(client: nbdurable.Client) -> None:
    """A ctx kept after its run ended: NestedStepError saying the run ended and where steps belong."""
    kept: list[nbdurable.ContextSync] = []

    @client.create_function(fn_id="keep")
    def keep(ctx: nbdurable.ContextSync) -> None:
        kept.append(ctx)

    keep.run()
    count = Counter()
    with pytest.raises(nbdurable.NestedStepError) as info:
        kept[0].step.run("late", count.returning("late", 1))
    _assert_says(str(info.value), "'late'", "after run", "ended", "Fix: use ctx.step only inside the durable function")
    assert count["late"] == 0


# --- function options and event data ----------------------------------------------------


@pytest.mark.parametrize("expr", ["event.data.user_id ==", "event.data.(", "  "])
def test_invalid_cel_idempotency_is_refused_at_definition(client: nbdurable.Client, expr: str) -> None:
    """An invalid idempotency expression fails when the function is defined, quoting it, with an example."""
    with pytest.raises(ValueError, match="CEL expression") as info:
        client.create_function(fn_id="f", idempotency=expr)(lambda ctx: None)
    assert repr(expr) in str(info.value)
    assert "f" not in client.functions


def test_idempotency_expression_without_a_value_for_the_data(client: nbdurable.Client) -> None:
    """An idempotency key missing from the data: ValueError naming the expression, the data and the fix."""
    f = client.create_function(fn_id="f", idempotency="event.data.user_id")(lambda ctx: 1)
    with pytest.raises(ValueError) as info:
        f.run({"other": 1})
    _assert_says(str(info.value), "'event.data.user_id'", "{'other': 1}", "Fix:")


@pytest.mark.parametrize(
    ("data", "words"),
    [
        ({"x": object()}, ("must be JSON data", "not JSON serializable", "Fix:")),
        ({"x": float("nan")}, ("must be JSON data", "Out of range float", "Fix:")),
        ({"when": _dt.date(2020, 1, 1)}, ("must be JSON data", "date", "isoformat()")),
        ({"ids": {1, 2}}, ("must be JSON data", "set", "Fix:")),
        ({1: "a"}, ("must be JSON data", "keys must be str", "1", "Fix:")),
        ({"nested": {"ok": [{2: "b"}]}}, ("keys must be str", "2", "Fix:")),
        ({None: "b"}, ("keys must be str", "None", "Fix:")),
        ([1, 2], ("data must be a dict", "list")),
    ],
)
def test_event_data_that_is_not_json(client: nbdurable.Client, data: Any, words: tuple[str, ...]) -> None:
    """Data JSON cannot carry faithfully: TypeError before anything is stored, naming the value and the fix."""
    count = Counter()
    f = client.create_function(fn_id="f")(lambda ctx: ctx.step.run("a", count.returning("a", 1)))
    with pytest.raises(TypeError) as info:
        f.run(data)
    _assert_says(str(info.value), *words)
    assert count["a"] == 0
    assert client.runs() == []


# --- the store path -----------------------------------------------------------------------


def _run_one(path: str) -> Any:
    client = nbdurable.Client("t", store=path, clock=FakeClock())
    f = client.create_function(fn_id="f")(lambda ctx: ctx.step.run("a", lambda: 1))
    try:
        return f.run()
    finally:
        Store.forget(path)


def test_store_path_that_is_a_file(tmp_path: Path) -> None:
    """The store path is a file: StoreError naming the path, saying it is a file, and the fix."""
    path = tmp_path / "notes.txt"
    path.write_text("keep me")
    with pytest.raises(nbdurable.StoreError) as info:
        _run_one(str(path))
    _assert_says(str(info.value), str(path), "is a file", "Fix: remove that file or choose another path", "store=")
    assert path.read_text() == "keep me"


def test_store_path_under_a_file(tmp_path: Path) -> None:
    """The store path's parent is a file (the directory cannot exist): StoreError naming the path."""
    (tmp_path / "notes.txt").write_text("keep me")
    path = tmp_path / "notes.txt" / "store"
    with pytest.raises(nbdurable.StoreError) as info:
        _run_one(str(path))
    _assert_says(str(info.value), str(path), "could not be created", "Fix:")


def test_store_on_a_read_only_file_system(tmp_path: Path) -> None:
    """A store whose volume became read-only: a new run fails with StoreError naming the path and the fix."""
    with _tmpfs(tmp_path / "mnt", "size=8m") as mnt:
        path = str(mnt / "store")
        client = nbdurable.Client("t", store=path, clock=FakeClock())
        count = Counter()
        assert _three_steps(client, count).run(run_id="r") == ["a", "b", "c"]
        Store.forget(path)
        _remount(mnt, "ro")
        again = nbdurable.Client("t", store=path, clock=FakeClock())
        with pytest.raises(nbdurable.StoreError) as info:
            _three_steps(again, count).run(run_id="new")
        _assert_says(str(info.value), path, "read-only", "Fix: make the directory writable, or choose another path")
        Store.forget(path)
        _remount(mnt, "rw")
        later = nbdurable.Client("t", store=path, clock=FakeClock())
        assert _three_steps(later, count).run(run_id="r") == ["a", "b", "c"]
        assert count.calls == {"a": 1, "b": 1, "c": 1}


def test_store_path_in_a_read_only_directory(tmp_path: Path) -> None:
    """A new store in a directory that cannot be written: StoreError naming the path and the fix."""
    with _tmpfs(tmp_path / "mnt", "size=1m,ro") as mnt:
        path = str(mnt / "store")
        with pytest.raises(nbdurable.StoreError) as info:
            _run_one(path)
        _assert_says(str(info.value), path, "read-only", "Fix: make the directory writable")


# --- records ------------------------------------------------------------------------------


@pytest.mark.parametrize("garbage", [b"\x00\xff garbage", b"{not json}\n", "a str, not bytes", 12345])
def test_corrupt_step_record_executes_the_step_again(client: nbdurable.Client, garbage: Any) -> None:
    """Garbage under a step's key: a warning naming the record; that step runs again, the others replay."""
    count = Counter()
    f = _three_steps(client, count)
    f.run(run_id="r")
    client.store.cache.set(_step_key(client, "b"), garbage)
    with pytest.warns(RuntimeWarning, match=r"stored record test/f/r/b .* cannot be read"):
        assert f.run(run_id="r") == ["a", "b", "c"]
    assert count.calls == {"a": 1, "b": 2, "c": 1}
    got = client.store.get_step(_step_key(client, "b"))
    assert got[0].status == "COMPLETED"  # written again, readable


def test_corrupt_run_record_is_rewritten_and_steps_replay(client: nbdurable.Client) -> None:
    """Garbage under a run's key: a warning; the run executes, every stored step replays."""
    count = Counter()
    f = _three_steps(client, count)
    f.run(run_id="r")
    client.store.cache.set(_store.run_key(client.app_id, "f", "r"), b"\x00garbage")
    with pytest.warns(RuntimeWarning, match="cannot be read"):
        assert f.run(run_id="r") == ["a", "b", "c"]
    assert count.calls == {"a": 1, "b": 1, "c": 1}
    assert client.runs()[0].status is nbdurable.RunStatus.COMPLETED


def _bump_version(client: nbdurable.Client, key: str) -> bytes:
    """Rewrite the record under ``key`` as a newer nbdurable would (schema v2, same fields)."""
    raw = client.store.cache.get(key)
    cut = raw.index(b"\n")
    header = json.loads(raw[:cut])
    header["v"] = _records.SCHEMA_VERSION + 1
    newer = json.dumps(header).encode() + b"\n" + raw[cut + 1 :]
    client.store.cache.set(key, newer)
    return newer


@pytest.mark.parametrize("extra_field", [False, True])
def test_step_record_from_a_newer_version_is_not_guessed_at(client: nbdurable.Client, extra_field: bool) -> None:
    """A step record of schema v2: StoreError saying so and to upgrade; the record is left as it was."""
    count = Counter()
    f = _three_steps(client, count)
    f.run(run_id="r")
    key = _step_key(client, "b")
    newer = _bump_version(client, key)
    if extra_field:
        raw = client.store.cache.get(key)
        cut = raw.index(b"\n")
        header = json.loads(raw[:cut])
        header["lineage"] = ["a"]
        newer = json.dumps(header).encode() + b"\n" + raw[cut + 1 :]
        client.store.cache.set(key, newer)
    with pytest.raises(nbdurable.RunFailedError) as info:
        f.run(run_id="r")
    cause = info.value.__cause__
    assert isinstance(cause, nbdurable.StoreError)
    _assert_says(str(cause), "test/f/r/b", "newer nbdurable", "schema v2", "Fix: upgrade nbdurable")
    assert client.store.cache.get(key) == newer
    assert count.calls == {"a": 1, "b": 1, "c": 1}


def test_run_record_from_a_newer_version_is_not_overwritten(client: nbdurable.Client) -> None:
    """A run record of schema v2: StoreError before anything executes; the record is left as it was."""
    count = Counter()
    f = _three_steps(client, count)
    f.run(run_id="r")
    key = _store.run_key(client.app_id, "f", "r")
    newer = _bump_version(client, key)
    with pytest.raises(nbdurable.StoreError) as info:
        f.run(run_id="r")
    _assert_says(str(info.value), "test/f/r", "newer nbdurable", "Fix: upgrade nbdurable")
    assert client.store.cache.get(key) == newer
    assert count.calls == {"a": 1, "b": 1, "c": 1}


# --- a disk that fills up -------------------------------------------------------------------


def test_disk_full_while_storing_a_step(client: nbdurable.Client, monkeypatch: pytest.MonkeyPatch) -> None:
    """The write of step b fails with 'disk is full': StoreError with the fix; a stays stored and replays."""
    count = Counter()
    f = _three_steps(client, count)
    real_write = _diskcompat.write_value
    b_key = _step_key(client, "b")

    def write_or_full(cache: Any, key: str, value: Any, *args: Any, **kwargs: Any) -> Any:
        if key == b_key:
            msg = "database or disk is full"
            raise sqlite3.OperationalError(msg)
        return real_write(cache, key, value, *args, **kwargs)

    monkeypatch.setattr(_diskcompat, "write_value", write_or_full)
    with pytest.raises(nbdurable.NbdurableError) as info:
        f.run(run_id="r")
    error = info.value if isinstance(info.value, nbdurable.StoreError) else info.value.__cause__
    assert isinstance(error, nbdurable.StoreError)
    _assert_says(
        str(error), client.store_path, "disk is full", "Fix: free disk space", "Nothing stored before was lost"
    )
    assert count.calls == {"a": 1, "b": 1}

    monkeypatch.setattr(_diskcompat, "write_value", real_write)
    assert f.run(run_id="r") == ["a", "b", "c"]
    assert count.calls == {"a": 1, "b": 2, "c": 1}  # a replayed; b, never stored, ran again


def test_disk_full_for_every_write(client: nbdurable.Client, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every write fails: StoreError at once, before any step runs; the stored run is untouched."""
    count = Counter()
    f = _three_steps(client, count)
    f.run(run_id="r")

    def full(self: Any, key: str, value: Any, *args: Any, **kwargs: Any) -> Any:
        msg = "database or disk is full"
        raise sqlite3.OperationalError(msg)

    monkeypatch.setattr(diskcache.Cache, "set", full)
    with pytest.raises(nbdurable.StoreError, match="disk is full"):
        f.run(run_id="r")
    monkeypatch.undo()
    assert f.run(run_id="r") == ["a", "b", "c"]
    assert count.calls == {"a": 1, "b": 1, "c": 1}


def test_real_disk_fills_mid_run(tmp_path: Path) -> None:
    """On a 1 MB file system a 3 MB output cannot be stored: StoreError; after more space, a replays."""
    with _tmpfs(tmp_path / "mnt", "size=1m") as mnt:
        path = str(mnt / "store")
        count = Counter()
        size = {"b": 3 * 2**20}

        def define(client: nbdurable.Client) -> Any:
            @client.create_function(fn_id="f", retries=0)
            def f(ctx: nbdurable.ContextSync) -> list[Any]:
                a = ctx.step.run("a", count.returning("a", "A"))
                b = ctx.step.run("b", lambda: count.hit("b") or "x" * size["b"])
                return [a, len(b)]

            return f

        client = nbdurable.Client("t", store=path, clock=FakeClock())
        with pytest.raises(nbdurable.NbdurableError) as info:
            define(client).run(run_id="r")
        error = info.value if isinstance(info.value, nbdurable.StoreError) else info.value.__cause__
        assert isinstance(error, nbdurable.StoreError)
        _assert_says(str(error), path, "full", "Fix: free disk space")
        Store.forget(path)

        _remount(mnt, "size=16m")  # the user frees space
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # every record still reads
            again = nbdurable.Client("t", store=path, clock=FakeClock())
            assert define(again).run(run_id="r") == ["A", size["b"]]
        assert count.calls == {"a": 1, "b": 2}


class _A(pydantic.BaseModel):
    a: int


class _B(pydantic.BaseModel):
    b: str


def test_closures_of_one_factory_keep_their_own_return_types(client: nbdurable.Client) -> None:
    """Regression: handlers made by one factory share a code object but not their return annotation.

    The codec was cached per code object, so the second closure was checked against the
    first one's type and its valid output refused.
    """

    def make(tp: Any, value: Any) -> Any:
        def produce() -> Any:
            return value

        produce.__annotations__["return"] = tp
        return produce

    @client.create_function(fn_id="f")
    def f(ctx: nbdurable.ContextSync) -> list[str]:
        a = ctx.step.run("a", make(_A, _A(a=1)))
        b = ctx.step.run("b", make(_B, _B(b="x")))
        return [type(a).__name__, type(b).__name__]

    assert f.run(run_id="r") == ["_A", "_B"]
    assert f.run(run_id="r") == ["_A", "_B"]  # replayed values are rebuilt with their own types too
