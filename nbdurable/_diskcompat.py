"""Everything nbdurable relies on inside diskcache, in one place (tested against the pinned version).

diskcache keeps a value in its SQLite table (small bytes, ``MODE_RAW``) or in a file of its
own (large bytes, ``MODE_BINARY``); values it pickled (``MODE_PICKLE``) or stored as text
are never written by nbdurable. :class:`SafeDisk` is the ``Disk`` every store opens with:

- it never unpickles: a row in pickle or text mode (written by other code, or planted in
  a store folder someone handed over) reads back as :class:`Unreadable`, never as a value;
- it only touches files inside the store directory (a row naming ``../x`` is unreadable);
- the files and folders it creates are private to the user (0600 / 0700, whatever the umask);
- it can defer deleting replaced files until a transaction commits (see ``deferred_removes``).
"""

from __future__ import annotations

import contextlib
import io
import os
import sqlite3
import threading
import time
import urllib.parse
from collections.abc import Iterator
from typing import Any

import diskcache
from diskcache.core import MODE_BINARY, MODE_RAW

FILE_MODE = 0o600
DIR_MODE = 0o700

_RANGE_SQL = "SELECT key, mode, filename, value FROM Cache WHERE key >= ? AND key < ? AND raw = 1 ORDER BY key"
TOP = "\U0010ffff"
"""Above every character a key may hold: ``prefix + TOP`` ends a range of keys."""
SEP = "\x1f"
"""Between the parts of a key: ``r SEP app SEP function SEP run`` (ids never contain it)."""


class Unreadable:
    """A stored value nbdurable refuses or fails to read; ``reason`` says why (for the warning)."""

    __slots__ = ("reason",)

    def __init__(self, reason: str) -> None:
        self.reason = reason

    def __repr__(self) -> str:
        return f"Unreadable({self.reason!r})"


class SafeDisk(diskcache.Disk):  # type: ignore[misc]
    """diskcache's ``Disk`` without pickle, confined to its directory, with private files."""

    removals = threading.local()
    """Per thread: the files whose removal is deferred, and for which disk (see ``deferred_removes``)."""

    def _inside(self, filename: Any) -> str | None:
        """The full path of a value file, or None if ``filename`` points outside the store."""
        if not isinstance(filename, str) or not filename or os.path.isabs(filename):
            return None
        parts = filename.replace("\\", "/").split("/")
        if any(part in ("", ".", "..") for part in parts):
            return None
        return os.path.join(self._directory, filename)

    def fetch(self, mode: int, filename: Any, value: Any, read: bool) -> Any:
        """The stored bytes; an :class:`Unreadable` for anything nbdurable did not write as bytes."""
        if mode == MODE_RAW:
            return bytes(value) if isinstance(value, (bytes, memoryview)) else value
        if mode != MODE_BINARY:
            kind = {3: "text", 4: "pickle"}.get(mode, f"mode {mode}")
            return Unreadable(f"stored in diskcache's {kind} mode, which nbdurable never writes nor loads")
        full = self._inside(filename)
        if full is None:
            return Unreadable(f"its value file {filename!r} lies outside the store")
        try:
            if read:
                return open(full, "rb")
            with open(full, "rb") as reader:
                return reader.read()
        except FileNotFoundError:
            return Unreadable(f"its value file {filename} is missing")
        except OSError as exc:
            return Unreadable(f"its value file {filename} cannot be read ({exc.strerror or exc})")

    def _write(self, full_path: str, iterator: Any, mode: str, encoding: str | None = None) -> int:
        """Write a value file readable by the user alone (diskcache's own retries kept)."""
        if "b" not in mode:  # text values: nbdurable never stores them
            iterator = (chunk.encode(encoding or "utf-8") for chunk in iterator)
        full_dir = os.path.dirname(full_path)
        for count in range(1, 11):
            make_private_dirs(full_dir, self._directory)
            try:
                fd = os.open(full_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), FILE_MODE)
            except OSError:
                if count == 10:
                    raise
                continue
            size = 0
            with open(fd, "wb") as writer:
                if isinstance(iterator, io.BytesIO):  # bytes set whole: one write, not one per line
                    return writer.write(iterator.getbuffer())
                for chunk in iterator:
                    size += len(chunk)
                    writer.write(chunk)
            return size
        return 0  # pragma: no cover - the loop returns or raises

    def store(self, value: Any, read: bool, key: Any = diskcache.core.UNKNOWN) -> Any:
        """As diskcache's, but a str value is stored as bytes (nbdurable writes bytes only)."""
        if isinstance(value, io.StringIO):  # pragma: no cover - never written by nbdurable
            value = value.getvalue().encode()
        return super().store(value, read, key)

    def remove(self, file_path: str) -> None:
        """Delete a value file inside the store (or note it, while removals are deferred here)."""
        if self._inside(file_path) is None:
            return
        deferred: list[str] | None = getattr(SafeDisk.removals, "deferred", None)
        if deferred is not None and getattr(SafeDisk.removals, "disk", None) is self:
            deferred.append(file_path)
            return
        super().remove(file_path)


@contextlib.contextmanager
def deferred_removes(cache: diskcache.Cache) -> Iterator[None]:
    """Delete the files of values replaced inside the block only once the block has ended.

    diskcache deletes the file of a value it replaces when the inner write ends, before an
    enclosing transaction commits: a process killed in between would leave the row naming a
    deleted file. Use it around ``cache.transact()`` so deletions happen after the commit.
    """
    disk: SafeDisk = cache._disk
    local = SafeDisk.removals
    outer = getattr(local, "deferred", None), getattr(local, "disk", None)
    deferred: list[str] = []
    local.deferred, local.disk = deferred, disk
    try:
        yield
    finally:
        local.deferred, local.disk = outer
    for name in deferred:
        disk.remove(name)


def open_cache(path: str) -> diskcache.Cache:
    """The diskcache ``Cache`` of a store: no eviction, no statistics, no tag index, :class:`SafeDisk`."""
    return diskcache.Cache(
        path,
        timeout=30,
        disk=SafeDisk,
        eviction_policy="none",
        cull_limit=0,
        statistics=0,
        tag_index=0,
        size_limit=2**62,
    )


class ReadOnlyCache(diskcache.Cache):  # type: ignore[misc]
    """A store's ``Cache`` opened for reading only (a read-only folder or volume).

    diskcache's own constructor writes its settings as it opens a cache, which a read-only
    database refuses; this one reads them and never writes. Reads (``get``, range queries)
    behave as in a :class:`diskcache.Cache` with :class:`SafeDisk`; a write raises
    ``sqlite3.OperationalError`` (the store checks first and says why).
    """

    def __init__(self, directory: str) -> None:  # diskcache's __init__ writes: not called on purpose
        self._directory = directory
        self._timeout = 30
        self._local = threading.local()
        self._txn_id = None
        settings = dict(self._sql("SELECT key, value FROM Settings").fetchall())
        for key, value in settings.items():
            if not key.startswith(("sqlite_", "disk_")):
                setattr(self, key, value)
        self.statistics = 0
        self.eviction_policy = "none"
        self._disk = SafeDisk(
            directory,
            min_file_size=settings.get("disk_min_file_size", 2**15),
            pickle_protocol=settings.get("disk_pickle_protocol", 5),
        )

    @property
    def _con(self) -> sqlite3.Connection:
        con: sqlite3.Connection | None = getattr(self._local, "con", None)
        if con is None or getattr(self._local, "pid", None) != os.getpid():
            con = self._local.con = _connect_read_only(os.path.join(self._directory, "cache.db"), self._timeout)
            self._local.pid = os.getpid()
        return con


def _connect_read_only(path: str, timeout: float) -> sqlite3.Connection:
    """A read-only connection; ``immutable`` where SQLite cannot even share its lock file (a read-only volume)."""
    uri = "file:" + urllib.parse.quote(os.path.abspath(path))
    con = sqlite3.connect(f"{uri}?mode=ro", uri=True, timeout=timeout, isolation_level=None, check_same_thread=False)
    try:
        con.execute("SELECT count(*) FROM sqlite_master").fetchall()
    except sqlite3.OperationalError:
        con.close()
        con = sqlite3.connect(f"{uri}?immutable=1", uri=True, timeout=timeout, isolation_level=None)
    return con


def open_read_only(path: str) -> diskcache.Cache:
    """The ``Cache`` of a store nothing may be written to (see :class:`ReadOnlyCache`)."""
    return ReadOnlyCache(path)


def range_rows(cache: diskcache.Cache, start: str, prefix: str) -> list[tuple[str, Any]]:
    """``(key, raw value or None)`` of every key from ``start`` up to the end of ``prefix``, in order.

    One indexed range query over diskcache's table instead of a ``get`` per key. The value is
    the inline bytes for small values, None where it lives in a file or in another mode (read
    it with :func:`read_one`, which applies :class:`SafeDisk`'s rules).
    """
    rows = cache._sql(_RANGE_SQL, (start, prefix + TOP)).fetchall()
    return [
        (key, bytes(value) if mode == MODE_RAW and isinstance(value, bytes) else None)
        for key, mode, _filename, value in rows
    ]


class Split:
    """A record read from a file of its own, header and payload apart (nothing sliced or copied).

    ``head`` is the bytes before the first newline; ``payload`` the rest, read straight
    into its own buffer.
    """

    __slots__ = ("head", "payload")

    def __init__(self, head: bytes, payload: bytes | bytearray) -> None:
        self.head = head
        self.payload = payload


_HEAD_READ = 1 << 16


def read_one(cache: diskcache.Cache, key: str) -> Any:
    """The value under ``key``: bytes (a small value), a :class:`Split` (one in a file), None, or :class:`Unreadable`.

    A value in a file is read once, its payload straight into a buffer of its size: a large
    value is not copied again to cut its header off.
    """
    got = cache.get(key, read=True)
    if got is None or isinstance(got, (bytes, Unreadable)) or not hasattr(got, "readinto"):
        return got
    with got:
        try:
            size = os.fstat(got.fileno()).st_size
            first = got.read(min(size, _HEAD_READ))
            cut = first.find(b"\n")
            while cut < 0 and len(first) < size:  # a header longer than the first read
                more = got.read(_HEAD_READ)
                if not more:
                    break
                first += more
                cut = first.find(b"\n")
            if cut < 0:
                return Split(first, b"")  # no newline: the header check says what is wrong
            payload = bytearray(size - cut - 1)
            start = len(first) - cut - 1
            payload[:start] = memoryview(first)[cut + 1 :]
            view = memoryview(payload)
            while start < len(payload):
                n = got.readinto(view[start:])
                if not n:
                    return Unreadable(f"its value file ended after {cut + 1 + start} of {size} bytes")
                start += n
        except OSError as exc:
            return Unreadable(f"its value file cannot be read ({exc.strerror or exc})")
    return Split(first[:cut], payload)


class _Parts(io.RawIOBase):
    """Bytes pieces read as one file, without joining them (what ``Cache.set(..., read=True)`` streams)."""

    def __init__(self, parts: list[bytes | memoryview]) -> None:
        self.parts = [memoryview(p) for p in parts if len(p)]

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes | memoryview:
        if not self.parts:
            return b""
        part = self.parts[0]
        if size < 0 or size >= len(part):
            self.parts.pop(0)
            return part
        self.parts[0] = part[size:]
        return part[:size]


def write_record(
    cache: diskcache.Cache, key: str, head: bytes, payload: bytes, tag: int | None, *, new: bool = False
) -> None:
    """Write ``head + newline + payload`` under ``key``; a large payload streams to its file, never joined in memory."""
    if len(head) + 1 + len(payload) < cache._disk.min_file_size:
        write_value(cache, key, head + b"\n" + payload, tag, new=new)
    else:
        cache.set(key, _Parts([head, b"\n", payload]), read=True, tag=tag)


def make_private_dirs(path: str, top: str) -> None:
    """Create ``path`` (below ``top``) with every new folder readable by the user alone."""
    missing = []
    while not os.path.isdir(path) and os.path.abspath(path) != os.path.abspath(top):
        missing.append(path)
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    for folder in reversed(missing):
        with contextlib.suppress(FileExistsError):
            os.mkdir(folder, DIR_MODE)
        with contextlib.suppress(OSError):
            os.chmod(folder, DIR_MODE)


# --- writing rows -----------------------------------------------------------------------------


def insert_new(cache: diskcache.Cache, key: str, value: bytes, tag: int | None) -> bool:
    """Insert a small value under a key that holds nothing yet, in one transaction; False if the key exists.

    The write every first execution of a step makes: the same row ``Cache.set`` would write
    (raw key, ``MODE_RAW`` value in the table, no expiry), without its Python work. A key
    already present (or a value too large for the table) is left to :func:`put_value`.
    """
    if len(value) >= cache._disk.min_file_size:
        return False
    con = cache._con
    now = time.time()
    params = (key, now, now, tag, value)
    if cache._txn_id == threading.get_ident():  # inside the caller's transaction
        try:
            con.execute(_INSERT_SQL, params)
        except sqlite3.IntegrityError:
            return False
        return True
    con.execute("BEGIN IMMEDIATE")
    try:
        con.execute(_INSERT_SQL, params)
    except sqlite3.IntegrityError:
        con.execute("ROLLBACK")
        return False
    except BaseException:
        con.execute("ROLLBACK")
        raise
    con.execute("COMMIT")
    return True


_INSERT_SQL = (
    "INSERT INTO Cache(key, raw, store_time, expire_time, access_time, access_count, tag, size, mode, filename, value)"
    f" VALUES (?, 1, ?, NULL, ?, 0, ?, 0, {MODE_RAW}, NULL, ?)"
)


def write_value(cache: diskcache.Cache, key: str, value: bytes, tag: int | None, *, new: bool = False) -> None:
    """Write ``value`` under ``key`` (replacing what is there), tagged for the run index.

    ``new``: the key most likely holds nothing yet (a step's first execution): try the plain
    insert of :func:`insert_new` first.
    """
    if not new or not insert_new(cache, key, value, tag):
        cache.set(key, value, tag=tag)
