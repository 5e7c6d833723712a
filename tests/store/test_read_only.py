"""A read-only store (an archived or shared folder) lists, shows and replays; only executing needs writing."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import nbdurable
from nbdurable._commands import Commands
from nbdurable._store import Store
from nbdurable.testing import FakeClock
from tests.mounts import remount, tmpfs


def _define(client: nbdurable.Client, calls: list[str]) -> nbdurable.Function[Any]:
    @client.create_function(fn_id="f", retries=0)
    def f(ctx: nbdurable.ContextSync) -> str:
        a = ctx.step.run("a", lambda: calls.append("a") or "a")
        b = ctx.step.run("b", lambda: calls.append("b") or a + "b")
        return ctx.step.run("c", lambda: calls.append("c") or b + "c")

    return f


@pytest.fixture
def archived(tmp_path: Path) -> Iterator[tuple[str, list[str]]]:
    """A store with a completed run ``done`` and a run ``half`` whose step c was forgotten, on a read-only volume."""
    with tmpfs(tmp_path / "mnt", "size=8m") as mnt:
        path = str(mnt / "store")
        calls: list[str] = []
        client = nbdurable.Client("t", store=path, clock=FakeClock())
        f = _define(client, calls)
        f.run(run_id="done")
        f.run(run_id="half")
        f.invalidate("half", from_step="c")
        Store.forget(path)
        remount(mnt, "ro")
        calls.clear()
        yield path, calls


def test_a_read_only_store_opens_as_such(archived: tuple[str, list[str]]) -> None:
    """Opening it writes nothing and says it is read-only."""
    path, _ = archived
    assert nbdurable.Client("t", store=path).store.read_only


def test_runs_are_listed_and_shown(archived: tuple[str, list[str]]) -> None:
    """Listing, lookup, ``%nbdurable runs``, ``show`` and ``store`` work on a read-only store."""
    path, _ = archived
    client = nbdurable.Client("t", store=path, clock=FakeClock())
    assert sorted(r.id for r in client.runs()) == ["done", "half"]
    done = client.get_run("done")
    assert done is not None
    assert done.output == "abc"
    assert [s.key for s in done.steps] == ["a", "b", "c"]
    lines: list[str] = []
    tables: list[dict[str, str]] = []
    commands = Commands(lambda: [client], lines.append, tables.append)
    commands.store_path = path
    commands("runs")
    commands("show done")
    commands("store")
    assert len(tables[0]["text/plain"].splitlines()) == 3
    assert lines[-1].endswith("read-only)")


def test_a_completed_run_replays(archived: tuple[str, list[str]]) -> None:
    """Running a stored run again replays every step and returns its output; nothing executes or is written."""
    path, calls = archived
    client = nbdurable.Client("t", store=path, clock=FakeClock())
    assert _define(client, calls).run(run_id="done") == "abc"
    assert calls == []


def test_executing_a_step_needs_write_access(archived: tuple[str, list[str]]) -> None:
    """A step that would execute stops the run before its handler runs; the error says the store is read-only."""
    path, calls = archived
    client = nbdurable.Client("t", store=path, clock=FakeClock())
    with pytest.raises(nbdurable.RunFailedError) as info:
        _define(client, calls).run(run_id="half")
    assert calls == []
    cause = info.value.__cause__
    assert isinstance(cause, nbdurable.StoreError)
    assert "read-only" in str(cause)
    assert "executing a step needs write access" in str(cause)


def test_a_new_run_needs_write_access(archived: tuple[str, list[str]]) -> None:
    """A run with nothing stored cannot begin: StoreError at once."""
    path, calls = archived
    client = nbdurable.Client("t", store=path, clock=FakeClock())
    with pytest.raises(nbdurable.StoreError, match="read-only"):
        _define(client, calls).run(run_id="new")
    assert calls == []
