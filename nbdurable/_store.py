r"""The store: records of runs, steps and events in one diskcache directory per path.

One diskcache ``Cache`` per store path per process, opened through ``_diskcompat`` (the
only module that knows diskcache's internals). Values are ``header + b"\\n" + payload``
where the header is a record of ``_records`` (JSON) and the payload the serialized output;
data values live in files of their own beside the database (``_datafiles``, ``store.data``).
Eviction is off: durable state is never culled.

The store folder is private to its user (0700, files 0600, whatever the umask), and the
store notices when its folder is removed or replaced under an open run: a write then fails
with ``StoreError`` instead of going into a deleted file.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import sqlite3
import stat
import warnings
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import diskcache

from nbdurable import _datafiles, _diskcompat, _diskindex, _index, _records, _trust
from nbdurable._diskcompat import Unreadable
from nbdurable._process import STATE
from nbdurable._types import CORRUPT, MISSING, Absent
from nbdurable.errors import StoreError

if TYPE_CHECKING:
    from nbdurable._records import DataRef, R, Record, RunRecord, StepRecord

SEP = _diskcompat.SEP
DB_FILE = "cache.db"
DATA_DIR = _datafiles.DATA_DIR


# --- keys ---------------------------------------------------------------------------------


def run_key(app: str, function_id: str, run_id: str) -> str:
    """Key of a run record."""
    return f"r{SEP}{app}{SEP}{function_id}{SEP}{run_id}"


def step_prefix(app: str, function_id: str, run_id: str) -> str:
    """Prefix of every step record of a run."""
    return f"s{SEP}{app}{SEP}{function_id}{SEP}{run_id}{SEP}"


_STORE_ERRORS = (OSError, sqlite3.Error, diskcache.Timeout)
_PLAIN_WORDS = frozenset({"run", "invoke", "send", "wait", "sleep", "json", "pickle", "data"})
"""Kinds and serializers written into the hot path's header as they are (they need no JSON escaping)."""


def _plain_id(text: str | None) -> bool:
    """None, or a fingerprint of letters and digits only (written into a header without escaping)."""
    return text is None or (text.isascii() and text.isalnum())


_encode_header = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode

# --- the store ----------------------------------------------------------------------------


def _warn_once(path: str, what: str, message: str) -> None:
    if (path, what) not in STATE.warned:
        STATE.warned.add((path, what))
        warnings.warn(message, RuntimeWarning, stacklevel=4)


def _mine(st: os.stat_result) -> bool:
    getuid = getattr(os, "getuid", None)
    return getuid is None or st.st_uid == getuid()


class Store:
    """Durable records over one diskcache directory."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.db_path = os.path.join(path, DB_FILE)
        self.created = False
        self.read_only = False
        """Nothing may be written (a read-only folder or volume): runs list, show and replay; executing fails."""
        with self.guard("open"):
            if os.path.exists(path) and not os.path.isdir(path):
                raise NotADirectoryError(errno.ENOTDIR, "is a file, not a directory", path)
            self._prepare()
            self.read_only = os.path.isfile(self.db_path) and not _writable_store(path)
            self.cache = _diskcompat.open_read_only(path) if self.read_only else _diskcompat.open_cache(path)
            st = os.stat(self.db_path)
            self._identity = (st.st_dev, st.st_ino)
            self.indexed = _index.prepare(self)
            """The run index is there (see ``_index``): listings read it instead of every run."""
        if self.created:
            _trust.trust_store(path)
        self.trusted = _trust.is_trusted(path)
        self.data = _datafiles.DataFiles(self)
        """The store's data files (values written in their own formats)."""

    def _prepare(self) -> None:
        """Create the folder and database private to the user, or tighten an existing store of theirs."""
        if not os.path.isdir(self.path):
            try:
                os.makedirs(os.path.dirname(self.path), exist_ok=True)
                with contextlib.suppress(FileExistsError):
                    os.mkdir(self.path, _diskcompat.DIR_MODE)
            except OSError as exc:
                why = f"{exc.strerror}: the directory could not be created"
                raise type(exc)(exc.errno, why, exc.filename) from None
        st = os.stat(self.path)
        if not _mine(st) or not os.access(self.path, os.W_OK):
            if st.st_mode & 0o077:
                _warn_once(
                    self.path,
                    "owner",
                    f"nbdurable: the store {self.path!r} belongs to another user (uid {st.st_uid}) and other "
                    "users can read it; it is used as it is. Fix: use a store of your own (Client(store=...)).",
                )
            return
        loose = st.st_mode & 0o077
        with contextlib.suppress(OSError):
            os.chmod(self.path, _diskcompat.DIR_MODE)
        try:
            fd = os.open(self.db_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, _diskcompat.FILE_MODE)
        except OSError:  # it exists (an existing store)
            pass
        else:
            os.close(fd)
            self.created = True
        if loose:  # made by an earlier version (or under a loose umask): tighten every file once
            _tighten(self.path)

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> Store:
        """The process-wide store for ``path`` (opened once)."""
        full = os.path.abspath(os.fspath(path))
        with STATE.stores_lock:
            store = STATE.open_stores.get(full)
            if store is None:
                store = STATE.open_stores[full] = cls(full)
            return store

    @classmethod
    def forget(cls, path: str | os.PathLike[str]) -> None:
        """Close and drop the process-wide store for ``path`` (tests, reopening)."""
        full = os.path.abspath(os.fspath(path))
        with STATE.stores_lock:
            store = STATE.open_stores.pop(full, None)
        if store is not None:
            store.cache.close()

    @contextlib.contextmanager
    def guard(self, action: str) -> Iterator[None]:
        """Turn the database's and file system's errors inside the block into a ``StoreError`` saying ``action``."""
        try:
            yield
        except StoreError:
            raise
        except _STORE_ERRORS as exc:
            raise StoreError(self.explain(action, exc)) from exc

    def explain(self, action: str, exc: BaseException) -> str:
        """What went wrong doing ``action`` on the store, and the fix: the text of a ``StoreError``."""
        text = str(exc) or type(exc).__name__
        low = text.lower()
        safe = " Nothing stored before was lost." if action == "write" else ""
        if "full" in low or getattr(exc, "errno", None) == errno.ENOSPC:
            fix = "free disk space on that volume, or point the store elsewhere"
        elif "readonly" in low or "read-only" in low or isinstance(exc, PermissionError):
            text += " (the directory is read-only)" if "read-only" not in text else ""
            fix = "make the directory writable, or choose another path"
        elif "not a database" in low or "malformed" in low:
            fix = (
                f"its database file {DB_FILE} is damaged and cannot be read; move the folder aside "
                "(its runs cannot be recovered by nbdurable) and run again"
            )
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
            f"(Client(store=...) or the NBDURABLE_STORE environment variable).{safe}"
        )

    def check_writable(self) -> None:
        """Fail with ``StoreError`` when nothing may be written: reading works, executing does not."""
        if self.read_only:
            msg = (
                f"cannot write the nbdurable store at {self.path!r}: it is read-only (a read-only folder or volume). "
                "Its runs can be listed, shown and replayed; executing a step needs write access. Fix: make the "
                "directory writable, or choose another path (a copy of this folder keeps its runs: Client(store=...))."
            )
            raise StoreError(msg)

    @contextlib.contextmanager
    def write_transaction(self) -> Iterator[None]:
        """One transaction for every write inside the block (files of replaced values removed after it commits)."""
        self.check_writable()
        self.check_identity()
        with self.guard("write"), _diskcompat.deferred_removes(self.cache), self.cache.transact(retry=True):
            yield

    def check_identity(self) -> None:
        """Fail with ``StoreError`` if the store folder was removed or replaced since it was opened."""
        try:
            st = os.stat(self.db_path)
        except OSError:
            what = "removed"
        else:
            if (st.st_dev, st.st_ino) == self._identity:
                return
            what = "replaced by another"
        msg = (
            f"the nbdurable store at {self.path!r} was {what} while this process was using it; nothing "
            "more is written to it. Fix: restore the folder (or choose another store) and run again: "
            "steps stored in the current folder replay."
        )
        raise StoreError(msg)

    # -- raw records ----------------------------------------------------------------------

    def decode(self, key: str, raw: Any, model: type[R]) -> tuple[R, bytes] | Absent:
        """The record and payload of a stored value (as ``read`` or ``rows`` give it), ``MISSING`` or ``CORRUPT``.

        An unreadable record warns once here and reads as ``CORRUPT``; one written by a newer
        nbdurable raises ``StoreError``.
        """
        if raw is None:
            return MISSING
        if isinstance(raw, Unreadable):
            self.warn_unreadable(key, raw.reason)
            return CORRUPT
        split = isinstance(raw, _diskcompat.Split)
        try:
            cut = len(raw.head) if split else raw.index(b"\n")
            record = model.model_validate_json(raw.head if split else raw[:cut])
        except (ValueError, TypeError, AttributeError) as exc:  # a pydantic ValidationError is a ValueError
            self._check_future(key, raw.head if split else raw)
            self.warn_unreadable(key, type(exc).__name__)
            return CORRUPT
        if record.v > _records.SCHEMA_VERSION:  # same fields today, other meaning maybe: never guess
            self._check_future(key, raw.head if split else raw)
        return record, raw.payload if split else raw[cut + 1 :]

    def warn_unreadable(self, key: str, reason: str) -> None:
        """Say that a stored record cannot be read and is treated as absent."""
        warnings.warn(
            f"nbdurable: the stored record {_pretty(key)} in {self.path!r} cannot be read "
            f"({reason}); it is treated as absent and will be written again.",
            RuntimeWarning,
            stacklevel=5,
        )

    def _check_future(self, key: str, raw: Any) -> None:
        try:
            cut = raw.find(b"\n")
            version = json.loads(raw[:cut] if cut >= 0 else raw).get("v")
        except Exception:  # noqa: BLE001 - not even JSON: plainly corrupt
            return
        if isinstance(version, int) and version > _records.SCHEMA_VERSION:
            msg = (
                f"the record {_pretty(key)} in {self.path!r} was written by a newer nbdurable "
                f"(schema v{version}; this one reads v{_records.SCHEMA_VERSION}). Fix: upgrade nbdurable "
                "(pip install -U nbdurable). Nothing was changed."
            )
            raise StoreError(msg)

    def read(self, key: str) -> Any:
        with self.guard("read"):
            return _diskcompat.read_one(self.cache, key)

    def get(self, key: str, model: type[R]) -> tuple[R, bytes] | Absent:
        """The record and payload under ``key``, ``MISSING`` or ``CORRUPT``."""
        return self.decode(key, self.read(key), model)

    def put(self, key: str, record: Record, payload: bytes = b"") -> None:
        """Write a record (durable once this returns); a run record with its index row, in one transaction."""
        head = record.model_dump_json().encode()
        kind = key[:2]
        if kind == f"r{SEP}" and self.indexed:
            assert isinstance(record, _records.RunRecord)
            with self.write_transaction():
                _diskcompat.write_record(self.cache, key, head, payload, _diskindex.RUN_TAG)
                _index.index_record(self, key, record)
            return
        tag = None
        if kind == f"s{SEP}" and self.indexed:
            tag = _diskindex.step_tag(key, getattr(record, "status", None))
        self._set(key, head, payload, tag)

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
        data: DataRef | None = None,
    ) -> None:
        """Write a COMPLETED step record: the write every first execution of a step makes.

        The header is encoded straight from the values (no model built) because this is the
        hot path, and fields at their default (kind ``run``, one attempt, the json serializer,
        no fingerprint) are left out; the duration is kept to 0.1 µs. Every read validates it
        as a ``StepRecord``, and a test keeps the two equal.
        """
        duration = round(ended_at - started_at, 7)
        if data is None and kind in _PLAIN_WORDS and serializer in _PLAIN_WORDS and _plain_id(fingerprint):
            head = (
                f'{{"v":{_records.SCHEMA_VERSION},"status":"COMPLETED"'
                + ("" if kind == "run" else f',"kind":"{kind}"')
                + ("" if attempts == 1 else f',"attempts":{int(attempts)}')
                + f',"started_at":{float(started_at)!r},"ended_at":{float(ended_at)!r},"duration":{duration!r}'
                + ("" if serializer == "json" else f',"serializer":"{serializer}"')
                + ("" if fingerprint is None else f',"fingerprint":"{fingerprint}"')
                + "}"
            ).encode()
        else:
            header: dict[str, Any] = {"v": _records.SCHEMA_VERSION, "status": "COMPLETED", "kind": kind}
            header.update(attempts=attempts, started_at=started_at, ended_at=ended_at, duration=duration)
            header.update(serializer=serializer, fingerprint=fingerprint)
            if data is not None:
                header["data"] = {
                    "v": _records.SCHEMA_VERSION,
                    "codec": data.codec,
                    "file": data.file,
                    "size": data.size,
                }
            head = _encode_header(header).encode()
        tag = _diskindex.step_tag(key, "COMPLETED") if self.indexed else None
        self._set(key, head, payload, tag, new=True)

    def _set(self, key: str, head: bytes, payload: bytes, tag: int | None = None, *, new: bool = False) -> None:
        self.check_writable()
        self.check_identity()
        try:
            _diskcompat.write_record(self.cache, key, head, payload, tag, new=new)
        except _STORE_ERRORS as exc:
            raise StoreError(self.explain("write", exc)) from exc

    def delete(self, key: str) -> bool:
        """Delete one record (the index follows: see ``_index``)."""
        self.check_writable()
        self.check_identity()
        with self.guard("write"):
            return bool(self.cache.delete(key))

    def rows(self, start: str, prefix: str) -> list[tuple[str, Any]]:
        with self.guard("read"):
            return _diskcompat.range_rows(self.cache, start, prefix)

    def keys(self, prefix: str) -> list[str]:
        """Every key that starts with ``prefix``, in key order."""
        return [row[0] for row in self.rows(prefix, prefix)]

    def scan(self, prefix: str) -> dict[str, bytes | None]:
        """Every record under ``prefix``: its raw value, or None where it must be read on its own."""
        return dict(self.rows(prefix, prefix))

    def value_bytes(self, key: str) -> int:
        """Bytes of the value stored under ``key`` (where it lives in a file, the file's size)."""
        with self.guard("read"):
            return _diskindex.stored_bytes(self.cache, key)

    def decode_step(self, key: str, raw: bytes | None) -> tuple[StepRecord, bytes] | Absent:
        """A step record from a raw value given by ``scan`` (read on its own when None)."""
        if raw is None:
            return self.get_step(key)
        return self.decode(key, raw, _records.StepRecord)

    def delete_prefix(self, prefix: str) -> int:
        """Delete every record whose key starts with ``prefix``."""
        count = 0
        for key in self.keys(prefix):
            count += self.delete(key)
        return count

    # -- runs -------------------------------------------------------------------------------

    def get_run(self, key: str) -> tuple[RunRecord, bytes] | Absent:
        """A run record."""
        return self.get(key, _records.RunRecord)

    def get_step(self, key: str) -> tuple[StepRecord, bytes] | Absent:
        """A step record."""
        return self.get(key, _records.StepRecord)

    def update_run(
        self, key: str, change: Callable[[tuple[RunRecord, bytes] | Absent], tuple[RunRecord, bytes] | None]
    ) -> None:
        """Read-modify-write a run record in one transaction (the lease primitive).

        ``change`` gets the current ``(record, payload)``, ``MISSING`` or ``CORRUPT`` and
        returns the new record and payload, or ``None`` to leave it as is. It may raise to
        abort, leaving the record untouched.
        """
        with self.write_transaction():
            new = change(self.get_run(key))
            if new is not None:
                self.put(key, new[0], new[1])

    # -- disk use ---------------------------------------------------------------------------

    def disk_usage(self) -> dict[str, int]:
        """Bytes on disk: the database (with its journal), values diskcache keeps in files, data files, total."""
        database = sum(_datafiles.file_bytes(self.db_path + suffix) for suffix in ("", "-wal", "-shm"))
        data = _datafiles.folder_bytes(os.path.join(self.path, DATA_DIR), deep=True)
        values = 0
        with os.scandir(self.path) as entries:
            for entry in entries:
                if entry.is_dir(follow_symlinks=False) and entry.name != DATA_DIR:
                    values += _datafiles.folder_bytes(entry.path, deep=True)
        return {"database": database, "value files": values, "data files": data, "total": database + values + data}

    def warn_untrusted(self) -> None:
        """Say once that pickled values of this store are not loaded, and how to allow them."""
        _warn_once(
            self.path,
            "trust",
            f"nbdurable: the store {self.path!r} was not created by you on this machine (or was moved); "
            "pickled values in it are never loaded, so the steps and cell steps that stored them execute "
            f"again. Fix: if you trust its contents, run `python -m nbdurable trust {self.path}`.",
        )


def _tighten(path: str) -> None:
    """Make every folder of a store 0700 and every file 0600 (a store made before they were private)."""
    for root, dirs, files in os.walk(path):
        for name in dirs:
            with contextlib.suppress(OSError):
                os.chmod(os.path.join(root, name), _diskcompat.DIR_MODE)
        for name in files:
            full = os.path.join(root, name)
            with contextlib.suppress(OSError):
                if stat.S_ISREG(os.lstat(full).st_mode):
                    os.chmod(full, _diskcompat.FILE_MODE)


def _writable_store(path: str) -> bool:
    """Whether a store's folder and database can be written (SQLite also writes its journal files beside it)."""
    return os.access(path, os.W_OK) and os.access(os.path.join(path, DB_FILE), os.W_OK)


def _writable(path: str) -> bool:
    """Whether ``path``, or the nearest existing directory above it, can be written."""
    while not os.path.exists(path) and os.path.dirname(path) != path:
        path = os.path.dirname(path)
    return os.access(path, os.W_OK)


def _pretty(key: str) -> str:
    return "/".join(key.split(SEP)[1:])
