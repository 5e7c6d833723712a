"""Waking ``wait_for_event`` steps of other processes within milliseconds of a ``send``, idle at no cost.

Each process with waits in flight on a store keeps one named pipe (FIFO) in the store's
``wake/`` folder, and one thread blocked reading it: asleep in the kernel, no CPU used,
until a byte arrives. ``ring`` (called by the store once a sent event is committed)
writes a byte to every other process's pipe; their threads wake the waits, which then
read the new events from the store as they always did. A ring only says "look now": the
store stays the one source of truth, so a lost ring costs at most the waits' own poll of
the store (once a second), never an event.

Why a FIFO: it needs nothing but the file system the store already lives on, works
between any processes of the user on the machine (kernels included), and the private
store folder (0700) keeps other users from ringing or listening. A pipe whose reader died
(a killed kernel) refuses writers (``ENXIO``) and is removed by the next ring.

Where FIFOs cannot be made (Windows, some network or FUSE file systems), the thread
polls SQLite's ``PRAGMA data_version`` of its own connection every ``POLL`` seconds
instead, and wakes the waits when the store's event counter moved: a few microseconds
per look, well under 1% of a core, and a wake within about ``POLL``.
"""

from __future__ import annotations

import contextlib
import errno
import os
import select
import sqlite3
import stat
import threading
import time
import urllib.parse
import uuid

from nbdurable._clock import Signal
from nbdurable._process import STATE

WAKE_DIR = "wake"
POLL = 0.02
"""Seconds between looks at the database where no FIFO can be made."""
IDLE_EXIT = 30.0
"""Seconds a doorbell thread with nothing to wake keeps its pipe before it closes."""
_EVENTS_SEQ = "SELECT value FROM Cache WHERE key = ? AND raw = 1"


class Subscription:
    """One wait's hold on its store's doorbell: ``arm()`` a fresh one-shot signal before each look."""

    def __init__(self, bell: Doorbell) -> None:
        self.bell = bell
        self.signal: Signal | None = None

    def arm(self) -> Signal:
        """A signal the next ring sets (arm before looking in the store, so no ring is missed)."""
        signal = Signal()
        with self.bell.lock:
            self.signal = signal
        return signal

    def close(self) -> None:
        """Stop listening (the wait ended)."""
        with self.bell.lock:
            self.bell.subscriptions.discard(self)
            self.signal = None


class Doorbell:
    """The pipe and thread of one store in this process (see the module docstring)."""

    def __init__(self, store_path: str) -> None:
        self.store_path = store_path
        self.pid = os.getpid()
        self.lock = threading.Lock()
        self.subscriptions: set[Subscription] = set()
        self.fifo: str | None = None
        self.fd: int | None = None
        self.closed = False
        self.stop = False
        """Set by ``close_all``: the thread ends at its next wake-up."""
        self._open_fifo()
        self.thread = threading.Thread(target=self._run, name="nbdurable-doorbell", daemon=True)
        self.thread.start()

    def _open_fifo(self) -> None:
        folder = os.path.join(self.store_path, WAKE_DIR)
        path = os.path.join(folder, f"{self.pid}-{uuid.uuid4().hex[:12]}")
        mkfifo = getattr(os, "mkfifo", None)
        if mkfifo is None:
            return
        try:
            with contextlib.suppress(FileExistsError):
                os.mkdir(folder, 0o700)
            mkfifo(path, 0o600)
            # Read and write: the pipe never reports end-of-file, and writers never see it without a reader.
            self.fd = os.open(path, os.O_RDWR | os.O_NONBLOCK)
        except OSError:
            with contextlib.suppress(OSError):
                os.unlink(path)
            return
        self.fifo = path

    def wake_all(self) -> None:
        """Set the armed signal of every subscription (each is one-shot: the wait arms a new one)."""
        with self.lock:
            signals = [s.signal for s in self.subscriptions if s.signal is not None]
            for sub in self.subscriptions:
                sub.signal = None
        for signal in signals:
            signal.set()

    def _run(self) -> None:
        try:
            if self.fd is not None:
                self._listen(self.fd)
            else:
                self._poll()
        finally:
            self._close()

    def _idle(self) -> bool:
        with self.lock:
            if self.subscriptions:
                return False
            self.closed = True  # from now on ``subscribe`` makes a new doorbell
            return True

    def _listen(self, fd: int) -> None:
        while True:
            try:
                ready, _, _ = select.select([fd], [], [], IDLE_EXIT)
            except (OSError, ValueError):
                return
            if self.stop:
                return
            if ready:
                with contextlib.suppress(BlockingIOError, InterruptedError):
                    while os.read(fd, 4096):
                        pass
                self.wake_all()
            elif self._idle():
                return

    def _poll(self) -> None:
        db = urllib.parse.quote(os.path.abspath(os.path.join(self.store_path, "cache.db")))
        try:
            con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5, check_same_thread=False)
        except sqlite3.Error:
            return
        pause = threading.Event()
        try:
            seen = _look(con)
            busy_at = time.monotonic()
            while not self.stop:
                pause.wait(POLL)
                now = _look(con)
                if now != seen:
                    seen = now
                    self.wake_all()
                with self.lock:
                    busy = bool(self.subscriptions)
                if busy:
                    busy_at = time.monotonic()
                elif time.monotonic() - busy_at > IDLE_EXIT and self._idle():
                    return
        finally:
            con.close()

    def _close(self) -> None:
        with self.lock:
            self.closed = True
        if self.fd is not None:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = None
        if self.fifo is not None:
            with contextlib.suppress(OSError):
                os.unlink(self.fifo)
        self.wake_all()  # a wait still armed looks in the store at once


def _look(con: sqlite3.Connection) -> object:
    """What changes when an event is sent: the database's version for this connection, then the event counter."""
    try:
        version = con.execute("PRAGMA data_version").fetchone()[0]
        rows = con.execute(_EVENTS_SEQ, ("q\x1fevents",)).fetchall()
    except sqlite3.Error:
        return None
    return (version, rows[0][0] if rows else 0)


def subscribe(store_path: str) -> Subscription:
    """Listen for rings on a store (its doorbell made or remade as needed)."""
    with STATE.doorbells_lock:
        bell = STATE.doorbells.get(store_path)
        if bell is not None:
            with bell.lock:
                if not bell.closed and bell.pid == os.getpid():
                    sub = Subscription(bell)
                    bell.subscriptions.add(sub)
                    return sub
        bell = STATE.doorbells[store_path] = Doorbell(store_path)
        sub = Subscription(bell)
        with bell.lock:
            bell.subscriptions.add(sub)
        return sub


def ring(store_path: str) -> int:
    """Wake the waits of every other process listening on this store; how many pipes were written.

    Pipes whose reader is gone (a killed process) are removed.
    """
    folder = os.path.join(store_path, WAKE_DIR)
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return 0
    with STATE.doorbells_lock:
        bell = STATE.doorbells.get(store_path)
        mine = bell.fifo if bell is not None else None
    rung = 0
    for entry in entries:
        if entry.path == mine:
            continue  # waits of this process are woken by ``send`` itself
        rung += _ring_one(entry)
    return rung


def _ring_one(entry: os.DirEntry[str]) -> int:
    try:
        if not stat.S_ISFIFO(entry.stat(follow_symlinks=False).st_mode):
            return 0  # only pipes are written to: never a file someone left here
        fd = os.open(entry.path, os.O_WRONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0))
    except OSError as exc:
        if exc.errno == errno.ENXIO and not _alive(entry.name):
            with contextlib.suppress(OSError):
                os.unlink(entry.path)  # its reader died without removing it
        return 0
    try:
        os.write(fd, b"\0")
    except BlockingIOError:
        pass  # the pipe is full of rings not read yet: it will wake anyway
    except OSError:
        return 0
    finally:
        os.close(fd)
    return 1


def _alive(name: str) -> bool:
    """Whether the process named by a pipe (``PID-token``) still exists."""
    try:
        pid = int(name.split("-", 1)[0])
    except ValueError:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def close_all() -> None:
    """Close every doorbell of this process (tests; ``STATE.reset``): their threads end, pipes are removed."""
    with STATE.doorbells_lock:
        bells = list(STATE.doorbells.values())
        STATE.doorbells.clear()
    for bell in bells:
        with bell.lock:
            bell.subscriptions.clear()
            bell.stop = True
        if bell.fd is not None and bell.pid == os.getpid():
            with contextlib.suppress(OSError):
                os.write(bell.fd, b"\0")  # wakes its thread, which stops


STATE.close_hooks.append(close_all)
