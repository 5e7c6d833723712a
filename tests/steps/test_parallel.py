"""ctx.group.parallel: members run concurrently, each step memoized on its own, results in order."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

import nbdurable


def test_sync_members_run_concurrently_and_in_order(client) -> None:
    """Three sync members meet at a barrier (only possible if they run at once); results keep their order."""
    barrier = threading.Barrier(3, timeout=5)
    calls: list[str] = []

    def member(name: str):
        def work():
            barrier.wait()
            calls.append(name)
            return name.upper()

        return work

    @client.create_function(fn_id="fan")
    def fan(ctx):
        return ctx.group.parallel([lambda n=n: ctx.step.run(n, member(n)) for n in ("a", "b", "c")])

    assert fan.run() == ("A", "B", "C")
    assert sorted(calls) == ["a", "b", "c"]


def test_async_members_run_concurrently_and_in_order(client) -> None:
    """Async members are tasks: each waits until all three started (impossible one after another)."""
    started: list[str] = []

    def member(name: str):
        async def work():
            started.append(name)
            for _ in range(500):
                if len(started) == 3:
                    return name.upper()
                await asyncio.sleep(0.002)
            raise AssertionError("members did not run concurrently")

        return work

    @client.create_function(fn_id="fan", retries=0)
    async def fan(ctx):
        return await ctx.group.parallel([lambda n=n: ctx.step.run(n, member(n)) for n in ("a", "b", "c")])

    assert fan.run() == ("A", "B", "C")


@pytest.mark.parametrize("is_async", [False, True])
def test_each_member_is_memoized_on_its_own(client, is_async: bool) -> None:
    """When one member fails, the next execution replays the others and re-runs only it."""
    calls = {"a": 0, "b": 0}
    flaky = {"fail": True}

    def a():
        calls["a"] += 1
        return 1

    def b():
        calls["b"] += 1
        if flaky["fail"]:
            raise nbdurable.NonRetriableError("b down")
        return 2

    if is_async:

        @client.create_function(fn_id="fan", retries=0)
        async def fan(ctx):
            return list(await ctx.group.parallel([lambda: ctx.step.run("a", a), lambda: ctx.step.run("b", b)]))

    else:

        @client.create_function(fn_id="fan", retries=0)
        def fan(ctx):
            return list(ctx.group.parallel([lambda: ctx.step.run("a", a), lambda: ctx.step.run("b", b)]))

    with pytest.raises(nbdurable.RunFailedError):
        fan.run()
    flaky["fail"] = False
    assert fan.run() == [1, 2]
    assert calls == {"a": 1, "b": 2}
    assert fan.run() == [1, 2]
    assert calls == {"a": 1, "b": 2}


@pytest.mark.parametrize("is_async", [False, True])
def test_group_takes_about_the_time_of_its_slowest_member(tmp_path, is_async: bool) -> None:
    """Members sleeping 0.1, 0.2 and 0.3 s take well under their 0.6 s sum together (loose sanity bound)."""
    client = nbdurable.Client("t", store=tmp_path / "s")
    if is_async:

        @client.create_function(fn_id="fan")
        async def fan(ctx):
            return await ctx.group.parallel(
                [lambda d=d: ctx.step.run(f"s{d}", asyncio.sleep, d / 10) for d in (1, 2, 3)]
            )

    else:

        @client.create_function(fn_id="fan")
        def fan(ctx):
            return ctx.group.parallel([lambda d=d: ctx.step.run(f"s{d}", time.sleep, d / 10) for d in (1, 2, 3)])

    t0 = time.perf_counter()
    fan.run()
    elapsed = time.perf_counter() - t0
    assert 0.3 <= elapsed < 0.55
    nbdurable._store.Store.forget(tmp_path / "s")


def test_parallel_members_can_sleep_and_wait(client) -> None:
    """A group mixes a sleep and a step; both are stored under their own keys."""

    @client.create_function(fn_id="mix")
    def mix(ctx):
        return ctx.group.parallel([lambda: ctx.step.sleep("nap", 1000), lambda: ctx.step.run("x", lambda: 1)])

    assert mix.run() == (None, 1)
    assert sorted(s.key for s in client.get_run(mix.runs()[0].id).steps) == ["nap", "x"]


@pytest.mark.parametrize("is_async", [False, True])
def test_repeated_ids_map_to_the_same_member_every_time(client, is_async: bool) -> None:
    """Members sharing a step id get item, item:1, ... in member order, so a replay returns each its own value."""
    import random

    def member(i: int):
        time.sleep(random.uniform(0, 0.01))  # scrambles start order unless members are keyed in turn
        return ctx_holder[0].step.run("item", lambda: i)

    async def amember(i: int):
        await asyncio.sleep(random.uniform(0, 0.01))
        return await ctx_holder[0].step.run("item", lambda: i)

    ctx_holder: list = []
    if is_async:

        @client.create_function(fn_id="fan")
        async def fan(ctx):
            ctx_holder[:] = [ctx]
            return await ctx.group.parallel([lambda i=i: amember(i) for i in range(8)])

    else:

        @client.create_function(fn_id="fan")
        def fan(ctx):
            ctx_holder[:] = [ctx]
            return ctx.group.parallel([lambda i=i: member(i) for i in range(8)])

    for _ in range(3):
        assert fan.run() == tuple(range(8))
    run = client.get_run(client.runs("fan")[0].id)
    stored = {s.key for s in run.steps}
    assert stored == {"item"} | {f"item:{i}" for i in range(1, 8)}


@pytest.mark.parametrize("is_async", [False, True])
def test_members_with_several_steps_replay_their_own_values(client, is_async: bool) -> None:
    """A member's later steps are keyed under its first one, so replays never swap values between members."""

    def slow(value: str) -> str:
        time.sleep(0.05)
        return value

    async def aslow(value: str) -> str:
        await asyncio.sleep(0.05)
        return value

    if is_async:

        @client.create_function(fn_id="p")
        async def p(ctx):
            async def m1():
                return (await ctx.step.run("x", aslow, "m1-first"), await ctx.step.run("x", aslow, "m1-second"))

            async def m2():
                return await ctx.step.run("x", aslow, "m2")

            await ctx.step.run("pre", lambda: 0)
            return await ctx.group.parallel([m1, m2])

    else:

        @client.create_function(fn_id="p")
        def p(ctx):
            def m1():
                return (ctx.step.run("x", slow, "m1-first"), ctx.step.run("x", slow, "m1-second"))

            def m2():
                return ctx.step.run("x", slow, "m2")

            ctx.step.run("pre", lambda: 0)
            return ctx.group.parallel([m1, m2])

    first = p.run()
    assert [list(first[0]), first[1]] == [["m1-first", "m1-second"], "m2"]
    assert p.run() == first
    keys = {s.key for s in client.get_run(client.runs("p")[0].id).steps}
    assert keys == {"pre", "x", "x/x", "x:1"}


async def test_a_failing_async_member_stops_its_siblings(client) -> None:
    """When one async member fails, the others are cancelled: none retries or writes after the run ended."""
    calls = {"b": 0}
    b_started = asyncio.Event()

    async def a():
        await b_started.wait()
        raise nbdurable.NonRetriableError("a broke")

    async def b():
        calls["b"] += 1
        b_started.set()
        await asyncio.sleep(0.2)
        return "b"

    @client.create_function(fn_id="g", retries=3)
    async def g(ctx):
        return await ctx.group.parallel([lambda: ctx.step.run("b", b), lambda: ctx.step.run("a", a)])

    with pytest.raises(nbdurable.RunFailedError):
        await g.run_async()
    await asyncio.sleep(0.4)  # long enough for an orphaned member to finish and write
    assert calls["b"] == 1
    run = client.get_run(client.runs("g")[0].id)
    assert run.status is nbdurable.RunStatus.FAILED
    assert "b" not in {s.key for s in run.steps if s.status is nbdurable.StepStatus.COMPLETED}


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
def test_member_keys_follow_the_program_not_the_clock(client, is_async: bool) -> None:
    """A first member that works a long while before its first step still gets the first key; replays never swap.

    Member 0 only reaches its step after member 1 has started its own pre-step work, so a key
    handed out by timing would go to member 1 first.
    """
    second_started = threading.Event()
    calls: list[str] = []

    def step_value(name: str):
        return lambda: calls.append(name) or name

    if is_async:

        @client.create_function(fn_id="swap")
        async def swap(ctx):
            async def first():
                await asyncio.to_thread(second_started.wait, 10)
                return await ctx.step.run("item", step_value("first"))

            async def second():
                second_started.set()
                return await ctx.step.run("item", step_value("second"))

            return await ctx.group.parallel([first, second])

    else:

        @client.create_function(fn_id="swap")
        def swap(ctx):
            def first():
                assert second_started.wait(10)
                return ctx.step.run("item", step_value("first"))

            def second():
                second_started.set()
                return ctx.step.run("item", step_value("second"))

            return ctx.group.parallel([first, second])

    assert list(swap.run()) == ["first", "second"]
    second_started.clear()
    assert list(swap.run()) == ["first", "second"]  # replayed: each member its own value
    assert sorted(calls) == ["first", "second"]  # each member executed once
    labels = {s.label for s in client.get_run(client.runs("swap")[0].id).steps}  # type: ignore[union-attr]
    assert labels == {"item", "item:1"}
