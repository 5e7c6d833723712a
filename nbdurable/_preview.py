"""One-line previews of any value, in bounded time and memory whatever its size.

A preview never serializes the value and never calls an arbitrary ``__repr__``: containers
are walked ``reprlib``-style up to a few items, data types (numpy, pandas, pyarrow, polars)
are summarized from attributes the value already has (shape, dtype, rows x columns), and
other objects show their class. None of those libraries is imported here: a value of theirs
exists only once the user imported them.
"""

from __future__ import annotations

import datetime as _dt
import decimal
import enum
import itertools
import math
import pathlib
import sys
import uuid
from collections.abc import Callable
from typing import Any

__all__ = ["preview"]

_ELLIPSIS = "\u2026"
_ONE_LINE = str.maketrans("\n\r\t\v\f", "     ")
_MAX_ITEMS = 8  # items shown from one container
_MAX_DEPTH = 3  # nesting shown before an inner container becomes "[…]"
_MAX_DIGITS_BITS = 640  # ints longer than this (about 190 digits) are summarized
_SMALL_ARRAY = 8  # arrays up to this many elements also show their values
_MAX_LABELS = 64  # frames wider than this do not list their column names (listing them costs)


def preview(value: Any, limit: int = 80) -> str:
    """A one-line preview of ``value``, at most ``limit`` characters, built in bounded time.

    Containers show their first items and their length, data values their type, dtype and
    shape, other objects their class. It never raises and never calls an object's own
    ``__repr__`` (which may be slow or huge).

    Args:
        value: anything.
        limit: the maximum length of the text (at least 2).

    Returns:
        The preview, on one line.

    Example:
        >>> preview({"rows": 3, "ok": True})
        "{'rows': 3, 'ok': True}"
        >>> preview(list(range(10_000_000)))
        '[0, 1, 2, 3, 4, 5, 6, 7, …] (10,000,000 items)'
        >>> preview(bytes(3_000_000))
        'bytes (3.0 MB)'
        >>> preview("spam " * 100, limit=20)
        "'spam spam spam spa…"
    """
    limit = max(int(limit), 2)
    try:
        text = _Previewer(limit).show(value, 0)
    except Exception:  # noqa: BLE001 - a preview never fails: fall back to the class name
        text = _class_text(value)
    text = text.translate(_ONE_LINE)
    return text if len(text) <= limit else text[: limit - 1] + _ELLIPSIS


def _qualname(tp: type) -> str:
    """The class's qualified name, without the ``f.<locals>.`` of classes defined in functions."""
    name = str(getattr(tp, "__qualname__", None) or getattr(tp, "__name__", "object"))
    return name.rpartition("<locals>.")[2]


def _class_text(value: Any) -> str:
    try:
        return f"<{_qualname(type(value))} object>"
    except Exception:  # noqa: BLE001 - even type() of a proxy may misbehave
        return "<object>"


def _count(n: int, noun: str) -> str:
    return f"{n:,} {noun}" + ("" if n == 1 else "s")


def size_text(nbytes: int) -> str:
    """A byte count for people: ``512 B``, ``1.5 KB``, ``1.0 GB`` (powers of 1000).

    Example:
        >>> size_text(512), size_text(2048), size_text(3 * 10**9)
        ('512 B', '2.0 KB', '3.0 GB')
    """
    if nbytes < 1000:
        return f"{nbytes} B"
    size = float(nbytes)
    for unit in ("KB", "MB", "GB", "TB"):
        size /= 1000.0
        if size < 1000.0 or unit == "TB":
            return f"{size:.1f} {unit}"
    return f"{nbytes} B"  # pragma: no cover - the loop always returns


def _shape(shape: Any) -> str:
    dims = tuple(int(d) for d in shape)
    return "(" + ", ".join(str(d) for d in dims) + ("," if len(dims) == 1 else "") + ")"


class _Previewer:
    """One preview: a budget of characters shared by every nested item."""

    def __init__(self, limit: int) -> None:
        self.limit = limit

    def show(self, value: Any, depth: int) -> str:
        tp = type(value)
        simple = _SIMPLE.get(tp)
        if simple is not None:
            return simple(self, value)
        if tp in _CONTAINERS:
            return self._container(value, depth)
        user = _user_preview(value)
        if user is not None:
            return user
        module = getattr(tp, "__module__", None)
        data = _DATA.get(module.partition(".")[0]) if isinstance(module, str) else None
        if data is not None:
            found = data(self, value, tp, depth)
            if found is not None:
                return found
        return self._by_kind(value, tp, depth)

    def _by_kind(self, value: Any, tp: type, depth: int) -> str:
        # Subclasses of builtins come here: their own __repr__ may be anything, so they are
        # shown as their base type's preview, named after their class.
        name = _qualname(tp)
        if isinstance(value, tuple) and hasattr(tp, "_fields"):  # a namedtuple
            items = [(str(f), getattr(value, str(f), None)) for f in tp._fields[:_MAX_ITEMS]]
            return self._named(name, items, len(tp._fields), depth)
        if isinstance(value, enum.Enum):
            return f"{name}.{value.name}"
        for base, show in _BASES:
            if isinstance(value, base):
                inner = self._container(value, depth) if show is None else show(self, value)
                return f"{name}({inner})"
        fields = _dataclass_fields(value, tp)
        if fields is not None:
            names = fields[:_MAX_ITEMS]
            return self._named(name, [(f, getattr(value, f, None)) for f in names], len(fields), depth)
        if isinstance(value, BaseException):
            return f"{name}({self._items(list(value.args[:_MAX_ITEMS]), len(value.args), depth)})"
        if isinstance(value, type):
            return f"<class {value.__module__}.{_qualname(value)}>"
        if callable(value) and hasattr(value, "__qualname__"):
            return f"<{name} {value.__qualname__}>"
        return f"<{name} object>"

    def _named(self, name: str, fields: list[tuple[str, Any]], total: int, depth: int) -> str:
        if depth >= _MAX_DEPTH:
            return f"{name}({_ELLIPSIS})"
        parts: list[str] = []
        used = len(name) + 2
        for field, item in fields:
            if used > self.limit:
                break
            part = f"{field}={self.show(item, depth + 1)}"
            parts.append(part)
            used += len(part) + 2
        if len(parts) < total:
            parts.append(_ELLIPSIS)
        return f"{name}({', '.join(parts)})"

    def _container(self, value: Any, depth: int) -> str:
        tp = dict if isinstance(value, dict) else list if isinstance(value, list) else type(value)
        n = len(value)
        if isinstance(value, dict):
            open_, close = "{", "}"
            body = self._pairs(value, n, depth)
        elif isinstance(value, list):
            open_, close = "[", "]"
            body = self._items(value, n, depth)
        elif isinstance(value, tuple):
            open_, close = "(", ",)" if n == 1 else ")"
            body = self._items(value, n, depth)
        elif n == 0:
            return "set()" if tp is set else f"{_qualname(tp)}()"
        else:
            open_, close = ("{", "}") if tp is set else (f"{_qualname(tp)}({{", "})")
            body = self._items(value, n, depth)
        text = f"{open_}{body}{close}"
        if n > _MAX_ITEMS or len(text) > self.limit:
            text += f" ({_count(n, 'item')})"
        return text

    def _items(self, items: Any, n: int, depth: int) -> str:
        if n and depth >= _MAX_DEPTH:
            return _ELLIPSIS
        parts: list[str] = []
        used = 0
        for i, item in enumerate(items):
            if i >= _MAX_ITEMS or used > self.limit:
                break
            part = self.show(item, depth + 1)
            parts.append(part)
            used += len(part) + 2
        if len(parts) < n:
            parts.append(_ELLIPSIS)
        return ", ".join(parts)

    def _pairs(self, mapping: dict[Any, Any], n: int, depth: int) -> str:
        if n and depth >= _MAX_DEPTH:
            return _ELLIPSIS
        parts: list[str] = []
        used = 0
        for i, (key, item) in enumerate(mapping.items()):
            if i >= _MAX_ITEMS or used > self.limit:
                break
            part = f"{self.show(key, depth + 1)}: {self.show(item, depth + 1)}"
            parts.append(part)
            used += len(part) + 2
        if len(parts) < n:
            parts.append(_ELLIPSIS)
        return ", ".join(parts)

    # Builtin scalars and strings.

    def str_(self, value: str) -> str:
        if len(value) <= self.limit:
            return repr(value)
        return repr(value[: self.limit])[:-1] + _ELLIPSIS

    def bytes_(self, value: bytes | bytearray | memoryview) -> str:
        n = value.nbytes if isinstance(value, memoryview) else len(value)
        kind = type(value).__name__
        if n <= self.limit // 4:  # short enough that its escaped repr fits
            return repr(bytes(value)) if kind == "bytes" else f"{kind}({bytes(value)!r})"
        return f"{kind} ({size_text(n)})"

    def int_(self, value: int) -> str:
        bits = int.bit_length(value)
        if bits <= _MAX_DIGITS_BITS:
            return int.__repr__(value)
        digits = math.floor(bits * math.log10(2)) + 1  # at most one more than the true count
        return f"int (~{digits:,} digits)"

    def float_(self, value: float) -> str:
        return float.__repr__(value)

    def complex_(self, value: complex) -> str:
        return complex.__repr__(value)

    def datetime_(self, value: _dt.date | _dt.time) -> str:
        return value.isoformat()

    def timedelta_(self, value: _dt.timedelta) -> str:
        return str(value)

    def plain(self, value: Any) -> str:
        return repr(value)

    def range_(self, value: range) -> str:
        return repr(value)

    def decimal_(self, value: decimal.Decimal) -> str:
        text = str(value)
        return text if len(text) <= self.limit else f"Decimal ({len(text):,} characters)"

    # Data libraries, by the top-level module of the value's class.

    def numpy_(self, value: Any, tp: type, depth: int) -> str | None:
        np = sys.modules.get("numpy")
        if np is None:
            return None
        if isinstance(value, np.generic):  # a numpy scalar: shown as the Python value it holds
            return self.show(value.item(), depth)
        if isinstance(value, np.dtype):
            return f"dtype({value})"
        if not isinstance(value, np.ndarray):
            return None
        size = int(value.size)
        text = f"{tp.__name__} {value.dtype} {_shape(value.shape)}"
        if 0 < size <= _SMALL_ARRAY and depth < _MAX_DEPTH:
            text += " " + self.show(value.ravel().tolist(), depth + 1)
        return text

    def pandas_(self, value: Any, tp: type, depth: int) -> str | None:
        name = tp.__name__
        if name == "DataFrame":
            rows, cols = value.shape
            labels = itertools.islice(value.columns, _MAX_ITEMS + 1)  # no Index slice: a new Index costs more
            return f"DataFrame {rows:,} rows x {cols:,} cols" + self._labels(labels)
        if name == "Series":
            return f"Series{self._name(value.name, depth)} {value.dtype} {len(value):,} rows"
        if name.endswith("Index"):
            return f"{name} {value.dtype} ({len(value):,})"
        if name == "Timestamp":
            return str(value.isoformat())
        if name in {"Timedelta", "NaTType", "NAType", "Period", "Interval"}:
            return str(value)
        return None

    def pyarrow_(self, value: Any, tp: type, depth: int) -> str | None:
        del depth
        name = tp.__name__
        if name in {"Table", "RecordBatch"}:
            cols = value.num_columns
            text = f"{name} {value.num_rows:,} rows x {cols:,} cols"
            return text + (self._labels(value.schema.names) if cols <= _MAX_LABELS else "")
        if name == "ChunkedArray" or name.endswith("Array"):
            return f"{name} {value.type} ({len(value):,})"
        return None

    def polars_(self, value: Any, tp: type, depth: int) -> str | None:
        name = tp.__name__
        if name == "DataFrame":
            rows, cols = value.shape
            text = f"polars DataFrame {rows:,} rows x {cols:,} cols"
            return text + (self._labels(value.columns) if cols <= _MAX_LABELS else "")
        if name == "Series":
            return f"polars Series{self._name(value.name, depth)} {value.dtype} {len(value):,} rows"
        if name == "LazyFrame":  # its schema may cost a query plan: show nothing of it
            return "polars LazyFrame"
        return None

    def _name(self, name: Any, depth: int) -> str:
        return "" if name is None else " " + self.show(name, max(depth, _MAX_DEPTH - 1))

    def _labels(self, labels: Any) -> str:
        """`` [a, b, c, …]``: the first column labels, within the budget."""
        parts: list[str] = []
        used = 0
        for i, label in enumerate(labels):
            if i >= _MAX_ITEMS or used > self.limit:
                parts.append(_ELLIPSIS)
                break
            text = label[: self.limit] if isinstance(label, str) else self.show(label, _MAX_DEPTH - 1)
            parts.append(text)
            used += len(text) + 2
        return " [" + ", ".join(parts) + "]" if parts else ""


_SIMPLE: dict[type, Callable[[_Previewer, Any], str]] = {
    str: _Previewer.str_,
    bytes: _Previewer.bytes_,
    bytearray: _Previewer.bytes_,
    memoryview: _Previewer.bytes_,
    int: _Previewer.int_,
    bool: _Previewer.plain,
    float: _Previewer.float_,
    complex: _Previewer.complex_,
    type(None): _Previewer.plain,
    type(...): _Previewer.plain,
    _dt.datetime: _Previewer.datetime_,
    _dt.date: _Previewer.datetime_,
    _dt.time: _Previewer.datetime_,
    _dt.timedelta: _Previewer.timedelta_,
    decimal.Decimal: _Previewer.decimal_,
    uuid.UUID: _Previewer.plain,
    pathlib.PurePosixPath: _Previewer.plain,
    pathlib.PureWindowsPath: _Previewer.plain,
    pathlib.PosixPath: _Previewer.plain,
    pathlib.WindowsPath: _Previewer.plain,
    range: _Previewer.range_,
}
_CONTAINERS: frozenset[type] = frozenset({list, tuple, dict, set, frozenset})
_BASES: tuple[tuple[type, Callable[[_Previewer, Any], str] | None], ...] = (
    (str, _Previewer.str_),
    (bytes, _Previewer.bytes_),
    (bytearray, _Previewer.bytes_),
    (bool, _Previewer.plain),
    (int, _Previewer.int_),
    (float, _Previewer.float_),
    (dict, None),
    (list, None),
    (tuple, None),
    (set, None),
    (frozenset, None),
    (_dt.date, _Previewer.datetime_),
)
_DATA: dict[str, Callable[[_Previewer, Any, type, int], str | None]] = {
    "numpy": _Previewer.numpy_,
    "pandas": _Previewer.pandas_,
    "pyarrow": _Previewer.pyarrow_,
    "polars": _Previewer.polars_,
}


def _dataclass_fields(value: Any, tp: type) -> list[str] | None:
    """Field names of a dataclass or pydantic model instance, read from its class only."""
    fields = getattr(tp, "__dataclass_fields__", None)
    if isinstance(fields, dict) and not isinstance(value, type):
        return [str(k) for k in fields]
    model_fields = getattr(tp, "__pydantic_fields__", None)
    if isinstance(model_fields, dict):
        return [str(k) for k in model_fields]
    return None


def _user_preview(value: Any) -> str | None:
    """The preview a registered codec gives, if the value has one (codecs loaded only if in use)."""
    codecs = sys.modules.get("nbdurable._codecs")
    if codecs is None:
        return None
    found: str | None = codecs.registry.user_preview(value)
    return found
