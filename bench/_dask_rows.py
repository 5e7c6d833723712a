"""Rows 15-18: steps on a 2-worker Dask ``LocalCluster`` (process workers), side by side with raw Dask.

15. Fan-out: N steps of 10 ms through ``ctx.group.parallel`` on the cluster's executor (15a:
    an async function, every member submitted at once; 15b: a sync one, whose thread pool
    keeps 32 members in flight), against the same N calls through ``Client.map`` + ``gather``.
16. Per-step overhead of a trivial step run on an executor (threads, processes, Dask)
    over the same step run in process, next to a raw ``submit().result()`` round trip.
17. Replay of the fan-out: no task reaches the scheduler (a scheduler plugin counts the keys sent).
18. A large output (a float64 numpy array) returned by a worker step: worker -> kernel -> store
    (the data codecs write it as a .npy file of its own).

Every figure is a median over repeats, ours and theirs measured next to each other.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

import nbdurable
from bench._measure import Row, median, ms, paired, ratio_spread, spread, timed, us
from nbdurable._store import Store

TARGET = 1.1


def sleep10(i: int) -> int:
    """The fan-out's step: 10 ms of waiting (the cluster's work), then its argument back."""
    time.sleep(0.01)
    return i


def trivial(i: int) -> int:
    return i


def big_array(nbytes: int) -> Any:
    import numpy as np

    return np.ones(nbytes // 8)


class Cluster:
    """A 2-worker LocalCluster with process workers (one thread each), and a client of it."""

    def __init__(self) -> None:
        from distributed import Client, LocalCluster
        from distributed.diagnostics.plugin import SchedulerPlugin

        class Submitted(SchedulerPlugin):
            """Counts the task keys sent to the scheduler: a replay must send none."""

            name = "nbdurable-bench-submitted"
            keys = 0

            def update_graph(self, scheduler: Any, *, keys: Any, **kwargs: Any) -> None:
                self.keys += len(keys)

        self.cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0")
        self.counter = Submitted()
        self.cluster.scheduler.add_plugin(self.counter)  # the LocalCluster's scheduler lives in this process
        self.client = Client(self.cluster)
        self.executor = self.client.get_executor()

    @property
    def submitted(self) -> int:
        return int(self.counter.keys)

    def close(self) -> None:
        self.client.close()
        self.cluster.close()


def dask_rows(root: str, steps: int, repeats: int, big: int) -> list[Row]:
    """Rows 15-18 on one cluster; ``steps`` is the fan-out's size, ``big`` the large output's bytes."""
    cluster = Cluster()
    client = nbdurable.Client(app_id="bench-dask", store=os.path.join(root, "dask-store"), executor=cluster.executor)
    try:
        rows = fan_out_rows(client, cluster, steps, repeats)
        rows.append(overhead_row(client, cluster, max(20, steps // 5), repeats))
        rows.append(large_output_row(client, cluster, big, max(repeats, 2 * repeats - 1)))
        return rows
    finally:
        Store.forget(client.store_path)
        cluster.close()


def fan_out_functions(client: nbdurable.Client) -> dict[str, nbdurable.Function[Any]]:
    """The fan-out as an async function (15a) and a sync one (15b)."""

    @client.create_function(fn_id="fan-out-async", retries=0)
    async def fan_out_async(ctx: nbdurable.Context) -> int:
        members = [lambda i=i: ctx.step.run("item", sleep10, i) for i in range(ctx.event.data["n"])]
        return sum(await ctx.group.parallel(members))

    @client.create_function(fn_id="fan-out-sync", retries=0)
    def fan_out_sync(ctx: nbdurable.ContextSync) -> int:
        members = [lambda i=i: ctx.step.run("item", sleep10, i) for i in range(ctx.event.data["n"])]
        return sum(ctx.group.parallel(members))

    return {"async": fan_out_async, "sync": fan_out_sync}


def fan_out_rows(client: nbdurable.Client, cluster: Cluster, n: int, repeats: int) -> list[Row]:
    functions = fan_out_functions(client)
    dask = cluster.client
    expected = n * (n - 1) // 2
    # Untimed warm-up: workers import the modules, the store opens, the code is fingerprinted.
    for fn in functions.values():
        fn.run({"n": 20, "rep": -1})
    dask.gather(dask.map(sleep10, range(20), pure=False))
    raws: list[float] = []
    submits: list[float] = []  # Dask's own cost of one task per call, which any per-step path pays
    ours: dict[str, list[float]] = {"async": [], "sync": []}
    replays: list[float] = []
    sent: list[int] = []
    for rep in range(repeats):
        data = {"n": n, "rep": rep}
        raws.append(timed(lambda: dask.gather(dask.map(sleep10, range(n), pure=False))))
        submits.append(timed(lambda: dask.gather([dask.submit(sleep10, i, pure=False) for i in range(n)])))
        for face, fn in functions.items():
            ours[face].append(timed(fn.run, data))
        before = cluster.submitted
        replays.append(timed(functions["async"].run, data))
        sent.append(cluster.submitted - before)
        if functions["async"].run(data) != expected or functions["sync"].run(data) != expected:
            raise AssertionError("the fan-out's output is wrong")
    phases = {face: profile(client, fn, {"n": n, "rep": "profile"}) for face, fn in functions.items()}
    ideal = n * 0.01 / 2
    per_task = (
        f"raw Dask with one submit per call (as any per-step path must) {spread(submits, ms)}, "
        f"{ratio_spread(paired(submits, raws))} of map"
    )
    rows = []
    for number, face, how in (
        ("15a", "async", "an async function: every member submitted at once"),
        ("15b", "sync", "a sync function: 32 members in flight (its thread pool)"),
    ):
        ratios = paired(ours[face], raws)
        rows.append(
            Row(
                number,
                f"{n:,} steps of 10 ms through group.parallel on a 2-worker LocalCluster ({face}) "
                "/ raw `Client.map` + `gather`",
                f"{median(ratios):.2f}x",
                f"<= {TARGET}x",
                median(ratios) <= TARGET,
                f"{how}: {spread(ours[face], ms)}; Client.map + gather {spread(raws, ms)} (the work alone: "
                f"{ideal * 1e3:.0f} ms on 2 workers); paired ratio {ratio_spread(ratios)}; {per_task}; "
                f"{phases[face]}",
            )
        )
    rows.append(
        Row(
            "17",
            f"replay of that {n:,}-step fan-out: task keys sent to the scheduler",
            f"{max(sent)}",
            "0",
            max(sent) == 0,
            f"whole replay {spread(replays, ms)} ({us(median(replays) / n)} per step); keys sent during each "
            f"replay (a scheduler plugin counts them): {sent}",
        )
    )
    return rows


def profile(client: nbdurable.Client, fn: nbdurable.Function[Any], data: dict[str, Any]) -> str:
    """Where one run's time goes: submissions, store writes on the kernel, and the last output's arrival."""
    from nbdurable._process import STATE

    marks: dict[str, list[float]] = {"step_started": [], "step_completed": []}
    store = client.store
    put = store.put_completed_step
    writing = [0.0]

    def timed_put(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return put(*args, **kwargs)
        finally:
            writing[0] += time.perf_counter() - start

    def listen(kind: str, run: Any, step: Any) -> None:
        if kind in marks:
            marks[kind].append(time.perf_counter())

    hook = lambda run: run.add_listener(listen)
    STATE.run_hooks.append(hook)
    store.put_completed_step = timed_put  # type: ignore[method-assign]
    try:
        start = time.perf_counter()
        fn.run(data)
        end = time.perf_counter()
    finally:
        del store.put_completed_step
        STATE.run_hooks.remove(hook)
    submitted, stored = marks["step_started"], marks["step_completed"]
    return (
        f"one more run, profiled: last member submitted at {ms(submitted[-1] - start)}, first output stored at "
        f"{ms(stored[0] - start)}, last at {ms(stored[-1] - start)}, run returned at {ms(end - start)}; "
        f"store writes on the kernel {ms(writing[0])} in all ({us(writing[0] / len(stored))} each)"
    )


def overhead_row(client: nbdurable.Client, cluster: Cluster, n: int, repeats: int) -> Row:
    """Per-step time of N sequential trivial steps, on each executor and in process."""
    from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor

    def steps(ctx: nbdurable.ContextSync) -> int:
        for i in range(ctx.event.data["n"]):
            ctx.step.run("step", trivial, i)
        return 0

    def make(fn_id: str, executor: Any) -> nbdurable.Function[Any]:
        return client.create_function(fn_id=fn_id, retries=0, executor=executor)(steps)

    local = nbdurable.Client(app_id="bench-local", store=client.store_path)
    in_process = local.create_function(fn_id="local", retries=0)(steps)
    figures: dict[str, list[float]] = {"in process": [], "threads": [], "processes": [], "dask": [], "raw dask": []}
    with ThreadPoolExecutor(1) as threads, ProcessPoolExecutor(1) as processes:
        functions = {
            "in process": in_process,
            "threads": make("threads", threads),
            "processes": make("processes", processes),
            "dask": make("dask", None),  # the client's executor: the cluster
        }
        dask = cluster.client

        def raw() -> None:
            for i in range(n):
                dask.submit(trivial, i, pure=False).result()

        for name, fn in functions.items():  # untimed warm-up
            fn.run({"n": 5, "rep": -1, "name": name})
        for rep in range(repeats):
            for name, fn in functions.items():
                figures[name].append(timed(fn.run, {"n": n, "rep": rep}) / n)
            figures["raw dask"].append(timed(raw) / n)
    base = median(figures["in process"])
    over = {name: median(values) - base for name, values in figures.items() if name != "in process"}
    return Row(
        "16",
        "per-step overhead of a trivial step on an executor, over in process (threads, processes, Dask)",
        f"{us(over['threads'])}, {us(over['processes'])}, {us(over['dask'])}",
        "(comparison)",
        None,
        f"{n} sequential steps per run; per step: in process {spread(figures['in process'])}, "
        f"thread pool {spread(figures['threads'])}, process pool {spread(figures['processes'])}, "
        f"Dask {spread(figures['dask'])}; a raw Dask submit().result() round trip {spread(figures['raw dask'])}, "
        f"so nbdurable's own share of a Dask step is {us(median(figures['dask']) - median(figures['raw dask']))}",
    )


def large_output_row(client: nbdurable.Client, cluster: Cluster, nbytes: int, repeats: int) -> Row:
    """A worker step returning a large float64 array: bytes go worker -> kernel (Dask) -> store (the kernel)."""

    @client.create_function(fn_id="large", retries=0)
    def large(ctx: nbdurable.ContextSync) -> int:
        out = ctx.step.run("make", big_array, ctx.event.data["nbytes"])
        return int(out.nbytes)

    local = nbdurable.Client(app_id="bench-local", store=client.store_path)

    @local.create_function(fn_id="large-local", retries=0)
    def large_local(ctx: nbdurable.ContextSync) -> int:
        out = ctx.step.run("make", big_array, ctx.event.data["nbytes"])
        return int(out.nbytes)

    dask = cluster.client
    large.run({"nbytes": 1000, "rep": -1})
    figures: dict[str, list[float]] = {"raw": [], "ours": [], "local": [], "make": [], "replay": [], "store": []}
    from nbdurable._engine import Execution

    complete = Execution.complete

    def storing(self: Any, *args: Any) -> Any:
        """The kernel's share: writing the output it received to the store (``Execution.complete``)."""
        start = time.perf_counter()
        try:
            return complete(self, *args)
        finally:
            figures["store"].append(time.perf_counter() - start)

    def ours(rep: int) -> None:
        data = {"nbytes": nbytes, "rep": rep}
        Execution.complete = storing  # type: ignore[method-assign]
        try:
            figures["ours"].append(timed(large.run, data))
        finally:
            Execution.complete = complete  # type: ignore[method-assign]
        figures["replay"].append(timed(large.run, data))

    steps: list[Callable[[int], None]] = [
        lambda rep: figures["raw"].append(timed(lambda: dask.submit(big_array, nbytes, pure=False).result())),
        ours,
        lambda rep: figures["local"].append(timed(large_local.run, {"nbytes": nbytes, "rep": rep})),
        lambda rep: figures["make"].append(timed(big_array, nbytes)),
    ]
    for rep in range(repeats):
        # Each 100 MB lands in fresh memory whose page faults scatter the times: rotate who goes first.
        for step in steps[rep % len(steps) :] + steps[: rep % len(steps)]:
            step(rep)
    transfers, totals, locals_, makes, replays, stores = (
        figures[k] for k in ("raw", "ours", "local", "make", "replay", "store")
    )
    mb = nbytes / 1e6
    return Row(
        "18",
        f"a {mb:,.0f} MB array returned by a worker step: first execution / raw Dask transfer",
        f"{median(paired(totals, transfers)):.2f}x",
        "(comparison)",
        None,
        f"whole run {spread(totals, ms)}, of which the kernel storing the array it received "
        f"{spread(stores, ms)} (the data codecs write it natively, a .npy file of its own) and the rest the "
        f"worker making it and Dask sending it to the kernel (raw submit().result() of the same array: "
        f"{spread(transfers, ms)}); the same step in process, made and stored: {spread(locals_, ms)}, making "
        f"it alone {spread(makes, ms)}; replay from the store {spread(replays, ms)} (memory-mapped). A fresh "
        f"{mb:,.0f} MB costs page faults that reused memory does not, which scatters every figure here",
    )


def main(argv: list[str] | None = None) -> int:
    """``python -m bench._dask_rows [--tiny]``: rows 15-18 alone, printed as ``python -m bench`` prints them."""
    import argparse
    import datetime
    import shutil
    import tempfile

    from bench._measure import FULL, TINY
    from bench._report import load, machine, table
    from bench._rows import explain

    parser = argparse.ArgumentParser(prog="python -m bench._dask_rows", description=main.__doc__)
    parser.add_argument("--tiny", action="store_true", help="a tiny size (smoke check)")
    args = parser.parse_args(argv)
    sizes = TINY if args.tiny else FULL
    os.environ["NBDURABLE_VIEW"] = "off"
    base = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench", "out")
    os.makedirs(base, exist_ok=True)
    workdir = tempfile.mkdtemp(prefix="run-", dir=base)
    started = datetime.datetime.now(datetime.timezone.utc)
    before = load()
    try:
        rows = dask_rows(workdir, sizes.dask_steps, sizes.dask_repeats, sizes.dask_bytes)
        info = machine(workdir, before)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    rows.sort(key=lambda r: (int(r.number.rstrip("ab")), r.number))
    if not args.tiny:
        explain(rows)
    print(table(rows, info, started, tiny=args.tiny))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
