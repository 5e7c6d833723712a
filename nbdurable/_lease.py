"""Who owns a run: process identity, taking and keeping a run's lease, and the heartbeat.

A lease names its owner by host, pid and the process's start. On Linux the start is read
in clock ticks since boot (``/proc/<pid>/stat`` field 22) together with the boot id: both
are fixed for the life of a process whatever the wall clock does, so a clock step (NTP, a
suspended laptop) can never make a live owner look like another process. Elsewhere the
start time psutil reports is used, compared with a tolerance.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING

from nbdurable import _records
from nbdurable._process import STATE
from nbdurable._store import Store
from nbdurable._types import MISSING, RunStatus
from nbdurable.errors import RunLockedError

log = logging.getLogger("nbdurable")

LEASE_SECONDS = 30.0
"""A heartbeat older than this means an owner on another host is gone."""
HOST = socket.gethostname()

if TYPE_CHECKING:
    from nbdurable._records import Owner, RunRecord


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            return f.read()
    except OSError:
        return None


BOOT: str | None = (_read("/proc/sys/kernel/random/boot_id") or "").strip() or None
"""This machine's boot id (Linux), so a pid and tick count from an earlier boot never match."""


def start_ticks(pid: int) -> int | None:
    """A process's start in clock ticks since boot, or None (no such live process, or no ``/proc``).

    A zombie counts as gone: it executes nothing any more.
    """
    text = _read(f"/proc/{pid}/stat")
    if text is None:
        return None
    # The command name (field 2) may hold spaces and parentheses: fields are counted after the last ')'.
    fields = text[text.rfind(")") + 2 :].split()
    if len(fields) < 20 or fields[0] in ("Z", "X"):
        return None
    try:
        return int(fields[19])
    except ValueError:
        return None


def start_time(pid: int) -> float | None:
    """A process's start as psutil reports it (derived from the wall clock), or None if it is gone."""
    import psutil

    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return None
        return float(proc.create_time())
    except (psutil.Error, OSError):
        return None


_lock = threading.Lock()


def new_owner() -> Owner:
    """An owner identity for one execution of a run in this process."""
    with _lock:
        me = STATE.owner
        if me is None or me.pid != os.getpid():
            pid = os.getpid()
            ticks = start_ticks(pid)
            started = 0.0 if ticks is not None else start_time(pid) or 0.0
            me = STATE.owner = _records.Owner(
                host=HOST, pid=pid, started=started, token="", ticks=ticks, boot=BOOT if ticks else None
            )
        token = uuid.uuid4().hex
        STATE.active_tokens.add(token)
        return me.model_copy(update={"token": token})


def retire_owner(owner: Owner) -> None:
    """Forget an owner token of this process (its execution ended)."""
    with _lock:
        STATE.active_tokens.discard(owner.token)


def owner_alive(owner: Owner, heartbeat_at: float | None, now: float) -> bool:
    """Whether the owner of a lease still lives.

    Same host: the pid must exist with the same start (so pid reuse after ``kill -9`` is
    detected); in this very process, the execution's token must still be active. Other hosts:
    the heartbeat must be fresher than the lease.
    """
    if owner.host != HOST:
        return heartbeat_at is not None and now - heartbeat_at < LEASE_SECONDS
    if owner.pid == os.getpid():
        return owner.token in STATE.active_tokens
    if owner.ticks is not None:
        if owner.boot is not None and BOOT is not None and owner.boot != BOOT:
            return False  # written before this machine last booted
        ticks = start_ticks(owner.pid)
        if ticks is not None or os.path.isdir("/proc/self"):
            return ticks == owner.ticks
    started = start_time(owner.pid)
    return started is not None and abs(started - owner.started) < 0.05


def effective_status(rec: RunRecord, now: float) -> RunStatus:
    """The status a reader should show: an active run whose owner died is INTERRUPTED."""
    if rec.status.active and (rec.owner is None or not owner_alive(rec.owner, rec.heartbeat_at, now)):
        return RunStatus.INTERRUPTED
    return rec.status


class Lease:
    """One execution's hold on a run record: taken once, written only while still held.

    Args:
        store: the store.
        key: the run record's key.
        describe: the run as messages name it (``run 'r1' of 'etl'``).
    """

    def __init__(self, store: Store, key: str, describe: str) -> None:
        self.store = store
        self.key = key
        self.describe = describe
        self.owner = new_owner()
        self.lost = False
        """Another process took the run over (this one stalled past its lease): stop, write nothing."""

    def take(self, now: float, build: Callable[[RunRecord | None, bool], RunRecord]) -> None:
        """Take the run in one transaction, or raise ``RunLockedError`` while a live owner holds it.

        ``build(current, absent)`` gets the stored record (None if absent or unreadable) and
        returns the record to write; this lease's owner is written into it.
        """

        def change(got: object) -> tuple[RunRecord, bytes]:
            cur = got[0] if isinstance(got, tuple) else None
            owner = cur.owner if cur is not None and cur.status.active else None
            if owner is not None and owner_alive(owner, cur.heartbeat_at if cur else None, now):
                msg = (
                    f"{self.describe} is being executed by another process (host {owner.host}, pid "
                    f"{owner.pid}). Fix: wait for it to finish and run again (completed steps will "
                    "replay), or stop that process."
                )
                raise RunLockedError(msg)
            rec = build(cur, got is MISSING)
            return rec.model_copy(update={"owner": self.owner, "heartbeat_at": now}), b""

        try:
            self.store.update_run(self.key, change)
        except BaseException:
            retire_owner(self.owner)
            raise

    def write(self, record: RunRecord, payload: bytes = b"") -> bool:
        """Write the run record if this lease still holds it; False (and ``lost``) otherwise.

        A process that stalled past its lease (another host's view) may find the run taken
        over: then nothing is written, and the run stops before its next step.
        """

        def change(got: object) -> tuple[RunRecord, bytes] | None:
            cur = got[0] if isinstance(got, tuple) else None
            if cur is not None and (cur.owner is None or cur.owner.token != self.owner.token):
                self.lost = True
                return None
            return record, payload

        self.store.update_run(self.key, change)
        return not self.lost

    def release(self) -> None:
        """Forget this lease's token (the execution ended)."""
        retire_owner(self.owner)


class Heartbeat:
    """One daemon thread for the process: calls each registered ``beat`` every ``PERIOD`` seconds."""

    PERIOD = 0.25
    REFRESH = 5.0
    """Seconds between lease refreshes when nothing else changed."""

    def __init__(self) -> None:
        self._active: set[Callable[[], None]] = set()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def add(self, beat: Callable[[], None]) -> None:
        """Start calling ``beat`` (it must never block for long)."""
        with self._lock:
            self._active.add(beat)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._loop, name="nbdurable-heartbeat", daemon=True)
                self._thread.start()

    def remove(self, beat: Callable[[], None]) -> None:
        """Stop calling ``beat``."""
        with self._lock:
            self._active.discard(beat)

    def _loop(self) -> None:
        wake = threading.Event()
        while True:
            wake.wait(self.PERIOD)
            with self._lock:
                active = list(self._active)
            for beat in active:
                try:
                    beat()
                except Exception:
                    log.debug("heartbeat failed", exc_info=True)


def heartbeat() -> Heartbeat:
    """The process's heartbeat (made on first use)."""
    with _lock:
        if STATE.heartbeat is None:
            STATE.heartbeat = Heartbeat()
        return STATE.heartbeat
