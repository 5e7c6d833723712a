"""Arrays and frames as step outputs and arguments: stored natively, replayed (memory-mapped), faults."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path
from typing import Any

import pytest

import nbdurable
from nbdurable import _store
from nbdurable.testing import FakeClock, simulate_restart, temporary_client

np = pytest.importorskip("numpy")
pd = pytest.importorskip("pandas")


def _frame() -> Any:
    return pd.DataFrame(
        {
            "city": pd.Categorical(["Oslo", "Lima", "Oslo"]),
            "when": pd.date_range("2026-01-01", periods=3, tz="Europe/Oslo"),
            "n": pd.array([1, None, 3], dtype="Int64"),
            "x": [0.5, float("nan"), 2.0],
        },
        index=pd.Index(["a", "b", "c"], name="key"),
    )


def _data_files(client: nbdurable.Client) -> list[Path]:
    return sorted(p for p in (Path(client.store.path) / _store.DATA_DIR).rglob("*") if p.is_file())


def test_an_array_output_is_stored_natively_and_replays_memory_mapped(client: nbdurable.Client) -> None:
    """A 8 MB array under the default (JSON) serializer: one .npy file; the replay maps it, writable, once."""
    calls = []

    @client.create_function(fn_id="arr")
    def arr(ctx: nbdurable.ContextSync) -> float:
        a = ctx.step.run("make", lambda: calls.append(1) or np.arange(1_000_000, dtype=np.float64))
        a[0] = -1.0  # the caller may change what it got: the stored value must not change
        return float(a.sum())

    first = arr.run()
    assert first == arr.run()
    assert calls == [1]
    (npy,) = _data_files(client)
    assert npy.suffix == ".npy"
    assert np.load(npy)[0] == 0.0  # plain numpy reads it; the change made by the body never reached it
    shown: list[nbdurable.Run[Any]] = []
    from nbdurable._process import STATE

    STATE.run_hooks.append(shown.append)
    try:
        arr.run()
    finally:
        STATE.run_hooks.remove(shown.append)
    replayed = shown[0].steps[0].output
    assert isinstance(replayed, np.memmap)
    assert replayed.flags.writeable


def test_mmap_false_reads_arrays_into_memory(tmp_path: Path) -> None:
    """Client(mmap=False): a replayed array is a plain in-memory ndarray."""
    with temporary_client(tmp_path / "s", mmap=False) as client:

        @client.create_function(fn_id="arr")
        def arr(ctx: nbdurable.ContextSync) -> Any:
            return ctx.step.run("make", lambda: np.ones(300_000))

        arr.run()
        again = arr.run()
        assert type(again) is np.ndarray
        assert again.sum() == 300_000


def test_a_dataframe_round_trips_exactly_across_a_restart(client: nbdurable.Client) -> None:
    """Categoricals, tz-aware datetimes, nullable ints, NaN and a named index survive storing and a restart."""
    calls = []

    def define(c: nbdurable.Client) -> nbdurable.Function[Any]:
        @c.create_function(fn_id="frame")
        def frame(ctx: nbdurable.ContextSync) -> Any:
            return ctx.step.run("load", lambda: calls.append(1) or _frame())

        return frame

    out = define(client).run()
    pd.testing.assert_frame_equal(out, _frame(), check_exact=True)
    again = define(simulate_restart(client)).run()
    pd.testing.assert_frame_equal(again, _frame(), check_exact=True)
    assert calls == [1]


def test_the_run_output_is_the_steps_stored_value_not_a_second_copy(client: nbdurable.Client) -> None:
    """A run returning its last step's array stores it once; get_run reads it back from the step."""

    @client.create_function(fn_id="once")
    def once(ctx: nbdurable.ContextSync) -> Any:
        return ctx.step.run("make", lambda: np.arange(10))

    once.run(run_id="r")
    assert len(_data_files(client)) == 1
    rec, payload = client.store.get_run(_store.run_key(client.app_id, "once", "r"))
    assert (rec.output_step, payload) == ("make", b"")
    run = client.get_run("r")
    assert run is not None
    assert run.output.tolist() == list(range(10))


def test_a_truncated_data_file_executes_its_step_again_with_a_warning(client: nbdurable.Client) -> None:
    """Cut a data file short: the replay warns, names the file, runs the step again and stores it anew."""
    calls = []

    @client.create_function(fn_id="arr")
    def arr(ctx: nbdurable.ContextSync) -> int:
        return int(ctx.step.run("make", lambda: calls.append(1) or np.arange(50_000)).sum())

    expected = arr.run()
    (npy,) = _data_files(client)
    npy.write_bytes(npy.read_bytes()[:1000])
    with pytest.warns(RuntimeWarning, match="not the .* written"):
        assert arr.run() == expected
    assert calls == [1, 1]
    assert arr.run() == expected
    assert calls == [1, 1]
    assert len(_data_files(client)) == 1  # the damaged file was replaced, not kept beside


def test_a_missing_data_file_executes_its_step_again_with_a_warning(client: nbdurable.Client) -> None:
    calls = []

    @client.create_function(fn_id="arr")
    def arr(ctx: nbdurable.ContextSync) -> int:
        return int(ctx.step.run("make", lambda: calls.append(1) or np.arange(10)).sum())

    arr.run()
    for path in _data_files(client):
        path.unlink()
    with pytest.warns(RuntimeWarning, match="is missing"):
        assert arr.run() == 45
    assert calls == [1, 1]


def test_a_full_disk_during_a_large_write_loses_nothing(tmp_path: Path) -> None:
    """A 4 MB array on a 3 MB volume: StoreError naming the path, no partial file, earlier steps replay."""
    from tests.store.test_bad_input import _tmpfs

    with _tmpfs(tmp_path / "mnt", "size=3m") as mnt:
        path = str(mnt / "store")
        calls = []
        with temporary_client(path, clock=FakeClock()) as client:

            @client.create_function(fn_id="big", retries=0)
            def big(ctx: nbdurable.ContextSync) -> Any:
                small = ctx.step.run("small", lambda: calls.append("small") or np.arange(10))
                return ctx.step.run("large", lambda: calls.append("large") or np.zeros(500_000)), small

            with pytest.raises(nbdurable.NbdurableError) as info:
                big.run(run_id="r")
            error = info.value if isinstance(info.value, nbdurable.StoreError) else info.value.__cause__
            assert isinstance(error, nbdurable.StoreError)
            assert path in str(error)
            assert "free disk space" in str(error)
            assert not list(Path(path).rglob("*.partial"))
            with pytest.raises(nbdurable.NbdurableError):
                big.run(run_id="r")
            assert calls == ["small", "large", "large"]  # small replayed; large never stored


def test_a_changed_dataframe_argument_marks_the_step_stale(client: nbdurable.Client) -> None:
    """Arguments are fingerprinted by content: one changed cell of a frame argument is noticed."""
    frame = {"df": pd.DataFrame({"a": [1, 2, 3]})}

    @client.create_function(fn_id="f", on_change="rerun")
    def f(ctx: nbdurable.ContextSync) -> int:
        return ctx.step.run("total", lambda df: int(df["a"].sum()), frame["df"])

    assert f.run(run_id="r") == 6
    assert f.run(run_id="r") == 6
    frame["df"] = pd.DataFrame({"a": [1, 2, 30]})
    assert f.run(run_id="r") == 33  # executed again: its argument changed


def test_an_unchanged_array_argument_replays(client: nbdurable.Client) -> None:
    calls = []

    @client.create_function(fn_id="f")
    def f(ctx: nbdurable.ContextSync) -> int:
        return ctx.step.run("total", lambda a: calls.append(1) or int(a.sum()), np.arange(100))

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert f.run() == f.run() == 4950
    assert calls == [1]


def test_nan_and_infinity_in_json_outputs_are_stored(client: nbdurable.Client) -> None:
    """Metrics with NaN or inf are stored (Python's JSON keeps them) instead of failing a finished step."""

    @client.create_function(fn_id="metrics")
    def metrics(ctx: nbdurable.ContextSync) -> Any:
        return ctx.step.run("score", lambda: {"auc": float("nan"), "loss": float("inf")})

    out = metrics.run()
    assert out["loss"] == float("inf")
    assert out["auc"] != out["auc"]
    assert metrics.run()["loss"] == float("inf")


def test_a_frame_arrow_cannot_store_is_refused_in_one_line_with_the_fix(client: nbdurable.Client) -> None:
    """A frame with a mixed-object column: OutputUnserializableError naming the step, one line, the fix."""

    @client.create_function(fn_id="mixed")
    def mixed(ctx: nbdurable.ContextSync) -> Any:
        return ctx.step.run("load", lambda: pd.DataFrame({"v": [1, "two", 3.0]}))

    with pytest.raises(nbdurable.RunFailedError) as info:
        mixed.run()
    message = str(info.value.__cause__)
    assert isinstance(info.value.__cause__, nbdurable.OutputUnserializableError)
    assert "\n" not in message
    assert "'load'" in message
    assert 'serializer="pickle"' in message


def test_the_pickle_serializer_stores_what_arrow_cannot(tmp_path: Path) -> None:
    with temporary_client(tmp_path / "s", serializer="pickle") as client:

        @client.create_function(fn_id="mixed")
        def mixed(ctx: nbdurable.ContextSync) -> Any:
            return ctx.step.run("load", lambda: pd.DataFrame({"v": [1, "two", 3.0]}))

        assert mixed.run()["v"].tolist() == [1, "two", 3.0]
        assert mixed.run()["v"].tolist() == [1, "two", 3.0]


def test_clear_and_invalidate_delete_data_files(client: nbdurable.Client) -> None:
    @client.create_function(fn_id="arr")
    def arr(ctx: nbdurable.ContextSync) -> Any:
        return [ctx.step.run(s, lambda: np.zeros(3)) for s in ("a", "b")]

    arr.run(run_id="r")
    assert len(_data_files(client)) == 2
    arr.invalidate("r", from_step="b")
    assert len(_data_files(client)) == 1
    arr.clear()
    assert _data_files(client) == []


def test_a_data_output_read_in_another_process(tmp_path: Path) -> None:
    """get_run in a new process returns the array a finished run stored."""
    store = tmp_path / "store"
    with temporary_client(store) as client:

        @client.create_function(fn_id="arr")
        def arr(ctx: nbdurable.ContextSync) -> Any:
            return ctx.step.run("make", lambda: np.arange(5) * 2)

        arr.run(run_id="r")
    code = textwrap.dedent(
        f"""
        import nbdurable
        run = nbdurable.Client("test", store={str(store)!r}).get_run("r")
        print(run.output.tolist())
        """
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert done.stdout.strip() == "[0, 2, 4, 6, 8]"


def test_import_and_load_ext_import_no_data_library() -> None:
    """`import nbdurable` and `%load_ext nbdurable` import none of numpy, pandas, pyarrow, polars."""
    code = textwrap.dedent(
        """
        import sys
        import nbdurable
        from IPython.core.interactiveshell import InteractiveShell
        InteractiveShell.instance().run_line_magic("load_ext", "nbdurable")
        print(sorted(m for m in ("numpy", "pandas", "pyarrow", "polars") if m in sys.modules))
        """
    )
    env = {**os.environ, "NBDURABLE_STORE": "/nonexistent-store"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60, env=env)
    assert done.stdout.strip().splitlines()[-1] == "[]"
