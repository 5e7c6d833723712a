"""Rows 8-14: data values through nbdurable (steps, replays, %%step) beside raw writes and joblib.Memory.

Every figure is a median of paired repeats measured next to each other in this process (the
1 GB ones with fewer repeats). Values are float64 arrays and float64 DataFrames of 8 columns.
Writes start after an untimed ``os.sync`` so each pays for its own writing into the page
cache; reads find the page cache warm (each file was just written), for every reader alike.
"""

from __future__ import annotations

import itertools
import os
import pickle
import subprocess
import sys
import textwrap
import time
from typing import Any

from bench._measure import Row, Sizes, median, paired, ratio_spread, timed

_RUN = itertools.count()


def _label(nbytes: int) -> str:
    return (
        f"{nbytes / 1e9:g} GB" if nbytes >= 1e9 else f"{nbytes / 1e6:g} MB" if nbytes >= 1e6 else f"{nbytes / 1e3:g} KB"
    )


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.2f} ms" if seconds < 1 else f"{seconds:.2f} s"


def _value(kind: str, nbytes: int) -> Any:
    import numpy as np

    rng = np.random.default_rng(0)
    if kind == "array":
        return rng.random(nbytes // 8)
    import pandas as pd

    return pd.DataFrame({f"c{i}": rng.random(nbytes // 64) for i in range(8)})


def _repeats(nbytes: int, sizes: Sizes) -> int:
    if sizes.repeats <= 2:
        return 2
    return 4 if nbytes >= 500_000_000 else 8 if nbytes >= 5_000_000 else 16  # even: each side goes first as often


def _sync() -> None:
    if hasattr(os, "sync"):
        os.sync()


def step_rows(workdir: str, sizes: Sizes) -> list[Row]:
    """Rows 8 and 9: a step returning an array or a frame, first execution and replay."""
    import diskcache
    import joblib

    import nbdurable

    rows: list[Row] = []
    client = nbdurable.Client("bench-data", store=os.path.join(workdir, "data-store"))
    memory = joblib.Memory(os.path.join(workdir, "joblib-data"), verbose=0)
    memory_mmap = joblib.Memory(os.path.join(workdir, "joblib-data-mmap"), verbose=0, mmap_mode="r")
    raw = diskcache.Cache(os.path.join(workdir, "raw-data"), eviction_policy="none", size_limit=2**62)
    try:
        for kind in ("array", "frame"):
            for nbytes in sizes.data_sizes:
                value = _value(kind, nbytes)
                n = _repeats(nbytes, sizes)
                label = f"{kind} of {_label(nbytes)}"

                @client.create_function(fn_id=f"make-{kind}-{nbytes}")
                def make(ctx: nbdurable.ContextSync, v: Any = value) -> Any:
                    return ctx.step.run("make", lambda: v)

                def produce(v: Any = value) -> Any:
                    return v

                cached = memory.cache(produce)
                cached_mmap = memory_mmap.cache(produce)
                first, reference, again, hit, hit_mmap = [], [], [], [], []
                for i in range(n):
                    run_id = f"r{next(_RUN)}"
                    ref = os.path.join(workdir, f"ref-{i}")
                    # Who writes first alternates, and both files go at the end of the repeat:
                    # on this machine a write slows down severalfold once about 1 GB of other
                    # recently written files sits in the page cache, so neither may write
                    # behind the other's file every time.
                    for ours in (True, False) if i % 2 == 0 else (False, True):
                        _sync()
                        if ours:
                            first.append(_timed_run(make, run_id))
                        else:
                            reference.append(timed(_raw_write, kind, value, raw, ref))
                    again.append(_timed_run(make, run_id))
                    if i == 0:
                        cached.call(value)  # the cache entry (joblib hashes the argument on every call)
                        cached_mmap.call(value)
                    hit.append(timed(cached, value))
                    hit_mmap.append(timed(cached_mmap, value))
                    _drop(ref)
                    make.clear(run_id)
                ratio = paired(first, reference)
                rows.append(
                    Row(
                        "8",
                        f"step returning an {label}, first execution / raw write",
                        f"{median(ratio):.2f}x",
                        "<= 1.2x",
                        median(ratio) <= 1.2,
                        detail=(
                            f"{label}: nbdurable run {_ms(median(first))}, raw write "
                            f"({'np.save' if kind == 'array' else 'Arrow IPC'} + Cache.set) {_ms(median(reference))}; "
                            f"paired {ratio_spread(ratio)}"
                        ),
                    )
                )
                replay_ratio = paired(again, hit)
                mapped = kind == "array" and nbytes >= 1 << 20
                figure = f"{median(replay_ratio):.2f}x"
                target = "<= 1.2x"
                met = median(replay_ratio) <= 1.2
                if nbytes >= 500_000_000 and mapped:
                    figure += f"; memory-mapped {_ms(median(again))}"
                    target = "<= 1.2x; 1 GB mapped < 10 ms"
                    met = met and median(again) < 0.010
                rows.append(
                    Row(
                        "9",
                        f"its replay / joblib.Memory hit ({label})",
                        figure,
                        target,
                        met,
                        detail=(
                            f"{label}: nbdurable replay {_ms(median(again))}"
                            f"{' (memory-mapped)' if mapped else ''}, joblib hit {_ms(median(hit))}, joblib hit "
                            f"mmap_mode='r' {_ms(median(hit_mmap))}; paired {ratio_spread(replay_ratio)}"
                        ),
                    )
                )
                del value, make, cached, cached_mmap
                memory.clear(warn=False)
                memory_mmap.clear(warn=False)
    finally:
        raw.close()
        from nbdurable._store import Store

        Store.forget(client.store_path)
    return rows


def _timed_run(fn: Any, run_id: str) -> float:
    start = time.perf_counter()
    fn.run(run_id=run_id)
    return time.perf_counter() - start


def _raw_write(kind: str, value: Any, raw: Any, path: str) -> None:
    if kind == "array":
        import numpy as np

        np.save(path + ".npy", value, allow_pickle=False)
    else:
        import pyarrow as pa
        from pyarrow import feather

        feather.write_feather(pa.Table.from_pandas(value), path + ".arrow", compression="uncompressed")
    raw.set(path, b"{}")


def _drop(base: str) -> None:
    for suffix in (".npy", ".arrow"):
        if os.path.exists(base + suffix):
            os.remove(base + suffix)


def cell_rows(workdir: str, sizes: Sizes) -> list[Row]:
    """Row 10: a %%step cell binding a large array, stored and restored, beside pickle and joblib."""
    import joblib
    from IPython.core.interactiveshell import InteractiveShell

    nbytes = max(sizes.data_sizes)
    value = _value("array", nbytes)
    n = _repeats(nbytes, sizes)
    shell = InteractiveShell.instance()
    os.environ["NBDURABLE_STORE"] = os.path.join(workdir, "cell-store")
    shell.run_line_magic("load_ext", "nbdurable")
    shell.user_ns["make"] = lambda: value
    memory = joblib.Memory(os.path.join(workdir, "joblib-cell"), verbose=0)
    memory_mmap = joblib.Memory(os.path.join(workdir, "joblib-cell-mmap"), verbose=0, mmap_mode="r")
    produce = memory.cache(lambda: value)
    produce_mmap = memory_mmap.cache(lambda: value)
    produce()
    produce_mmap()
    store, reference, restore, hit, hit_mmap = [], [], [], [], []
    try:
        for i in range(n):
            cell = f"big = make()  # {i}"  # a new cell each time: stored anew
            _sync()
            store.append(timed(shell.run_cell_magic, "step", f"c{i}", cell))
            _sync()
            reference.append(timed(_pickle_write, value, os.path.join(workdir, f"cell-ref-{i}.pkl")))
            os.remove(os.path.join(workdir, f"cell-ref-{i}.pkl"))
            shell.user_ns.pop("big", None)
            restore.append(timed(shell.run_cell_magic, "step", f"c{i}", cell))
            hit.append(timed(produce))
            hit_mmap.append(timed(produce_mmap))
    finally:
        shell.run_line_magic("unload_ext", "nbdurable")
    stored = paired(store, reference)
    restored = paired(restore, hit)
    label = _label(nbytes)
    mapped_ok = median(restore) < 0.010
    return [
        Row(
            "10a",
            f"%%step storing a cell that binds a {label} array / pickle.dumps + file write",
            f"{median(stored):.2f}x",
            "<= 1.3x",
            median(stored) <= 1.3,
            detail=(
                f"%%step {_ms(median(store))}, pickle + write {_ms(median(reference))}; paired {ratio_spread(stored)}"
            ),
        ),
        Row(
            "10b",
            f"%%step restoring it / joblib.Memory hit ({label})",
            f"{median(restored):.2f}x; restore {_ms(median(restore))}",
            "<= 1.2x; memory-mapped < 10 ms",
            median(restored) <= 1.2 and mapped_ok,
            detail=(
                f"restore (memory-mapped) {_ms(median(restore))}, joblib hit {_ms(median(hit))}, joblib hit "
                f"mmap_mode='r' {_ms(median(hit_mmap))}; paired {ratio_spread(restored)}"
            ),
        ),
    ]


def _pickle_write(value: Any, path: str) -> None:
    with open(path, "wb") as f:
        f.write(pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL))


def small_rows(sizes: Sizes) -> list[Row]:
    """Rows 11 and 12: the slowest preview of big values, and the fingerprint's throughput."""

    from nbdurable._hashing import content_digest
    from nbdurable._preview import preview

    nbytes = max(sizes.data_sizes)
    big = _value("array", nbytes)
    frame = _value("frame", min(nbytes, 100_000_000))

    class Slow:
        def __repr__(self) -> str:
            time.sleep(10)
            return "slow"

    values = {
        "array": big,
        "frame": frame,
        "bytes": b"x" * min(nbytes, 100_000_000),
        "list": list(range(1_000_000)),
        "nested dict": {"a": {"b": {"c": list(range(100_000))}}},
        "object with a 10 s repr": Slow(),
    }
    worst, worst_name, cold_worst, cold_name = 0.0, "", 0.0, ""
    for name, value in values.items():
        cold = min(timed(preview, value) for _ in range(5))  # each right after a garbage collection
        start = time.perf_counter()
        for _ in range(100):  # back to back, as the view redraws
            preview(value)
        warm = (time.perf_counter() - start) / 100
        if warm > worst:
            worst, worst_name = warm, name
        if cold > cold_worst:
            cold_worst, cold_name = cold, name
    times = [timed(content_digest, big) for _ in range(3 if nbytes >= 500_000_000 else 7)]
    rate = big.nbytes / median(times) / 1e9
    return [
        Row(
            "11",
            "preview of any value (the slowest of arrays, frames, bytes, long lists, a 10 s repr)",
            f"{worst * 1e6:.0f} µs ({worst_name}); cold {cold_worst * 1e6:.0f} µs ({cold_name})",
            "< 100 µs",
            worst < 100e-6,
            detail=(
                "the figure: the mean of 100 calls back to back (as the view redraws), for the slowest value; "
                "cold: the best of 5 calls, each right after a full garbage collection, for the slowest value"
            ),
        ),
        Row(
            "12",
            f"content fingerprint of a {_label(big.nbytes)} array argument",
            f"{rate:.1f} GB/s",
            ">= 1 GB/s",
            rate >= 1.0,
            detail=f"xxh3-128 over the buffer, {_ms(median(times))} for {_label(big.nbytes)}",
        ),
    ]


PEAK = """
import tempfile
import numpy as np
import nbdurable
value = np.random.default_rng(0).random({n} // 8)
client = nbdurable.Client("peak", store=tempfile.mkdtemp(dir={workdir!r}))
@client.create_function(fn_id="peak")
def peak(ctx):
    return ctx.step.run("make", lambda: value)
def high_water():  # this process's own peak RSS (ru_maxrss would include the parent's, from before exec)
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))
before = high_water()
peak.run()
after = high_water()
print(before, after, value.nbytes)
"""


def peak_row(workdir: str, sizes: Sizes) -> Row:
    """Row 13: the peak memory of a process storing a large value, over the value's size."""
    nbytes = max(sizes.data_sizes)
    code = textwrap.dedent(PEAK.format(n=nbytes, workdir=workdir))
    env = {**os.environ, "NBDURABLE_VIEW": "off"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    before, after, size = (int(x) for x in done.stdout.split())
    total = after / size  # the whole process: interpreter, libraries and the value itself
    extra = (after - before) / size
    return Row(
        "13",
        f"peak memory while storing a {_label(size)} value / the value's size",
        f"{total:.2f}x",
        "<= 1.3x",
        total <= 1.3,
        detail=f"peak RSS {after / 1e6:.0f} MB for a {size / 1e6:.0f} MB array; the store added {extra:.2f}x",
    )


NOTEBOOK_CELLS = 10


def notebook_row(workdir: str, sizes: Sizes) -> Row:
    """Row 14: a notebook of 10 cell steps, cell 2 edited: cells executed again, and time against plain cells.

    Cell k (k > 1) reads what cell k-1 binds only for k = 3 (the one reader of cell 2); the
    others read a cell that is not edited. Each cell does about 50 ms of work.
    """
    from IPython.core.interactiveshell import InteractiveShell

    shell = InteractiveShell.instance()
    os.environ["NBDURABLE_STORE"] = os.path.join(workdir, "notebook-store")
    shell.run_line_magic("load_ext", "nbdurable")
    executed: list[int] = []
    shell.user_ns["work"] = lambda k: (executed.append(k), time.sleep(0.05 if sizes.repeats > 2 else 0.005))[0]

    def cells(edit: int) -> list[str]:
        out = ["work(1); v1 = 1"]
        out.append(f"work(2); v2 = v1 + {edit}")
        out.append("work(3); v3 = v2 * 2")
        out += [f"work({k}); v{k} = v1 + {k}" for k in range(4, NOTEBOOK_CELLS + 1)]
        return out

    try:
        for k, cell in enumerate(cells(0), 1):
            shell.run_cell_magic("step", f"n{k}", cell)
        executed.clear()
        start = time.perf_counter()
        for k, cell in enumerate(cells(1), 1):
            shell.run_cell_magic("step", f"n{k}", cell)
        durable = time.perf_counter() - start
        again = sorted(executed)
        start = time.perf_counter()
        for cell in cells(1):
            shell.run_cell(cell, silent=True)
        plain = time.perf_counter() - start
    finally:
        shell.run_line_magic("unload_ext", "nbdurable")
    return Row(
        "14",
        f"notebook of {NOTEBOOK_CELLS} cell steps, cell 2 edited: cells executed again; time / running it plainly",
        f"cells {again}; {durable / plain:.2f}x",
        "cells [2, 3] only",
        again == [2, 3],
        detail=f"run all after the edit: {_ms(durable)} with %%step, {_ms(plain)} as plain cells",
    )
