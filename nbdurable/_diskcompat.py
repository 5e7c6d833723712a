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
import threading
from collections.abc import Iterator
from typing import Any

import diskcache
from diskcache.core import MODE_BINARY, MODE_RAW

FILE_MODE = 0o600
DIR_MODE = 0o700

_RANGE_SQL = "SELECT key, mode, filename, value FROM Cache WHERE key >= ? AND key < ? AND raw = 1 ORDER BY key"
_TOP = "\U0010ffff"


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
    disk: SafeDisk = cache._disk  # noqa: SLF001 - this module is where diskcache's internals are used
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


def range_rows(cache: diskcache.Cache, start: str, prefix: str) -> list[tuple[str, Any]]:
    """``(key, raw value or None)`` of every key from ``start`` up to the end of ``prefix``, in order.

    One indexed range query over diskcache's table instead of a ``get`` per key. The value is
    the inline bytes for small values, None where it lives in a file or in another mode (read
    it with :func:`read_one`, which applies :class:`SafeDisk`'s rules).
    """
    rows = cache._sql(_RANGE_SQL, (start, prefix + _TOP)).fetchall()  # noqa: SLF001 - see the module docstring
    return [
        (key, bytes(value) if mode == MODE_RAW and isinstance(value, bytes) else None)
        for key, mode, _filename, value in rows
    ]


def read_one(cache: diskcache.Cache, key: str) -> Any:
    """The value under ``key``: bytes, None when absent, or an :class:`Unreadable`."""
    return cache.get(key)


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
