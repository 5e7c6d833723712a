"""``python -m bench [--tiny] [--write docs/BENCHMARKS.md]``: run every row, print the table."""

from __future__ import annotations

import argparse
import datetime
import os
import shutil
import sys
import tempfile
import traceback
from collections.abc import Callable

from bench import _dask_rows, _data_rows, _report, _rows, _store_rows
from bench._measure import FULL, TINY, Row, Sizes

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_all(sizes: Sizes, workdir: str, *, explain: bool) -> tuple[list[Row], bool]:
    """Every row, in one process; a crashing row becomes a 'not measured' line and sets the flag."""
    ws = _rows.Workspace(workdir)
    steps: list[tuple[str, list[str], Callable[[], list[Row]]]] = [
        ("first execution, replay, joblib", ["1", "2", "5"], lambda: _rows.core_rows(ws, sizes)),
        ("linear replay", ["3"], lambda: [_rows.linear_row(ws, sizes)]),
        ("DBOS", ["4a", "4b"], lambda: _rows.dbos_rows(ws, sizes)),
        ("view", ["6"], lambda: [_rows.view_row(ws, sizes)]),
        ("view, 10,000 steps", ["6b"], lambda: [_rows.view_row(ws, sizes, large=True)]),
        ("import", ["7"], lambda: [_rows.import_row(sizes)]),
        ("data steps", ["8", "9"], lambda: _data_rows.step_rows(workdir, sizes)),
        ("%%step data", ["10a", "10b"], lambda: _data_rows.cell_rows(workdir, sizes)),
        ("preview, fingerprint", ["11", "12"], lambda: _data_rows.small_rows(sizes)),
        ("peak memory", ["13"], lambda: [_data_rows.peak_row(workdir, sizes)]),
        ("notebook of cell steps", ["14"], lambda: [_data_rows.notebook_row(workdir, sizes)]),
        (
            "Dask LocalCluster",
            ["15a", "15b", "16", "17", "18"],
            lambda: _dask_rows.dask_rows(ws.dir, sizes.dask_steps, sizes.dask_repeats, sizes.dask_bytes),
        ),
        ("store at scale", ["19", "20", "21"], lambda: _store_rows.scale_rows(workdir, sizes)),
        ("events across processes", ["22", "23"], lambda: _store_rows.event_rows(workdir, sizes)),
        ("large replay", ["24"], lambda: [_store_rows.big_value_row(workdir, sizes)]),
        ("record size", ["25"], lambda: [_store_rows.record_size_row(workdir, sizes)]),
    ]
    rows: list[Row] = []
    crashed = False
    try:
        for name, numbers, measure in steps:
            print(f"bench: {name}...", file=sys.stderr, flush=True)
            try:
                rows.extend(measure())
            except Exception as exc:
                crashed = True
                traceback.print_exc()
                error = f"{type(exc).__name__}: {exc}".splitlines()[0]
                rows.extend(Row(n, name, "-", "-", None, why=f"crashed: {error}") for n in numbers)
    finally:
        ws.close()
    rows.sort(key=lambda r: (int("".join(c for c in r.number if c.isdigit()) or 0), r.number))
    if explain:  # the reasons come from profiling full-size runs; tiny figures are noise
        _rows.explain(rows)
    return rows, crashed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--tiny", action="store_true", help="every row at a tiny size (smoke check, writes nothing)")
    parser.add_argument("--write", metavar="PATH", help="rewrite the figures section of this Markdown file")
    args = parser.parse_args(argv)
    if args.tiny and args.write:
        parser.error("--tiny figures are not worth writing down; drop --write")
    sizes = TINY if args.tiny else FULL
    # Outside a notebook a blocking run() shows text lines per step unless told not to; the rows
    # measure the runtime alone, and row 6 attaches the widget view itself through run_hooks.
    os.environ["NBDURABLE_VIEW"] = "off"
    # The stores live next to the repository, on the disk a user's .nbdurable store would use.
    base = os.path.join(ROOT, "bench", "out")
    os.makedirs(base, exist_ok=True)
    workdir = tempfile.mkdtemp(prefix="run-", dir=base)
    started = datetime.datetime.now(datetime.timezone.utc)
    load_before = _report.load()
    try:
        rows, crashed = run_all(sizes, workdir, explain=not args.tiny)
        machine = _report.machine(workdir, load_before)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(_report.table(rows, machine, started, tiny=args.tiny))
    if args.write:
        _report.write(args.write, rows, machine, started)
        print(f"bench: figures written to {args.write}", file=sys.stderr)
    return 1 if crashed else 0


if __name__ == "__main__":
    sys.exit(main())
