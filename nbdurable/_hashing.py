"""Content fingerprints of values, the same in every process and session.

Data values are hashed by their buffers with xxHash's XXH3-128 (over 10 GB/s on one core,
where blake2b gives about 1 GB/s): numpy arrays with their dtype, shape and memory order;
pandas frames, Series and indexes with their labels and dtypes; pyarrow and polars tables
with their schema. Plain values (numbers, str, bytes, lists, dicts, sets, dates...) are
hashed from a tagged encoding of their content, never with the salted built-in ``hash``.
Other objects are hashed from their pickle (sets sorted, data values replaced by their
digest); a value that cannot be pickled, such as an open file or a generator, has no
fingerprint. numpy, pandas, pyarrow and polars are never imported here: a value of theirs
exists only once the user imported them.
"""

from __future__ import annotations

import datetime as _dt
import decimal
import enum
import fractions
import pathlib
import pickle
import struct
import sys
import uuid
from array import array
from collections.abc import Callable, Iterable
from typing import Any

import xxhash

__all__ = ["content_digest"]

_CHUNK_BYTES = 16 * 1024 * 1024  # non-contiguous arrays are copied this much at a time
_FAST_SEQUENCE = 16  # homogeneous sequences at least this long are hashed as one buffer
_pack_len = struct.Struct("<Q").pack
_pack_float = struct.Struct("<d").pack
_pack_complex = struct.Struct("<dd").pack


class _CannotHashError(Exception):
    """The value holds something with no stable content (an open file, a generator...)."""


def content_digest(value: Any, *, objects: bool = True) -> str | None:
    """A 128-bit fingerprint of ``value``'s content, or None when it has no stable content.

    Equal content gives the same digest in every process and session; any change to an
    element, a dtype, a shape, a label or an index gives another. Data values cost one pass
    over their buffers; containers and scalars cost a walk of their items.

    Args:
        value: any value: plain data, containers, numpy arrays, pandas, pyarrow or polars
            data, or an object that pickles.
        objects: fingerprint other objects by their pickled content; ``False`` takes their
            class only (step arguments: a client or a model passed along is not data).

    Returns:
        32 hex digits, or None for a value that cannot be fingerprinted (an open file, a
        generator, a lock, an object that does not pickle).

    Example:
        >>> content_digest([1, 2.5, "three", {"four": None}])
        '5709b279134603f31c21d73c3aead4f6'
        >>> content_digest({"a": 1, "b": 2}) == content_digest({"b": 2, "a": 1})
        True
        >>> content_digest([1, 2]) == content_digest((1, 2))
        False
        >>> content_digest(x for x in range(3)) is None  # a generator has no stable content
        True
    """
    hasher = xxhash.xxh3_128()
    try:
        _Walker(hasher, objects=objects).feed(value)
    except (_CannotHashError, RecursionError):
        return None
    except Exception:  # noqa: BLE001 - a user digest hook or an exotic data type failed: no fingerprint
        return None
    return str(hasher.hexdigest())


def _sub_digest(value: Any, *, objects: bool = True) -> bytes:
    """The digest of one item, to sort dict keys and set elements by (their order is arbitrary)."""
    hasher = xxhash.xxh3_128()
    _Walker(hasher, objects=objects).feed(value)
    return bytes(hasher.digest())


def _qualified(tp: type) -> bytes:
    return f"{tp.__module__}.{tp.__qualname__}".encode()


class _Walker:
    """Feeds a tagged encoding of one value into a hasher."""

    def __init__(self, hasher: Any, *, objects: bool = True) -> None:
        self.update: Callable[[Any], None] = hasher.update
        self.objects = objects

    def tag(self, tag: bytes, text: bytes | bytearray = b"") -> None:
        self.update(tag + _pack_len(len(text)) + text)

    def feed(self, value: Any) -> None:
        tp = type(value)
        exact = _EXACT.get(tp)
        if exact is not None:
            exact(self, value)
            return
        user = _user_digest(value)
        if user is not None:
            name, found = user
            self.tag(b"U", name.encode())
            self.tag(b"u", found)
            return
        module = getattr(tp, "__module__", None)
        data = _DATA.get(module.partition(".")[0]) if isinstance(module, str) else None
        if data is not None and data(self, value, tp):
            return
        self.other(value, tp)

    # Plain values.

    def none(self, value: None) -> None:
        del value
        self.update(b"N")

    def bool_(self, value: bool) -> None:
        self.update(b"T" if value else b"F")

    def int_(self, value: int) -> None:
        self.tag(b"i", int.to_bytes(value, (int.bit_length(value) + 8) // 8, "little", signed=True))

    def float_(self, value: float) -> None:
        self.update(b"f" + _pack_float(value))

    def complex_(self, value: complex) -> None:
        self.update(b"c" + _pack_complex(value.real, value.imag))

    def str_(self, value: str) -> None:
        self.tag(b"s", value.encode("utf-8", "surrogatepass"))

    def bytes_(self, value: bytes | bytearray) -> None:
        self.tag(b"y" if type(value) is bytes else b"Y", value)

    def memoryview_(self, value: memoryview) -> None:
        self.tag(b"m", f"{value.format}{value.shape}".encode())
        self.tag(b"y", value.tobytes())

    def text(self, value: Any) -> None:
        """Values whose repr is their exact content (dates, Decimal, UUID, paths, ranges)."""
        self.tag(b"r", _qualified(type(value)) + b":" + repr(value).encode("utf-8", "surrogatepass"))

    def list_(self, value: list[Any] | tuple[Any, ...]) -> None:
        self.sequence(b"[" if isinstance(value, list) else b"(", value)

    def sequence(self, tag: bytes, items: list[Any] | tuple[Any, ...]) -> None:
        n = len(items)
        self.tag(tag, _pack_len(n))
        if n >= _FAST_SEQUENCE and self._homogeneous(items):
            return
        for item in items:
            self.feed(item)

    def _homogeneous(self, items: list[Any] | tuple[Any, ...]) -> bool:
        """Long runs of one plain type (floats, ints, str) hashed as one buffer, not item by item."""
        types = set(map(type, items))
        if len(types) != 1:
            return False
        tp = types.pop()
        if tp is float:
            self.tag(b"F*", array("d", items).tobytes())
            return True
        if tp is int:
            try:
                packed = array("q", items)
            except OverflowError:
                return False
            self.tag(b"I*", packed.tobytes())
            return True
        if tp is str:
            encoded = [s.encode("utf-8", "surrogatepass") for s in items]
            self.tag(b"S*", array("Q", map(len, encoded)).tobytes())
            self.update(b"".join(encoded))
            return True
        return False

    def dict_(self, value: dict[Any, Any]) -> None:
        # Equal dicts are equal whatever their order, so keys are sorted (str keys directly,
        # other keys by their digest).
        self.tag(b"{", _pack_len(len(value)))
        if all(type(k) is str for k in value):
            for key in sorted(value):
                self.str_(key)
                self.feed(value[key])
            return
        pairs = ((_sub_digest(k, objects=self.objects), v) for k, v in value.items())
        for key_digest, item in sorted(pairs, key=lambda kv: kv[0]):
            self.update(key_digest)
            self.feed(item)

    def set_(self, value: set[Any] | frozenset[Any]) -> None:
        self.tag(b"<" if isinstance(value, set) else b">", _pack_len(len(value)))
        for item_digest in sorted(_sub_digest(v, objects=self.objects) for v in value):
            self.update(item_digest)

    # Everything else.

    def other(self, value: Any, tp: type) -> None:
        if isinstance(value, enum.Enum):
            self.tag(b"E", _qualified(tp) + b"." + str(value.name).encode())
            return
        if isinstance(value, type):
            self.tag(b"K", _qualified(value))
            return
        code = getattr(value, "__code__", None)
        if code is not None and hasattr(value, "__qualname__"):  # a function: its name and its code
            self.tag(b"D", f"{value.__module__}.{value.__qualname__}".encode())
            self.tag(b"d", code.co_code + repr(code.co_consts).encode())
            return
        for base in (dict, list, tuple, set, frozenset, str, bytes, int, float):
            if isinstance(value, base):  # a subclass of a builtin: its class, then its content
                self.tag(b"B", _qualified(tp))
                convert: Any = base
                _EXACT[base](self, convert(value))
                return
        if not self.objects:
            self.tag(b"O", _qualified(tp))
            return
        self.pickled(value)

    def pickled(self, value: Any) -> None:
        """Objects of other classes: their pickle, with sets sorted and data values digested."""
        self.tag(b"P", _qualified(type(value)))
        sink = _HashSink(self.update)
        try:
            _DigestPickler(sink).dump(value)
        except _CannotHashError:
            raise
        except Exception as exc:  # pickling raises many types: either way, no stable content
            raise _CannotHashError from exc

    # Data libraries, by the top-level module of the value's class.

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
            self.tag(b"A", b"ndarray" if tp in (np.ndarray, np.memmap) else _qualified(tp))
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
            step = max(1, _CHUNK_BYTES // row_bytes)
            for start in range(0, len(value), step):
                self.update(np.ascontiguousarray(value[start : start + step]).reshape(-1).view(np.uint8))

    def pandas_(self, value: Any, tp: type) -> bool:
        pd = sys.modules.get("pandas")
        if pd is None:
            return False
        if isinstance(value, pd.DataFrame):
            self.tag(b"PD", _qualified(tp))
            self.tag(b"h", repr(value.shape).encode())
            self.index(pd, value.columns)
            self.index(pd, value.index)
            for i in range(value.shape[1]):
                column = value.iloc[:, i]
                self.values(pd, column.array, column.dtype)
            return True
        if isinstance(value, pd.Series):
            self.tag(b"PS", _qualified(tp))
            self.feed(value.name)
            self.index(pd, value.index)
            self.values(pd, value.array, value.dtype)
            return True
        if isinstance(value, pd.Index):
            self.index(pd, value)
            return True
        if isinstance(value, pd.api.extensions.ExtensionArray):
            self.tag(b"PA", _qualified(tp))
            self.values(pd, value, value.dtype)
            return True
        name = tp.__name__
        if name in {"Timestamp", "Timedelta", "NaTType", "NAType", "Period", "Interval"}:
            self.text(value)
            return True
        return False

    def index(self, pd: Any, index: Any) -> None:
        self.tag(b"PI", _qualified(type(index)))
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
            self.tag(b"RT", _qualified(tp))
            self.tag(b"r", value.schema.serialize().to_pybytes())
            self.tag(b"n", _pack_len(value.num_rows))
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
        self.tag(b"n", _pack_len(len(value)) + _pack_len(value.null_count))
        chunks: Iterable[Any] = value.chunks if isinstance(value, pa.ChunkedArray) else (value,)
        for chunk in chunks:
            if chunk.offset or chunk.get_total_buffer_size() > chunk.nbytes:
                chunk = pa.concat_arrays([chunk])  # noqa: PLW2901 - a slice: hash its own bytes only
            if pa.types.is_dictionary(chunk.type):
                self.arrow(pa, chunk.indices)
                self.arrow(pa, chunk.dictionary)
                continue
            self.tag(b"k", _pack_len(len(chunk)))
            for buffer in chunk.buffers():
                if buffer is None:
                    self.update(b"_")
                else:
                    self.tag(b"b", _pack_len(buffer.size))
                    self.update(memoryview(buffer))

    def polars_hashes(self, pl: Any, value: Any) -> None:
        """Without pyarrow: polars' own seeded hashes of each column (stable for one polars version)."""
        self.tag(b"LH", str(pl.__version__).encode())
        columns = value.get_columns() if isinstance(value, pl.DataFrame) else [value]
        for column in columns:
            self.feed(column.name)
            self.tag(b"n", _pack_len(len(column)) + _pack_len(column.null_count()))
            self.update(column.hash(seed=0).to_numpy())

    def polars_(self, value: Any, tp: type) -> bool:
        pl = sys.modules.get("polars")
        pa = sys.modules.get("pyarrow")
        if pl is None:
            return False
        if isinstance(value, (pl.DataFrame, pl.Series)):
            self.tag(b"L", _qualified(tp))
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
            raise _CannotHashError
        return False


def _importable(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


def _dtype_text(dtype: Any) -> bytes:
    return (repr(dtype.descr) if dtype.names is not None else dtype.str).encode()


_EXACT: dict[type, Callable[[_Walker, Any], None]] = {
    type(None): _Walker.none,
    bool: _Walker.bool_,
    int: _Walker.int_,
    float: _Walker.float_,
    complex: _Walker.complex_,
    str: _Walker.str_,
    bytes: _Walker.bytes_,
    bytearray: _Walker.bytes_,
    memoryview: _Walker.memoryview_,
    list: _Walker.list_,
    tuple: _Walker.list_,
    dict: _Walker.dict_,
    set: _Walker.set_,
    frozenset: _Walker.set_,
    _dt.datetime: _Walker.text,
    _dt.date: _Walker.text,
    _dt.time: _Walker.text,
    _dt.timedelta: _Walker.text,
    _dt.timezone: _Walker.text,
    decimal.Decimal: _Walker.text,
    fractions.Fraction: _Walker.text,
    uuid.UUID: _Walker.text,
    pathlib.PurePosixPath: _Walker.text,
    pathlib.PureWindowsPath: _Walker.text,
    pathlib.PosixPath: _Walker.text,
    pathlib.WindowsPath: _Walker.text,
    range: _Walker.text,
    slice: _Walker.text,
    type(...): _Walker.text,
}
_DATA: dict[str, Callable[[_Walker, Any, type], bool]] = {
    "numpy": _Walker.numpy_,
    "pandas": _Walker.pandas_,
    "pyarrow": _Walker.pyarrow_,
    "polars": _Walker.polars_,
}


class _HashSink:
    """A write-only file that feeds what is written to it into a hasher."""

    def __init__(self, update: Callable[[Any], None]) -> None:
        self.write = update


class _Digested:
    """Stands in a pickle for a value hashed on its own (never unpickled)."""


class _DigestPickler(pickle._Pickler):  # noqa: SLF001 - the pure-Python pickler (see below)
    """A pickler whose output is stable for equal content: sets sorted, data values digested.

    It is the pure-Python pickler, because only that one shows sets to ``reducer_override``.
    """

    def __init__(self, sink: _HashSink) -> None:
        super().__init__(sink, protocol=5)

    def reducer_override(self, obj: object) -> Any:
        tp = type(obj)
        if tp is set or tp is frozenset:
            assert isinstance(obj, (set, frozenset))
            return (tp, (sorted(obj, key=_sub_digest),))
        if tp in _EXACT:
            return NotImplemented
        module = getattr(tp, "__module__", None)
        if (isinstance(module, str) and module.partition(".")[0] in _DATA) or _user_digest(obj) is not None:
            digest = content_digest(obj)
            if digest is None:
                raise _CannotHashError
            return (_Digested, (digest,))
        return NotImplemented


def _user_digest(value: Any) -> tuple[str, bytes] | None:
    """The digest a registered codec gives, if the value has one (codecs loaded only if in use)."""
    codecs = sys.modules.get("nbdurable._codecs")
    if codecs is None:
        return None
    found: tuple[str, bytes] | None = codecs.registry.user_digest(value)
    return found
