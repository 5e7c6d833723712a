"""Data values stored exactly in their own file formats, streamed, without pickle.

numpy arrays go to ``.npy`` files; pandas DataFrames and Series, pyarrow Tables and polars
DataFrames to Arrow IPC files (``.arrow``). Each file is the library's plain native format,
so ``np.load`` or ``pyarrow.ipc.open_file`` opens it, and it can be memory-mapped. Users add
types with :func:`register_codec`; their codecs win over the built-in ones.

None of numpy, pandas, pyarrow or polars is imported here until a value of theirs is
written or a file of theirs is read: a value is recognized by its class, found through
``sys.modules`` (a value of a library exists only once the user imported it).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, BinaryIO

from nbdurable._codec_base import PICKLE_FIX as _PICKLE_FIX
from nbdurable._codec_base import DataCodec, PathLike
from nbdurable._codec_base import library as _library
from nbdurable._codec_base import module as _module
from nbdurable._codec_base import read_arrow_table as _read_arrow_table
from nbdurable._codec_base import takes_keyword as _takes_keyword
from nbdurable._codec_base import write_arrow_table as _write_arrow_table
from nbdurable._frames import PandasCodec
from nbdurable._process import STATE
from nbdurable.errors import OutputUnserializableError

__all__ = ["DataCodec", "codec_for", "register_codec", "registry"]


# numpy


class NumpyCodec(DataCodec):
    """numpy arrays as ``.npy`` files; read back whole, or memory-mapped copy-on-write."""

    def __init__(self) -> None:
        super().__init__(name="numpy", suffix=".npy")

    def accepts(self, value: Any) -> bool:
        """Whether ``value`` is a numpy array (not a subclass such as a masked array or matrix).

        Args:
            value: any value.
        """
        np = _module("numpy")
        # A memmap is what a memory-mapped read gives back: it is stored as the array it is.
        return np is not None and type(value) in (np.ndarray, np.memmap)

    def write(self, value: Any, fileobj: BinaryIO) -> None:
        """Write ``value`` in the ``.npy`` format; refuses arrays of Python objects.

        Args:
            value: a numpy array.
            fileobj: a file open for binary writing.

        Raises:
            OutputUnserializableError: the array holds Python objects (object or string dtype).
        """
        np = _library("numpy")

        if value.dtype.hasobject:
            msg = (
                f"a numpy array of dtype {value.dtype} holds Python objects, which the .npy format "
                f"stores only by pickling. Fix: convert it (e.g. `.astype(str)`), or {_PICKLE_FIX[5:]}"
            )
            raise OutputUnserializableError(msg)
        # write_array streams: a real file gets ndarray.tofile, anything else 16 MiB chunks.
        np.lib.format.write_array(fileobj, value, allow_pickle=False)

    def read(self, path: PathLike, *, mmap: bool = False) -> Any:
        """The stored array; with ``mmap``, a copy-on-write map of the file.

        A copy-on-write map (``mmap_mode="c"``) is writable like any array, but writes stay
        in memory: the file is never modified, so a later replay sees the stored value.

        Args:
            path: a ``.npy`` file.
            mmap: map the file instead of reading it.
        """
        np = _library("numpy")

        return np.load(os.fspath(path), mmap_mode="c" if mmap else None, allow_pickle=False)


# Arrow IPC files, shared by pyarrow, pandas and polars


class ArrowCodec(DataCodec):
    """pyarrow Tables as Arrow IPC files; a memory-mapped read is zero-copy."""

    def __init__(self) -> None:
        super().__init__(name="pyarrow", suffix=".arrow")

    def accepts(self, value: Any) -> bool:
        """Whether ``value`` is a pyarrow Table.

        Args:
            value: any value.
        """
        pa = _module("pyarrow")
        return pa is not None and type(value) is pa.Table

    def write(self, value: Any, fileobj: BinaryIO) -> None:
        """Write the table as an Arrow IPC file, schema metadata included.

        Args:
            value: a pyarrow Table.
            fileobj: a file open for binary writing.
        """
        _write_arrow_table(value, fileobj)

    def read(self, path: PathLike, *, mmap: bool = False) -> Any:
        """The stored table; with ``mmap`` its buffers are the file's pages (Arrow data is immutable).

        Args:
            path: an Arrow IPC file.
            mmap: map the file instead of reading it.
        """
        return _read_arrow_table(path, mmap=mmap)


class PolarsCodec(DataCodec):
    """polars DataFrames as Arrow IPC files, written and read by polars itself."""

    def __init__(self) -> None:
        super().__init__(name="polars", suffix=".arrow")

    def accepts(self, value: Any) -> bool:
        """Whether ``value`` is a polars DataFrame.

        Args:
            value: any value.
        """
        pl = _module("polars")
        return pl is not None and type(value) is pl.DataFrame

    def write(self, value: Any, fileobj: BinaryIO) -> None:
        """Write the frame as an uncompressed Arrow IPC file (uncompressed files can be mapped).

        Args:
            value: a polars DataFrame.
            fileobj: a file open for binary writing.
        """
        value.write_ipc(fileobj, compression="uncompressed")

    def read(self, path: PathLike, *, mmap: bool = False) -> Any:
        """The stored frame (polars versions whose reader takes ``memory_map`` are told ``mmap``).

        Args:
            path: an Arrow IPC file.
            mmap: map the file instead of reading it, where this polars version offers it.
        """
        pl = _library("polars")

        if _takes_keyword(pl.read_ipc, "memory_map"):
            return pl.read_ipc(os.fspath(path), memory_map=mmap)
        return pl.read_ipc(os.fspath(path))


# The registry


class CodecRegistry:
    """Every codec: the user's (by type or qualified class name) first, then the built-in ones.

    The process holds one, :data:`registry`; ``reset()`` forgets the user's codecs (for tests).

    Example:
        >>> registry.named("numpy").suffix
        '.npy'
        >>> [codec.name for codec in registry.builtins]
        ['numpy', 'pandas', 'pyarrow', 'polars']
    """

    def __init__(self) -> None:
        self.builtins: tuple[DataCodec, ...] = (NumpyCodec(), PandasCodec(), ArrowCodec(), PolarsCodec())
        self._by_type: dict[type, DataCodec] = {}
        self._by_name: dict[str, DataCodec] = {}
        self._found: dict[type, DataCodec | None] = {}

    def reset(self) -> None:
        """Forget every user codec (for tests)."""
        self._by_type.clear()
        self._by_name.clear()
        self._found.clear()

    def register(self, key: type | str, codec: DataCodec) -> None:
        """Register ``codec`` for a type, or a qualified class name such as ``"torch.Tensor"``.

        Args:
            key: a class, or its qualified name (full, or the top-level package and class name).
            codec: the codec for values of that class and its subclasses.
        """
        if any(c.name == codec.name for c in self.builtins):
            msg = f"codec name {codec.name!r} is a built-in codec's; choose another name"
            raise ValueError(msg)
        for other_key, other in (*self._by_type.items(), *self._by_name.items()):
            if other.name == codec.name and other_key != key:
                msg = f"codec name {codec.name!r} is already registered for {other_key!r}"
                raise ValueError(msg)
        if isinstance(key, type):
            self._by_type[key] = codec
        elif isinstance(key, str) and key.strip():
            self._by_name[key.strip()] = codec
        else:
            msg = f"register a codec for a class or a qualified class name, got {key!r}"
            raise TypeError(msg)
        self._found.clear()

    def user_codec(self, value: Any) -> DataCodec | None:
        """The user codec registered for ``value``'s class or a base class, if any.

        Args:
            value: any value.
        """
        if not self._by_type and not self._by_name:
            return None
        tp = type(value)
        try:
            return self._found[tp]
        except KeyError:
            pass
        found: DataCodec | None = None
        for cls in tp.__mro__:
            found = self._by_type.get(cls)
            if found is None and self._by_name:
                found = next((c for name, c in self._by_name.items() if _class_is_named(cls, name)), None)
            if found is not None:
                break
        self._found[tp] = found
        return found

    def codec_for(self, value: Any) -> DataCodec | None:
        """The codec that stores ``value``: a user codec, else a built-in one, else None.

        Args:
            value: any value.
        """
        found = self.user_codec(value)
        if found is not None:
            return found
        for codec in self.builtins:
            if codec.accepts(value):
                return codec
        return None

    def named(self, name: str) -> DataCodec:
        """The codec called ``name`` (to read a file back by the codec name kept with it).

        Args:
            name: a codec's name.

        Raises:
            KeyError: no codec of that name is registered in this process.
        """
        for codec in (*self._by_type.values(), *self._by_name.values(), *self.builtins):
            if codec.name == name:
                return codec
        raise KeyError(name)

    def user_preview(self, value: Any) -> str | None:
        """The preview a user codec gives ``value``, if it has one.

        Args:
            value: any value.
        """
        codec = self.user_codec(value)
        if codec is None or codec.preview is None:
            return None
        return str(codec.preview(value))

    def user_digest(self, value: Any) -> tuple[str, bytes] | None:
        """The codec name and content fingerprint a user codec gives ``value``, if it has one.

        Args:
            value: any value.
        """
        codec = self.user_codec(value)
        if codec is None or codec.digest is None:
            return None
        found = codec.digest(value)
        return codec.name, found.encode() if isinstance(found, str) else bytes(found)


registry = CodecRegistry()
"""The process's codecs (user registrations are forgotten by ``_process.STATE.reset()``)."""
STATE.reset_hooks.append(registry.reset)


def _class_is_named(cls: type, name: str) -> bool:
    """Whether ``name`` is the class's qualified name, in full or as top-level package and class."""
    module = str(getattr(cls, "__module__", ""))
    qualname = str(getattr(cls, "__qualname__", ""))
    return name in {f"{module}.{qualname}", f"{module.partition('.')[0]}.{qualname}"}


def register_codec(
    type_or_qualified_name: type | str,
    *,
    name: str,
    suffix: str,
    write: Callable[[Any, BinaryIO], object],
    read: Callable[..., Any],
    digest: Callable[[Any], bytes | str] | None = None,
    preview: Callable[[Any], str] | None = None,
) -> DataCodec:
    """Store values of a type in a format of your choice (a torch tensor, an xarray Dataset...).

    The codec applies to the class and its subclasses, and wins over the built-in codecs.
    Registering again for the same class replaces the codec.

    Args:
        type_or_qualified_name: the class, or its qualified name (``"torch.Tensor"``), so the
            library need not be imported to register it.
        name: the codec's name, kept with every stored value to read it back.
        suffix: the file extension of its files, such as ``".pt"``.
        write: ``write(value, fileobj)`` streams the value into an open binary file.
        read: ``read(path)`` (or ``read(path, *, mmap)``) returns the stored value.
        digest: ``digest(value)`` returns bytes or str that change when the content changes,
            to fingerprint step arguments of that type.
        preview: ``preview(value)`` returns a short one-line text for views.

    Returns:
        The registered codec.

    Example:
        >>> import fractions, tempfile, os
        >>> codec = register_codec(
        ...     fractions.Fraction, name="fraction", suffix=".txt",
        ...     write=lambda v, f: f.write(str(v).encode()),
        ...     read=lambda path: fractions.Fraction(open(path).read()),
        ... )
        >>> codec_for(fractions.Fraction(1, 3)) is codec
        True
        >>> path = os.path.join(tempfile.mkdtemp(), "x" + codec.suffix)
        >>> with open(path, "wb") as f:
        ...     codec.write(fractions.Fraction(1, 3), f)
        >>> codec.read(path)
        Fraction(1, 3)
        >>> registry.reset()
    """
    key = type_or_qualified_name
    accepts = (
        (lambda value: isinstance(value, key))
        if isinstance(key, type)
        else (lambda value: any(_class_is_named(cls, str(key).strip()) for cls in type(value).__mro__))
    )
    codec = DataCodec(name=name, suffix=suffix, accepts=accepts, write=write, read=read, digest=digest, preview=preview)
    registry.register(type_or_qualified_name, codec)
    return codec


def codec_for(value: Any) -> DataCodec | None:
    """The codec that stores ``value`` in its own format, or None for values of other types.

    Args:
        value: any value.

    Returns:
        A user codec registered for its class, else a built-in one (numpy arrays, pandas
        DataFrames and Series, pyarrow Tables, polars DataFrames), else None.

    Example:
        >>> codec_for({"a": 1}) is None
        True
        >>> import numpy as np
        >>> codec_for(np.zeros(3)).name
        'numpy'
    """
    return registry.codec_for(value)
