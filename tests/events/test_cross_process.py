"""Waits in other processes wake when an event is sent, not at their next look in the store (``_doorbell``)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import nbdurable
from nbdurable import _doorbell
from nbdurable._process import STATE
from nbdurable._store import Store
from tests.waiting import eventually

WAITER = textwrap.dedent(
    """
    import os, sys, nbdurable
    from nbdurable import _kinds
    store, ready, no_fifo = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
    _kinds.STORE_POLL = 3600.0  # only a ring can wake the wait within the test's deadline
    if no_fifo:
        del os.mkfifo  # a file system without named pipes: the doorbell polls the database
    c = nbdurable.Client("x", store=store)
    @c.create_function(fn_id="w")
    def w(ctx):
        got = ctx.step.wait_for_event("approval", event="app/approved", timeout=3_600_000)
        return got.data["by"]
    run = w.start(run_id="r")
    while not any(s.status.value == "WAITING" for s in run.steps):
        pass
    open(ready, "w").close()
    print(run.wait(120), flush=True)
    """
)


def _start_waiter(tmp_path: Path, *, no_fifo: bool = False) -> subprocess.Popen[str]:
    store, ready = tmp_path / "store", tmp_path / "ready"
    proc = subprocess.Popen(
        [sys.executable, "-c", WAITER, str(store), str(ready), "1" if no_fifo else "0"],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "NBDURABLE_VIEW": "off"},
    )

    def waiting() -> bool:
        assert proc.poll() is None, "the waiting process died"
        return ready.exists()

    eventually(waiting, 60, "the waiting process to wait")
    return proc


def _send_and_read(tmp_path: Path, proc: subprocess.Popen[str]) -> str:
    client = nbdurable.Client("x", store=str(tmp_path / "store"))
    try:
        client.send_sync(nbdurable.Event("app/approved", {"by": "ada"}))
        out, _ = proc.communicate(timeout=30)
    finally:
        proc.kill()
        Store.forget(str(tmp_path / "store"))
    return out.strip()


def test_a_send_wakes_a_wait_in_another_process(tmp_path: Path) -> None:
    """The other process's wait returns the event although its own look in the store is an hour away."""
    proc = _start_waiter(tmp_path)
    wake = tmp_path / "store" / _doorbell.WAKE_DIR
    # its pipe: made as the wait arms its doorbell, just after the step reads WAITING
    eventually(lambda: wake.is_dir() and len(list(wake.iterdir())) == 1, 10, "the waiter's pipe")
    assert _send_and_read(tmp_path, proc) == "ada"


def test_without_named_pipes_the_doorbell_polls_the_database(tmp_path: Path) -> None:
    """Where FIFOs cannot be made, the waiting process notices the send by looking at the database."""
    where = tmp_path / "a folder #1?"  # characters a database URI must escape
    where.mkdir()
    proc = _start_waiter(where, no_fifo=True)
    assert not (where / "store" / _doorbell.WAKE_DIR).exists() or not any(
        (where / "store" / _doorbell.WAKE_DIR).iterdir()
    )
    assert _send_and_read(where, proc) == "ada"


def test_a_dead_process_pipe_is_removed_by_the_next_ring(tmp_path: Path) -> None:
    """A pipe left by a killed process (no reader) is deleted when someone rings."""
    folder = tmp_path / _doorbell.WAKE_DIR
    folder.mkdir()
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True
    )
    pipe = folder / f"{dead.stdout.strip()}-abc"
    os.mkfifo(pipe, 0o600)
    assert _doorbell.ring(str(tmp_path)) == 0
    assert not pipe.exists()


def test_a_ring_writes_only_to_pipes(tmp_path: Path) -> None:
    """A regular file in the wake folder is never written to."""
    folder = tmp_path / _doorbell.WAKE_DIR
    folder.mkdir()
    planted = folder / "123-abc"
    planted.write_bytes(b"keep")
    assert _doorbell.ring(str(tmp_path)) == 0
    assert planted.read_bytes() == b"keep"


def test_a_ring_sets_the_armed_signal_once(tmp_path: Path) -> None:
    """A ring wakes every armed wait once; a wait arms again before its next look."""
    sub = _doorbell.subscribe(str(tmp_path))
    try:
        bell = sub.bell
        assert bell.fifo is not None
        first = sub.arm()
        fd = os.open(bell.fifo, os.O_WRONLY | os.O_NONBLOCK)
        os.write(fd, b"\0")
        eventually(first.is_set)
        second = sub.arm()
        assert not second.is_set()
        os.write(fd, b"\0")
        os.close(fd)
        eventually(second.is_set)
    finally:
        sub.close()
        _doorbell.close_all()


def test_an_idle_doorbell_closes_and_removes_its_pipe(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With no wait listening for a while, the thread ends and the pipe goes; the next wait makes a new one."""
    monkeypatch.setattr(_doorbell, "IDLE_EXIT", 0.05)
    sub = _doorbell.subscribe(str(tmp_path))
    bell = sub.bell
    fifo = bell.fifo
    assert fifo is not None
    assert Path(fifo).exists()
    sub.close()
    eventually(lambda: not bell.thread.is_alive())
    assert not Path(fifo).exists()
    again = _doorbell.subscribe(str(tmp_path))
    try:
        assert again.bell is not bell
    finally:
        again.close()
        _doorbell.close_all()


def test_reset_closes_every_doorbell(tmp_path: Path) -> None:
    """``STATE.reset()`` ends the doorbell threads and removes their pipes."""
    sub = _doorbell.subscribe(str(tmp_path))
    bell = sub.bell
    STATE.reset()
    eventually(lambda: not bell.thread.is_alive())
    assert bell.fifo is not None
    assert not Path(bell.fifo).exists()
    assert STATE.doorbells == {}
