"""step.sleep / step.sleep_until: wake time stored once, replay instant, remainder after a restart."""

from __future__ import annotations

import asyncio
import datetime

import pytest

import nbdurable
from nbdurable.testing import FakeClock, simulate_restart


class _Interrupting(FakeClock):
    """A fake clock whose first sleep is interrupted like a kernel stop."""

    def __init__(self) -> None:
        super().__init__()
        self.interrupt = True

    def sleep(self, seconds, wake=None):
        if self.interrupt:
            self.interrupt = False
            raise KeyboardInterrupt
        super().sleep(seconds, wake)

    async def asleep(self, seconds, wake=None):
        if self.interrupt:
            self.interrupt = False
            raise KeyboardInterrupt
        await super().asleep(seconds, wake)


def _sleepy(client, is_async: bool, calls: list[str], duration=60_000):
    if is_async:

        @client.create_function(fn_id="sleepy", retries=0)
        async def fn(ctx: nbdurable.Context) -> str:
            await ctx.step.run("before", lambda: calls.append("before"))
            await ctx.step.sleep("nap", duration)
            await ctx.step.run("after", lambda: calls.append("after"))
            return "done"

    else:

        @client.create_function(fn_id="sleepy", retries=0)
        def fn(ctx: nbdurable.ContextSync) -> str:
            ctx.step.run("before", lambda: calls.append("before"))
            ctx.step.sleep("nap", duration)
            ctx.step.run("after", lambda: calls.append("after"))
            return "done"

    return fn


@pytest.mark.parametrize("is_async", [False, True])
def test_sleep_waits_once_and_replays_instantly(client, clock: FakeClock, is_async: bool) -> None:
    """The first execution sleeps the full duration; a replay sleeps not at all."""
    calls: list[str] = []
    fn = _sleepy(client, is_async, calls)
    assert fn.run() == "done"
    assert clock.slept == [60.0]
    assert calls == ["before", "after"]
    assert fn.run() == "done"
    assert clock.slept == [60.0]
    assert calls == ["before", "after"]


@pytest.mark.parametrize("is_async", [False, True])
def test_sleep_step_is_stored_with_kind_and_view_info(client, clock: FakeClock, is_async: bool) -> None:
    """A sleep is a step record of kind "sleep"; the run view saw it SLEEPING with its deadline."""
    seen: list[tuple[str, str, float | None]] = []

    def listener(kind, run, step):
        if step is not None and step.key == "nap":
            seen.append((kind, step.status.value, step.deadline))

    nbdurable._process.STATE.run_hooks.append(lambda run: run.add_listener(listener))
    try:
        fn = _sleepy(client, is_async, [])
        start = clock.now()
        fn.run()
    finally:
        nbdurable._process.STATE.run_hooks.pop()
    assert seen[0] == ("step_sleeping", "SLEEPING", start + 60.0)
    assert seen[-1][:2] == ("step_completed", "COMPLETED")
    stored = client.get_run(client.runs("sleepy")[0].id)
    nap = next(s for s in stored.steps if s.key == "nap")
    assert (nap.kind, nap.status) == ("sleep", nbdurable.StepStatus.COMPLETED)


@pytest.mark.parametrize("is_async", [False, True])
def test_interrupted_sleep_waits_only_the_remainder_after_restart(tmp_path, is_async: bool) -> None:
    """The wake time is stored at first execution: after a restart 20 s later, 40 s remain."""
    clock = _Interrupting()
    client = nbdurable.Client("t", store=tmp_path / "s", clock=clock)
    calls: list[str] = []
    fn = _sleepy(client, is_async, calls)
    with pytest.raises(KeyboardInterrupt):
        fn.run()
    assert fn.runs()[0].status is nbdurable.RunStatus.INTERRUPTED
    clock.advance(20)
    client = simulate_restart(client)
    fn = _sleepy(client, is_async, calls)
    assert fn.run() == "done"
    assert clock.slept == [40.0]
    assert calls == ["before", "after"]
    nbdurable._store.Store.forget(tmp_path / "s")


@pytest.mark.parametrize("is_async", [False, True])
def test_sleep_past_its_wake_time_does_not_sleep(tmp_path, is_async: bool) -> None:
    """Resuming after the wake time passed completes the sleep at once."""
    clock = _Interrupting()
    client = nbdurable.Client("t", store=tmp_path / "s", clock=clock)
    fn = _sleepy(client, is_async, [])
    with pytest.raises(KeyboardInterrupt):
        fn.run()
    clock.advance(3600)
    fn = _sleepy(simulate_restart(client), is_async, [])
    assert fn.run() == "done"
    assert clock.slept == []
    nbdurable._store.Store.forget(tmp_path / "s")


@pytest.mark.parametrize("is_async", [False, True])
def test_sleep_until_a_datetime(client, clock: FakeClock, is_async: bool) -> None:
    """sleep_until sleeps until the given wall time; a later execution computing a new time keeps the stored one."""
    until = datetime.datetime.fromtimestamp(clock.now() + 90, tz=datetime.timezone.utc)
    if is_async:

        @client.create_function(fn_id="until")
        async def fn(ctx):
            await ctx.step.sleep_until("wake", until)
            return "up"

    else:

        @client.create_function(fn_id="until")
        def fn(ctx):
            ctx.step.sleep_until("wake", until)
            return "up"

    assert fn.run() == "up"
    assert clock.slept == [90.0]
    assert fn.run() == "up"
    assert clock.slept == [90.0]


def test_sleep_accepts_timedelta_and_repeated_ids(client, clock: FakeClock) -> None:
    """A timedelta works; the same id in a loop gives distinct steps (nap, nap:1)."""

    @client.create_function(fn_id="loop")
    def fn(ctx):
        for _ in range(2):
            ctx.step.sleep("nap", datetime.timedelta(seconds=5))

    fn.run()
    assert clock.slept == [5.0, 5.0]
    assert [s.key for s in client.get_run(fn.runs()[0].id).steps] == ["nap", "nap:1"]


@pytest.mark.parametrize(
    ("duration", "error", "text"),
    [("5s", TypeError, "milliseconds"), (-1, ValueError, "negative"), (True, TypeError, "milliseconds")],
)
def test_bad_durations_are_clear_errors(client, duration, error, text) -> None:
    """A bad duration fails at the call with a message naming the step and the fix."""

    @client.create_function(fn_id="bad", retries=0)
    def fn(ctx):
        ctx.step.sleep("nap", duration)

    with pytest.raises(nbdurable.RunFailedError) as info:
        fn.run()
    assert isinstance(info.value.__cause__, error)
    assert text in str(info.value.__cause__)
    assert "'nap'" in str(info.value.__cause__)


def test_sleep_until_rejects_a_non_datetime(client) -> None:
    """sleep_until needs a datetime."""

    @client.create_function(fn_id="bad", retries=0)
    def fn(ctx):
        ctx.step.sleep_until("nap", 12345)

    with pytest.raises(nbdurable.RunFailedError) as info:
        fn.run()
    assert "datetime" in str(info.value.__cause__)


def test_async_sleep_keeps_the_loop_free(tmp_path) -> None:
    """With the real clock, a background async run sleeping 0.3 s lets other tasks run meanwhile."""
    client = nbdurable.Client("t", store=tmp_path / "s")

    @client.create_function(fn_id="nap")
    async def fn(ctx):
        await ctx.step.sleep("nap", 300)
        return "woke"

    async def main():
        run = fn.start()
        ticks = 0
        while not run.done:
            ticks += 1
            await asyncio.sleep(0.01)
        return ticks, await run

    ticks, out = asyncio.run(main())
    assert out == "woke"
    assert ticks >= 5
    nbdurable._store.Store.forget(tmp_path / "s")
