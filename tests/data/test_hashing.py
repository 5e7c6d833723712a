"""Content fingerprints: equal content gives equal digests in every process; any change another."""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import os
import subprocess
import sys
import textwrap
import threading
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from nbdurable._codecs import register_codec, registry
from nbdurable._hashing import content_digest


@pytest.fixture(autouse=True)
def _clean_registry():
    yield
    registry.reset()


@dataclasses.dataclass
class Record:
    """A user object hashed through its pickle."""

    name: str
    tags: set[str]
    weights: Any = None


plain = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text() | st.binary() | st.floats(allow_nan=False),
    lambda inner: st.lists(inner) | st.dictionaries(st.text(), inner) | st.tuples(inner, inner),
    max_leaves=40,
)


@given(plain)
def test_equal_plain_values_have_equal_digests(value):
    """A value and a deep copy of it (through JSON-free reconstruction) digest the same."""
    import copy

    assert content_digest(value) == content_digest(copy.deepcopy(value))


@given(st.lists(st.integers() | st.text(), min_size=1), st.lists(st.integers() | st.text(), min_size=1))
def test_different_lists_have_different_digests(left, right):
    """Lists that differ in any element, its type or their length digest differently."""
    assume(left != right or [type(x) for x in left] != [type(x) for x in right])
    assert content_digest(left) != content_digest(right)


@given(st.lists(st.floats(allow_nan=False), min_size=20, max_size=40), st.integers(min_value=0, max_value=19))
def test_one_changed_float_in_a_long_list_changes_the_digest(values, at):
    """Long homogeneous lists are hashed as one buffer, and still notice a single change."""
    changed = list(values)
    changed[at] = values[at] + 1.0 if values[at] + 1.0 != values[at] else 1.0 - values[at] * 2
    assume(changed[at] != values[at])
    assert content_digest(values) != content_digest(changed)


def test_dict_order_does_not_matter():
    """Equal dicts digest the same whatever their insertion order, with str or other keys."""
    assert content_digest({"a": 1, "b": 2}) == content_digest({"b": 2, "a": 1})
    assert content_digest({1: "x", (2, 3): "y"}) == content_digest({(2, 3): "y", 1: "x"})
    assert content_digest({"a": 1}) != content_digest({"a": 2})


def test_types_are_part_of_the_content():
    """1, 1.0, True, '1' and b'1' all digest differently; so do a list and a tuple."""
    digests = {content_digest(v) for v in (1, 1.0, True, "1", b"1", [1], (1,), {1})}
    assert len(digests) == 8


def test_plain_scalars_of_the_standard_library():
    """Dates, decimals and paths digest by their exact value."""
    moment = _dt.datetime(2024, 1, 1, tzinfo=_dt.timezone.utc)
    assert content_digest(moment) == content_digest(_dt.datetime(2024, 1, 1, tzinfo=_dt.timezone.utc))
    assert content_digest(moment) != content_digest(moment.replace(tzinfo=None))
    assert content_digest(Decimal("1.10")) != content_digest(Decimal("1.1"))
    assert content_digest(Path("/a/b")) != content_digest(Path("/a/c"))


def test_huge_ints_are_hashed():
    """Ints beyond the int->str conversion limit still have a digest."""
    assert content_digest(10**100_000) != content_digest(10**100_000 + 1)


def test_values_without_stable_content_have_no_digest(tmp_path):
    """Open files, generators and locks cannot be fingerprinted: the digest is None."""
    with (tmp_path / "f.txt").open("w") as handle:
        assert content_digest(handle) is None
        assert content_digest([1, {"file": handle}]) is None
    assert content_digest(x for x in range(3)) is None
    assert content_digest(threading.Lock()) is None


def test_a_self_referential_list_has_no_digest():
    """A container that contains itself has no digest (and no recursion error)."""
    value: list[Any] = []
    value.append(value)
    assert content_digest(value) is None


def test_user_objects_are_hashed_by_content():
    """A dataclass digests by its fields; its sets are sorted so the digest is stable."""
    assert content_digest(Record("a", {"x", "y"})) == content_digest(Record("a", {"y", "x"}))
    assert content_digest(Record("a", {"x"})) != content_digest(Record("a", {"z"}))


def test_a_user_codec_digest_is_used():
    """A registered codec's digest fingerprints its type."""

    class Tensor:
        def __init__(self, data: bytes) -> None:
            self.data = data

    register_codec(
        Tensor, name="tensor", suffix=".t", write=lambda v, f: None, read=lambda p: None, digest=lambda v: v.data
    )
    assert content_digest(Tensor(b"1")) == content_digest(Tensor(b"1"))
    assert content_digest(Tensor(b"1")) != content_digest(Tensor(b"2"))


def _values_script() -> str:
    return textwrap.dedent(
        """
        import dataclasses, datetime, json, sys
        sys.path.insert(0, {tests!r})
        from test_hashing import Record
        from nbdurable._hashing import content_digest
        values = {{
            "plain": [1, 2.5, "three", None, True, b"x", {{"k": (1, 2)}}],
            "sets": {{"alpha", "beta", "gamma", frozenset({{"x", "y"}})}},
            "long": [f"s{{i}}" for i in range(100)],
            "date": datetime.datetime(2024, 1, 1, 12, 0),
            "record": Record("r", {{"p", "q", "r", "s"}}),
        }}
        try:
            import numpy as np
            values["array"] = np.arange(1000, dtype="f8").reshape(10, 100)[:, ::3]
            values["record_with_array"] = Record("r", {{"p"}}, np.ones(5))
        except ImportError:
            pass
        try:
            import pandas as pd
            values["frame"] = pd.DataFrame({{"a": [1, 2], "s": ["x", None],
                                            "c": pd.Categorical(["u", "v"])}}, index=["i", "j"])
        except ImportError:
            pass
        try:
            import pyarrow as pa
            values["table"] = pa.table({{"a": [1, None], "s": ["x", "y"]}})
        except ImportError:
            pass
        try:
            import polars as pl
            values["polars"] = pl.DataFrame({{"a": [1, None], "s": ["x", "y"]}})
        except ImportError:
            pass
        print(json.dumps({{k: content_digest(v) for k, v in values.items()}}))
        """
    ).format(tests=str(Path(__file__).parent))


def _digests_in_a_new_process(seed: str) -> dict[str, str]:
    env = {**os.environ, "PYTHONHASHSEED": seed}
    out = subprocess.run(
        [sys.executable, "-c", _values_script()], env=env, capture_output=True, text=True, check=True, timeout=60
    )
    return dict(json.loads(out.stdout))


def test_digests_are_equal_across_processes():
    """Two interpreters with different str-hash salts compute the same digests (sets, data, objects)."""
    first = _digests_in_a_new_process("1")
    second = _digests_in_a_new_process("2")
    assert first == second
    assert all(first.values())


# numpy


def test_arrays_digest_by_content_dtype_and_shape():
    """One changed element, a dtype or a shape changes an array's digest; a copy does not."""
    np = pytest.importorskip("numpy")
    values = np.random.default_rng(0).random((100, 50))
    assert content_digest(values) == content_digest(values.copy())
    changed = values.copy()
    changed[99, 49] += 1e-12
    assert content_digest(changed) != content_digest(values)
    assert content_digest(values.astype("f4")) != content_digest(values)
    assert content_digest(values.reshape(50, 100)) != content_digest(values)
    assert content_digest(values.view("i8")) != content_digest(values)


def test_a_strided_view_digests_as_its_contiguous_copy():
    """A non-contiguous view digests as its contiguous copy: the logical content, not the memory."""
    np = pytest.importorskip("numpy")
    values = np.arange(10_000, dtype="i4").reshape(100, 100)
    view = values[::3, 1::2]
    assert not view.flags.c_contiguous
    assert content_digest(view) == content_digest(view.copy())
    assert content_digest(view) != content_digest(values[::3, ::2].copy())


def test_memory_order_is_part_of_the_digest():
    """A Fortran-ordered array digests apart from its C-ordered copy (hashed as laid out, no copy)."""
    np = pytest.importorskip("numpy")
    values = np.arange(12.0).reshape(3, 4)
    assert content_digest(np.asfortranarray(values)) != content_digest(values)
    assert content_digest(np.asfortranarray(values)) == content_digest(np.asfortranarray(values.copy()))


def test_a_memory_mapped_array_digests_as_the_array(tmp_path):
    """A replayed, memory-mapped array digests as the array that was stored."""
    np = pytest.importorskip("numpy")
    values = np.arange(100.0)
    np.save(tmp_path / "a.npy", values)
    mapped = np.load(tmp_path / "a.npy", mmap_mode="c")
    assert content_digest(mapped) == content_digest(values)


def test_nested_containers_of_arrays():
    """Arrays inside lists, dicts and objects are hashed by content."""
    np = pytest.importorskip("numpy")
    values = {"w": [np.zeros(3), np.ones(2)], "rec": Record("r", set(), np.arange(4))}
    same = {"rec": Record("r", set(), np.arange(4)), "w": [np.zeros(3), np.ones(2)]}
    other = {"w": [np.zeros(3), np.ones(2)], "rec": Record("r", set(), np.arange(1, 5))}
    assert content_digest(values) == content_digest(same)
    assert content_digest(values) != content_digest(other)


def test_object_and_structured_arrays():
    """Arrays of Python objects digest by their elements; structured arrays by fields and bytes."""
    np = pytest.importorskip("numpy")
    objects = np.array([1, "a", None], dtype=object)
    assert content_digest(objects) == content_digest(np.array([1, "a", None], dtype=object))
    assert content_digest(objects) != content_digest(np.array([1, "b", None], dtype=object))
    structured = np.zeros(3, dtype=[("a", "i4"), ("b", "f8")])
    renamed = np.zeros(3, dtype=[("a", "i4"), ("c", "f8")])
    assert content_digest(structured) != content_digest(renamed)


def test_masked_arrays_include_their_mask():
    """A masked array's mask is part of its digest."""
    np = pytest.importorskip("numpy")
    left = np.ma.masked_array([1, 2, 3], mask=[0, 1, 0])
    right = np.ma.masked_array([1, 2, 3], mask=[0, 0, 1])
    assert content_digest(left) != content_digest(right)


def test_numpy_scalars():
    """numpy scalars digest by dtype and value."""
    np = pytest.importorskip("numpy")
    assert content_digest(np.float64(1.0)) == content_digest(np.float64(1.0))
    assert content_digest(np.float64(1.0)) != content_digest(np.float32(1.0))


# pandas


def _frame(pd: Any, np: Any) -> Any:
    return pd.DataFrame(
        {
            "x": np.arange(5.0),
            "i": pd.array([1, None, 3, 4, 5], dtype="Int64"),
            "s": ["a", "b", None, "d", "e"],
            "c": pd.Categorical(["u", "v", "u", None, "v"]),
            "t": pd.date_range("2024-01-01", periods=5, tz="Europe/Paris"),
        },
        index=pd.Index(list("pqrst"), name="key"),
    )


def test_frames_digest_by_content():
    """Equal frames digest the same; a changed value, label, index or dtype changes the digest."""
    pd = pytest.importorskip("pandas")
    np = pytest.importorskip("numpy")
    frame = _frame(pd, np)
    assert content_digest(frame) == content_digest(_frame(pd, np))
    changes = [
        lambda f: f.assign(x=f["x"].where(f["x"] != 2.0, 2.5)),
        lambda f: f.assign(s=f["s"].where(f["s"] != "a", "z")),
        lambda f: f.assign(i=f["i"].fillna(0)),
        lambda f: f.assign(c=f["c"].cat.add_categories("w")),
        lambda f: f.assign(t=f["t"].dt.tz_convert("UTC")),
        lambda f: f.rename(columns={"x": "y"}),
        lambda f: f.rename_axis("other"),
        lambda f: f.set_axis(list("pqrsz")),
        lambda f: f.astype({"x": "f4"}),
    ]
    seen = {content_digest(frame)}
    for change in changes:
        digest = content_digest(change(frame.copy()))
        assert digest not in seen
        seen.add(digest)


def test_series_index_and_multiindex():
    """A Series digests with its name and index; a MultiIndex by its levels, codes and names."""
    pd = pytest.importorskip("pandas")
    series = pd.Series([1, 2], index=pd.MultiIndex.from_tuples([("a", 1), ("b", 2)], names=["k", "n"]), name="v")
    assert content_digest(series) == content_digest(series.copy())
    assert content_digest(series) != content_digest(series.rename("w"))
    assert content_digest(series) != content_digest(series.rename_axis(["k", "m"]))
    other = pd.MultiIndex.from_tuples([("a", 1), ("b", 3)], names=["k", "n"])
    assert content_digest(series) != content_digest(series.set_axis(other))


def test_a_range_index_is_not_materialized():
    """A RangeIndex digests by start, stop and step; a different range differs."""
    pd = pytest.importorskip("pandas")
    assert content_digest(pd.RangeIndex(10**12)) != content_digest(pd.RangeIndex(1, 10**12))


def test_object_columns_digest_by_element():
    """Object columns are hashed element by element, their types included."""
    pd = pytest.importorskip("pandas")
    left = pd.DataFrame({"o": pd.Series([1, "1"], dtype=object)})
    right = pd.DataFrame({"o": pd.Series(["1", "1"], dtype=object)})
    assert content_digest(left) != content_digest(right)


# pyarrow and polars


def test_arrow_tables_digest_by_content():
    """An Arrow table digests by schema and buffers; a slice digests as the same data built anew."""
    pa = pytest.importorskip("pyarrow")
    table = pa.table({"a": list(range(100)), "s": [str(i) for i in range(100)]})
    assert content_digest(table) == content_digest(pa.table({"a": list(range(100)), "s": [str(i) for i in range(100)]}))
    assert content_digest(table.slice(10, 5)) == content_digest(
        pa.table({"a": list(range(10, 15)), "s": [str(i) for i in range(10, 15)]})
    )
    changed = pa.table({"a": [*range(99), 0], "s": [str(i) for i in range(100)]})
    assert content_digest(changed) != content_digest(table)
    assert content_digest(table.rename_columns(["a", "t"])) != content_digest(table)


def test_arrow_dictionary_columns_include_the_dictionary():
    """A dictionary-encoded column digests with its dictionary, not its indices alone."""
    pa = pytest.importorskip("pyarrow")
    left = pa.table({"d": pa.array(["x", "y"]).dictionary_encode()})
    right = pa.table({"d": pa.array(["x", "z"]).dictionary_encode()})
    assert content_digest(left) != content_digest(right)


def test_polars_frames_digest_by_content():
    """A polars frame digests by schema and data; a change in one value changes the digest."""
    pl = pytest.importorskip("polars")
    pytest.importorskip("pyarrow")
    frame = pl.DataFrame({"a": [1, 2, None], "s": ["x", "y", "z"]})
    assert content_digest(frame) == content_digest(pl.DataFrame({"a": [1, 2, None], "s": ["x", "y", "z"]}))
    assert content_digest(frame) != content_digest(pl.DataFrame({"a": [1, 2, None], "s": ["x", "y", "w"]}))
    assert content_digest(frame) != content_digest(frame.with_columns(pl.col("a").cast(pl.Int32)))
    assert content_digest(frame.lazy()) is None


def test_polars_frames_digest_without_pyarrow(monkeypatch):
    """Where pyarrow is not installed, polars frames digest by polars' own column hashes."""
    pl = pytest.importorskip("polars")
    from nbdurable import _datahash

    monkeypatch.delitem(sys.modules, "pyarrow", raising=False)
    monkeypatch.setattr(_datahash, "_importable", lambda name: False)
    frame = pl.DataFrame({"a": [1, 2, None], "s": ["x", "y", "z"]})
    assert content_digest(frame) == content_digest(pl.DataFrame({"a": [1, 2, None], "s": ["x", "y", "z"]}))
    assert content_digest(frame) != content_digest(pl.DataFrame({"a": [1, 2, None], "s": ["x", "y", "w"]}))
    assert "pyarrow" not in sys.modules


def test_a_failing_user_digest_gives_no_digest():
    """A registered digest hook that raises means no fingerprint, never an error."""

    class Opaque:
        pass

    def digest(value: Any) -> bytes:
        raise RuntimeError("no")

    register_codec(Opaque, name="opaque", suffix=".o", write=lambda v, f: None, read=lambda p: None, digest=digest)
    assert content_digest(Opaque()) is None
