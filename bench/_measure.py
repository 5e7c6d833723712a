"""Timing helpers and the result of one benchmark row."""

from __future__ import annotations

import dataclasses
import gc
import statistics
import time
from collections.abc import Callable
from typing import Any


@dataclasses.dataclass(frozen=True)
class Sizes:
    """How big each row runs: the full run, or a tiny smoke check."""

    steps: int  # steps per run for rows 1, 2, 5 (and our side of row 4)
    repeats: int  # repeats of the paired measurements of rows 1, 2, 5 and 6
    linear_repeats: int
    small: int  # row 3: the short run
    large: int  # row 3: the long run (10x the short one)
    dbos_steps: int
    dbos_repeats: int
    joblib_calls: int
    view_steps: int
    import_runs: int
    data_sizes: tuple[int, ...] = (100_000,)  # rows 8-13: bytes of the arrays and frames
    view_steps_large: int = 60  # row 6b: past the view's grouping bound
    dask_steps: int = 20  # rows 15-17: the fan-out on a LocalCluster
    dask_repeats: int = 1
    dask_bytes: int = 1_000_000  # row 18: the array a worker step returns
    store_runs: tuple[int, ...] = (10, 100)  # rows 19-21: store sizes (runs) compared with an empty store
    store_repeats: int = 3
    load_ext_runs: int = 1
    event_sends: int = 3  # row 22
    idle_seconds: float = 1.0  # row 23
    big_value_bytes: int = 100_000  # row 24
    big_repeats: int = 2


FULL = Sizes(
    steps=2000,
    repeats=15,
    linear_repeats=21,
    small=1000,
    large=10_000,
    dbos_steps=1000,
    dbos_repeats=9,
    joblib_calls=500,
    view_steps=2000,
    import_runs=15,
    data_sizes=(100_000, 10_000_000, 1_000_000_000),
    view_steps_large=10_000,
    dask_steps=1000,
    dask_repeats=5,
    dask_bytes=100_000_000,
    store_runs=(1000, 10_000, 100_000),
    store_repeats=21,
    load_ext_runs=7,
    event_sends=60,
    idle_seconds=60.0,
    big_value_bytes=10_000_000,
    big_repeats=15,
)
TINY = Sizes(
    steps=20,
    repeats=2,
    linear_repeats=2,
    small=10,
    large=100,
    dbos_steps=10,
    dbos_repeats=1,
    joblib_calls=10,
    view_steps=20,
    import_runs=2,
    dask_steps=20,
    dask_repeats=1,
    dask_bytes=1_000_000,
    store_runs=(10, 100),
    store_repeats=3,
    load_ext_runs=1,
    event_sends=3,
    idle_seconds=1.0,
    big_value_bytes=100_000,
    big_repeats=2,
)


@dataclasses.dataclass
class Row:
    """One line of the table.

    ``met`` is True or False against the target, or None when the row has no target (a
    comparison) or was not measured (``figure`` is then ``"-"``). ``detail`` holds the
    underlying medians and spreads; ``why`` explains a missed target or a row not measured.
    """

    number: str
    title: str
    figure: str
    target: str
    met: bool | None
    detail: str = ""
    why: str = ""

    @property
    def result(self) -> str:
        if self.figure == "-":
            return "not measured"
        if self.met is None:
            return "-"
        return "met" if self.met else "MISSED"


def timed(fn: Callable[..., Any], *args: Any) -> float:
    """Seconds ``fn(*args)`` takes, after a garbage collection so earlier garbage is not billed to it."""
    gc.collect()
    start = time.perf_counter()
    fn(*args)
    return time.perf_counter() - start


def median(values: list[float]) -> float:
    return statistics.median(values)


def us(seconds: float) -> str:
    """Microseconds, for per-step figures."""
    return f"{seconds * 1e6:.1f} µs"


def ms(seconds: float) -> str:
    return f"{seconds * 1e3:.1f} ms"


def spread(values: list[float], unit: Callable[[float], str] = us) -> str:
    """``median (min-max, n=k)`` of a list of timings."""
    return f"{unit(median(values))} (range {unit(min(values))}-{unit(max(values))}, n={len(values)})"


def ratio_spread(ratios: list[float]) -> str:
    """``median x (min-max)`` of paired ratios."""
    return f"{median(ratios):.2f}x (range {min(ratios):.2f}-{max(ratios):.2f}x, n={len(ratios)})"


def paired(ours: list[float], theirs: list[float]) -> list[float]:
    """Ratio of each repeat's pair: ours / theirs (pairs were measured next to each other)."""
    return [a / b for a, b in zip(ours, theirs, strict=True)]
