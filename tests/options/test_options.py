"""Function options: on_failure, cancel, idempotency, concurrency, TriggerCron; Run.cancel()."""

from __future__ import annotations

import asyncio
import datetime
import threading

import pytest

import nbdurable
from nbdurable.testing import FakeClock, simulate_restart
from tests.waiting import StopsInWait, eventually, waiting_step

HOUR = 3_600_000


# --- on_failure ---------------------------------------------------------------------------


@pytest.mark.parametrize("is_async", [False, True])
def test_on_failure_runs_after_a_failed_run_with_its_details(client, is_async: bool) -> None:
    """The handler gets error, event, function_id and run_id in ctx.event.data, once per failure."""
    seen: list[dict] = []
    done = threading.Event()

    def record(ctx):
        ctx.step.run("notify", lambda: None)
        seen.append(ctx.event.data)
        done.set()

    async def arecord(ctx):
        await ctx.step.run("notify", lambda: None)
        seen.append(ctx.event.data)
        done.set()

    if is_async:

        @client.create_function(fn_id="job", retries=0, on_failure=arecord)
        async def job(ctx):
            await ctx.step.run("boom", lambda: 1 / 0)

    else:

        @client.create_function(fn_id="job", retries=0, on_failure=record)
        def job(ctx):
            ctx.step.run("boom", lambda: 1 / 0)

    with pytest.raises(nbdurable.RunFailedError) as info:
        job.run({"user": 1})
    assert done.wait(5)
    [data] = seen
    assert data["function_id"] == "job"
    assert data["run_id"] == info.value.run_id
    assert data["event"]["data"] == {"user": 1}
    assert data["error"]["name"] == "ZeroDivisionError"
    assert "division by zero" in data["error"]["message"]
    eventually(lambda: [r.status for r in client.runs("job-failure")] == [nbdurable.RunStatus.COMPLETED])


def test_on_failure_not_called_for_success_or_cancel(client) -> None:
    """A completed or cancelled run does not call on_failure."""
    calls = []

    @client.create_function(fn_id="ok", on_failure=lambda ctx: calls.append(1))
    def ok(ctx):
        return ctx.step.run("a", lambda: 1)

    @client.create_function(fn_id="stopped", on_failure=lambda ctx: calls.append(2))
    def stopped(ctx):
        ctx.step.wait_for_event("w", event="never", timeout=HOUR)

    ok.run()
    run = stopped.start()
    waiting_step(run)
    run.cancel()
    with pytest.raises(nbdurable.RunCancelledError):
        run.wait(5)
    assert client.runs("ok-failure") == []
    assert client.runs("stopped-failure") == []
    assert calls == []


# --- cancel ---------------------------------------------------------------------------------


@pytest.mark.parametrize("is_async", [False, True])
def test_run_cancel_stops_a_background_run_between_steps(client, is_async: bool) -> None:
    """A step in flight finishes; the next step never starts; status CANCELLED; wait raises RunCancelledError."""
    entered, release = threading.Event(), threading.Event()
    calls: list[str] = []

    def first():
        entered.set()
        release.wait(5)
        calls.append("first")

    if is_async:

        @client.create_function(fn_id="c")
        async def fn(ctx):
            await ctx.step.run("first", first)
            await ctx.step.run("second", lambda: calls.append("second"))

    else:

        @client.create_function(fn_id="c")
        def fn(ctx):
            ctx.step.run("first", first)
            ctx.step.run("second", lambda: calls.append("second"))

    run = fn.start()
    assert entered.wait(5)
    run.cancel()
    release.set()
    with pytest.raises(nbdurable.RunCancelledError):
        run.wait(5)
    assert calls == ["first"]
    assert run.status is nbdurable.RunStatus.CANCELLED
    assert fn.runs()[0].status is nbdurable.RunStatus.CANCELLED


@pytest.mark.parametrize("is_async", [False, True])
def test_run_cancel_ends_a_wait_at_once(client, is_async: bool) -> None:
    """A run waiting an hour for an event stops as soon as it is cancelled (no clock advance needed)."""
    if is_async:

        @client.create_function(fn_id="w")
        async def fn(ctx):
            await ctx.step.wait_for_event("w", event="never", timeout=HOUR)

    else:

        @client.create_function(fn_id="w")
        def fn(ctx):
            ctx.step.wait_for_event("w", event="never", timeout=HOUR)

    run = fn.start()
    waiting_step(run)
    run.cancel()
    with pytest.raises(nbdurable.RunCancelledError):
        run.wait(5)


def test_run_cancel_ends_a_real_sleep_at_once(tmp_path) -> None:
    """With the real clock, cancelling a run sleeping an hour stops it promptly."""
    client = nbdurable.Client("t", store=tmp_path / "s")

    @client.create_function(fn_id="nap")
    def fn(ctx):
        ctx.step.sleep("nap", HOUR)

    run = fn.start()
    eventually(lambda: run.status is nbdurable.RunStatus.SLEEPING)
    run.cancel()
    with pytest.raises(nbdurable.RunCancelledError):
        run.wait(5)
    nbdurable._store.Store.forget(tmp_path / "s")


@pytest.mark.parametrize("is_async", [False, True])
def test_cancel_event_matching_if_exp_cancels(client, is_async: bool) -> None:
    """Cancel(event, if_exp) stops the run whose trigger matches; other runs continue."""
    cancel = [nbdurable.Cancel(event="app/order.cancelled", if_exp="event.data.order == async.data.order")]
    if is_async:

        @client.create_function(fn_id="order", cancel=cancel)
        async def fn(ctx):
            ev = await ctx.step.wait_for_event("paid", event="app/paid", timeout=HOUR)
            return ev is not None

    else:

        @client.create_function(fn_id="order", cancel=cancel)
        def fn(ctx):
            return ctx.step.wait_for_event("paid", event="app/paid", timeout=HOUR) is not None

    r1, r2 = fn.start({"order": 1}), fn.start({"order": 2})
    waiting_step(r1)
    waiting_step(r2)
    client.send_sync(nbdurable.Event("app/order.cancelled", {"order": 1}))
    with pytest.raises(nbdurable.RunCancelledError, match=r"app/order\.cancelled"):
        r1.wait(5)
    assert not r2.done
    client.send_sync(nbdurable.Event("app/paid"))
    assert r2.wait(5) is True


@pytest.mark.parametrize(("age", "cancelled"), [(30, True), (61, False)])
def test_cancel_timeout_limits_the_window(client, clock: FakeClock, age: int, cancelled: bool) -> None:
    """A Cancel with a 60 s timeout applies to a run 30 s old, not to one 61 s old."""

    @client.create_function(fn_id="o", cancel=[nbdurable.Cancel(event="app/stop", timeout=60_000)])
    def fn(ctx):
        return ctx.step.wait_for_event("w", event="app/go", timeout=HOUR) is not None

    run = fn.start()
    waiting_step(run)
    clock.advance(age)
    client.send_sync(nbdurable.Event("app/stop"))
    client.send_sync(nbdurable.Event("app/go"))
    if cancelled:
        with pytest.raises(nbdurable.RunCancelledError):
            run.wait(5)
    else:
        assert run.wait(5) is True


# --- idempotency ---------------------------------------------------------------------------


@pytest.mark.parametrize("is_async", [False, True])
def test_idempotency_maps_different_data_to_one_run(client, is_async: bool) -> None:
    """Same key, different data: one run; its steps ran once and the body sees the first event."""
    calls: list[int] = []
    if is_async:

        @client.create_function(fn_id="pay", idempotency="event.data.user")
        async def pay(ctx):
            return await ctx.step.run(
                "charge", lambda: calls.append(ctx.event.data["amount"]) or ctx.event.data["amount"]
            )

    else:

        @client.create_function(fn_id="pay", idempotency="event.data.user")
        def pay(ctx):
            return ctx.step.run("charge", lambda: calls.append(ctx.event.data["amount"]) or ctx.event.data["amount"])

    assert pay.run({"user": "ada", "amount": 5}) == 5
    assert pay.run({"user": "ada", "amount": 9}) == 5
    assert calls == [5]
    assert len(pay.runs()) == 1
    assert pay.run({"user": "bob", "amount": 9}) == 9
    assert len(pay.runs()) == 2


def test_idempotency_ignores_later_events_with_the_same_key(client) -> None:
    """Sent events with the same idempotency key start one run."""
    calls = []

    @client.create_function(fn_id="p", idempotency="event.data.user", trigger=nbdurable.TriggerEvent(event="app/pay"))
    def pay(ctx):
        return ctx.step.run("charge", lambda: calls.append(ctx.event.data["n"]))

    client.send_sync(nbdurable.Event("app/pay", {"user": 1, "n": 1}))
    eventually(lambda: pay.runs() and pay.runs()[0].status is nbdurable.RunStatus.COMPLETED)
    client.send_sync(nbdurable.Event("app/pay", {"user": 1, "n": 2}))
    client.send_sync(nbdurable.Event("app/pay", {"user": 2, "n": 3}))
    eventually(lambda: len(pay.runs()) == 2 and all(r.status.finished for r in pay.runs()))
    assert sorted(calls) == [1, 3]


# --- concurrency --------------------------------------------------------------------------


@pytest.mark.parametrize("is_async", [False, True])
def test_concurrency_limit_queues_runs(client, is_async: bool) -> None:
    """With limit 1, a second run waits QUEUED until the first ends; never two at once."""
    active, peak = [0], [0]
    gate = threading.Event()
    lock = threading.Lock()

    def work():
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        gate.wait(5)
        with lock:
            active[0] -= 1
        return 1

    if is_async:

        @client.create_function(fn_id="lim", concurrency=[nbdurable.Concurrency(limit=1)])
        async def fn(ctx):
            return await ctx.step.run("w", lambda: asyncio.to_thread(work))

        async def main():
            runs = [fn.start({"n": i}) for i in range(3)]
            while sum(r.status is nbdurable.RunStatus.QUEUED for r in runs) < 2:
                await asyncio.sleep(0.005)
            gate.set()
            return [await r for r in runs]

        assert asyncio.run(main()) == [1, 1, 1]
    else:

        @client.create_function(fn_id="lim", concurrency=[nbdurable.Concurrency(limit=1)])
        def fn(ctx):
            return ctx.step.run("w", work)

        runs = [fn.start({"n": i}) for i in range(3)]
        eventually(lambda: sum(r.status is nbdurable.RunStatus.QUEUED for r in runs) == 2)
        gate.set()
        assert [r.wait(5) for r in runs] == [1, 1, 1]
    assert peak[0] == 1


def test_concurrency_key_limits_per_group(client) -> None:
    """With a key, the limit applies per key value: two users run at once, the same user queues."""
    barrier = threading.Barrier(2, timeout=5)
    gate = threading.Event()

    @client.create_function(fn_id="k", concurrency=[nbdurable.Concurrency(limit=1, key="event.data.user")])
    def fn(ctx):
        if ctx.event.data["n"] < 2:
            ctx.step.run("meet", barrier.wait)  # only passes if both users run at once
        return ctx.step.run("w", lambda: gate.wait(5))

    r1, r2 = fn.start({"user": "a", "n": 0}), fn.start({"user": "b", "n": 1})
    r3 = fn.start({"user": "a", "n": 2})
    eventually(lambda: r3.status is nbdurable.RunStatus.QUEUED)
    gate.set()
    assert [r.wait(5) for r in (r1, r2, r3)] == [True, True, True]


def test_cancelling_a_queued_run(client) -> None:
    """A run queued for a concurrency slot can be cancelled before it starts."""
    gate = threading.Event()

    @client.create_function(fn_id="q", concurrency=[nbdurable.Concurrency(limit=1)])
    def fn(ctx):
        return ctx.step.run("w", lambda: gate.wait(5))

    r1, r2 = fn.start({"n": 1}), fn.start({"n": 2})
    eventually(lambda: r2.status is nbdurable.RunStatus.QUEUED)
    r2.cancel()
    with pytest.raises(nbdurable.RunCancelledError):
        r2.wait(5)
    gate.set()
    assert r1.wait(5) is True


# --- cron -----------------------------------------------------------------------------------


def test_cron_starts_runs_on_schedule_with_the_scheduled_time_as_id(client, clock: FakeClock) -> None:
    """Every minute (fake time), one run; its id is the scheduled time; stop_cron stops it."""
    fired: list[str] = []
    base = clock.now() - clock.now() % 60  # a minute boundary
    clock.advance(base + 30 - clock.now())

    @client.create_function(fn_id="tick", trigger=nbdurable.TriggerCron(cron="* * * * *"))
    def tick(ctx):
        fired.append(ctx.run_id)
        return ctx.event.name

    clock.advance(30)
    eventually(lambda: len(fired) == 1)
    clock.advance(60)
    eventually(lambda: len(fired) == 2)
    minute = [datetime.datetime.fromtimestamp(base + 60 * k, tz=datetime.timezone.utc) for k in (1, 2)]
    assert fired == [m.strftime("%Y-%m-%dT%H:%M:%SZ") for m in minute]
    eventually(lambda: all(r.status is nbdurable.RunStatus.COMPLETED for r in tick.runs()))
    client.stop_cron()
    clock.advance(600)
    assert len(fired) == 2
    client.start_cron()
    clock.advance(60)
    eventually(lambda: len(fired) == 3)


@pytest.mark.parametrize("is_async", [False, True])
def test_missed_cron_ticks_fire_once(client, clock: FakeClock, is_async: bool) -> None:
    """After a long pause only the latest due time runs, not one run per missed tick."""
    fired: list[str] = []

    def body(ctx):
        fired.append(ctx.run_id)

    async def abody(ctx):
        body(ctx)

    tick = client.create_function(fn_id="tick", trigger=nbdurable.TriggerCron(cron="*/5 * * * *"))(
        abody if is_async else body
    )

    clock.advance(3600)
    eventually(lambda: len(fired) == 1)
    eventually(lambda: [r.status for r in tick.runs()] == [nbdurable.RunStatus.COMPLETED])
    client.stop_cron()
    assert len(fired) == 1


async def test_cron_runs_of_async_functions_are_tasks_on_the_starting_loop(client, clock: FakeClock) -> None:
    """Started from a running loop (a kernel's), the scheduler puts async cron runs on that loop."""
    loops: list[object] = []

    @client.create_function(fn_id="tick", trigger=nbdurable.TriggerCron(cron="* * * * *"))
    async def tick(ctx):
        loops.append(asyncio.get_running_loop())

    clock.advance(60)
    while not loops:
        await asyncio.sleep(0.005)
    assert loops == [asyncio.get_running_loop()]
    client.stop_cron()


@pytest.mark.parametrize("is_async", [False, True])
def test_cancel_event_sent_while_a_run_was_interrupted_cancels_its_resume(tmp_path, is_async: bool) -> None:
    """A run stopped mid-wait; a cancel event sent before it resumes stops it when it resumes."""

    calls: list[str] = []

    def define(client):
        options = {"fn_id": "order", "cancel": [nbdurable.Cancel(event="app/stop")]}
        if is_async:

            @client.create_function(**options)
            async def fn(ctx):
                await ctx.step.wait_for_event("w", event="app/go", timeout=HOUR)
                await ctx.step.run("ship", lambda: calls.append("ship"))

        else:

            @client.create_function(**options)
            def fn(ctx):
                ctx.step.wait_for_event("w", event="app/go", timeout=HOUR)
                ctx.step.run("ship", lambda: calls.append("ship"))

        return fn

    clock = StopsInWait()
    client = nbdurable.Client("t", store=tmp_path / "s", clock=clock)
    with pytest.raises(KeyboardInterrupt):
        define(client).run()
    client = simulate_restart(client)
    clock.advance(1)
    client.send_sync([nbdurable.Event("app/stop"), nbdurable.Event("app/go")])
    fn = define(client)
    with pytest.raises(nbdurable.RunCancelledError):
        fn.run()
    assert calls == []
    assert fn.runs()[0].status is nbdurable.RunStatus.CANCELLED
    nbdurable._store.Store.forget(tmp_path / "s")


# --- found in review ---------------------------------------------------------------------


@pytest.fixture
def real_client(tmp_path):
    """A client on the real clock with long retry delays: sleeps and delays really wait (until cancelled)."""
    from nbdurable.testing import temporary_client

    with temporary_client(
        tmp_path / "real", clock=nbdurable._clock.SYSTEM_CLOCK, backoff=nbdurable.Backoff(initial=60)
    ) as c:
        yield c


@pytest.mark.parametrize("is_async", [False, True])
def test_cancel_during_a_retry_delay_makes_no_more_attempts(real_client, is_async: bool) -> None:
    """Run.cancel() while a failing step waits to retry: CANCELLED at once, not every attempt fired."""
    calls: list[int] = []

    def down() -> None:
        calls.append(1)
        raise RuntimeError("down")

    if is_async:

        @real_client.create_function(fn_id="f", retries=4)
        async def f(ctx):
            await ctx.step.run("call", down)

    else:

        @real_client.create_function(fn_id="f", retries=4)
        def f(ctx):
            ctx.step.run("call", down)

    run = f.start()
    eventually(lambda: any(s.status is nbdurable.StepStatus.RETRYING for s in run.steps))
    run.cancel()
    with pytest.raises(nbdurable.RunCancelledError):
        run.wait(5)
    assert calls == [1]
    assert run.status is nbdurable.RunStatus.CANCELLED


def test_a_missing_idempotency_key_does_not_stop_other_functions(client) -> None:
    """One function's key missing from an event: it is skipped with a warning, the rest still run."""
    hits: list[dict] = []
    done = threading.Event()

    @client.create_function(fn_id="keyed", trigger=nbdurable.TriggerEvent(event="app/*"), idempotency="event.data.user")
    def keyed(ctx):
        return None

    @client.create_function(fn_id="plain", trigger=nbdurable.TriggerEvent(event="app/*"))
    def plain(ctx):
        hits.append(ctx.event.data)
        if len(hits) == 2:
            done.set()

    with pytest.warns(UserWarning, match="idempotency expression"):
        ids = client.send_sync([nbdurable.Event("app/x", {"other": 1}), nbdurable.Event("app/y", {"n": 2})])
    assert len(ids) == 2
    assert done.wait(5)
    assert sorted(map(str, hits)) == ["{'n': 2}", "{'other': 1}"]


def test_a_cancel_event_from_a_client_made_again_cancels_runs_in_flight(real_client) -> None:
    """Re-running the cell that makes the client: its cancel events still reach runs the old client started."""

    @real_client.create_function(fn_id="nap", cancel=[nbdurable.Cancel(event="app/stop")])
    def nap(ctx):
        ctx.step.sleep("zz", HOUR)

    run = nap.start()
    eventually(lambda: run.status is nbdurable.RunStatus.SLEEPING)
    again = nbdurable.Client(real_client.app_id, store=real_client.store_path, clock=real_client.clock)
    again.send_sync(nbdurable.Event("app/stop", {}))
    with pytest.raises(nbdurable.RunCancelledError):
        run.wait(5)


def test_clearing_a_run_in_flight_is_refused_from_any_client(real_client) -> None:
    """A client made again cannot clear (or invalidate) a run another client is executing."""

    @real_client.create_function(fn_id="nap")
    def nap(ctx):
        ctx.step.sleep("zz", HOUR)

    run = nap.start()
    eventually(lambda: run.status is nbdurable.RunStatus.SLEEPING)
    again = nbdurable.Client(real_client.app_id, store=real_client.store_path, clock=real_client.clock)
    again.create_function(fn_id="nap")(nap.handler)
    with pytest.raises(RuntimeError, match="is executing"):
        again.functions["nap"].clear()
    with pytest.raises(RuntimeError, match="is executing"):
        again.functions["nap"].invalidate(run.id)
    run.cancel()
    with pytest.raises(nbdurable.RunCancelledError):
        run.wait(5)


def test_a_function_defined_again_on_a_new_client_takes_over_its_schedule(client, clock: FakeClock) -> None:
    """Re-running the cell that makes a client and its cron function: the old schedule stops firing."""
    fired: list[str] = []
    base = clock.now() - clock.now() % 60
    clock.advance(base + 30 - clock.now())

    @client.create_function(fn_id="tick", trigger=nbdurable.TriggerCron(cron="* * * * *"))
    def tick_v1(ctx):
        fired.append("v1")

    clock.advance(30)
    eventually(lambda: fired == ["v1"])
    again = nbdurable.Client(client.app_id, store=client.store_path, clock=clock)

    @again.create_function(fn_id="tick", trigger=nbdurable.TriggerCron(cron="0 0 1 1 *"))  # yearly now
    def tick_v2(ctx):
        fired.append("v2")

    clock.advance(60)
    old = client._cron
    assert old is not None
    eventually(lambda: not old.scheduled())  # the old scheduler woke and let the schedule go
    assert fired == ["v1"]
    again.stop_cron()


def test_misspelled_client_options_are_refused_with_the_closest_name(tmp_path) -> None:
    """Client(stroe=...) or serialiser= is a TypeError naming the valid option; known Inngest options pass."""
    with pytest.raises(TypeError, match=r"'stroe'.*did you mean store="):
        nbdurable.Client(app_id="a", stroe=str(tmp_path))
    with pytest.raises(TypeError, match=r"'serialiser'.*did you mean serializer="):
        nbdurable.Client(app_id="a", store=str(tmp_path), serialiser="pickle")
    client = nbdurable.Client(app_id="a", store=str(tmp_path), signing_key="k", is_production=False, logger=None)
    assert client.store_path == str(tmp_path)
