"""Data codecs: exact round trips in native formats, memory maps, refusals, and user codecs."""

from __future__ import annotations

import fractions
import hashlib
import io
import subprocess
import sys
import zoneinfo
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nbdurable._codecs import DataCodec, codec_for, register_codec, registry
from nbdurable._hashing import content_digest
from nbdurable._preview import preview
from nbdurable.errors import OutputUnserializableError


@pytest.fixture(autouse=True)
def _clean_registry():
    yield
    registry.reset()


def _store(value: Any, path: Path, *, mmap: bool = False) -> Any:
    """Write a value with its codec to a file under `path` and read it back."""
    codec = codec_for(value)
    assert codec is not None
    target = path.with_suffix(codec.suffix)
    with target.open("wb") as handle:
        codec.write(value, handle)
    return codec.read(target, mmap=mmap)


def _file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class Recorder(io.RawIOBase):
    """A write-only file that records the largest single write (to prove the writes stream)."""

    def __init__(self) -> None:
        self.largest = 0
        self.total = 0

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        size = memoryview(data).nbytes
        self.largest = max(self.largest, size)
        self.total += size
        return size


def test_importing_the_data_modules_imports_no_data_library():
    """The codecs, previews and fingerprints import none of numpy, pandas, pyarrow or polars."""
    code = (
        "import nbdurable._codecs, nbdurable._preview, nbdurable._hashing; import sys; "
        "assert not any(m in sys.modules for m in ('numpy', 'pandas', 'pyarrow', 'polars')), "
        "[m for m in ('numpy', 'pandas', 'pyarrow', 'polars') if m in sys.modules]"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_plain_values_have_no_data_codec():
    """Plain Python values are left to the other serializers."""
    assert codec_for({"a": [1, 2]}) is None
    assert codec_for(b"bytes") is None


# numpy


NUMPY_DTYPES = [
    "bool",
    "i1",
    "i2",
    "i4",
    "i8",
    "u1",
    "u2",
    "u4",
    "u8",
    "f2",
    "f4",
    "f8",
    "c8",
    "c16",
    ">i4",
    ">f8",
    "M8[ns]",
    "M8[D]",
    "m8[s]",
    "U5",
    "S3",
    "V4",
    [("a", "i4"), ("b", "f8"), ("c", "U2")],
]


@pytest.mark.parametrize("dtype", NUMPY_DTYPES, ids=str)
def test_numpy_arrays_round_trip_exactly(tmp_path, dtype):
    """Arrays of every fixed-width dtype come back with the same dtype, shape and bytes."""
    np = pytest.importorskip("numpy")
    values = np.frombuffer(np.random.default_rng(0).bytes(np.dtype(dtype).itemsize * 24), dtype=dtype).reshape(4, 6)
    back = _store(values, tmp_path / "a")
    assert back.dtype == values.dtype
    assert back.shape == values.shape
    assert back.tobytes() == values.tobytes()


@pytest.mark.parametrize("shape", [(), (0,), (0, 3), (7,), (2, 3, 4)], ids=str)
def test_numpy_shapes_round_trip(tmp_path, shape):
    """0-d, empty and n-d arrays round-trip, also memory-mapped."""
    np = pytest.importorskip("numpy")
    values = np.arange(int(np.prod(shape)), dtype="f8").reshape(shape)
    for mmap in (False, True):
        back = _store(values, tmp_path / "a", mmap=mmap)
        assert back.shape == values.shape
        np.testing.assert_array_equal(back, values)


def test_numpy_layouts_round_trip(tmp_path):
    """Fortran-ordered arrays keep their order; strided views come back as their values."""
    np = pytest.importorskip("numpy")
    values = np.arange(60.0).reshape(6, 10)
    fortran = _store(np.asfortranarray(values), tmp_path / "f")
    assert fortran.flags.f_contiguous
    np.testing.assert_array_equal(fortran, values)
    view = values[::2, 1::3]
    np.testing.assert_array_equal(_store(view, tmp_path / "v"), view)


def test_nan_and_nat_round_trip(tmp_path):
    """NaN, infinities, -0.0 and NaT keep their exact bits."""
    np = pytest.importorskip("numpy")
    floats = np.array([np.nan, -np.inf, np.inf, -0.0, 1.5])
    assert _store(floats, tmp_path / "f").tobytes() == floats.tobytes()
    times = np.array(["2024-01-01", "NaT"], dtype="M8[ns]")
    assert _store(times, tmp_path / "t").tobytes() == times.tobytes()


def test_a_npy_file_opens_with_plain_numpy(tmp_path):
    """The file is a plain .npy file: np.load reads it without pickle."""
    np = pytest.importorskip("numpy")
    values = np.arange(10)
    codec = codec_for(values)
    assert codec is not None
    assert codec.suffix == ".npy"
    path = tmp_path / "a.npy"
    with path.open("wb") as handle:
        codec.write(values, handle)
    np.testing.assert_array_equal(np.load(path, allow_pickle=False), values)


def test_a_memory_mapped_array_is_writable_and_its_file_unchanged(tmp_path):
    """A memory-mapped read is copy-on-write: writing to it never modifies the stored file."""
    np = pytest.importorskip("numpy")
    values = np.arange(1000.0)
    codec = codec_for(values)
    assert codec is not None
    path = tmp_path / "a.npy"
    with path.open("wb") as handle:
        codec.write(values, handle)
    before = _file_digest(path)
    mapped = codec.read(path, mmap=True)
    assert isinstance(mapped, np.memmap)
    assert mapped.flags.writeable
    mapped[:] = -1.0
    mapped.flush()
    del mapped
    assert _file_digest(path) == before
    np.testing.assert_array_equal(codec.read(path, mmap=True), values)


def test_a_memory_mapped_array_is_stored_again_as_an_array(tmp_path):
    """A memory-mapped array handed to a later step is stored like any array."""
    np = pytest.importorskip("numpy")
    mapped = _store(np.arange(5), tmp_path / "a", mmap=True)
    codec = codec_for(mapped)
    assert codec is not None
    assert codec.name == "numpy"
    np.testing.assert_array_equal(_store(mapped, tmp_path / "b"), np.arange(5))


@pytest.mark.parametrize("kind", ["object", "stringdtype"])
def test_arrays_of_python_objects_are_refused(tmp_path, kind):
    """Object arrays are refused in one line that names the dtype and the fix."""
    np = pytest.importorskip("numpy")
    if kind == "object":
        values = np.array([1, "a", None], dtype=object)
    else:
        string_dtype = getattr(np.dtypes, "StringDType", None)
        if string_dtype is None:
            pytest.skip("numpy without StringDType")
        values = np.array(["a", "bb"], dtype=string_dtype())
    with pytest.raises(OutputUnserializableError) as info:
        _store(values, tmp_path / "a")
    message = str(info.value)
    assert "\n" not in message
    assert 'serializer="pickle"' in message


def test_numpy_writes_stream_in_bounded_pieces():
    """Writing a 40 MB array never hands the file more than numpy's 16 MiB chunks at once."""
    np = pytest.importorskip("numpy")
    values = np.zeros(5_000_000)[::1]
    codec = codec_for(values)
    assert codec is not None
    sink = Recorder()
    codec.write(values, sink)  # type: ignore[arg-type]
    assert sink.total > values.nbytes
    assert sink.largest <= 16 * 1024 * 1024


def test_subclasses_of_ndarray_are_not_taken():
    """Masked arrays and matrices are not plain arrays: the codec leaves them to other serializers."""
    np = pytest.importorskip("numpy")
    assert codec_for(np.ma.masked_array([1, 2], mask=[0, 1])) is None


# pandas


def _frame_cases(pd: Any, np: Any) -> dict[str, Any]:
    paris = zoneinfo.ZoneInfo("Europe/Paris")
    return {
        "int labels": pd.DataFrame({0: [1, 2], 1: [3.0, np.nan]}),
        "tuple labels": pd.DataFrame({("a", "b"): [1, 2]}),
        "multiindex columns": pd.DataFrame([[1, 2]], columns=pd.MultiIndex.from_tuples([("a", "x"), ("b", "y")])),
        "object str with None": pd.DataFrame({"s": pd.Series(["a", None, "c"], dtype=object)}),
        "object str with NaN": pd.DataFrame({"s": pd.Series(["a", np.nan, "c"], dtype=object)}),
        "object str with NA": pd.DataFrame({"s": pd.Series(["a", pd.NA, "c"], dtype=object)}),
        "object ints with None": pd.DataFrame({"s": pd.Series([1, None, 3], dtype=object)}),
        "object bytes": pd.DataFrame({"s": pd.Series([b"a", None], dtype=object)}),
        "object bools": pd.DataFrame({"s": pd.Series([True, False], dtype=object)}),
        "object all None": pd.DataFrame({"s": pd.Series([None, None], dtype=object)}),
        "str": pd.DataFrame({"s": ["a", None, "c"]}),
        "tz zoneinfo": pd.DataFrame({"t": pd.date_range("2020", periods=3, tz=paris)}),
        "tz name with NaT": pd.DataFrame({"t": pd.Series(pd.date_range("2020", periods=3, tz="Asia/Kolkata")).shift()}),
        "datetime units": pd.DataFrame({"t": pd.Series(pd.date_range("2020", periods=3)).astype("datetime64[s]")}),
        "timedelta with NaT": pd.DataFrame({"d": pd.to_timedelta([1, None, 3], unit="s")}),
        "extension dtypes": pd.DataFrame(
            {
                "i": pd.array([1, None, 3], dtype="Int64"),
                "u": pd.array([1, None, 3], dtype="UInt8"),
                "b": pd.array([True, None, False], dtype="boolean"),
                "s": pd.array(["a", None, "c"], dtype="string"),
                "f": pd.array([1.5, None, 2.5], dtype="Float64"),
            }
        ),
        "categorical ordered": pd.DataFrame(
            {"c": pd.Categorical(["a", "b", None], categories=["b", "a", "z"], ordered=True)}
        ),
        "categorical of ints": pd.DataFrame({"c": pd.Categorical([1, 2, 1])}),
        "multiindex": pd.DataFrame(
            {"v": [1, 2]}, index=pd.MultiIndex.from_tuples([("a", 1), ("b", 2)], names=["k", "n"])
        ),
        "named index": pd.DataFrame({"v": [1, 2]}, index=pd.Index([10, 20], name="id")),
        "object index": pd.DataFrame({"v": [1, 2]}, index=pd.Index(["a", "b"], dtype=object)),
        "object labels": pd.DataFrame([[1, 2]], columns=pd.Index(["a", "b"], dtype=object)),
        "range index": pd.DataFrame({"v": [1, 2]}, index=pd.RangeIndex(5, 7, name="r")),
        "columns name": pd.DataFrame({"v": [1, 2]}).rename_axis(columns="cn"),
        "datetime index with freq": pd.DataFrame({"v": [1, 2]}, index=pd.date_range("2020", periods=2, freq="D")),
        "period": pd.DataFrame({"p": pd.period_range("2020", periods=2, freq="M")}),
        "interval": pd.DataFrame({"p": pd.interval_range(0, 2)}),
        "float16 and uint8": pd.DataFrame(
            {"h": np.array([1.5], dtype=np.float16), "u": np.array([255], dtype=np.uint8)}
        ),
        "empty": pd.DataFrame(),
        "index only": pd.DataFrame(index=[1, 2]),
        "no rows": pd.DataFrame({"a": pd.Series([], dtype="f8"), "s": pd.Series([], dtype=object)}),
    }


def _assert_frames_identical(left: Any, right: Any) -> None:
    pd = pytest.importorskip("pandas")
    pd.testing.assert_frame_equal(left, right, check_exact=True, check_freq=True, check_flags=True)
    for label, dtype in left.dtypes.items():
        if str(dtype) == "object":  # the kind of each missing value (None, NaN, NA) too
            assert [type(v) for v in left[label]] == [type(v) for v in right[label]], label
    assert left.attrs == right.attrs


def test_frames_round_trip_exactly(tmp_path):
    """Every kind of label, index, dtype and missing value comes back exactly."""
    pd = pytest.importorskip("pandas")
    np = pytest.importorskip("numpy")
    pytest.importorskip("pyarrow")
    for name, frame in _frame_cases(pd, np).items():
        for mmap in (False, True):
            back = _store(frame, tmp_path / "f", mmap=mmap)
            try:
                _assert_frames_identical(frame, back)
            except AssertionError as exc:
                raise AssertionError(f"{name}: {exc}") from None


def test_frames_read_back_take_assignments(tmp_path):
    """A frame read back, whole or memory-mapped, is an ordinary writable frame, never a view of the file."""
    pd = pytest.importorskip("pandas")
    np = pytest.importorskip("numpy")
    pytest.importorskip("pyarrow")
    for name, frame in _frame_cases(pd, np).items():
        if frame.empty:
            continue
        for mmap in (False, True):
            path = tmp_path / f"w{mmap}"
            back = _store(frame, path, mmap=mmap)
            before = _file_digest(path.with_suffix(".arrow"))
            for i in range(back.shape[1]):
                try:
                    back.iloc[0, i] = back.iloc[1 % len(back), i]
                except ValueError as exc:
                    raise AssertionError(f"{name}, column {i}, mmap={mmap}: {exc}") from None
            assert _file_digest(path.with_suffix(".arrow")) == before


def test_frame_attrs_round_trip(tmp_path):
    """A frame's attrs come back."""
    pd = pytest.importorskip("pandas")
    pytest.importorskip("pyarrow")
    frame = pd.DataFrame({"a": [1]})
    frame.attrs["source"] = "sensor"
    assert _store(frame, tmp_path / "f").attrs == {"source": "sensor"}


@pytest.mark.parametrize("name", [None, "x", 0, ("a", 1)], ids=repr)
def test_series_round_trip_with_their_name(tmp_path, name):
    """A Series comes back as a Series, with its name (also None, an int or a tuple) and index."""
    pd = pytest.importorskip("pandas")
    pytest.importorskip("pyarrow")
    series = pd.Series([1.5, None, 3.0], index=pd.Index(["a", "b", "c"], name="k"), name=name)
    back = _store(series, tmp_path / "s")
    pd.testing.assert_series_equal(back, series, check_exact=True)


@st.composite
def frames(draw: Any) -> Any:
    """DataFrames of mixed dtypes, missing values and indexes."""
    pd = pytest.importorskip("pandas")
    np = pytest.importorskip("numpy")
    n = draw(st.integers(min_value=0, max_value=6))
    text = st.text(max_size=5)
    maybe = st.booleans()
    columns: dict[str, Any] = {}
    kinds = draw(st.lists(st.sampled_from(sorted(_COLUMN_KINDS)), min_size=1, max_size=4))
    for i, kind in enumerate(kinds):
        columns[f"{kind}{i}"] = _COLUMN_KINDS[kind](draw, pd, np, n, text, maybe)
    index_kind = draw(st.sampled_from(["range", "ints", "multi", "tz"]))
    if index_kind == "ints":
        index = pd.Index(draw(st.lists(st.integers(-(2**63), 2**63 - 1), min_size=n, max_size=n)), name="id")
    elif index_kind == "multi":
        pairs = draw(st.lists(st.tuples(text, st.integers(0, 9)), min_size=n, max_size=n))
        index = pd.MultiIndex.from_tuples(pairs, names=["k", "n"]) if n else pd.RangeIndex(0)
    elif index_kind == "tz":
        index = pd.date_range("2024-03-31", periods=n, freq="h", tz="Europe/Paris", name="at")
    else:
        index = pd.RangeIndex(n)
    return pd.DataFrame(columns, index=index)


def _with_missing(draw: Any, values: list[Any], missing: Any, maybe: Any) -> list[Any]:
    return [missing if draw(maybe) else v for v in values]


def _float_column(draw, pd, np, n, text, maybe):
    return np.array(draw(st.lists(st.floats(), min_size=n, max_size=n)), dtype="f8")


def _int64_column(draw, pd, np, n, text, maybe):
    values = draw(st.lists(st.integers(-(2**63), 2**63 - 1), min_size=n, max_size=n))
    return pd.array(_with_missing(draw, values, None, maybe), dtype="Int64")


def _boolean_column(draw, pd, np, n, text, maybe):
    return pd.array(_with_missing(draw, draw(st.lists(st.booleans(), min_size=n, max_size=n)), None, maybe), "boolean")


def _string_column(draw, pd, np, n, text, maybe):
    values = _with_missing(draw, draw(st.lists(text, min_size=n, max_size=n)), None, maybe)
    return pd.array(values, dtype=draw(st.sampled_from(["string", "str"])))


def _object_column(draw, pd, np, n, text, maybe):
    element = draw(st.sampled_from([text, st.integers(-(2**63), 2**63 - 1), st.binary(max_size=4)]))
    missing = draw(st.sampled_from([None, float("nan"), pd.NA]))
    values = _with_missing(draw, draw(st.lists(element, min_size=n, max_size=n)), missing, maybe)
    return pd.Series(values, dtype=object).to_numpy()


def _category_column(draw, pd, np, n, text, maybe):
    values = draw(st.lists(st.sampled_from(["a", "b", "c", None]), min_size=n, max_size=n))
    return pd.Categorical(values, categories=["c", "b", "a", "z"], ordered=draw(st.booleans()))


def _tz_column(draw, pd, np, n, text, maybe):
    tz = draw(st.sampled_from(["UTC", "Europe/Paris", "America/New_York", "Asia/Kolkata"]))
    stamps = draw(st.lists(st.integers(-(2**62), 2**62), min_size=n, max_size=n))
    values = pd.to_datetime(np.array(stamps, dtype="i8"), unit="ns", utc=True).tz_convert(tz)
    return pd.Series(values).where(np.array([not draw(maybe) for _ in range(n)], dtype=bool)).array


def _timedelta_column(draw, pd, np, n, text, maybe):
    values = draw(st.lists(st.integers(-(2**62), 2**62), min_size=n, max_size=n))
    return pd.to_timedelta(_with_missing(draw, values, None, maybe), unit="ns")


_COLUMN_KINDS = {
    "float": _float_column,
    "Int64": _int64_column,
    "boolean": _boolean_column,
    "string": _string_column,
    "object": _object_column,
    "category": _category_column,
    "tz": _tz_column,
    "timedelta": _timedelta_column,
}


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(frames())
def test_generated_frames_round_trip_exactly(tmp_path, frame):
    """Frames of generated columns (extension dtypes, NaN/NaT, time zones, categoricals, objects) round-trip."""
    pytest.importorskip("pyarrow")
    _assert_frames_identical(frame, _store(frame, tmp_path / "g"))


def _refused_frames(pd: Any, np: Any) -> dict[str, tuple[Any, str]]:
    return {
        "list column": (pd.DataFrame({"s": pd.Series([[1], [2, 3]], dtype=object)}), "'s'"),
        "mixed objects": (pd.DataFrame({"c": pd.Series([1, "a"], dtype=object)}), "'c'"),
        "duplicate labels": (pd.DataFrame([[1, 2]], columns=["a", "a"]), "'a'"),
        "complex": (pd.DataFrame({"z": [1j]}), "'z'"),
        "mixed missing values": (pd.DataFrame({"m": pd.Series(["a", np.nan, None], dtype=object)}), "'m'"),
        "mixed label types": (pd.DataFrame({"a": [1], 2: [3]}), "labels"),
        "int beyond int64": (pd.DataFrame({"b": pd.Series([1, 2**70], dtype=object)}), "'b'"),
    }


def test_frames_arrow_cannot_store_are_refused_in_one_line(tmp_path):
    """Each refusal names the column (or labels) and the fix, on one line, without the frame's repr."""
    pd = pytest.importorskip("pandas")
    np = pytest.importorskip("numpy")
    pytest.importorskip("pyarrow")
    for name, (frame, names) in _refused_frames(pd, np).items():
        with pytest.raises(OutputUnserializableError) as info:
            _store(frame, tmp_path / "r")
        message = str(info.value)
        assert "\n" not in message, name
        assert names in message, (name, message)
        assert 'serializer="pickle"' in message, name


def test_a_huge_refused_frame_gives_a_short_error(tmp_path):
    """A refused frame of a million rows still gives a short message."""
    pd = pytest.importorskip("pandas")
    pytest.importorskip("pyarrow")
    frame = pd.DataFrame({"x": range(1_000_000), "bad": pd.Series([[1]] * 1_000_000, dtype=object)})
    with pytest.raises(OutputUnserializableError) as info:
        _store(frame, tmp_path / "r")
    assert len(str(info.value)) < 300


def test_subclasses_of_frames_are_not_taken():
    """A DataFrame subclass (e.g. a GeoDataFrame) is left to other serializers or a user codec."""
    pd = pytest.importorskip("pandas")

    class Special(pd.DataFrame):
        pass

    assert codec_for(Special({"a": [1]})) is None


# pyarrow


def test_arrow_tables_round_trip_with_metadata(tmp_path):
    """A table comes back equal, its schema metadata included, read whole or memory-mapped."""
    pa = pytest.importorskip("pyarrow")
    table = pa.table(
        {
            "a": pa.array([1, None, 3], type=pa.int64()),
            "s": ["x", None, "z"],
            "l": [[1], [], None],
            "d": pa.array(["u", "v", "u"]).dictionary_encode(),
            "t": pa.array([0, None, 2], type=pa.timestamp("ns", tz="Europe/Paris")),
        }
    ).replace_schema_metadata({"origin": "sensor"})
    for mmap in (False, True):
        back = _store(table, tmp_path / "t", mmap=mmap)
        assert back.equals(table, check_metadata=True)


def test_an_arrow_file_opens_with_plain_pyarrow(tmp_path):
    """The file is a plain Arrow IPC file."""
    pa = pytest.importorskip("pyarrow")
    table = pa.table({"a": [1, 2]})
    codec = codec_for(table)
    assert codec is not None
    path = tmp_path / f"t{codec.suffix}"
    with path.open("wb") as handle:
        codec.write(table, handle)
    with pa.ipc.open_file(path) as reader:
        assert reader.read_all().equals(table)


def test_a_memory_mapped_table_allocates_nothing(tmp_path):
    """A memory-mapped read is zero-copy: Arrow's memory pool does not grow."""
    pa = pytest.importorskip("pyarrow")
    np = pytest.importorskip("numpy")
    table = pa.table({"a": np.arange(2_000_000, dtype="f8")})
    codec = codec_for(table)
    assert codec is not None
    path = tmp_path / "t.arrow"
    with path.open("wb") as handle:
        codec.write(table, handle)
    before = pa.total_allocated_bytes()
    mapped = codec.read(path, mmap=True)
    assert pa.total_allocated_bytes() - before < 1_000_000
    assert mapped.equals(table)
    read = codec.read(path, mmap=False)
    assert pa.total_allocated_bytes() - before >= table.nbytes
    del read


WRITE_MEMORY = """
import sys
kind, path = sys.argv[1], sys.argv[2]
import numpy as np
values = np.random.default_rng(0).random(25_000_000)  # 200 MB
if kind == "pandas":
    import pandas as pd
    value = pd.DataFrame({"a": values, "b": np.arange(25_000_000)}, copy=False)
elif kind == "pyarrow":
    import pyarrow as pa
    value = pa.table({"a": values})
elif kind == "polars":
    import polars as pl
    value = pl.DataFrame({"a": values})
else:
    value = values
from nbdurable._codecs import codec_for
codec = codec_for(value)

def status(field):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(field))

with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # resets the peak (VmHWM) to the current size
before = status("VmRSS")
with open(path, "wb") as f:
    codec.write(value, f)
print(status("VmHWM") - before)
"""


@pytest.mark.parametrize("library", ["numpy", "pandas", "pyarrow", "polars"])
def test_writing_takes_no_serialized_copy_in_memory(tmp_path, library):
    """Writing a 200 MB value raises the process's peak memory by far less than the value's size."""
    pytest.importorskip(library)
    pytest.importorskip("pyarrow" if library == "pandas" else library)
    if not Path("/proc/self/clear_refs").exists():
        pytest.skip("needs Linux's /proc to measure the peak")
    out = subprocess.run(
        [sys.executable, "-c", WRITE_MEMORY, library, str(tmp_path / "v")],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    extra = int(out.stdout.strip())
    assert extra < 50_000_000, f"{extra / 1e6:.0f} MB above the process before writing"


# polars


def test_polars_frames_round_trip(tmp_path):
    """A polars frame of many dtypes (nulls, strings, lists, structs, time zones, categoricals) round-trips."""
    pl = pytest.importorskip("polars")
    pl_testing = pytest.importorskip("polars.testing")
    import datetime as _dt

    frame = pl.DataFrame(
        {
            "i": [1, None, 3],
            "f": [1.5, float("nan"), None],
            "s": ["a", None, "c"],
            "l": [[1, 2], [], None],
            "st": [{"x": 1}, {"x": None}, None],
            "t": [_dt.datetime(2024, 1, 1), None, _dt.datetime(2024, 1, 3)],
            "c": ["u", "v", "u"],
        }
    ).with_columns(
        pl.col("t").dt.replace_time_zone("Europe/Paris"),
        pl.col("c").cast(pl.Categorical),
        pl.col("i").cast(pl.Int16),
    )
    for mmap in (False, True):
        back = _store(frame, tmp_path / "p", mmap=mmap)
        assert back.schema == frame.schema
        pl_testing.assert_frame_equal(back, frame)


def test_a_polars_file_opens_with_pyarrow(tmp_path):
    """polars writes a plain Arrow IPC file, readable by pyarrow."""
    pl = pytest.importorskip("polars")
    pa = pytest.importorskip("pyarrow")
    frame = pl.DataFrame({"a": [1, 2], "s": ["x", "y"]})
    codec = codec_for(frame)
    assert codec is not None
    path = tmp_path / f"p{codec.suffix}"
    with path.open("wb") as handle:
        codec.write(frame, handle)
    with pa.ipc.open_file(path) as reader:
        assert reader.read_all().column("a").to_pylist() == [1, 2]


# user codecs


class Matrix:
    """A user type stored by a user codec."""

    def __init__(self, rows: list[list[int]]) -> None:
        self.rows = rows

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Matrix) and other.rows == self.rows

    __hash__ = None  # type: ignore[assignment]


def _write_matrix(value: Matrix, handle: Any) -> None:
    for row in value.rows:
        handle.write((" ".join(map(str, row)) + "\n").encode())


def _read_matrix(path: Any) -> Matrix:
    return Matrix([[int(x) for x in line.split()] for line in Path(path).read_text().splitlines()])


def test_a_registered_codec_stores_its_type(tmp_path):
    """A codec registered for a class stores its values and those of its subclasses."""
    codec = register_codec(Matrix, name="matrix", suffix="mtx", write=_write_matrix, read=_read_matrix)
    assert codec.suffix == ".mtx"

    class Square(Matrix):
        pass

    assert codec_for(Square([[1]])) is codec
    assert _store(Matrix([[1, 2], [3, 4]]), tmp_path / "m") == Matrix([[1, 2], [3, 4]])
    assert registry.named("matrix") is codec


def test_a_codec_registered_by_name_needs_no_import():
    """A codec registered by qualified name (full, or package and class) finds its class."""
    register_codec(f"{__name__}.Matrix", name="matrix", suffix=".mtx", write=_write_matrix, read=_read_matrix)
    codec = codec_for(Matrix([[1]]))
    assert codec is not None
    assert codec.name == "matrix"
    assert codec.accepts(Matrix([[1]]))
    registry.reset()
    register_codec("fractions.Fraction", name="fraction", suffix=".txt", write=_write_matrix, read=_read_matrix)
    assert codec_for(fractions.Fraction(1, 2)) is registry.named("fraction")


def test_a_user_codec_beats_a_built_in_one(tmp_path):
    """A user codec for numpy arrays is used instead of the built-in one; reset restores it."""
    np = pytest.importorskip("numpy")
    calls: list[bool] = []

    def read(path: Any, *, mmap: bool) -> Any:
        calls.append(mmap)
        return np.loadtxt(path)

    register_codec("numpy.ndarray", name="text-array", suffix=".txt", write=lambda v, f: np.savetxt(f, v), read=read)
    codec = codec_for(np.arange(3.0))
    assert codec is not None
    assert codec.name == "text-array"
    np.testing.assert_array_equal(_store(np.arange(3.0), tmp_path / "a", mmap=True), np.arange(3.0))
    assert calls == [True]
    registry.reset()
    codec = codec_for(np.arange(3.0))
    assert codec is not None
    assert codec.name == "numpy"


def test_codec_names_are_unique():
    """A built-in codec's name, or a name taken by another type, is refused; re-registering replaces."""
    with pytest.raises(ValueError, match="built-in"):
        register_codec(Matrix, name="numpy", suffix=".x", write=_write_matrix, read=_read_matrix)
    register_codec(Matrix, name="matrix", suffix=".x", write=_write_matrix, read=_read_matrix)
    again = register_codec(Matrix, name="matrix", suffix=".y", write=_write_matrix, read=_read_matrix)
    assert codec_for(Matrix([[1]])) is again
    with pytest.raises(ValueError, match="already registered"):
        register_codec(fractions.Fraction, name="matrix", suffix=".x", write=_write_matrix, read=_read_matrix)
    with pytest.raises(KeyError):
        registry.named("nothing")


def test_bad_codec_arguments_are_refused():
    """An empty name, a bad suffix or a key that is neither a class nor a name is refused."""
    with pytest.raises(ValueError, match="name"):
        DataCodec(name="", suffix=".x")
    with pytest.raises(ValueError, match="suffix"):
        DataCodec(name="a", suffix=".")
    with pytest.raises(TypeError):
        register_codec(3, name="three", suffix=".x", write=_write_matrix, read=_read_matrix)  # type: ignore[arg-type]


def test_user_codec_digest_and_preview_hooks():
    """A user codec's digest and preview hooks are what fingerprints and previews use."""
    register_codec(
        Matrix,
        name="matrix",
        suffix=".mtx",
        write=_write_matrix,
        read=_read_matrix,
        digest=lambda m: repr(m.rows),
        preview=lambda m: f"Matrix {len(m.rows)}x{len(m.rows[0])}",
    )
    assert preview(Matrix([[1, 2]])) == "Matrix 1x2"
    assert content_digest(Matrix([[1, 2]])) == content_digest(Matrix([[1, 2]]))
    assert content_digest(Matrix([[1, 2]])) != content_digest(Matrix([[1, 3]]))
