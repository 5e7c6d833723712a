"""What the reliability suites run in worker processes, and how they read what happened.

Workers are forked from a forkserver that has already imported nbdurable, so a worker
starts in milliseconds and the suites can afford hundreds of kills. Every step handler
appends ``start PID`` to its own log file when it begins and ``end PID`` when its work is
done: the logs count executions independently of the store under test.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import multiprocessing
import os
import sqlite3
import threading
import time
import warnings
from collections.abc import Callable
from multiprocessing.context import ForkServerContext
from pathlib import Path
from typing import Any

import nbdurable
from nbdurable import _records, _store
from tests.indexcheck import assert_index_matches
from tests.waiting import eventually

APP = "reliability"
FN_ID = "chain"
STEPS = 20
STEP_SECONDS = 0.005
BLOCK_FLAG = "block"

TRIALS = int(os.environ.get("NBDURABLE_TRIALS", "5"))
"""Crash trials (``make reliability``: 200; the normal test run: 5); other suites scale with it."""

FIGURES: dict[str, dict[str, Any]] = {}
"""Suite name -> counters, filled by the tests and printed at the end of the session."""


def figures(suite: str) -> dict[str, Any]:
    """The counters of one suite (created on first use)."""
    return FIGURES.setdefault(suite, {})


def context() -> ForkServerContext:
    """A forkserver context whose server has nbdurable (and this module) imported already."""
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["nbdurable", "nbdurable._engine", __name__])
    return ctx


# --- the workflow ---------------------------------------------------------------------------


def step_output(seed: int, i: int, prev: str) -> str:
    """Step ``i``'s output: depends on the run's data and on the previous step's output.

    Every fifth output is padded past 32 KB, which diskcache keeps in a file of its own
    beside the database: kills then also land while such a file is written.
    """
    link = hashlib.sha256(f"{seed}:{i}:{prev}".encode()).hexdigest()[:16]
    return link + "." * 40_000 if i % 5 == 4 else link


def expected_output(seed: int, steps: int = STEPS) -> list[str]:
    """What the workflow returns, computed without nbdurable."""
    out: list[str] = []
    prev = ""
    for i in range(steps):
        prev = step_output(seed, i, prev)
        out.append(prev)
    return out


def _log(logdir: str, i: int, what: str) -> None:
    fd = os.open(os.path.join(logdir, f"step-{i:02d}.log"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, f"{what} {os.getpid()}\n".encode())
    finally:
        os.close(fd)


def work(logdir: str, i: int, prev: str, seed: int, seconds: float) -> str:
    """One step: log the start, take a little time, log the end, return the next link."""
    _log(logdir, i, "start")
    flag = os.path.join(logdir, f"{BLOCK_FLAG}-{i:02d}")
    if os.path.exists(flag):  # the lease suites park a worker inside a step
        Path(flag + ".reached").touch()
        while os.path.exists(flag):
            time.sleep(0.01)
    time.sleep(seconds)
    out = step_output(seed, i, prev)
    _log(logdir, i, "end")
    return out


def define(
    client: nbdurable.Client, logdir: str, steps: int = STEPS, seconds: float = STEP_SECONDS, mode: str = "sync"
) -> Any:
    """The workflow: ``steps`` steps, each fed the previous step's output (sync or async face)."""
    if mode == "async":

        @client.create_function(fn_id=FN_ID, retries=0)
        async def achain(ctx: nbdurable.Context) -> list[str]:
            seed = ctx.event.data["seed"]
            outs: list[str] = []
            prev = ""
            for i in range(steps):
                prev = await ctx.step.run(f"step-{i:02d}", work, logdir, i, prev, seed, seconds)
                outs.append(prev)
            return outs

        return achain

    @client.create_function(fn_id=FN_ID, retries=0)
    def chain(ctx: nbdurable.ContextSync) -> list[str]:
        seed = ctx.event.data["seed"]
        outs: list[str] = []
        prev = ""
        for i in range(steps):
            prev = ctx.step.run(f"step-{i:02d}", work, logdir, i, prev, seed, seconds)
            outs.append(prev)
        return outs

    return chain


def life(store: str, logdir: str, seed: int, mode: str = "sync") -> None:
    """One worker life: run the workflow (resuming what is stored) and write its output."""
    client = nbdurable.Client(APP, store=store)
    out = define(client, logdir, mode=mode).run({"seed": seed}, run_id=f"trial-{seed}")
    tmp = os.path.join(logdir, f"output.{os.getpid()}.tmp")
    with open(tmp, "w") as f:
        json.dump(out, f)
    os.replace(tmp, os.path.join(logdir, "output.json"))


def contend(
    store: str, logdir: str, seed: int, steps: int, seconds: float, threads: int, gate: Any, results: Any
) -> None:
    """Start the same run from ``threads`` threads at once (after ``gate`` opens); report outcomes."""
    client = nbdurable.Client(APP, store=store)
    fn = define(client, logdir, steps, seconds)
    barrier = threading.Barrier(threads)
    outcomes: list[tuple[str, Any]] = []
    lock = threading.Lock()

    def call() -> None:
        barrier.wait()
        try:
            got: tuple[str, Any] = ("ok", fn.run({"seed": seed}, run_id=f"contend-{seed}"))
        except nbdurable.RunLockedError as exc:
            got = ("locked", str(exc))
        except BaseException as exc:
            got = ("error", repr(exc))
        with lock:
            outcomes.append(got)

    workers = [threading.Thread(target=call, daemon=True) for _ in range(threads)]
    results.put(("ready", os.getpid()))
    gate.wait()
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    results.put(("done", os.getpid(), outcomes))


def churn(store: str, seed: int) -> None:
    """Write runs without end (until killed): steps that complete or fail, forgotten steps, cleared runs."""
    import random

    rng = random.Random(seed)
    client = nbdurable.Client(APP, store=store)

    @client.create_function(fn_id="churn", retries=0)
    def churned(ctx: nbdurable.ContextSync) -> int:
        total = 0
        for i in range(ctx.event.data["steps"]):
            total += ctx.step.run(f"s{i}", lambda i=i: i if i != ctx.event.data["fail"] else 1 // 0)
        return total

    n = 0
    while True:
        n += 1
        steps = rng.randrange(1, 6)
        run_id = f"c{rng.randrange(12)}"  # runs are written again, failed ones retried
        with contextlib.suppress(nbdurable.RunFailedError):
            churned.run({"steps": steps, "fail": rng.randrange(steps + 3)}, run_id=run_id)
        if n % 7 == 0:
            with contextlib.suppress(KeyError):
                churned.invalidate(run_id, from_step="s0")
        if n % 11 == 0:
            churned.clear(f"c{rng.randrange(12)}")


def open_store(store: str, done: str) -> None:
    """Open a store (an upgrade, for a store from before the index), list it, and say so.

    ``done`` gets the number of runs listed, then when the opening began and ended (``time.monotonic``).
    """
    began = time.monotonic()
    client = nbdurable.Client(APP, store=store)
    count = len(client.runs())
    Path(done).write_text(f"{count} {began} {time.monotonic()}")


# --- reading what happened --------------------------------------------------------------


def read_logs(logdir: str, steps: int = STEPS) -> list[list[tuple[str, int]]]:
    """Per step, the ``(start|end, pid)`` entries of its log, in order."""
    out: list[list[tuple[str, int]]] = []
    for i in range(steps):
        path = os.path.join(logdir, f"step-{i:02d}.log")
        entries: list[tuple[str, int]] = []
        if os.path.exists(path):
            with open(path) as f:
                for line in f.read().splitlines():
                    what, pid = line.split()
                    entries.append((what, int(pid)))
        out.append(entries)
    return out


def inspect_store(path: str) -> dict[str, Any]:
    """Open the store cold and read every record; raise if any record cannot be read.

    First, before nbdurable opens it, the run index must already equal the records (a kill
    never leaves one without the other). Returns the keys of completed steps of the
    workflow's run, the run record (or None) and how many records were read.
    """
    db = os.path.join(path, "cache.db")
    if os.path.exists(db):
        con = sqlite3.connect(db)
        try:
            verdict = con.execute("PRAGMA integrity_check").fetchone()[0]
            indexed = con.execute("SELECT count(*) FROM sqlite_master WHERE name = 'NbdurableRuns'").fetchone()[0]
        finally:
            con.close()
        assert verdict == "ok", f"sqlite integrity_check: {verdict}"
        if indexed:
            assert_index_matches(path)
    store = _store.Store(path)
    try:
        models: dict[str, type[Any]] = {"r": _records.RunRecord, "s": _records.StepRecord, "e": _records.EventRecord}
        completed: set[str] = set()
        runs: list[Any] = []
        records = 0
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # an unreadable record warns: make it fail here
            for key, raw in store.scan("").items():
                model = models[key[0]]
                got = store.get(key, model) if raw is None else store.decode(key, raw, model)
                assert got is not _store.MISSING, key
                assert got is not _store.CORRUPT, key
                records += 1
                rec = got[0]
                if key[0] == "s" and rec.status == "COMPLETED":
                    completed.add(key.rsplit(_store.SEP, 1)[1])
                if key[0] == "r":
                    runs.append(rec)
        return {"completed": completed, "runs": runs, "records": records}
    finally:
        store.cache.close()


def wait_for(predicate: Callable[[], bool], timeout: float = 20.0) -> None:
    """Poll ``predicate`` until it holds (cross-process handshakes); fail after ``timeout``."""
    eventually(predicate, timeout)
