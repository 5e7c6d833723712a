r"""The store: the only module that imports diskcache.

One diskcache ``Cache`` per store path per process. Values are ``header + b"\\n" + payload``
where the header is a pydantic record (JSON, ``extra="forbid"``, schema version ``v``) and
the payload is the raw serialized output. Eviction is off: durable state is never culled.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import socket
import sqlite3
import threading
import uuid
import warnings
from collections.abc import Callable, Iterator
from typing import Any, Literal, TypeVar

import diskcache
import pydantic
from diskcache.core import MODE_RAW

from nbdurable._types import RunStatus
from nbdurable.errors import StoreError

SCHEMA_VERSION = 1
LEASE_SECONDS = 30.0
SEP = "\x1f"


class _Missing:
    def __repr__(self) -> str:
        return "MISSING"


class _Corrupt:
    def __repr__(self) -> str:
        return "CORRUPT"


MISSING: Any = _Missing()
"""No record under the key."""
CORRUPT: Any = _Corrupt()
"""A record exists but cannot be read (a warning was emitted)."""


class _Record(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")
    v: int = SCHEMA_VERSION


class Owner(_Record):
    """The process executing a run: host, pid and process start time identify it."""

    host: str
    pid: int
    started: float
    token: str


class ErrorRecord(_Record):
    """An error stored as data."""

    name: str
    message: str
    stack: str = ""


class StepRecord(_Record):
    """One step's stored state."""

    status: Literal["COMPLETED", "FAILED", "SLEEPING", "WAITING"]
    kind: str = "run"
    attempts: int = 1
    started_at: float
    ended_at: float | None = None
    duration: float = 0.0
    serializer: str = "json"
    fingerprint: str | None = None
    error: ErrorRecord | None = None
    wake_at: float | None = None
    meta: dict[str, Any] | None = None


class EventRecord(_Record):
    """An event as stored (``received_at``: wall time ``send`` stored it, for sent events)."""

    name: str
    data: dict[str, Any]
    id: str
    ts: int
    received_at: float | None = None


class RunRecord(_Record):
    """One run's stored state."""

    app: str
    function_id: str
    run_id: str
    status: RunStatus
    event: EventRecord
    created_at: float
    updated_at: float
    started_at: float | None = None
    ended_at: float | None = None
    executions: int = 0
    owner: Owner | None = None
    heartbeat_at: float | None = None
    steps: list[str] = []
    current_step: str | None = None
    current_since: float | None = None
    error: ErrorRecord | None = None
    failed_step: str | None = None
    output_preview: str | None = None
    has_output: bool = False
    serializer: str = "json"


R = TypeVar("R", bound=_Record)

# --- process identity -------------------------------------------------------------------

HOST = socket.gethostname()
_active_tokens: set[str] = set()
_me: Owner | None = None


def _process_start(pid: int) -> float | None:
    import psutil

    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return None
        return float(proc.create_time())
    except (psutil.Error, OSError):
        return None


def new_owner() -> Owner:
    """An owner identity for one execution of a run in this process."""
    global _me  # noqa: PLW0603 - per-process identity, computed once
    if _me is None or _me.pid != os.getpid():
        started = _process_start(os.getpid()) or 0.0
        _me = Owner(host=HOST, pid=os.getpid(), started=started, token="")
    token = uuid.uuid4().hex
    _active_tokens.add(token)
    return _me.model_copy(update={"token": token})


def retire_owner(owner: Owner) -> None:
    """Forget an owner token of this process (its execution ended)."""
    _active_tokens.discard(owner.token)


def owner_alive(owner: Owner, heartbeat_at: float | None, now: float) -> bool:
    """Whether the owner of a lease still lives.

    Same host: the pid must exist with the same start time (so pid reuse after ``kill -9`` is
    detected); in this very process, the execution's token must still be active. Other hosts:
    the heartbeat must be fresher than the lease.
    """
    if owner.host != HOST:
        return heartbeat_at is not None and now - heartbeat_at < LEASE_SECONDS
    if owner.pid == os.getpid():
        return owner.token in _active_tokens
    started = _process_start(owner.pid)
    return started is not None and abs(started - owner.started) < 0.05


def effective_status(rec: RunRecord, now: float) -> RunStatus:
    """The status a reader should show: an active run whose owner died is INTERRUPTED."""
    if rec.status.active and (rec.owner is None or not owner_alive(rec.owner, rec.heartbeat_at, now)):
        return RunStatus.INTERRUPTED
    return rec.status


# --- keys ---------------------------------------------------------------------------------


def run_key(app: str, function_id: str, run_id: str) -> str:
    """Key of a run record."""
    return f"r{SEP}{app}{SEP}{function_id}{SEP}{run_id}"


def step_prefix(app: str, function_id: str, run_id: str) -> str:
    """Prefix of every step record of a run."""
    return f"s{SEP}{app}{SEP}{function_id}{SEP}{run_id}{SEP}"


def event_key(app: str, seq: int, event_id: str) -> str:
    """Key of a stored event, sorted by its store-wide sequence number (the order sent)."""
    return f"e{SEP}{app}{SEP}{seq:016d}{SEP}{event_id}"


SEQ_KEY = f"q{SEP}events"


_STORE_ERRORS = (OSError, sqlite3.Error, diskcache.Timeout)
_encode_header = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode

# --- the store ----------------------------------------------------------------------------

_open_stores: dict[str, Store] = {}
_open_lock = threading.Lock()


class Store:
    """Durable records over one diskcache directory."""

    def __init__(self, path: str) -> None:
        self.path = path
        with self._guard("open"):
            if os.path.exists(path) and not os.path.isdir(path):
                raise NotADirectoryError(errno.ENOTDIR, "is a file, not a directory", path)
            self.cache = diskcache.Cache(
                path,
                timeout=30,
                eviction_policy="none",
                cull_limit=0,
                statistics=0,
                tag_index=0,
                size_limit=2**62,
            )

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> Store:
        """The process-wide store for ``path`` (opened once)."""
        full = os.path.abspath(os.fspath(path))
        with _open_lock:
            store = _open_stores.get(full)
            if store is None:
                store = _open_stores[full] = cls(full)
            return store

    @classmethod
    def forget(cls, path: str | os.PathLike[str]) -> None:
        """Close and drop the process-wide store for ``path`` (tests, reopening)."""
        full = os.path.abspath(os.fspath(path))
        with _open_lock:
            store = _open_stores.pop(full, None)
        if store is not None:
            store.cache.close()

    @contextlib.contextmanager
    def _guard(self, action: str) -> Iterator[None]:
        try:
            yield
        except StoreError:
            raise
        except _STORE_ERRORS as exc:
            raise StoreError(self._explain(action, exc)) from exc

    def _explain(self, action: str, exc: BaseException) -> str:
        text = str(exc) or type(exc).__name__
        low = text.lower()
        if "full" in low or getattr(exc, "errno", None) == errno.ENOSPC:
            fix = "free disk space on that volume, or point the store elsewhere"
        elif "readonly" in low or "read-only" in low or isinstance(exc, PermissionError):
            fix = "make the directory writable, or choose another path"
        elif not _writable(self.path):  # sqlite says only "unable to open database file"
            text += " (the directory is read-only)"
            fix = "make the directory writable, or choose another path"
        elif isinstance(exc, (NotADirectoryError, FileExistsError)):
            fix = "remove that file or choose another path"
        elif isinstance(exc, diskcache.Timeout):
            fix = "another process holds the store busy; try again"
        else:
            fix = "check the path, or choose another one"
        return (
            f"cannot {action} the nbdurable store at {self.path!r}: {text}. Fix: {fix} "
            "(Client(store=...) or the NBDURABLE_STORE environment variable). Nothing stored was lost."
        )

    # -- raw records ----------------------------------------------------------------------

    def _decode(self, key: str, raw: Any, model: type[R]) -> tuple[R, bytes] | Any:
        if raw is None:
            return MISSING
        try:
            cut = raw.index(b"\n")
            record = model.model_validate_json(raw[:cut])
        except (ValueError, TypeError, AttributeError, pydantic.ValidationError) as exc:
            self._check_future(key, raw)
            warnings.warn(
                f"nbdurable: the stored record {_pretty(key)} in {self.path!r} cannot be read "
                f"({type(exc).__name__}); it is treated as absent and will be written again.",
                RuntimeWarning,
                stacklevel=4,
            )
            return CORRUPT
        if record.v > SCHEMA_VERSION:  # same fields today, other meaning maybe: never guess
            self._check_future(key, raw)
        return record, raw[cut + 1 :]

    def _check_future(self, key: str, raw: Any) -> None:
        import json

        try:
            cut = raw.index(b"\n")
            version = json.loads(raw[:cut]).get("v")
        except Exception:  # noqa: BLE001 - not even JSON: plainly corrupt
            return
        if isinstance(version, int) and version > SCHEMA_VERSION:
            msg = (
                f"the record {_pretty(key)} in {self.path!r} was written by a newer nbdurable "
                f"(schema v{version}; this one reads v{SCHEMA_VERSION}). Fix: upgrade nbdurable "
                "(pip install -U nbdurable). Nothing was changed."
            )
            raise StoreError(msg)

    def get(self, key: str, model: type[R]) -> tuple[R, bytes] | Any:
        """The record and payload under ``key``, ``MISSING`` or ``CORRUPT``."""
        try:
            raw = self.cache.get(key)
        except _STORE_ERRORS as exc:
            raise StoreError(self._explain("read", exc)) from exc
        return self._decode(key, raw, model)

    def put(self, key: str, record: _Record, payload: bytes = b"") -> None:
        """Write a record (durable once this returns)."""
        self._set(key, record.model_dump_json().encode() + b"\n" + payload)

    def put_completed_step(
        self,
        key: str,
        *,
        kind: str,
        attempts: int,
        started_at: float,
        ended_at: float,
        serializer: str,
        fingerprint: str | None,
        payload: bytes,
    ) -> None:
        """Write a COMPLETED step record: the write every first execution of a step makes.

        The header is encoded straight from a dict (no model built) because this is the hot
        path; every read validates it as a ``StepRecord``, and a test keeps the two equal.
        """
        header = {
            "v": SCHEMA_VERSION,
            "status": "COMPLETED",
            "kind": kind,
            "attempts": attempts,
            "started_at": started_at,
            "ended_at": ended_at,
            "duration": ended_at - started_at,
            "serializer": serializer,
            "fingerprint": fingerprint,
        }
        self._set(key, _encode_header(header).encode() + b"\n" + payload)

    def _set(self, key: str, data: bytes) -> None:
        try:
            self.cache.set(key, data)
        except _STORE_ERRORS as exc:
            raise StoreError(self._explain("write", exc)) from exc

    def delete(self, key: str) -> bool:
        """Delete one record."""
        with self._guard("write"):
            return bool(self.cache.delete(key))

    def _range(self, prefix: str) -> list[tuple[str, int, Any]]:
        # One indexed range query over diskcache's table, instead of a get per key: replaying
        # a run reads all its step records at once. Rows are (key, storage mode, inline value).
        sql = "SELECT key, mode, value FROM Cache WHERE key >= ? AND key < ? AND raw = 1 ORDER BY key"
        with self._guard("read"):
            return list(self.cache._sql(sql, (prefix, prefix + "\U0010ffff")).fetchall())

    def keys(self, prefix: str) -> list[str]:
        """Every key that starts with ``prefix``, in key order."""
        return [row[0] for row in self._range(prefix)]

    def scan(self, prefix: str) -> dict[str, bytes | None]:
        """Every record under ``prefix``: its raw value, or None where diskcache keeps it in a file."""
        # A raw value that is not bytes (a str or number written by other code) is read back via
        # ``get``, which reports it as corrupt instead of failing here.
        return {
            key: bytes(value) if mode == MODE_RAW and isinstance(value, bytes) else None
            for key, mode, value in self._range(prefix)
        }

    def decode_step(self, key: str, raw: bytes | None) -> tuple[StepRecord, bytes] | Any:
        """A step record from a raw value given by ``scan`` (read from its file when None)."""
        if raw is None:
            return self.get_step(key)
        return self._decode(key, raw, StepRecord)

    # -- events -----------------------------------------------------------------------------

    def last_seq(self) -> int:
        """The sequence number of the latest event sent (0 before any)."""
        with self._guard("read"):
            return int(self.cache.get(SEQ_KEY, default=0))

    def append_event(self, app: str, record: EventRecord) -> int:
        """Store a sent event under the next sequence number, and return that number.

        Both happen in one transaction, so sequence numbers become visible in order: a reader
        that saw event N+1 can never find event N appearing later (other processes' waits
        read "every event after the last one I saw").
        """
        with self._guard("write"), self.cache.transact(retry=True):
            seq = int(self.cache.incr(SEQ_KEY, 1, default=0))
            self.put(event_key(app, seq, record.id), record)
        return seq

    def events_after(self, app: str, seq: int) -> list[tuple[int, EventRecord]]:
        """Every readable event of ``app`` sent after sequence number ``seq``, in order."""
        prefix = f"e{SEP}{app}{SEP}"
        start = event_key(app, seq + 1, "")
        sql = "SELECT key, mode, value FROM Cache WHERE key >= ? AND key < ? AND raw = 1 ORDER BY key"
        with self._guard("read"):
            rows = list(self.cache._sql(sql, (start, prefix + "\U0010ffff")).fetchall())
        out = []
        for key, mode, value in rows:
            raw = bytes(value) if mode == MODE_RAW else self.cache.get(key)
            got = self._decode(key, raw, EventRecord)
            if got is not MISSING and got is not CORRUPT:
                out.append((int(key.split(SEP)[2]), got[0]))
        return out

    def delete_prefix(self, prefix: str) -> int:
        """Delete every record whose key starts with ``prefix``."""
        count = 0
        for key in self.keys(prefix):
            count += self.delete(key)
        return count

    # -- runs -------------------------------------------------------------------------------

    def get_run(self, key: str) -> tuple[RunRecord, bytes] | Any:
        """A run record."""
        return self.get(key, RunRecord)

    def get_step(self, key: str) -> tuple[StepRecord, bytes] | Any:
        """A step record."""
        return self.get(key, StepRecord)

    def update_run(self, key: str, change: Callable[[Any], tuple[RunRecord, bytes] | None]) -> None:
        """Read-modify-write a run record in one transaction (the lease primitive).

        ``change`` gets the current ``(record, payload)``, ``MISSING`` or ``CORRUPT`` and
        returns the new record and payload, or ``None`` to leave it as is. It may raise to
        abort, leaving the record untouched.
        """
        # diskcache deletes the file of a value it replaces when the inner write ends, before an
        # enclosing transaction commits: a process killed in between would leave the row naming a
        # deleted file (a lost run record). Defer those deletions until after the commit.
        deferred: list[str] = []
        disk = self.cache._disk
        with self._guard("write"):
            with self.cache.transact(retry=True):
                new = change(self.get_run(key))
                if new is not None:
                    disk.remove = _deferring_remove(disk, deferred)
                    try:
                        self.put(key, new[0], new[1])
                    finally:
                        del disk.remove
            for name in deferred:
                disk.remove(name)

    def runs(self, app: str, function_id: str | None = None) -> list[RunRecord]:
        """Every readable run record of an app (or one function)."""
        prefix = f"r{SEP}{app}{SEP}" + (f"{function_id}{SEP}" if function_id is not None else "")
        out = []
        for key in self.keys(prefix):
            got = self.get_run(key)
            if got is not MISSING and got is not CORRUPT:
                out.append(got[0])
        return out


def _deferring_remove(disk: Any, deferred: list[str]) -> Callable[[str], None]:
    """``disk.remove`` that, in this thread, only notes the file (others' calls pass through)."""
    me = threading.get_ident()

    def remove(name: str) -> None:
        if threading.get_ident() == me:
            deferred.append(name)
        else:
            type(disk).remove(disk, name)

    return remove


def _writable(path: str) -> bool:
    """Whether ``path``, or the nearest existing directory above it, can be written."""
    while not os.path.exists(path) and os.path.dirname(path) != path:
        path = os.path.dirname(path)
    return os.access(path, os.W_OK)


def _pretty(key: str) -> str:
    return "/".join(key.split(SEP)[1:])
