"""The shape of a data codec, and small helpers the built-in codecs share."""

from __future__ import annotations

import importlib
import inspect
import os
import sys
from collections.abc import Callable
from typing import Any, BinaryIO

PICKLE_FIX = 'Fix: use serializer="pickle" on the client or function.'
META_KEY = b"nbdurable"

PathLike = str | os.PathLike[str]


class DataCodec:
    """How one kind of data value is stored: its file format, and how to write and read it.

    Attributes:
        name: the codec's name, kept with each stored value to read it back.
        suffix: the file extension of its files (``.npy``, ``.arrow``...).
        digest: an optional content fingerprint of a value (bytes or str), for user codecs.
        preview: an optional one-line preview of a value, for user codecs.

    Example:
        >>> codec = DataCodec(name="text", suffix=".txt", accepts=lambda v: isinstance(v, str),
        ...                   write=lambda v, f: f.write(v.encode()), read=lambda p: open(p).read())
        >>> codec.name, codec.suffix, codec.accepts("hello"), codec.accepts(1)
        ('text', '.txt', True, False)
    """

    def __init__(
        self,
        *,
        name: str,
        suffix: str,
        accepts: Callable[[Any], bool] | None = None,
        write: Callable[[Any, BinaryIO], object] | None = None,
        read: Callable[..., Any] | None = None,
        digest: Callable[[Any], bytes | str] | None = None,
        preview: Callable[[Any], str] | None = None,
    ) -> None:
        if not isinstance(name, str) or not name:
            msg = f"a codec name must be a non-empty str, got {name!r}"
            raise ValueError(msg)
        if not isinstance(suffix, str) or not suffix.strip("."):
            msg = f"a codec suffix must be a file extension such as '.pt', got {suffix!r}"
            raise ValueError(msg)
        self.name = name
        self.suffix = suffix if suffix.startswith(".") else f".{suffix}"
        self._accepts = accepts
        self._write = write
        self._read = read
        self._read_takes_mmap = read is not None and takes_keyword(read, "mmap")
        self.digest = digest
        self.preview = preview

    def __repr__(self) -> str:
        return f"DataCodec(name={self.name!r}, suffix={self.suffix!r})"

    def accepts(self, value: Any) -> bool:
        """Whether this codec stores ``value``.

        Args:
            value: any value.
        """
        return self._accepts is not None and bool(self._accepts(value))

    def write(self, value: Any, fileobj: BinaryIO) -> None:
        """Stream ``value`` into an open binary file, never holding a serialized copy in memory.

        Args:
            value: a value this codec accepts.
            fileobj: a file open for binary writing, at the position to write at.
        """
        if self._write is None:  # pragma: no cover - built-in codecs override write
            raise NotImplementedError(self.name)
        self._write(value, fileobj)

    def read(self, path: PathLike, *, mmap: bool = False) -> Any:
        """The value stored in the file at ``path``.

        Args:
            path: a file this codec wrote.
            mmap: map the file into memory instead of reading it, where the format allows
                (the result then shares the file's pages; the file is never modified).
        """
        if self._read is None:  # pragma: no cover - built-in codecs override read
            raise NotImplementedError(self.name)
        if self._read_takes_mmap:
            return self._read(path, mmap=mmap)
        return self._read(path)


def takes_keyword(fn: Callable[..., Any], keyword: str) -> bool:
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):  # builtins without a signature
        return False
    return any(
        (p.name == keyword and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)) or p.kind == p.VAR_KEYWORD
        for p in params
    )


def module(name: str) -> Any:
    """A library the user already imported, or None (never imports it)."""
    return sys.modules.get(name)


def library(name: str) -> Any:
    """Import a data library to write or read its values.

    Typed as Any: their annotations vary across versions and some ship no stubs.
    """
    return importlib.import_module(name)


def one_line(exc: BaseException) -> str:
    """An exception's text on one line: pyarrow puts its parts in a tuple of args."""
    parts = [str(a) for a in exc.args] if len(exc.args) > 1 else [str(exc)]
    text = "; ".join(" ".join(p.split()) for p in parts if p)
    return text if len(text) <= 200 else text[:199] + "\u2026"


def label(label: Any) -> str:
    text = repr(label)
    return text if len(text) <= 60 else text[:59] + "\u2026"


def write_arrow_table(table: Any, fileobj: BinaryIO) -> None:
    pa = library("pyarrow")

    # pyarrow hands each buffer to the Python file as a zero-copy view: writing the table
    # whole takes no extra memory, and keeps one chunk per column for zero-copy reads.
    with pa.ipc.new_file(fileobj, table.schema) as writer:
        if table.num_rows:
            writer.write_table(table)
            return
        # An empty table is written as one empty batch: with none, a dictionary column (a
        # pandas categorical) would lose its dictionary.
        empty = [c.chunk(0) if c.num_chunks else pa.array([], type=c.type) for c in table.columns]
        writer.write_batch(pa.RecordBatch.from_arrays(empty, schema=table.schema))


def read_arrow_table(path: PathLike, *, mmap: bool) -> Any:
    pa = library("pyarrow")

    source = pa.memory_map(os.fspath(path), "r") if mmap else pa.OSFile(os.fspath(path), "rb")
    with pa.ipc.open_file(source) as reader:
        return reader.read_all()
