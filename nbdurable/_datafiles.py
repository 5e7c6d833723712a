"""A store's data files: values written in their own formats, beside the database.

Arrays, frames and tables (and cell steps' names and outputs) are streamed by their codec
into ``data/<run>/<name><suffix>`` under the store folder, one file per stored value; the
step record holds a ``DataRef`` (codec, file, size) to it. A file is written under a
temporary name and renamed once complete, so no reader ever sees half of one, and a read
checks the size written before decoding, so a truncated or missing file reads as
``Unreadable`` (its step executes again) and never crashes a run.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import shutil
import uuid
from typing import TYPE_CHECKING, Any

from nbdurable import _diskcompat, _records
from nbdurable._diskcompat import SEP, Unreadable
from nbdurable.errors import StoreError

if TYPE_CHECKING:
    from nbdurable._codecs import DataCodec
    from nbdurable._records import DataRef
    from nbdurable._store import Store

DATA_DIR = "data"
"""Data files (arrays, frames...) live in ``data/<run>/``, one file per stored value."""


class DataFiles:
    """The data files of one store."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def folder(self, app: str, function_id: str, run_id: str) -> str:
        """The folder (relative to the store) holding a run's data files."""
        digest = hashlib.blake2b(f"{app}{SEP}{function_id}{SEP}{run_id}".encode(), digest_size=12).hexdigest()
        return f"{DATA_DIR}/{digest}"

    def run_bytes(self, app: str, function_id: str, run_id: str) -> int:
        """Bytes of a run's data files (one folder listing)."""
        return folder_bytes(os.path.join(self.store.path, self.folder(app, function_id, run_id)))

    def write(self, folder: str, codec: DataCodec, value: Any) -> DataRef:
        """Stream ``value`` into a new data file of ``folder`` with ``codec``; the reference to store.

        The file is written under a temporary name and renamed once complete, so no reader ever
        sees half of it; a failed write (a full disk) removes it and raises ``StoreError``.
        """
        store = self.store
        store.check_writable()
        store.check_identity()
        full_folder = os.path.join(store.path, folder)
        name = f"{uuid.uuid4().hex}{codec.suffix}"
        final = os.path.join(full_folder, name)
        temp = final + ".partial"
        try:
            _diskcompat.make_private_dirs(full_folder, store.path)
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, _diskcompat.FILE_MODE)
            with open(fd, "wb") as f:
                codec.write(value, f)
            os.replace(temp, final)
            size = os.stat(final).st_size
        except OSError as exc:
            if exc.errno is None and _nearly_full(store.path):  # numpy's short write says only "requested"
                exc = OSError(errno.ENOSPC, f"No space left on device while writing {final}")
            with contextlib.suppress(OSError):
                os.unlink(temp)
            raise StoreError(store.explain("write", exc)) from exc
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temp)
            raise
        return _records.DataRef(codec=codec.name, file=f"{folder}/{name}", size=size)

    def path(self, ref: DataRef) -> str | None:
        """The full path of a data file, or None if the reference points outside the store's data."""
        parts = ref.file.split("/")
        if len(parts) != 3 or parts[0] != DATA_DIR or any(p in ("", ".", "..") or "\\" in p for p in parts):
            return None
        return os.path.join(self.store.path, *parts)

    def read(self, ref: DataRef, codec: DataCodec, *, mmap: bool) -> Any:
        """The value in a data file, or ``Unreadable`` (missing, truncated, or not what its codec reads)."""
        path = self.path(ref)
        if path is None:
            return Unreadable(f"its data file {ref.file!r} lies outside the store")
        try:
            size = os.stat(path).st_size
        except FileNotFoundError:
            return Unreadable(f"its data file {ref.file} is missing")
        except OSError as exc:
            return Unreadable(f"its data file {ref.file} cannot be read ({exc.strerror or exc})")
        if size != ref.size:
            return Unreadable(f"its data file {ref.file} has {size} bytes, not the {ref.size} written")
        try:
            return codec.read(path, mmap=mmap)
        except Exception as exc:  # noqa: BLE001 - a damaged file is re-executed, never a crash
            return Unreadable(f"its data file {ref.file} cannot be read by the {codec.name} codec ({exc})")

    def delete(self, ref: DataRef) -> None:
        """Delete one data file (a value replaced or forgotten)."""
        path = self.path(ref)
        if path is not None:
            with contextlib.suppress(OSError):
                os.unlink(path)

    def delete_folder(self, folder: str) -> None:
        """Delete a run's data files."""
        parts = folder.split("/")
        if len(parts) == 2 and parts[0] == DATA_DIR and parts[1] not in ("", ".", ".."):
            shutil.rmtree(os.path.join(self.store.path, *parts), ignore_errors=True)


def file_bytes(path: str) -> int:
    """The size of a file, 0 if it does not exist."""
    try:
        return os.stat(path).st_size
    except OSError:
        return 0


def folder_bytes(path: str, *, deep: bool = False) -> int:
    """Bytes of the files in a folder (and its subfolders when ``deep``); 0 if it does not exist."""
    total = 0
    try:
        with os.scandir(path) as entries:
            for entry in entries:
                if entry.is_file(follow_symlinks=False):
                    total += entry.stat(follow_symlinks=False).st_size
                elif deep and entry.is_dir(follow_symlinks=False):
                    total += folder_bytes(entry.path, deep=True)
    except OSError:
        return total
    return total


def _nearly_full(path: str) -> bool:
    try:
        return shutil.disk_usage(path).free < 1 << 20
    except OSError:
        return False
