"""A store folder can never be turned against its user: no code from it, private files, sound leases."""

from __future__ import annotations

import os
import pickle
import shutil
import stat
import subprocess
import sys
import textwrap
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import diskcache
import psutil
import pytest
from IPython.core.interactiveshell import InteractiveShell

import nbdurable
from nbdurable import _lease, _records, _store, _trust
from nbdurable.testing import FakeClock, temporary_client
from tests.shell import real_shell


class Evil:
    """Unpickling it writes a marker file: proof that code from the store ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> tuple[Any, ...]:
        return (exec, (f"open({self.marker!r}, 'w').write('pwned')",))


def _plant(path: Path, key: str, value: Any) -> None:
    """Write ``value`` under ``key`` with plain diskcache (its pickle mode for objects)."""
    cache = diskcache.Cache(str(path))
    cache.set(key, value)
    cache.close()


def _header(**fields: Any) -> bytes:
    rec = _records.StepRecord(status="COMPLETED", started_at=1.0, ended_at=1.0, **fields)
    return rec.model_dump_json().encode()


@pytest.fixture
def marker(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "marker"
    yield path
    assert not path.exists(), "code from the store ran"


@pytest.fixture
def ip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[InteractiveShell]:
    """A real shell whose store is the default ./.nbdurable of a fresh folder; the extension is unloaded after."""
    yield from real_shell(tmp_path, monkeypatch, own_store=False)


def test_load_ext_runs_and_get_run_never_unpickle_a_planted_run(
    tmp_path: Path, marker: Path, ip: InteractiveShell
) -> None:
    """A pickled object planted as a run record in ./.nbdurable is never loaded by %load_ext, runs() or get_run."""
    _plant(tmp_path / ".nbdurable", f"r{_store.SEP}notebook{_store.SEP}f{_store.SEP}r1", Evil(marker))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ip.run_line_magic("load_ext", "nbdurable")
        client = nbdurable.Client("notebook", store=str(tmp_path / ".nbdurable"))
        assert client.runs() == []
        assert client.get_run("r1") is None
        ip.run_line_magic("nbdurable", "runs")
    assert any("pickle mode" in str(w.message) for w in caught)


@pytest.mark.parametrize("serializer", ["json", "pickle"])
def test_replay_never_unpickles_a_planted_step(tmp_path: Path, marker: Path, serializer: str) -> None:
    """A step record planted in pickle mode reads as corrupt: the step executes again, nothing is loaded."""
    path = tmp_path / "store"
    with temporary_client(path, serializer=serializer, clock=FakeClock()) as client:
        calls = []

        @client.create_function(fn_id="f")
        def f(ctx: nbdurable.ContextSync) -> Any:
            return ctx.step.run("a", lambda: calls.append(1) or 7)

        f.run(run_id="r")
        _store.Store.forget(path)
        _plant(path, _store.step_prefix(client.app_id, "f", "r") + "a", Evil(marker))
        with pytest.warns(RuntimeWarning, match="pickle mode"):
            assert f.run(run_id="r") == 7
        assert calls == [1, 1]


def test_a_json_function_never_loads_a_header_that_says_pickle(client: nbdurable.Client, marker: Path) -> None:
    """Editing a stored header to say "pickle" gives no code execution: the JSON function runs the step again."""
    calls = []

    @client.create_function(fn_id="f")
    def f(ctx: nbdurable.ContextSync) -> Any:
        return ctx.step.run("a", lambda: calls.append(1) or 7)

    f.run(run_id="r")
    key = _store.step_prefix(client.app_id, "f", "r") + "a"
    client.store.cache.set(key, _header(serializer="pickle") + b"\n" + pickle.dumps(Evil(marker)))
    with pytest.warns(RuntimeWarning, match="stored as a pickle"):
        assert f.run(run_id="r") == 7
    assert calls == [1, 1]


def test_invoke_never_loads_a_header_that_says_pickle(client: nbdurable.Client, marker: Path) -> None:
    """A forged invoke record is not unpickled either: the child runs again."""
    calls = []

    @client.create_function(fn_id="child")
    def child(ctx: nbdurable.ContextSync) -> int:
        return ctx.step.run("c", lambda: calls.append(1) or 3)

    @client.create_function(fn_id="parent")
    def parent(ctx: nbdurable.ContextSync) -> int:
        return ctx.step.invoke("call", function=child) + 1

    assert parent.run(run_id="p") == 4
    key = _store.step_prefix(client.app_id, "parent", "p") + "call"
    client.store.cache.set(key, _header(serializer="pickle", kind="invoke") + b"\n" + pickle.dumps(Evil(marker)))
    with pytest.warns(RuntimeWarning, match="stored as a pickle"):
        assert parent.run(run_id="p") == 4
    assert calls == [1]  # the child run replayed its own stored step


def test_pickles_load_only_from_a_store_this_user_created(tmp_path: Path) -> None:
    """A copied store folder (as from a download) is untrusted: its pickles are not loaded until trusted."""
    calls = []
    original, copy = tmp_path / "made-here", tmp_path / "handed-over"

    def define(client: nbdurable.Client) -> nbdurable.Function[Any]:
        @client.create_function(fn_id="f")
        def f(ctx: nbdurable.ContextSync) -> Any:
            return sorted(ctx.step.run("a", lambda: calls.append(1) or {1, 2}))

        return f

    with temporary_client(original, serializer="pickle", clock=FakeClock()) as client:
        assert define(client).run(run_id="r") == [1, 2]
        assert client.store.trusted
    shutil.copytree(original, copy)
    with temporary_client(copy, serializer="pickle", clock=FakeClock()) as client:
        assert not client.store.trusted
        with pytest.warns(RuntimeWarning, match="was not created by you"):
            assert define(client).run(run_id="r") == [1, 2]
    assert calls == [1, 1]
    assert _trust.trust_store(str(copy))
    with temporary_client(copy, serializer="pickle", clock=FakeClock()) as client:
        assert define(client).run(run_id="r") == [1, 2]
    assert calls == [1, 1]


def test_cell_steps_restore_only_from_a_trusted_store(tmp_path: Path, ip: InteractiveShell) -> None:
    """A %%step stored in a store folder someone handed over is executed again, never restored from it."""
    store = tmp_path / "store"
    ip.run_line_magic("load_ext", "nbdurable")
    ip.run_line_magic("nbdurable", f"store {store}")
    ip.run_cell("runs = []")
    ip.run_cell_magic("step", "load", "runs.append(1)\nx = 41 + 1")
    ip.run_cell_magic("step", "load", "runs.append(1)\nx = 41 + 1")
    assert ip.user_ns["runs"] == [1]
    ip.run_line_magic("unload_ext", "nbdurable")
    _store.Store.forget(store)
    (store / _trust.TAG_FILE).unlink()
    ip.run_line_magic("load_ext", "nbdurable")
    ip.run_line_magic("nbdurable", f"store {store}")
    with pytest.warns(RuntimeWarning, match="was not created by you"):
        ip.run_cell_magic("step", "load", "runs.append(1)\nx = 41 + 1")
    assert ip.user_ns["runs"] == [1, 1]
    assert ip.user_ns["x"] == 42


# --- private files ---------------------------------------------------------------------------


def _modes(path: Path) -> dict[str, int]:
    return {str(p.relative_to(path)): stat.S_IMODE(p.stat().st_mode) for p in [path, *path.rglob("*")]}


def test_store_files_are_private_whatever_the_umask(tmp_path: Path) -> None:
    """Under umask 022 the store folder is 0700 and its database, WAL and value files 0600."""
    old = os.umask(0o022)
    try:
        with temporary_client(tmp_path / "store", clock=FakeClock()) as client:

            @client.create_function(fn_id="f")
            def f(ctx: nbdurable.ContextSync) -> str:
                return ctx.step.run("big", lambda: "x" * 100_000)  # past 32 KB: a value file of its own

            f.run()
            modes = _modes(tmp_path / "store")
            files = {name: mode for name, mode in modes.items() if (tmp_path / "store" / name).is_file()}
    finally:
        os.umask(old)
    assert modes["."] == 0o700
    assert {"cache.db", "cache.db-wal", "cache.db-shm"} <= set(files)
    assert any(name.endswith(".val") for name in files)
    assert {name: mode for name, mode in files.items() if mode != 0o600} == {}
    assert {name: mode for name, mode in modes.items() if name not in files and mode != 0o700} == {}


def test_an_existing_loose_store_is_tightened_on_open(tmp_path: Path) -> None:
    """A store an earlier version left world-readable is made private when its owner opens it."""
    path = tmp_path / "store"
    _plant(path, "some-key", b"x" * 100_000)
    os.chmod(path, 0o755)
    assert any(mode & 0o077 for mode in _modes(path).values())
    with temporary_client(path, clock=FakeClock()) as client:
        client.runs()
    assert not any(mode & 0o077 for mode in _modes(path).values())


# --- leases ----------------------------------------------------------------------------------


def test_a_clock_step_never_makes_a_live_owner_look_dead(client: nbdurable.Client, monkeypatch: Any) -> None:
    """A live owner's lease holds after the wall clock steps by 0.5 s (its start is compared in ticks)."""
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        owner = _records.Owner(
            host=_lease.HOST,
            pid=sleeper.pid,
            started=psutil.Process(sleeper.pid).create_time(),
            token="x",
            ticks=_lease.start_ticks(sleeper.pid),
            boot=_lease.BOOT,
        )
        real = psutil.Process.create_time
        monkeypatch.setattr(psutil.Process, "create_time", lambda self: real(self) + 0.5)  # the clock stepped

        @client.create_function(fn_id="t")
        def t(ctx: nbdurable.ContextSync) -> int:
            return ctx.step.run("a", lambda: 5)

        t.run(run_id="r")
        key = _store.run_key(client.app_id, "t", "r")
        rec, payload = client.store.get_run(key)
        client.store.put(key, rec.model_copy(update={"status": nbdurable.RunStatus.RUNNING, "owner": owner}), payload)
        assert client.runs("t")[0].status is nbdurable.RunStatus.RUNNING
        with pytest.raises(nbdurable.RunLockedError):
            t.run(run_id="r")
    finally:
        sleeper.kill()
        sleeper.wait()
    assert client.runs("t")[0].status is nbdurable.RunStatus.INTERRUPTED  # its owner is gone now


def test_process_start_ticks_name_one_process() -> None:
    """This process's start in ticks is stable, and another process's differs or is absent once it ended."""
    me = _lease.start_ticks(os.getpid())
    assert me is not None
    assert me == _lease.start_ticks(os.getpid())
    assert _lease.start_ticks(2**22 + 11) is None


# --- the store changing under a run -------------------------------------------------------------


def test_a_store_deleted_mid_run_fails_the_run_instead_of_writing_into_it(tmp_path: Path) -> None:
    """The store folder removed during a step: StoreError, nothing reported as done, no files recreated."""
    path = tmp_path / "store"
    with temporary_client(path, clock=FakeClock()) as client:

        @client.create_function(fn_id="f")
        def f(ctx: nbdurable.ContextSync) -> int:
            ctx.step.run("a", lambda: 1)
            return ctx.step.run("b", lambda: shutil.rmtree(path) or 2)

        with pytest.raises(nbdurable.NbdurableError) as info:
            f.run(run_id="r")
        error = info.value if isinstance(info.value, nbdurable.StoreError) else info.value.__cause__
        assert isinstance(error, nbdurable.StoreError)
        assert "was removed" in str(error)
        assert str(path) in str(error)
        assert not path.exists()


def test_a_store_replaced_mid_run_fails_the_run(tmp_path: Path) -> None:
    """The store folder swapped for another during a step: StoreError naming the path; the new store is untouched."""
    path = tmp_path / "store"
    with temporary_client(path, clock=FakeClock()) as client:

        def swap() -> int:
            path.rename(tmp_path / "old")
            _plant(path, "other", b"theirs")
            return 2

        @client.create_function(fn_id="f")
        def f(ctx: nbdurable.ContextSync) -> int:
            ctx.step.run("a", lambda: 1)
            return ctx.step.run("b", swap)

        with pytest.raises(nbdurable.NbdurableError) as info:
            f.run(run_id="r")
        error = info.value if isinstance(info.value, nbdurable.StoreError) else info.value.__cause__
        assert isinstance(error, nbdurable.StoreError)
        assert "replaced" in str(error)
    cache = diskcache.Cache(str(path))
    assert list(cache.iterkeys()) == ["other"]
    cache.close()


def test_a_missing_value_file_warns_and_executes_again(client: nbdurable.Client) -> None:
    """A large output whose value file was deleted is re-executed with a warning naming the file."""
    calls = []

    @client.create_function(fn_id="f")
    def f(ctx: nbdurable.ContextSync) -> int:
        return len(ctx.step.run("big", lambda: calls.append(1) or "x" * 100_000))

    assert f.run(run_id="r") == 100_000
    for value_file in Path(client.store.path).rglob("*.val"):
        value_file.unlink()
    with pytest.warns(RuntimeWarning, match="is missing"):
        assert f.run(run_id="r") == 100_000
    assert calls == [1, 1]


# --- ids ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", ["a\x1fb", "tab\there", "\ud800", "nul\x00"])
def test_control_characters_and_lone_surrogates_are_refused_in_every_id(client: nbdurable.Client, bad: str) -> None:
    """App, function, run and step ids with control characters or lone surrogates: ValueError naming the id."""
    with pytest.raises(ValueError, match="app_id"):
        nbdurable.Client(bad, store=client.store_path)
    with pytest.raises(ValueError, match="fn_id"):
        client.create_function(fn_id=bad)(lambda ctx: None)
    calls = []

    @client.create_function(fn_id="f")
    def f(ctx: nbdurable.ContextSync) -> Any:
        return ctx.step.run(bad, lambda: calls.append(1))

    with pytest.raises(ValueError, match="run_id") as info:
        f.run(run_id=bad)
    assert "Fix:" in str(info.value)
    with pytest.raises(nbdurable.RunFailedError) as failed:
        f.run()
    assert isinstance(failed.value.__cause__, ValueError)
    assert "step id" in str(failed.value.__cause__)
    assert calls == []
    with pytest.raises(TypeError, match="surrogate"):
        nbdurable.Event("app/x", {"text": "\ud800"})


def test_a_user_id_never_equals_another_steps_repeat_key(client: nbdurable.Client) -> None:
    """run("page:1") then run("page") twice: three steps, three values, replayed exactly."""
    calls = []

    @client.create_function(fn_id="pages")
    def pages(ctx: nbdurable.ContextSync) -> list[str]:
        out = [ctx.step.run("page:1", lambda: calls.append("explicit") or "explicit")]
        out += [ctx.step.run("page", lambda i=i: calls.append(f"p{i}") or f"p{i}") for i in range(2)]
        return out

    assert pages.run() == ["explicit", "p0", "p1"]
    assert pages.run() == ["explicit", "p0", "p1"]
    assert calls == ["explicit", "p0", "p1"]
    run = client.runs("pages")[0]
    assert [s.label for s in client.get_run(run.id).steps] == ["page:1", "page", "page:1"]  # type: ignore[union-attr]


def test_ids_with_slashes_never_collide_with_group_members(client: nbdurable.Client) -> None:
    """A top-level id "a/b" and the step "b" of the member whose first step is "a" are two steps."""
    calls = []

    @client.create_function(fn_id="g")
    def g(ctx: nbdurable.ContextSync) -> Any:
        def member() -> list[str]:
            return [
                ctx.step.run("a", lambda: calls.append("a") or "a"),
                ctx.step.run("b", lambda: calls.append("a/b") or "m"),
            ]

        first = ctx.group.parallel([member])
        return [*first, ctx.step.run("a/b", lambda: calls.append("top") or "top")]

    assert g.run() == [["a", "m"], "top"]
    assert g.run() == [["a", "m"], "top"]
    assert calls == ["a", "a/b", "top"]


def test_runs_stored_with_legacy_keys_keep_replaying(client: nbdurable.Client) -> None:
    """A run stored before keys were escaped (keys=1) replays its steps under their old keys."""
    calls = []

    @client.create_function(fn_id="old")
    def old(ctx: nbdurable.ContextSync) -> list[str]:
        return [ctx.step.run("s", lambda: calls.append(1) or "new") for _ in range(2)] + [
            ctx.step.run("s:9", lambda: calls.append(1) or "new")
        ]

    prefix = _store.step_prefix(client.app_id, "old", "r")
    for key, value in (("s", "first"), ("s:1", "second"), ("s:9", "ninth")):
        client.store.cache.set(prefix + key, _header() + b'\n"' + value.encode() + b'"')
    event = _records.EventRecord(name="run/old", data={}, id="e", ts=1)
    legacy = _records.RunRecord(
        app=client.app_id, function_id="old", run_id="r", status="COMPLETED", event=event, created_at=1, updated_at=1
    )
    assert legacy.keys == _records.KEYS_LEGACY
    client.store.put(_store.run_key(client.app_id, "old", "r"), legacy)
    assert old.run(run_id="r") == ["first", "second", "ninth"]
    assert old.run(run_id="r") == ["first", "second", "ninth"]
    assert calls == []


# --- reading runs back -------------------------------------------------------------------------


def test_get_run_in_another_process_returns_the_stored_output(tmp_path: Path) -> None:
    """A run completed (or failed) by another process: get_run gives its output and wait() returns or raises it."""
    path = tmp_path / "store"
    script = textwrap.dedent(
        f"""
        import nbdurable
        client = nbdurable.Client("x", store={str(path)!r})

        @client.create_function(fn_id="ok")
        def ok(ctx):
            return ctx.step.run("a", lambda: {{"total": 42}})

        @client.create_function(fn_id="bad", retries=0)
        def bad(ctx):
            return ctx.step.run("a", lambda: 1 / 0)

        ok.run(run_id="good")
        try:
            bad.run(run_id="broken")
        except nbdurable.RunFailedError:
            pass
        """
    )
    env = {**os.environ, "NBDURABLE_VIEW": "off"}
    subprocess.run([sys.executable, "-c", script], check=True, env=env, timeout=60)
    client = nbdurable.Client("x", store=str(path))
    try:
        good = client.get_run("good")
        assert good is not None
        assert good.output == {"total": 42}
        assert good.wait() == {"total": 42}
        broken = client.get_run("broken")
        assert broken is not None
        with pytest.raises(nbdurable.RunFailedError, match="ZeroDivisionError"):
            broken.wait()
    finally:
        _store.Store.forget(path)


def test_a_corrupt_database_does_not_claim_nothing_was_lost(tmp_path: Path) -> None:
    """A cache.db that is not a database: StoreError saying it is damaged, not that nothing was lost."""
    path = tmp_path / "store"
    path.mkdir()
    (path / "cache.db").write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(nbdurable.StoreError) as info:
        nbdurable.Client("x", store=str(path)).runs()
    assert "damaged" in str(info.value)
    assert "lost" not in str(info.value)


def test_the_trust_command_vouches_for_a_store(tmp_path: Path) -> None:
    """`python -m nbdurable trust PATH` makes a handed-over store trusted; a folder that is no store is refused."""
    path = tmp_path / "store"
    _plant(path, "k", b"v")
    assert not _trust.is_trusted(str(path))
    done = subprocess.run(
        [sys.executable, "-m", "nbdurable", "trust", str(path)], check=False, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert _trust.is_trusted(str(path))
    (tmp_path / "empty").mkdir()
    refused = subprocess.run(
        [sys.executable, "-m", "nbdurable", "trust", str(tmp_path / "empty")], check=False, capture_output=True
    )
    assert refused.returncode == 1
    assert not _trust.is_trusted(str(tmp_path / "empty"))


def test_a_value_file_outside_the_store_is_never_read_nor_deleted(client: nbdurable.Client) -> None:
    """A row pointing its value file at ../outside reads as unreadable and leaves that file alone."""
    outside = Path(client.store.path).parent / "outside.txt"
    outside.write_bytes(b"keep me")
    calls = []

    @client.create_function(fn_id="f")
    def f(ctx: nbdurable.ContextSync) -> int:
        return len(ctx.step.run("big", lambda: calls.append(1) or "x" * 100_000))

    f.run(run_id="r")
    key = _store.step_prefix(client.app_id, "f", "r") + "big"
    client.store.cache._sql("UPDATE Cache SET filename = ? WHERE key = ?", ("../outside.txt", key))
    with pytest.warns(RuntimeWarning, match="outside the store"):
        assert f.run(run_id="r") == 100_000
    assert calls == [1, 1]
    assert outside.read_bytes() == b"keep me"


@pytest.mark.skipif(not hasattr(os, "getuid") or os.getuid() != 0, reason="needs root to hand a store to another uid")
def test_a_readable_store_of_another_user_is_used_with_a_warning(tmp_path: Path) -> None:
    """A store owned by another uid that others can read: opened as it is, with one warning; modes untouched."""
    path = tmp_path / "store"
    _plant(path, "k", b"v")
    os.chmod(path, 0o755)
    os.chown(path, 65534, 65534)
    with pytest.warns(RuntimeWarning, match="belongs to another user"):
        nbdurable.Client("x", store=str(path)).runs()
    _store.Store.forget(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o755
