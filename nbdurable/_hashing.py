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
from collections.abc import Callable
from typing import Any

import xxhash

from nbdurable._datahash import CannotHashError, DataDigests, pack_len, qualified

__all__ = ["content_digest"]

_FAST_SEQUENCE = 16  # homogeneous sequences at least this long are hashed as one buffer
_pack_float = struct.Struct("<d").pack
_pack_complex = struct.Struct("<dd").pack


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
    except (CannotHashError, RecursionError):
        return None
    except Exception:  # noqa: BLE001 - a user digest hook or an exotic data type failed: no fingerprint
        return None
    return str(hasher.hexdigest())


def _sub_digest(value: Any, *, objects: bool = True) -> bytes:
    """The digest of one item, to sort dict keys and set elements by (their order is arbitrary)."""
    hasher = xxhash.xxh3_128()
    _Walker(hasher, objects=objects).feed(value)
    return bytes(hasher.digest())


class _Walker(DataDigests):
    """Feeds a tagged encoding of one value into a hasher."""

    def __init__(self, hasher: Any, *, objects: bool = True) -> None:
        self.update: Callable[[Any], None] = hasher.update
        self.objects = objects

    def tag(self, tag: bytes, text: bytes | bytearray = b"") -> None:
        self.update(tag + pack_len(len(text)) + text)

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
        self.tag(b"r", qualified(type(value)) + b":" + repr(value).encode("utf-8", "surrogatepass"))

    def list_(self, value: list[Any] | tuple[Any, ...]) -> None:
        self.sequence(b"[" if isinstance(value, list) else b"(", value)

    def sequence(self, tag: bytes, items: list[Any] | tuple[Any, ...]) -> None:
        n = len(items)
        self.tag(tag, pack_len(n))
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
        self.tag(b"{", pack_len(len(value)))
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
        self.tag(b"<" if isinstance(value, set) else b">", pack_len(len(value)))
        for item_digest in sorted(_sub_digest(v, objects=self.objects) for v in value):
            self.update(item_digest)

    # Everything else.

    def other(self, value: Any, tp: type) -> None:
        if isinstance(value, enum.Enum):
            self.tag(b"E", qualified(tp) + b"." + str(value.name).encode())
            return
        if isinstance(value, type):
            self.tag(b"K", qualified(value))
            return
        code = getattr(value, "__code__", None)
        if code is not None and hasattr(value, "__qualname__"):  # a function: its name and its code
            self.tag(b"D", f"{value.__module__}.{value.__qualname__}".encode())
            self.tag(b"d", code.co_code + repr(code.co_consts).encode())
            return
        for base in (dict, list, tuple, set, frozenset, str, bytes, int, float):
            if isinstance(value, base):  # a subclass of a builtin: its class, then its content
                self.tag(b"B", qualified(tp))
                convert: Any = base
                _EXACT[base](self, convert(value))
                return
        if not self.objects:
            self.tag(b"O", qualified(tp))
            return
        self.pickled(value)

    def pickled(self, value: Any) -> None:
        """Objects of other classes: their pickle, with sets sorted and data values digested."""
        self.tag(b"P", qualified(type(value)))
        sink = _HashSink(self.update)
        try:
            _DigestPickler(sink).dump(value)
        except CannotHashError:
            raise
        except Exception as exc:  # pickling raises many types: either way, no stable content
            raise CannotHashError from exc


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
                raise CannotHashError
            return (_Digested, (digest,))
        return NotImplemented


def _user_digest(value: Any) -> tuple[str, bytes] | None:
    """The digest a registered codec gives, if the value has one (codecs loaded only if in use)."""
    codecs = sys.modules.get("nbdurable._codecs")
    if codecs is None:
        return None
    found: tuple[str, bytes] | None = codecs.registry.user_digest(value)
    return found
