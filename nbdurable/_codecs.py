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

import importlib
import inspect
import json
import math
import os
import sys
import warnings
from collections.abc import Callable
from typing import Any, BinaryIO

from nbdurable._process import STATE
from nbdurable.errors import OutputUnserializableError

__all__ = ["DataCodec", "codec_for", "register_codec", "registry"]

_PICKLE_FIX = 'Fix: use serializer="pickle" on the client or function.'
_META_KEY = b"nbdurable"
_SMALL_FRAME_CELLS = 4_000_000

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
        self._read_takes_mmap = read is not None and _takes_keyword(read, "mmap")
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


def _takes_keyword(fn: Callable[..., Any], keyword: str) -> bool:
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):  # builtins without a signature
        return False
    return any(
        (p.name == keyword and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)) or p.kind == p.VAR_KEYWORD
        for p in params
    )


def _module(name: str) -> Any:
    """A library the user already imported, or None (never imports it)."""
    return sys.modules.get(name)


def _library(name: str) -> Any:
    """Import a data library to write or read its values.

    Typed as Any: their annotations vary across versions and some ship no stubs.
    """
    return importlib.import_module(name)


def _one_line(exc: BaseException) -> str:
    """An exception's text on one line: pyarrow puts its parts in a tuple of args."""
    parts = [str(a) for a in exc.args] if len(exc.args) > 1 else [str(exc)]
    text = "; ".join(" ".join(p.split()) for p in parts if p)
    return text if len(text) <= 200 else text[:199] + "\u2026"


def _label(label: Any) -> str:
    text = repr(label)
    return text if len(text) <= 60 else text[:59] + "\u2026"


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


def _write_arrow_table(table: Any, fileobj: BinaryIO) -> None:
    pa = _library("pyarrow")

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


def _read_arrow_table(path: PathLike, *, mmap: bool) -> Any:
    pa = _library("pyarrow")

    source = pa.memory_map(os.fspath(path), "r") if mmap else pa.OSFile(os.fspath(path), "rb")
    with pa.ipc.open_file(source) as reader:
        return reader.read_all()


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


# pandas, through Arrow


_OBJECT_TYPES: dict[type, str] = {str: "str", bytes: "bytes", int: "int", float: "float", bool: "bool"}


class PandasCodec(DataCodec):
    """pandas DataFrames and Series as Arrow IPC files, exactly, or refused with the reason.

    The index (also a MultiIndex, names, a ``DatetimeIndex``'s freq), column labels, dtypes
    (categoricals, time zones, nullable extension dtypes) and ``attrs`` round-trip. Columns of
    Python objects are stored when each holds one type of str, bytes, int, float or bool
    (and one kind of missing value); anything else is refused, naming the column.
    """

    def __init__(self) -> None:
        super().__init__(name="pandas", suffix=".arrow")

    def accepts(self, value: Any) -> bool:
        """Whether ``value`` is a pandas DataFrame or Series (not a subclass).

        Args:
            value: any value.
        """
        pd = _module("pandas")
        return pd is not None and type(value) in (pd.DataFrame, pd.Series)

    def write(self, value: Any, fileobj: BinaryIO) -> None:
        """Write the frame (a Series as a one-column frame) as an Arrow IPC file.

        Args:
            value: a pandas DataFrame or Series.
            fileobj: a file open for binary writing.

        Raises:
            OutputUnserializableError: a column, label or index Arrow cannot store exactly.
        """
        _write_arrow_table(_to_arrow(value), fileobj)

    def read(self, path: PathLike, *, mmap: bool = False) -> Any:
        """The stored frame or Series, an ordinary writable one either way.

        pandas frames are changed in place, and frames that pyarrow builds zero-copy are
        read-only, so the data is always copied into pandas' own memory. ``mmap`` decodes
        straight from a map of the file (one copy out of the page cache, instead of reading
        the file into memory and copying again); only Arrow-backed columns (pandas' pyarrow
        string dtype) keep referring to the map, whose data is immutable.

        Args:
            path: an Arrow IPC file written by this codec.
            mmap: decode from a map of the file instead of reading it first.
        """
        return _from_arrow(_read_arrow_table(path, mmap=mmap))


def _to_arrow(value: Any) -> Any:
    pd = _library("pandas")
    pa = _library("pyarrow")

    meta: dict[str, Any] = {}
    what = "DataFrame"
    frame = value
    if isinstance(value, pd.Series):
        what = "Series"
        meta["series"] = True
        meta["name_none"] = value.name is None
        frame = value.to_frame()
    columns = frame.columns
    if not columns.is_unique:
        dup = columns[columns.duplicated()][0]
        msg = f"a {what} with duplicate column label {_label(dup)} cannot be stored in Arrow format. {_PICKLE_FIX}"
        raise OutputUnserializableError(msg)
    np = _library("numpy")
    objects = {}
    for i, dtype in enumerate(frame.dtypes):
        if isinstance(dtype, np.dtype) and dtype.kind == "O":
            objects[str(i)] = _object_column_kind(frame.iloc[:, i], columns[i], what)
    meta["objects"] = objects
    # Labels of str kept in an object Index (pandas 3 would read them back as its str dtype).
    meta["object_index"] = _object_str_labels(frame.index)
    meta["object_columns"] = _object_str_labels(frame.columns)
    freq = getattr(frame.index, "freqstr", None)
    if freq is not None and not isinstance(frame.index, pd.PeriodIndex):
        meta["freq"] = freq
    # Labels and dtypes are checked on no rows first: a refusal costs nothing, and is certain.
    # A layout that passed once passes again: frames of one schema are checked once.
    layout = _layout_key(frame, meta, what)
    if layout is None or layout not in _layouts_passed:
        _check_layout_round_trip(pa, frame.iloc[:0], meta, what)
        if layout is not None:
            if len(_layouts_passed) >= _MAX_LAYOUTS:
                _layouts_passed.clear()
            _layouts_passed.add(layout)
    return _frame_table(pa, frame, meta, what)


_MAX_LAYOUTS = 256
_layouts_passed: set[tuple[Any, ...]] = set()  # a cache of verdicts, not state: clearing it costs a check


def _layout_key(frame: Any, meta: dict[str, Any], what: str) -> tuple[Any, ...] | None:
    """What decides whether a frame's labels and dtypes round-trip (None if it cannot be a key)."""
    index, columns = frame.index, frame.columns
    try:
        key = (
            what,
            json.dumps(meta, sort_keys=True),
            tuple(columns),
            tuple(map(type, columns)),
            tuple(columns.names),
            str(columns.dtype),
            tuple(frame.dtypes),
            type(index),
            tuple(index.names),
            tuple(getattr(index, "dtypes", [index.dtype])),
        )
        hash(key)
    except TypeError:  # an unhashable label or dtype: checked every time
        return None
    return key


def _frame_table(pa: Any, frame: Any, meta: dict[str, Any], what: str) -> Any:
    try:
        with warnings.catch_warnings():
            # Labels of mixed types: pyarrow warns, and the layout check refuses them.
            warnings.simplefilter("ignore", UserWarning)
            # pyarrow converts columns on a new thread pool per call: for small frames starting
            # the threads costs more than converting.
            small = frame.shape[0] * max(frame.shape[1], 1) < _SMALL_FRAME_CELLS
            table = pa.Table.from_pandas(frame, preserve_index=None, nthreads=1 if small else None)
    except (pa.ArrowException, ValueError, TypeError, OverflowError) as exc:
        msg = f"a {what} cannot be stored in Arrow format ({_one_line(exc)}). {_PICKLE_FIX}"
        culprit = _failing_column(pa, frame)
        if culprit is not None:
            label, dtype = culprit
            msg = (
                f"{what} column {_label(label)} of dtype {dtype} cannot be stored in Arrow format "
                f"({_one_line(exc)}). {_PICKLE_FIX}"
            )
        raise OutputUnserializableError(msg) from None
    schema_meta = dict(table.schema.metadata or {})
    schema_meta[_META_KEY] = json.dumps(meta).encode()
    return table.replace_schema_metadata(schema_meta)


def _failing_column(pa: Any, frame: Any) -> tuple[Any, Any] | None:
    """The first column Arrow cannot convert, to name it in the error (only called on failure)."""
    for i, label in enumerate(frame.columns):
        try:
            pa.array(frame.iloc[:, i], from_pandas=True)
        except (pa.ArrowException, ValueError, TypeError, OverflowError):
            return label, frame.dtypes.iloc[i]
    return None


def _object_column_kind(column: Any, label: Any, what: str) -> dict[str, str]:
    """The one element type and the one missing-value kind of an object column, or a refusal."""
    pd = _library("pandas")

    values = column.to_numpy()
    missing = pd.isna(values)
    kinds = {_missing_kind(v) for v in values[missing]} if missing.any() else set()
    types = set(map(type, values[~missing])) if not missing.all() else set()
    if len(types) > 1 or (types and next(iter(types)) not in _OBJECT_TYPES):
        names = ", ".join(sorted(f"{t.__module__}.{t.__qualname__}".removeprefix("builtins.") for t in types)[:3])
        msg = (
            f"{what} column {_label(label)} holds Python objects ({names}) that Arrow cannot store exactly "
            f"(one of str, bytes, int, float or bool per column). {_PICKLE_FIX}"
        )
        raise OutputUnserializableError(msg)
    if len(kinds) > 1 or "other" in kinds:
        msg = (
            f"{what} column {_label(label)} mixes kinds of missing values ({', '.join(sorted(kinds))}), "
            f"which Arrow stores as one null. {_PICKLE_FIX}"
        )
        raise OutputUnserializableError(msg)
    return {"type": _OBJECT_TYPES[next(iter(types))] if types else "none", "missing": next(iter(kinds), "none")}


def _object_str_labels(labels: Any) -> bool:
    """Whether an index (not a MultiIndex) is of object dtype and holds only str."""
    if labels.dtype != object or labels.nlevels != 1:
        return False
    return set(map(type, labels)) <= {str}


def _missing_kind(value: Any) -> str:
    if value is None:
        return "none"
    if type(value) is float and math.isnan(value):
        return "nan"
    name = type(value).__name__
    return {"NAType": "na", "NaTType": "nat"}.get(name, "other")


def _check_layout_round_trip(pa: Any, empty: Any, meta: dict[str, Any], what: str) -> None:
    """Refuse a frame whose labels, index or dtypes would not come back the same."""
    table = _frame_table(pa, empty, meta, what)
    try:
        back = _from_arrow(table)
    except Exception as exc:  # noqa: BLE001 - any failure to rebuild means the frame is not stored
        msg = f"a {what} could not be rebuilt from Arrow format ({_one_line(exc)}). {_PICKLE_FIX}"
        raise OutputUnserializableError(msg) from None
    if what == "Series":
        back = back.to_frame() if back.name is not None else back.to_frame(name=empty.columns[0])
    problem = _frame_layout_difference(empty, back)
    if problem:
        msg = f"a {what} cannot be stored exactly in Arrow format: {problem}. {_PICKLE_FIX}"
        raise OutputUnserializableError(msg)


def _frame_layout_difference(frame: Any, back: Any) -> str:
    if not (frame.columns.equals(back.columns) and frame.columns.dtype == back.columns.dtype):
        return f"column labels {_label(list(frame.columns[:4]))} of mixed or unsupported types"
    if list(frame.columns.names) != list(back.columns.names):
        return "column level names"
    for label, left, right in zip(frame.columns, frame.dtypes, back.dtypes, strict=True):
        if left != right:
            return f"column {_label(label)} of dtype {left} would come back as {right}"
    index, other = frame.index, back.index
    if type(index) is not type(other) or list(index.names) != list(other.names):
        return f"an index of type {type(index).__name__} named {_label(list(index.names))}"
    left_dtypes = list(getattr(index, "dtypes", [index.dtype]))
    right_dtypes = list(getattr(other, "dtypes", [other.dtype]))
    if left_dtypes != right_dtypes:
        return f"an index of dtype {left_dtypes[0]} would come back as {right_dtypes[0]}"
    return ""


def _from_arrow(table: Any) -> Any:
    np = _library("numpy")
    pd = _library("pandas")

    raw = (table.schema.metadata or {}).get(_META_KEY)
    meta: dict[str, Any] = json.loads(raw) if raw else {}
    frame = table.to_pandas()
    for i, dtype in enumerate(frame.dtypes):
        # pyarrow hands categorical codes over zero-copy, as read-only arrays (in the file's
        # map, if mapped): a frame read back must take assignments like the one stored.
        if isinstance(dtype, pd.CategoricalDtype):
            codes = np.array(frame.iloc[:, i].array.codes)
            frame.isetitem(i, pd.Categorical.from_codes(codes, dtype=dtype))
    sentinels: dict[str, Any] = {"none": None, "nan": float("nan"), "na": pd.NA, "nat": pd.NaT}
    for key, kind in meta.get("objects", {}).items():
        i = int(key)
        column = table.column(i)
        values = np.empty(len(column), dtype=object)
        values[:] = column.to_pylist()
        if kind["missing"] != "none" and column.null_count:
            values[column.is_null().to_numpy(zero_copy_only=False)] = sentinels[kind["missing"]]
        frame.isetitem(i, pd.Series(values, index=frame.index, dtype=object, copy=False))
    if meta.get("object_index"):
        frame.index = frame.index.astype(object)
    if meta.get("object_columns"):
        frame.columns = frame.columns.astype(object)
    if "freq" in meta:
        frame.index = type(frame.index)(frame.index, freq=meta["freq"])
    if meta.get("series"):
        series = frame.iloc[:, 0]
        return series.rename(None) if meta.get("name_none") else series
    return frame


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
