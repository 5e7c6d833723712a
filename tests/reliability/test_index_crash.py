"""The run index across SIGKILL: it never disagrees with the records, and an upgrade killed midway is redone.

A run record and its index row are written in one SQLite transaction; a step record and its
run's counters in one statement (triggers). So a process killed at any moment leaves the
index equal to the records. An upgrade of a store from before the index is one transaction
too: killed midway, the store is still in the old format and the next process upgrades it.
Scale with ``NBDURABLE_TRIALS``.
"""

from __future__ import annotations

import random
import shutil
import sqlite3
import time
from pathlib import Path

import pytest

import nbdurable
from nbdurable._store import Store
from tests.indexcheck import assert_index_matches, make_legacy
from tests.reliability import workload as w

CTX = w.context()


@pytest.mark.timeout(max(120, 4 * w.TRIALS * 2))  # four lives per trial, each up to 0.6 s plus the check
def test_the_index_equals_the_records_after_every_kill(tmp_path: Path) -> None:
    """A worker writing, failing, forgetting and clearing runs is killed again and again; the index never drifts."""
    fig = w.figures("index under kills")
    store = tmp_path / "store"
    rng = random.Random(7)
    kills = checked = 0
    for life in range(w.TRIALS * 4):
        p = CTX.Process(target=w.churn, args=(str(store), life), daemon=True)
        p.start()
        p.join(rng.uniform(0.05, 0.6))
        p.kill()
        p.join()
        kills += 1
        checked = assert_index_matches(str(store))
    fig.update({"kills": kills, "runs in the store at the end": checked, "index rows differing from records": 0})


def _legacy_store(path: Path, runs: int) -> None:
    """A store from before the index with ``runs`` completed runs (written, then its index dropped)."""
    client = nbdurable.Client(w.APP, store=str(path))

    @client.create_function(fn_id="old")
    def old(ctx: nbdurable.ContextSync) -> int:
        return ctx.step.run("a", lambda: 1) + ctx.step.run("b", lambda: 2)

    for i in range(runs):
        old.run(run_id=f"o{i:04d}")
    Store.forget(str(path))
    make_legacy(str(path))


def test_an_upgrade_killed_midway_is_done_again_by_the_next_process(tmp_path: Path) -> None:
    """Killing the process that upgrades a store leaves it as it was; the next one upgrades it, every run kept."""
    fig = w.figures("upgrade under kills")
    source = tmp_path / "legacy"
    runs = 1500
    _legacy_store(source, runs)
    _timed_open(source, tmp_path / "warm-up")  # starts the forkserver: not part of a worker's time
    begins, ends = _timed_open(source, tmp_path / "timing")
    rng = random.Random(11)
    killed_midway = left_old = 0
    for trial in range(w.TRIALS):
        store = tmp_path / f"trial-{trial}"
        shutil.copytree(source, store)
        done = tmp_path / f"done-{trial}"
        p = CTX.Process(target=w.open_store, args=(str(store), str(done)), daemon=True)
        p.start()
        p.join(rng.uniform(begins, ends))  # while the store is opened: mostly inside the upgrade's transaction
        if p.exitcode is None:
            p.kill()
            killed_midway += 1
        p.join()
        left_old += not _indexed(store)
        w.inspect_store(str(store))  # the old format, or a complete index: never half of one
        survivor = tmp_path / f"after-{trial}"
        q = CTX.Process(target=w.open_store, args=(str(store), str(survivor)), daemon=True)
        q.start()
        q.join(60)
        assert q.exitcode == 0
        listed = survivor.read_text().split()[0]
        assert listed == str(runs), f"trial {trial}: {listed} runs listed"
        assert assert_index_matches(str(store)) == runs
    fig.update(
        {
            "trials": w.TRIALS,
            f"opening (upgrading) a {runs}-run store, uninterrupted (s)": round(ends - begins, 3),
            "workers killed before they listed the runs": killed_midway,
            "stores left in the old format by a kill": left_old,
            "runs lost": 0,
        }
    )


def _timed_open(source: Path, where: Path) -> tuple[float, float]:
    """When, after its start, a worker begins and ends opening (upgrading) a copy of ``source``: kills land between."""
    shutil.copytree(source, where)
    done = Path(str(where) + ".done")
    p = CTX.Process(target=w.open_store, args=(str(where), str(done)), daemon=True)
    started = time.monotonic()
    p.start()
    p.join(120)
    assert p.exitcode == 0
    _, began, ended = done.read_text().split()
    return float(began) - started, float(ended) - started


def _indexed(store: Path) -> bool:
    con = sqlite3.connect(store / "cache.db")
    try:
        return bool(con.execute("SELECT count(*) FROM sqlite_master WHERE name = 'NbdurableMeta'").fetchone()[0])
    finally:
        con.close()
