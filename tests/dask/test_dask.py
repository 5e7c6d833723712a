"""Steps on a real Dask LocalCluster (process workers), next to a process pool and a thread pool.

"Executed exactly once" is counted from files the worker processes write (``work.py``);
"nothing submitted" from the scheduler's own count of task keys.
"""

from __future__ import annotations

import asyncio
import os
import re
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

import psutil
import pytest

import nbdurable
from nbdurable import StepStatus
from tests.dask import work
from tests.waiting import eventually

pytest.importorskip("distributed")
from tests.dask.cluster import Cluster  # only once distributed is known present

# Fixtures live here, not in a conftest.py: a second conftest module would clash with others
# when several test folders are collected by name.


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    c = Cluster()
    try:
        yield c
    finally:
        c.close()


P = TypeVar("P", ProcessPoolExecutor, ThreadPoolExecutor)


@pytest.fixture
def dask_cluster(cluster: Cluster) -> Cluster:
    """The module's cluster with both workers up (a test may have killed one: its nanny restarts it)."""
    cluster.client.wait_for_workers(2, timeout=30)
    return cluster


def _shut_down_after(pool: P) -> Iterator[P]:
    try:
        yield pool
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


@pytest.fixture
def process_pool() -> Iterator[ProcessPoolExecutor]:
    yield from _shut_down_after(ProcessPoolExecutor(2))


@pytest.fixture
def thread_pool() -> Iterator[ThreadPoolExecutor]:
    yield from _shut_down_after(ThreadPoolExecutor(2))


@pytest.fixture
def logdir(tmp_path: Path) -> Path:
    path = tmp_path / "logs"
    path.mkdir()
    return path


def lines(logdir: Path, name: str) -> list[int]:
    """The process ids a step's executions logged, in order."""
    log = logdir / f"{name}.log"
    return [int(x) for x in log.read_text().split()] if log.exists() else []


def pipeline(client: nbdurable.Client, logdir: Path, fn_id: str = "pipeline", **options):
    """Three steps whose handlers log where they ran; the output is their sum."""
    d = str(logdir)

    @client.create_function(fn_id=fn_id, **options)
    def run(ctx: nbdurable.ContextSync) -> int:
        a = ctx.step.run("a", work.record, d, "a", 1)
        b = ctx.step.run("b", work.slow_first if ctx.event.data.get("slow") else work.record, d, "b", 2)
        return a + b + ctx.step.run("c", work.record, d, "c", 3)

    return run


# --- where handlers run -----------------------------------------------------------------------


def test_sync_handlers_run_on_dask_workers_and_a_rerun_replays_without_submitting(dask_cluster, client, logdir):
    """Each step executes once in a worker process; running again replays all three and sends the scheduler nothing."""
    client.executor = dask_cluster.executor
    fn = pipeline(client, logdir)
    assert fn.run() == 6
    workers = dask_cluster.worker_pids()
    assert {name: len(lines(logdir, name)) for name in "abc"} == {"a": 1, "b": 1, "c": 1}
    assert {pid for name in "abc" for pid in lines(logdir, name)} <= workers
    before = dask_cluster.submitted
    assert fn.run() == 6
    assert dask_cluster.submitted == before
    assert {name: len(lines(logdir, name)) for name in "abc"} == {"a": 1, "b": 1, "c": 1}


def test_a_function_executor_overrides_the_client_and_others_stay_in_process(dask_cluster, client, logdir):
    """executor= on create_function sends that function's steps to the cluster; the client's other functions do not."""

    @client.create_function(fn_id="remote", executor=dask_cluster.executor)
    def remote(ctx: nbdurable.ContextSync) -> int:
        return ctx.step.run("where", work.where, str(logdir), "remote")

    @client.create_function(fn_id="local")
    def local(ctx: nbdurable.ContextSync) -> int:
        return ctx.step.run("where", work.where, str(logdir), "local")

    assert remote.run() in dask_cluster.worker_pids()
    assert local.run() == os.getpid()


def test_an_executor_that_is_not_one_is_refused_naming_the_fix(client):
    """A wrong executor= fails when the function is defined, saying what to pass."""
    with pytest.raises(TypeError, match=r"function 'f': executor must be a concurrent.futures.Executor.*Fix"):
        client.create_function(fn_id="f", executor="dask")(lambda ctx: None)


@pytest.mark.parametrize("face", ["sync", "async"])
def test_async_handlers_run_in_the_dask_workers_event_loop(dask_cluster, client, logdir, face):
    """An async handler on the cluster runs in a worker process, inside that worker's event loop, from either face."""
    client.executor = dask_cluster.executor
    d = str(logdir)
    if face == "sync":

        @client.create_function(fn_id="a")
        def fn(ctx: nbdurable.ContextSync):
            return ctx.step.run("async", work.async_where, d, "async")

    else:

        @client.create_function(fn_id="a")
        async def fn(ctx: nbdurable.Context):
            return await ctx.step.run("async", work.async_where, d, "async")

    pid, in_loop = fn.run()
    assert pid in dask_cluster.worker_pids()
    assert in_loop is True
    assert lines(logdir, "async") == [pid]


def test_async_handlers_run_in_a_process_pool_worker_with_a_loop_of_their_own(process_pool, client, logdir):
    """On a process pool an async handler runs to completion in the worker process (asyncio.run there)."""
    client.executor = process_pool

    @client.create_function(fn_id="a")
    async def fn(ctx: nbdurable.Context):
        return await ctx.step.run("async", work.async_where, str(logdir), "async")

    pid, in_loop = fn.run()
    assert pid != os.getpid()
    assert psutil.Process(pid).ppid() == os.getpid()
    assert in_loop is True


def test_async_handlers_run_on_a_thread_pool_off_the_callers_loop(thread_pool, client):
    """On a thread pool an async handler runs in a pool thread, in a loop of its own (not the caller's)."""
    client.executor = thread_pool
    seen: list[object] = []

    async def handler() -> str:
        seen.append(asyncio.get_running_loop())
        return threading.current_thread().name

    @client.create_function(fn_id="a")
    async def fn(ctx: nbdurable.Context):
        seen.append(asyncio.get_running_loop())
        return await ctx.step.run("async", handler)

    assert fn.run() != threading.current_thread().name
    assert seen[0] is not seen[1]


def test_a_sync_handler_returning_a_coroutine_runs_it_on_the_worker(dask_cluster, client, logdir):
    """lambda: fetch() (the Inngest idiom) on the cluster: the coroutine runs on the worker, its value comes back."""
    client.executor = dask_cluster.executor
    d = str(logdir)

    @client.create_function(fn_id="lambda-coroutine")
    async def fn(ctx: nbdurable.Context):
        return await ctx.step.run("fetch", lambda: work.async_where(d, "fetch"))

    pid, in_loop = fn.run()
    assert pid in dask_cluster.worker_pids()
    assert in_loop is True


# --- faults --------------------------------------------------------------------------------------


def test_a_worker_killed_mid_step_costs_one_attempt_and_the_step_runs_again_on_another_worker(
    dask_cluster, client, logdir
):
    """SIGKILL of the worker running step b: b's second attempt runs in another process; a rerun executes nothing."""
    client.executor = dask_cluster.executor
    fn = pipeline(client, logdir)
    run = fn.start({"slow": True})
    (victim,) = eventually(lambda: lines(logdir, "b"), timeout=30)
    dask_cluster.kill_worker(victim)
    assert run.wait(60) == 6
    first, second = lines(logdir, "b")
    assert first == victim
    assert second != victim
    step_b = next(s for s in run.steps if s.key == "b")
    assert step_b.attempts == 2
    assert {name: len(lines(logdir, name)) for name in "abc"} == {"a": 1, "b": 2, "c": 1}
    before = dask_cluster.submitted
    assert fn.run({"slow": True}) == 6  # stored: executed at most once after its output was stored
    assert dask_cluster.submitted == before
    assert len(lines(logdir, "b")) == 2


def test_with_dasks_default_allowed_failures_dask_reruns_the_task_itself_within_one_attempt(client, logdir):
    """Dask's default (3 reruns after worker deaths) hides the death from nbdurable: one attempt, two executions."""
    default = Cluster(allowed_failures=3)
    try:
        client.executor = default.executor
        fn = pipeline(client, logdir)
        run = fn.start({"slow": True})
        (victim,) = eventually(lambda: lines(logdir, "b"), timeout=30)
        default.kill_worker(victim)
        assert run.wait(60) == 6
    finally:
        default.close()
    assert next(s for s in run.steps if s.key == "b").attempts == 1
    assert len(lines(logdir, "b")) == 2


def test_an_unpicklable_argument_on_dask_fails_at_once_naming_the_step_and_the_fix(dask_cluster, client):
    """A lock as an argument cannot reach a worker: the step fails on its first attempt, not after four retries."""
    client.executor = dask_cluster.executor

    @client.create_function(fn_id="lock", retries=4)
    def fn(ctx: nbdurable.ContextSync) -> int:
        return ctx.step.run("use-lock", work.square, threading.Lock())

    before = dask_cluster.submitted
    run = fn.start()
    with pytest.raises(nbdurable.RunFailedError) as info:
        run.wait(30)
    cause = info.value.__cause__
    assert isinstance(cause, nbdurable.InputUnserializableError)
    assert "step 'use-lock' cannot be sent to the Dask cluster's workers: argument 0 (lock" in str(cause)
    assert "Fix: pass picklable values" in str(cause)
    assert [s.attempts for s in run.steps] == [1]
    assert dask_cluster.submitted - before <= 1


@pytest.mark.parametrize(
    ("handler", "args", "expected"),
    [
        (lambda: 1, (), r"step 'h' cannot be sent to a ProcessPoolExecutor's workers: its handler '.*<lambda>'.*Fix: "),
        (work.square, (threading.Lock(),), r"step 'h' cannot be sent to .*: argument 0 \(lock .*Fix: pass picklable"),
    ],
    ids=["lambda-handler", "lock-argument"],
)
def test_what_a_process_pool_cannot_pickle_fails_at_once_naming_the_step_and_the_fix(
    process_pool, client, handler, args, expected
):
    """A lambda handler or a lock argument on a process pool: one attempt, an error saying what and how to fix it."""
    client.executor = process_pool

    @client.create_function(fn_id="unpicklable", retries=4)
    def fn(ctx: nbdurable.ContextSync) -> int:
        return ctx.step.run("h", handler, *args)

    run = fn.start()
    with pytest.raises(nbdurable.RunFailedError) as info:
        run.wait(30)
    assert isinstance(info.value.__cause__, nbdurable.InputUnserializableError)
    assert re.search(expected, str(info.value.__cause__))
    (step,) = run.steps
    assert (step.status, step.attempts) == (StepStatus.FAILED, 1)


def test_a_dead_process_pool_worker_interrupts_the_run_and_a_new_pool_resumes_it(client, logdir):
    """The pool breaks with its worker: the run stops INTERRUPTED naming the pool and the fix; a new pool resumes."""
    from concurrent.futures import ProcessPoolExecutor

    fn = pipeline(client, logdir)
    with ProcessPoolExecutor(2) as broken:
        client.executor = broken
        run = fn.start({"slow": True})
        (victim,) = eventually(lambda: lines(logdir, "b"), timeout=30)
        assert psutil.Process(victim).ppid() == os.getpid()  # a worker of our pool, nothing else
        os.kill(victim, 9)
        with pytest.raises(
            nbdurable.ExecutorLostError,
            match=r"step 'b' cannot run on ProcessPoolExecutor .*broken.*Fix: make a new pool",
        ):
            run.wait(60)
        assert run.status is nbdurable.RunStatus.INTERRUPTED
        a, b = run.steps
        assert (a.status, b.note) == (StepStatus.COMPLETED, "interrupted; run again to resume")
    with ProcessPoolExecutor(2) as fresh:
        client.executor = fresh
        again = fn.start({"slow": True})
        assert again.wait(60) == 6
    assert {name: len(lines(logdir, name)) for name in "abc"} == {"a": 1, "b": 2, "c": 1}
    assert [s.status for s in again.steps] == [StepStatus.REPLAYED, StepStatus.COMPLETED, StepStatus.COMPLETED]


def test_the_scheduler_going_away_mid_run_leaves_it_interrupted_and_a_new_cluster_resumes_it(client, logdir):
    """Step b is on a worker when the scheduler closes: INTERRUPTED, ExecutorLostError; a new cluster finishes it."""
    fn = pipeline(client, logdir)
    first = Cluster()
    try:
        client.executor = first.executor
        run = fn.start({"slow": True})
        eventually(lambda: lines(logdir, "b"), timeout=30)
        first.cluster.sync(first.cluster.scheduler.close)
        with pytest.raises(nbdurable.ExecutorLostError, match=r"step 'b' cannot run on the Dask cluster.*Fix: "):
            run.wait(60)
        assert run.status is nbdurable.RunStatus.INTERRUPTED
    finally:
        first.close()
    second = Cluster()
    try:
        client.executor = second.executor
        assert fn.run({"slow": True}) == 6
        assert second.submitted == 2  # b again and c: a replayed
    finally:
        second.close()
    assert {name: len(lines(logdir, name)) for name in "abc"} == {"a": 1, "b": 2, "c": 1}


# --- fan-out -----------------------------------------------------------------------------------------


def test_a_fan_out_of_a_thousand_steps_is_submitted_at_once_stored_as_it_lands_and_replayed_without_tasks(
    dask_cluster, client
):
    """1,000 members: all in flight together, outputs stored by the kernel while others run, a rerun submits nothing."""
    client.executor = dask_cluster.executor
    in_flight = [0, 0]  # now, most

    def listen(kind, run, step) -> None:
        if kind == "step_started":
            in_flight[0] += 1
            in_flight[1] = max(in_flight)
        elif kind == "step_completed":
            in_flight[0] -= 1

    @client.create_function(fn_id="fan-out")
    async def fan_out(ctx: nbdurable.Context) -> int:
        items = [lambda i=i: ctx.step.run("item", work.slow_square, i) for i in range(1000)]
        return sum(await ctx.group.parallel(items))

    before = dask_cluster.submitted
    run = fan_out.start()
    run.add_listener(listen)
    # Stored one by one as they land: some outputs are in the store while the rest still run.
    eventually(lambda: not run.done and 0 < run.counts().get("COMPLETED", 0) < 1000, timeout=60)
    assert run.wait(120) == sum(i * i for i in range(1000))
    assert dask_cluster.submitted - before == 1000
    assert in_flight[1] > 100  # many members waited on the cluster at once, not one after another
    # The store's only writer is the kernel: the workers never even imported nbdurable.
    assert set(dask_cluster.client.run(lambda: "nbdurable" in sys.modules).values()) == {False}
    before = dask_cluster.submitted
    again = fan_out.start()
    assert again.wait(60) == sum(i * i for i in range(1000))
    assert dask_cluster.submitted == before
    assert again.counts() == {"REPLAYED": 1000}


def test_a_sync_fan_out_runs_on_the_cluster_too(dask_cluster, client, logdir):
    """The sync face's thread pool members submit to the cluster; each step executes once, results in order."""
    client.executor = dask_cluster.executor
    d = str(logdir)

    @client.create_function(fn_id="sync-fan-out")
    def fan_out(ctx: nbdurable.ContextSync) -> tuple[int, ...]:
        return ctx.group.parallel([lambda i=i: ctx.step.run("item", work.record, d, f"item{i}", i) for i in range(40)])

    assert fan_out.run() == tuple(range(40))
    assert all(len(lines(logdir, f"item{i}")) == 1 for i in range(40))
    assert fan_out.run() == tuple(range(40))
    assert all(len(lines(logdir, f"item{i}")) == 1 for i in range(40))


async def test_cancelling_a_run_waiting_on_the_cluster_cancels_its_task(dask_cluster, client, logdir):
    """The task awaiting a run is cancelled while its step runs on a worker: the Dask task is cancelled too."""
    client.executor = dask_cluster.executor
    d = str(logdir)

    @client.create_function(fn_id="cancelled")
    async def fn(ctx: nbdurable.Context) -> int:
        return await ctx.step.run("slow", work.slow_first, d, "slow", 1)

    scheduler = dask_cluster.cluster.scheduler
    earlier = set(scheduler.tasks)
    task = asyncio.ensure_future(fn.run_async())
    while not lines(logdir, "slow"):
        await asyncio.sleep(0.01)
    assert set(scheduler.tasks) - earlier  # the step's task is on the cluster
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    deadline = asyncio.get_running_loop().time() + 30
    while set(scheduler.tasks) - earlier and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.01)
    assert not set(scheduler.tasks) - earlier  # released: nothing left running for a run that stopped
    assert fn.runs()[0].status is nbdurable.RunStatus.INTERRUPTED
    # A worker cannot stop a running thread: free the one still sleeping in the handler for the next tests.
    dask_cluster.kill_worker(lines(logdir, "slow")[0])


def test_an_executor_shut_down_before_a_step_interrupts_the_run_naming_it_and_the_fix(client):
    """A thread pool already shut down: ExecutorLostError at the step, the run INTERRUPTED; a new pool finishes it."""
    from concurrent.futures import ThreadPoolExecutor

    calls: list[str] = []

    @client.create_function(fn_id="shut")
    def fn(ctx: nbdurable.ContextSync) -> int:
        return ctx.step.run("work", lambda: calls.append("work") or 7)

    pool = ThreadPoolExecutor(1)
    pool.shutdown()
    client.executor = pool
    run = fn.start()
    expected = (
        r"step 'work' cannot run on ThreadPoolExecutor at 0x[0-9a-f]+: it was shut down.*"
        r"Fix: .*client.executor = concurrent.futures.ThreadPoolExecutor\(\)"
    )
    with pytest.raises(nbdurable.ExecutorLostError, match=expected):
        run.wait(30)
    assert run.status is nbdurable.RunStatus.INTERRUPTED
    assert calls == []
    with ThreadPoolExecutor(1) as fresh:
        client.executor = fresh
        assert fn.run() == 7
    assert calls == ["work"]
