"""pandas DataFrames and Series stored exactly as Arrow IPC files (or refused, naming what cannot be)."""

from __future__ import annotations

import json
import math
import warnings
from typing import Any, BinaryIO

from nbdurable._codec_base import META_KEY as _META_KEY
from nbdurable._codec_base import PICKLE_FIX as _PICKLE_FIX
from nbdurable._codec_base import DataCodec, PathLike
from nbdurable._codec_base import label as _label
from nbdurable._codec_base import library as _library
from nbdurable._codec_base import module as _module
from nbdurable._codec_base import one_line as _one_line
from nbdurable._codec_base import read_arrow_table as _read_arrow_table
from nbdurable._codec_base import write_arrow_table as _write_arrow_table
from nbdurable._process import STATE
from nbdurable.errors import OutputUnserializableError

_SMALL_FRAME_CELLS = 4_000_000


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
STATE.reset_hooks.append(_layouts_passed.clear)


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
