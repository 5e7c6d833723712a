"""Rows 8-13: the store at scale (listing, lookup, ``%load_ext``), events across processes, a large replay.

Big stores are built by writing records directly through the store (run records with their
index rows, three completed steps each), in large transactions: building 100,000 runs by
executing functions would take minutes and measure nothing more.
"""

from __future__ import annotations

import json
import os
import pickle
import statistics
import subprocess
import sys
import textwrap
import time
from typing import Any

import diskcache

import nbdurable
from bench._measure import Row, Sizes, median, ms, spread, timed, us
from nbdurable import _records, _store
from nbdurable._store import Store

APP = "bench"
FN = "scale"


def build_store(path: str, runs: int) -> list[str]:
    """A store of ``runs`` completed three-step runs, one a second apart (newest last); their run ids."""
    store = Store.open(path)
    now = time.time() - runs
    event = _records.EventRecord(name="bench/scale", data={}, id="e", ts=1)
    template = _records.RunRecord(
        app=APP,
        function_id=FN,
        run_id="",
        status=nbdurable.RunStatus.COMPLETED,
        event=event,
        created_at=now,
        updated_at=now,
        steps=["a", "b", "c"],
        has_output=True,
        output_step="c",
    )
    ids = [f"run-{i:07d}" for i in range(runs)]
    batch = 2000
    for start in range(0, runs, batch):
        with store.write_transaction():
            for i in range(start, min(start + batch, runs)):
                run_id = ids[i]
                at = now + i
                rec = template.model_copy(update={"run_id": run_id, "created_at": at, "updated_at": at})
                store.put(_store.run_key(APP, FN, run_id), rec)
                prefix = _store.step_prefix(APP, FN, run_id)
                for n, step in enumerate("abc"):
                    store.put_completed_step(
                        prefix + step,
                        kind="run",
                        attempts=1,
                        started_at=at,
                        ended_at=at,
                        serializer="json",
                        fingerprint="0123456789abcdef",
                        payload=str(n).encode(),
                    )
    return ids


def _median_of(fn: Any, repeats: int) -> list[float]:
    return [timed(fn) for _ in range(repeats)]


# --- rows 19, 20, 21: listing, lookup and %load_ext on big stores ------------------------------

_LOAD_EXT = textwrap.dedent(
    """
    import json, os, sys, time
    from IPython.core.interactiveshell import InteractiveShell
    ip = InteractiveShell.instance()
    start = time.perf_counter()
    import nbdurable
    imported = time.perf_counter()
    ip.run_line_magic("load_ext", "nbdurable")
    loaded = time.perf_counter()
    print(json.dumps({"import": imported - start, "load_ext": loaded - imported}))
    """
)


def _load_ext_once(store: str) -> dict[str, float]:
    env = {**os.environ, "NBDURABLE_STORE": store, "NBDURABLE_VIEW": "off"}
    out = subprocess.run(
        [sys.executable, "-c", _LOAD_EXT], capture_output=True, text=True, check=True, timeout=300, env=env
    )
    got: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    if out.stdout.count("interrupted run"):
        msg = "the bench store holds interrupted runs: %load_ext printed a notice"
        raise AssertionError(msg)
    return got


BASE = 50
"""The baseline store holds just the runs a listing returns: what is returned costs the same at any size."""


def scale_rows(workdir: str, sizes: Sizes) -> list[Row]:
    """``runs()`` (first 50), ``get_run(id)`` and ``%load_ext`` on stores of growing size.

    Each is compared with the same call on a store of 50 runs (what the listing returns,
    and the run looked up): listing 50 runs from an empty store returns nothing, so that
    figure is given beside it, not used as the baseline.
    """
    counts = [0, BASE, *sizes.store_runs]
    listing: dict[int, list[float]] = {}
    lookup: dict[int, list[float]] = {}
    loads: dict[int, list[float]] = {}
    imports: dict[int, list[float]] = {}
    built: dict[int, float] = {}
    for n in counts:
        path = os.path.join(workdir, f"scale-{n}")
        began = time.perf_counter()
        ids = build_store(path, n)
        built[n] = time.perf_counter() - began
        client = nbdurable.Client(APP, store=path)
        target = ids[len(ids) // 2] if ids else "absent"
        got = client.runs(limit=BASE)  # warm: statement caches, the first record models
        if len(got) != min(n, BASE) or (ids and got[0].id != ids[-1]):
            msg = f"runs(limit=50) on {n} runs gave {len(got)} runs"
            raise AssertionError(msg)
        if ids and (client.get_run(target) is None):
            raise AssertionError(target)
        listing[n] = _median_of(lambda client=client: client.runs(limit=BASE), sizes.store_repeats)
        lookup[n] = _median_of(lambda client=client, target=target: client.get_run(target), sizes.store_repeats)
        Store.forget(path)
        loads[n], imports[n] = [], []
        for i in range(sizes.load_ext_runs + 1):
            got_times = _load_ext_once(path)
            if i:  # the first one warms the bytecode caches
                loads[n].append(got_times["load_ext"])
                imports[n].append(got_times["import"])
    biggest = counts[-1]

    def ratio(series: dict[int, list[float]]) -> float:
        return max(median(series[n]) for n in counts[2:]) / median(series[BASE])

    def detail(series: dict[int, list[float]], unit: Any = ms) -> str:
        return "; ".join(f"{n:,} runs {spread(series[n], unit)}" for n in sorted(counts))

    build = ", ".join(f"{n:,} runs {built[n]:.1f} s" for n in counts[2:])
    return [
        Row(
            "19",
            f"`runs(limit=50)` on a store of up to {biggest:,} runs / on a store of the 50 runs it returns",
            f"{ratio(listing):.2f}x",
            "<= 1.5x",
            ratio(listing) <= 1.5,
            f"worst ratio over the sizes; {detail(listing)} (stores written directly: {build})",
        ),
        Row(
            "20",
            f"`get_run(id)` on a store of up to {biggest:,} runs / on a store of 50 runs",
            f"{ratio(lookup):.2f}x",
            "<= 1.5x",
            ratio(lookup) <= 1.5,
            f"worst ratio over the sizes; {detail(lookup, us)}",
        ),
        Row(
            "21",
            f"`%load_ext nbdurable` on a store of {biggest:,} runs (fresh process, nbdurable imported)",
            ms(median(loads[biggest])),
            "< 100 ms, <= 1.5x on 50 runs",
            median(loads[biggest]) < 0.100 and ratio(loads) <= 1.5,
            f"{detail(loads)}; worst ratio to 50 runs {ratio(loads):.2f}x; `import nbdurable` before it "
            f"{spread(imports[biggest], ms)}",
        ),
    ]


# --- rows 22, 23: events across processes ------------------------------------------------------

_WAITER = textwrap.dedent(
    """
    import json, os, sys, time, nbdurable
    store, count, ready_dir = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    c = nbdurable.Client("events", store=store)
    @c.create_function(fn_id="waiter")
    def waiter(ctx):
        got = ctx.step.wait_for_event("w", event="bench/ping", timeout=600_000)
        return time.time()
    for i in range(count):
        run = waiter.start(run_id=f"w{i}")
        while not any(s.status.value == "WAITING" for s in run.steps):
            time.sleep(0.001)
        open(os.path.join(ready_dir, f"{i}"), "w").close()
        woke = run.wait(600)
        print(json.dumps({"i": i, "woke": woke}), flush=True)
    """
)

_IDLE = textwrap.dedent(
    """
    import sys, time, nbdurable
    store, ready = sys.argv[1], sys.argv[2]
    c = nbdurable.Client("events", store=store)
    @c.create_function(fn_id="idle")
    def idle(ctx):
        return ctx.step.wait_for_event("w", event="bench/never", timeout=3_600_000)
    run = idle.start(run_id="idle")
    while not any(s.status.value == "WAITING" for s in run.steps):
        time.sleep(0.01)
    open(ready, "w").close()
    run.wait()
    """
)


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux ``/proc``)."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def event_rows(workdir: str, sizes: Sizes) -> list[Row]:
    """``send`` here, ``wait_for_event`` in another process: wake latency; then a waiting process's idle CPU."""
    store = os.path.join(workdir, "events")
    ready = os.path.join(workdir, "events-ready")
    os.makedirs(ready)
    client = nbdurable.Client("events", store=store)
    client.store  # noqa: B018 - created before the waiter opens it
    n = sizes.event_sends
    proc = subprocess.Popen(
        [sys.executable, "-c", _WAITER, store, str(n), ready], stdout=subprocess.PIPE, text=True, env=_quiet()
    )
    assert proc.stdout is not None
    latencies = []
    try:
        for i in range(n):
            flag = os.path.join(ready, str(i))
            deadline = time.monotonic() + 120
            while not os.path.exists(flag):
                if time.monotonic() > deadline or proc.poll() is not None:
                    msg = f"the waiting process never waited (exit {proc.poll()})"
                    raise AssertionError(msg)
                time.sleep(0.001)
            time.sleep(0.05)  # the waiter settles into its wait (not a race: it waits until sent)
            sent = time.time()
            client.send_sync(nbdurable.Event("bench/ping", {"i": i}))
            got = json.loads(proc.stdout.readline())
            latencies.append(got["woke"] - sent)
    finally:
        proc.kill()
        proc.wait()
    latencies.sort()
    p95 = latencies[min(len(latencies) - 1, int(0.95 * len(latencies)))]
    idle_flag = os.path.join(workdir, "idle-ready")
    idler = subprocess.Popen([sys.executable, "-c", _IDLE, store, idle_flag], env=_quiet())
    try:
        deadline = time.monotonic() + 120
        while not os.path.exists(idle_flag):
            if time.monotonic() > deadline or idler.poll() is not None:
                raise AssertionError("the idle waiter never waited")
            time.sleep(0.01)
        time.sleep(1.0)  # past start-up
        cpu0, wall0 = _cpu_seconds(idler.pid), time.monotonic()
        time.sleep(sizes.idle_seconds)
        cpu1, wall1 = _cpu_seconds(idler.pid), time.monotonic()
    finally:
        idler.kill()
        idler.wait()
    share = (cpu1 - cpu0) / (wall1 - wall0)
    Store.forget(store)
    return [
        Row(
            "22",
            "`send` -> `wait_for_event` in another process: wake latency (median, p95)",
            f"{ms(median(latencies))}, {ms(p95)}",
            "median < 50 ms, p95 < 100 ms",
            median(latencies) < 0.050 and p95 < 0.100,
            f"{n} sends; from just before `send_sync` to the waiting run's step returning in the other process "
            f"(wall clock of both); all: {spread(latencies, ms)}",
        ),
        Row(
            "23",
            "CPU of a process idle in `wait_for_event` (share of one core)",
            f"{100 * share:.2f}%",
            "< 1%",
            share < 0.01,
            f"user + system time over {wall1 - wall0:.0f} s of waiting (from /proc/PID/stat)",
        ),
    ]


def _quiet() -> dict[str, str]:
    return {**os.environ, "NBDURABLE_VIEW": "off"}


# --- row 24: replay of a 10 MB value -----------------------------------------------------------


def big_value_row(workdir: str, sizes: Sizes) -> Row:
    """A step returning a large pickled value, replayed, against a raw ``Cache.get`` + ``pickle.loads``."""
    nbytes = sizes.big_value_bytes
    value = os.urandom(nbytes)
    path = os.path.join(workdir, "big")
    client = nbdurable.Client("big", store=os.path.join(path, "store"), serializer="pickle")
    calls = [0]

    @client.create_function(fn_id="big")
    def big(ctx: nbdurable.ContextSync) -> bytes:
        def make() -> bytes:
            calls[0] += 1
            return value

        return ctx.step.run("value", make)

    raw = diskcache.Cache(os.path.join(path, "raw"), eviction_policy="none", cull_limit=0, statistics=0, tag_index=0)
    raw.set("k", pickle.dumps(value, protocol=5))
    if big.run(run_id="r") != value:
        raise AssertionError("the first run returned another value")
    ours, theirs = [], []
    for _ in range(sizes.big_repeats):
        before = calls[0]
        ours.append(timed(lambda: big.run(run_id="r")))
        if calls[0] != before:
            raise AssertionError("the replay executed the step")
        theirs.append(timed(lambda: pickle.loads(raw.get("k"))))
    raw.close()
    Store.forget(client.store_path)
    ratios = [a / b for a, b in zip(ours, theirs, strict=True)]
    size = f"{nbytes / 1e6:.0f} MB" if nbytes >= 1_000_000 else f"{nbytes / 1e3:.0f} KB"
    return Row(
        "24",
        f"replay of a run whose step returned {size} (pickle) / raw `Cache.get` + `pickle.loads`",
        f"{statistics.median(ratios):.2f}x",
        "<= 1.2x",
        statistics.median(ratios) <= 1.2,
        f"whole `run()` replay {spread(ours, ms)}, raw {spread(theirs, ms)}; {sizes.big_repeats} repeats",
    )


# --- row 25: bytes on disk per trivial step ------------------------------------------------------


def _db_bytes(cache: diskcache.Cache) -> int:
    """The database's size once its journal is folded in (pages in use, free pages left out)."""
    sql = cache._sql
    sql("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
    ((pages,),) = sql("PRAGMA page_count").fetchall()
    ((free,),) = sql("PRAGMA freelist_count").fetchall()
    ((size,),) = sql("PRAGMA page_size").fetchall()
    return int((pages - free) * size)


def record_size_row(workdir: str, sizes: Sizes) -> Row:
    """Database bytes per trivial step: a run of N steps against N raw ``Cache.set`` of the same outputs."""
    n = sizes.steps * 5
    client = nbdurable.Client("size", store=os.path.join(workdir, "size-store"))

    @client.create_function(fn_id="size", retries=0)
    def steps(ctx: nbdurable.ContextSync) -> int:
        for i in range(n):
            ctx.step.run("step", lambda i=i: i)
        return n

    cache = client.store.cache
    before = _db_bytes(cache)
    steps.run(run_id="r")
    ours = (_db_bytes(cache) - before) / n
    raw = diskcache.Cache(
        os.path.join(workdir, "size-raw"), eviction_policy="none", cull_limit=0, statistics=0, tag_index=0
    )
    before = _db_bytes(raw)
    prefix = _store.step_prefix("size", "size", "r")
    for i in range(n):
        raw.set(f"{prefix}step:{i}", json.dumps(i).encode())
    theirs = (_db_bytes(raw) - before) / n
    raw.close()
    Store.forget(client.store_path)
    return Row(
        "25",
        "database bytes per trivial step: nbdurable / raw `Cache.set` of the same outputs under the same keys",
        f"{ours:.0f} B / {theirs:.0f} B",
        "(comparison)",
        None,
        f"{n:,} steps of one run; pages in use after a checkpoint, before and after; nbdurable's include the run "
        f"record, its index row and the step counters. Measured the same way on the code before this work "
        "(commit 6a33d75): 318 B / 105 B",
    )
