"""Previews: one line, bounded, never serializing the value nor calling its own repr."""

from __future__ import annotations

import dataclasses
import datetime as _dt
import enum
from collections import OrderedDict, namedtuple
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nbdurable._codecs import register_codec, registry
from nbdurable._preview import preview


class SlowRepr:
    """An object whose repr would take ten seconds and whose str is huge: counted, never awaited."""

    calls = 0

    def __repr__(self) -> str:
        type(self).calls += 1
        raise AssertionError("a preview called __repr__")

    def __str__(self) -> str:
        type(self).calls += 1
        raise AssertionError("a preview called __str__")


class Exploding:
    """An object that fails on every attribute access."""

    def __getattribute__(self, name: str) -> Any:
        raise RuntimeError(name)


@pytest.fixture(autouse=True)
def _clean_registry():
    yield
    registry.reset()


json_like = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text() | st.binary(),
    lambda inner: st.lists(inner) | st.dictionaries(st.text(), inner) | st.tuples(inner, inner),
    max_leaves=60,
)


@given(json_like, st.integers(min_value=2, max_value=200))
def test_preview_is_one_line_within_the_limit(value, limit):
    """Any nesting of plain values previews on one line of at most `limit` characters."""
    text = preview(value, limit=limit)
    assert len(text) <= limit
    assert "\n" not in text
    assert "\r" not in text


def test_short_values_preview_as_their_repr():
    """Small plain values read as Python literals."""
    assert preview({"a": [1, 2.5, None], "b": (True,)}) == "{'a': [1, 2.5, None], 'b': (True,)}"
    assert preview("hi") == "'hi'"
    assert preview(b"ab") == "b'ab'"
    assert preview(set()) == "set()"


def test_a_huge_list_shows_its_first_items_and_its_length():
    """A ten-million-item list previews from its first items, with its length."""
    text = preview(list(range(10_000_000)))
    assert text == "[0, 1, 2, 3, 4, 5, 6, 7, …] (10,000,000 items)"


def test_huge_bytes_show_their_size():
    """Bytes show their size, never their content, once they do not fit."""
    assert preview(bytes(1_500_000_000 // 1000)) == "bytes (1.5 MB)"
    assert preview(bytearray(2048)) == "bytearray (2.0 KB)"


def test_a_long_str_is_cut():
    """A long str is cut to the limit, its escapes kept on one line."""
    text = preview("line\n" * 1_000_000, limit=30)
    assert text.startswith("'line\\nline\\n")
    assert text.endswith("…")
    assert len(text) == 30


def test_huge_ints_show_their_size():
    """An int too long to print is summarized by its number of digits (no ValueError from int->str limits)."""
    assert preview(10**100_000) == "int (~100,001 digits)"
    assert preview(-(2**64)) == str(-(2**64))


def test_deep_nesting_is_cut():
    """Nesting deeper than a few levels shows as an ellipsis, with no recursion error."""
    value: Any = "end"
    for _ in range(10_000):
        value = {"k": value}
    text = preview(value)
    assert text == "{'k': {'k': {'k': {…}}}}"


def test_a_self_referential_list_previews():
    """A list that contains itself previews without recursion."""
    value: list[Any] = [1]
    value.append(value)
    assert preview(value) == "[1, [1, [1, […]]]]"


def test_datetimes_are_isoformat():
    """Dates and times show in ISO format; durations as str."""
    moment = _dt.datetime(2024, 5, 17, 12, 30, tzinfo=_dt.timezone.utc)
    assert preview(moment) == "2024-05-17T12:30:00+00:00"
    assert preview(_dt.date(2024, 5, 17)) == "2024-05-17"
    assert preview(_dt.timedelta(seconds=90)) == "0:01:30"


def test_a_slow_repr_is_never_called():
    """An object with a slow, huge repr previews as its class, without calling repr or str."""
    SlowRepr.calls = 0
    assert preview(SlowRepr()) == "<SlowRepr object>"
    assert preview([SlowRepr(), {"x": SlowRepr()}]) == "[<SlowRepr object>, {'x': <SlowRepr object>}]"
    assert SlowRepr.calls == 0


def test_a_value_failing_on_every_access_still_previews():
    """Previews never raise, even for an object whose every attribute access fails."""
    assert preview(Exploding()) == "<Exploding object>"


def test_dataclasses_namedtuples_enums_and_subclasses():
    """Records show their fields; enums their member; subclasses of builtins their class."""

    @dataclasses.dataclass
    class Point:
        x: int
        label: str

    Pair = namedtuple("Pair", "left right")  # noqa: PYI024 - a plain namedtuple is what users have

    class Color(enum.Enum):
        RED = 1

    assert preview(Point(1, "a")) == "Point(x=1, label='a')"
    assert preview(Pair(1, [2])) == "Pair(left=1, right=[2])"
    assert preview(Color.RED) == "Color.RED"
    assert preview(OrderedDict(a=1)) == "OrderedDict({'a': 1})"


def test_functions_and_classes():
    """Callables and classes show their qualified names."""
    assert preview(len) == "<builtin_function_or_method len>"
    assert preview(int) == "<class builtins.int>"


def test_a_user_codec_preview_is_used():
    """A registered codec's preview is used for its type."""

    class Tensor:
        pass

    register_codec(
        Tensor, name="tensor", suffix=".t", write=lambda v, f: None, read=lambda p: Tensor(), preview=lambda v: "T[3]"
    )
    assert preview(Tensor()) == "T[3]"


def test_numpy_arrays_show_type_dtype_and_shape():
    """An array shows its dtype and shape (and its values when tiny); a 1 GB array is not read."""
    np = pytest.importorskip("numpy")
    gigabyte = np.broadcast_to(np.float64(0), (1 << 27,))  # 1 GB, allocated nowhere
    assert preview(gigabyte) == "ndarray float64 (134217728,)"
    assert preview(np.zeros((1000, 1000))) == "ndarray float64 (1000, 1000)"
    assert preview(np.arange(3)) == "ndarray int64 (3,) [0, 1, 2]"
    assert preview(np.float32(0.5)) == "0.5"
    assert preview({"w": np.ones((2, 3))}) == "{'w': ndarray float64 (2, 3) [1.0, 1.0, 1.0, 1.0, 1.0, 1.0]}"


def test_pandas_values_show_rows_and_columns():
    """A DataFrame shows rows x columns and its first labels; a Series its dtype and length."""
    pd = pytest.importorskip("pandas")
    np = pytest.importorskip("numpy")
    frame = pd.DataFrame({"a": np.zeros(1_000_000), "b": np.zeros(1_000_000)})
    assert preview(frame) == "DataFrame 1,000,000 rows x 2 cols [a, b]"
    wide = pd.DataFrame(np.zeros((1, 12)), columns=[f"c{i}" for i in range(12)])
    assert preview(wide) == "DataFrame 1 rows x 12 cols [c0, c1, c2, c3, c4, c5, c6, c7, …]"
    assert preview(frame["a"]) == "Series 'a' float64 1,000,000 rows"
    assert preview(pd.Timestamp("2024-01-02", tz="UTC")) == "2024-01-02T00:00:00+00:00"
    assert preview(pd.NaT) == "NaT"


def test_arrow_tables_show_rows_and_columns():
    """A pyarrow Table shows rows x columns and its column names."""
    pa = pytest.importorskip("pyarrow")
    table = pa.table({"x": list(range(1000)), "y": ["a"] * 1000})
    assert preview(table) == "Table 1,000 rows x 2 cols [x, y]"
    assert preview(table.column("x")) == "ChunkedArray int64 (1,000)"


def test_polars_frames_show_rows_and_columns():
    """A polars DataFrame shows rows x columns; a LazyFrame is never collected."""
    pl = pytest.importorskip("polars")
    frame = pl.DataFrame({"x": list(range(1000))})
    assert preview(frame) == "polars DataFrame 1,000 rows x 1 cols [x]"
    assert preview(frame.lazy()) == "polars LazyFrame"
    assert preview(frame["x"]) == "polars Series 'x' Int64 1,000 rows"
