"""Who owns a run: process identity that survives wall-clock steps, and whether an owner lives.

A lease names its owner by host, pid and the process's start. On Linux the start is read
in clock ticks since boot (``/proc/<pid>/stat`` field 22) together with the boot id: both
are fixed for the life of a process whatever the wall clock does, so a clock step (NTP, a
suspended laptop) can never make a live owner look like another process. Elsewhere the
start time psutil reports is used, compared with a tolerance.
"""

from __future__ import annotations

import os
import socket
import threading
import uuid

from nbdurable._records import Owner, RunRecord
from nbdurable._types import RunStatus

LEASE_SECONDS = 30.0
"""A heartbeat older than this means an owner on another host is gone."""
HOST = socket.gethostname()


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
_active_tokens: set[str] = set()
_me: Owner | None = None


def new_owner() -> Owner:
    """An owner identity for one execution of a run in this process."""
    global _me  # noqa: PLW0603 - per-process identity, computed once per pid
    with _lock:
        if _me is None or _me.pid != os.getpid():
            pid = os.getpid()
            ticks = start_ticks(pid)
            started = 0.0 if ticks is not None else start_time(pid) or 0.0
            _me = Owner(host=HOST, pid=pid, started=started, token="", ticks=ticks, boot=BOOT if ticks else None)
        token = uuid.uuid4().hex
        _active_tokens.add(token)
        return _me.model_copy(update={"token": token})


def retire_owner(owner: Owner) -> None:
    """Forget an owner token of this process (its execution ended)."""
    with _lock:
        _active_tokens.discard(owner.token)


def owner_alive(owner: Owner, heartbeat_at: float | None, now: float) -> bool:
    """Whether the owner of a lease still lives.

    Same host: the pid must exist with the same start (so pid reuse after ``kill -9`` is
    detected); in this very process, the execution's token must still be active. Other hosts:
    the heartbeat must be fresher than the lease.
    """
    if owner.host != HOST:
        return heartbeat_at is not None and now - heartbeat_at < LEASE_SECONDS
    if owner.pid == os.getpid():
        return owner.token in _active_tokens
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
