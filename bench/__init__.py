"""Benchmarks of nbdurable against raw diskcache, DBOS on SQLite and joblib.Memory.

Run from the repository root:

    python -m bench                               # full size, prints the table
    python -m bench --write docs/BENCHMARKS.md    # same, and rewrites the figures there
    python -m bench --tiny                        # every row at a tiny size (smoke check)

Every row is measured in the same process, side by side, repeated; figures are medians
with the spread (min-max) over the repeats. See docs/BENCHMARKS.md for what each row means.
"""
