"""Content digests of data values: numpy arrays, pandas, pyarrow and polars data, by their buffers.

``_hashing``'s walker takes these methods from :class:`DataDigests`, by the top-level module
of a value's class. Buffers are fed to the hasher as they are (non-contiguous arrays a chunk
at a time), with the dtype, shape, memory order, labels and schema that give them meaning.
None of these libraries is imported here: a value of theirs exists only once the user
imported them.
"""

from __future__ import annotations

import struct
import sys
from collections.abc import Callable, Iterable
from typing import Any

CHUNK_BYTES = 16 * 1024 * 1024  # non-contiguous arrays are copied this much at a time
pack_len = struct.Struct("<Q").pack


def qualified(tp: type) -> bytes:
    """A class's module and qualified name, as bytes to hash."""
    return f"{tp.__module__}.{tp.__qualname__}".encode()


class CannotHashError(Exception):
    """The value has no stable content to hash (the digest is None)."""


class DataDigests:
    """How data values feed a digest; mixed into ``_hashing``'s walker, which feeds the hasher."""

    def tag(self, tag: bytes, text: bytes | bytearray = b"") -> None:
        raise NotImplementedError

    def feed(self, value: Any) -> None:
        raise NotImplementedError

    def text(self, value: Any) -> None:
        raise NotImplementedError

    update: Callable[[Any], None]

    def numpy_(self, value: Any, tp: type) -> bool:
        np = sys.modules.get("numpy")
        if np is None:
            return False
        if isinstance(value, np.generic):
            self.tag(b"g", value.dtype.str.encode())
            self.tag(b"y", value.tobytes())
            return True
        if isinstance(value, np.ndarray):
            masked = isinstance(value, np.ma.MaskedArray)
            # A memmap is what a memory-mapped replay gives back: it hashes as the array it is.
            self.tag(b"A", b"ndarray" if tp in (np.ndarray, np.memmap) else qualified(tp))
            self.array(np, value.data if masked else value)
            if masked:
                self.array(np, np.ma.getmaskarray(value))
            return True
        if isinstance(value, np.dtype):
            self.tag(b"t", _dtype_text(value))
            return True
        return False

    def array(self, np: Any, value: Any) -> None:
        dtype = value.dtype
        self.tag(b"t", _dtype_text(dtype))
        self.tag(b"h", repr(tuple(value.shape)).encode())
        if dtype.hasobject:  # Python objects (or numpy's variable-width strings): their content
            self.update(b"o")
            self.feed(value.tolist())
        elif value.flags.c_contiguous:
            self.update(b"C")
            self.update(value.reshape(-1).view(np.uint8))
        elif value.flags.f_contiguous:
            # Hashed as laid out, without a copy: the order is part of the digest.
            self.update(b"F")
            self.update(value.T.reshape(-1).view(np.uint8))
        else:
            # A strided view: its values in C order, as its contiguous copy would give, a
            # slab of rows at a time so the copy stays small.
            self.update(b"C")
            row_bytes = max(value[:1].nbytes, 1)
            step = max(1, CHUNK_BYTES // row_bytes)
            for start in range(0, len(value), step):
                self.update(np.ascontiguousarray(value[start : start + step]).reshape(-1).view(np.uint8))

    def pandas_(self, value: Any, tp: type) -> bool:
        pd = sys.modules.get("pandas")
        if pd is None:
            return False
        if isinstance(value, pd.DataFrame):
            self.tag(b"PD", qualified(tp))
            self.tag(b"h", repr(value.shape).encode())
            self.index(pd, value.columns)
            self.index(pd, value.index)
            for i in range(value.shape[1]):
                column = value.iloc[:, i]
                self.values(pd, column.array, column.dtype)
            return True
        if isinstance(value, pd.Series):
            self.tag(b"PS", qualified(tp))
            self.feed(value.name)
            self.index(pd, value.index)
            self.values(pd, value.array, value.dtype)
            return True
        if isinstance(value, pd.Index):
            self.index(pd, value)
            return True
        if isinstance(value, pd.api.extensions.ExtensionArray):
            self.tag(b"PA", qualified(tp))
            self.values(pd, value, value.dtype)
            return True
        name = tp.__name__
        if name in {"Timestamp", "Timedelta", "NaTType", "NAType", "Period", "Interval"}:
            self.text(value)
            return True
        return False

    def index(self, pd: Any, index: Any) -> None:
        self.tag(b"PI", qualified(type(index)))
        self.feed(list(index.names))
        if isinstance(index, pd.RangeIndex):
            self.feed((index.start, index.stop, index.step))
        elif isinstance(index, pd.MultiIndex):
            for level, codes in zip(index.levels, index.codes, strict=True):
                self.index(pd, level)
                self.feed(codes)
        else:
            self.values(pd, index.array, index.dtype)

    def values(self, pd: Any, values: Any, dtype: Any) -> None:
        """One column's values: numpy data by buffer, extension data by its parts."""
        np = sys.modules["numpy"]  # pandas imports it
        self.tag(b"t", str(dtype).encode())
        if isinstance(dtype, np.dtype):
            self.array(np, np.asarray(values))
        elif isinstance(dtype, pd.CategoricalDtype):
            self.feed(bool(dtype.ordered))
            self.index(pd, dtype.categories)
            self.array(np, np.asarray(values.codes))
        elif isinstance(dtype, pd.DatetimeTZDtype):
            self.array(np, np.asarray(values.asi8))
        elif hasattr(values, "__arrow_array__") and "pyarrow" in sys.modules:
            self.arrow(sys.modules["pyarrow"], values.__arrow_array__())
        else:  # other extension data (sparse...): element by element
            self.feed(values.to_numpy(dtype=object).tolist())

    def pyarrow_(self, value: Any, tp: type) -> bool:
        pa = sys.modules.get("pyarrow")
        if pa is None:
            return False
        if isinstance(value, (pa.Table, pa.RecordBatch)):
            self.tag(b"RT", qualified(tp))
            self.tag(b"r", value.schema.serialize().to_pybytes())
            self.tag(b"n", pack_len(value.num_rows))
            for column in value.columns:
                self.arrow(pa, column)
            return True
        if isinstance(value, (pa.Array, pa.ChunkedArray)):
            self.arrow(pa, value)
            return True
        if isinstance(value, pa.Scalar):
            self.tag(b"RS", str(value.type).encode())
            self.feed(value.as_py())
            return True
        return False

    def arrow(self, pa: Any, value: Any) -> None:
        """An Arrow array or chunked array: its type, lengths and buffers."""
        self.tag(b"R", str(value.type).encode())
        self.tag(b"n", pack_len(len(value)) + pack_len(value.null_count))
        chunks: Iterable[Any] = value.chunks if isinstance(value, pa.ChunkedArray) else (value,)
        for chunk in chunks:
            if chunk.offset or chunk.get_total_buffer_size() > chunk.nbytes:
                chunk = pa.concat_arrays([chunk])  # noqa: PLW2901 - a slice: hash its own bytes only
            if pa.types.is_dictionary(chunk.type):
                self.arrow(pa, chunk.indices)
                self.arrow(pa, chunk.dictionary)
                continue
            self.tag(b"k", pack_len(len(chunk)))
            for buffer in chunk.buffers():
                if buffer is None:
                    self.update(b"_")
                else:
                    self.tag(b"b", pack_len(buffer.size))
                    self.update(memoryview(buffer))

    def polars_hashes(self, pl: Any, value: Any) -> None:
        """Without pyarrow: polars' own seeded hashes of each column (stable for one polars version)."""
        self.tag(b"LH", str(pl.__version__).encode())
        columns = value.get_columns() if isinstance(value, pl.DataFrame) else [value]
        for column in columns:
            self.feed(column.name)
            self.tag(b"n", pack_len(len(column)) + pack_len(column.null_count()))
            self.update(column.hash(seed=0).to_numpy())

    def polars_(self, value: Any, tp: type) -> bool:
        pl = sys.modules.get("polars")
        pa = sys.modules.get("pyarrow")
        if pl is None:
            return False
        if isinstance(value, (pl.DataFrame, pl.Series)):
            self.tag(b"L", qualified(tp))
            self.tag(b"r", repr(value.schema if isinstance(value, pl.DataFrame) else value.dtype).encode())
            if isinstance(value, pl.Series):
                self.feed(value.name)
            if pa is None and not _importable("pyarrow"):
                self.polars_hashes(pl, value)
                return True
            newest = pl.CompatLevel.newest() if hasattr(pl, "CompatLevel") else None
            arrow = value.to_arrow(compat_level=newest) if newest is not None else value.to_arrow()
            if pa is None:
                pa = sys.modules["pyarrow"]  # to_arrow imported it
            if isinstance(arrow, pa.Table):
                self.pyarrow_(arrow, type(arrow))
            else:
                self.arrow(pa, arrow)
            return True
        if isinstance(value, pl.LazyFrame):  # its content is a query: no stable content here
            raise CannotHashError
        return False


def _importable(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


def _dtype_text(dtype: Any) -> bytes:
    return (repr(dtype.descr) if dtype.names is not None else dtype.str).encode()
