"""step.invoke (a child run) and step.send_event (sent exactly once)."""

from __future__ import annotations

import asyncio
import datetime
import threading

import pytest

import nbdurable
from nbdurable import _events
from nbdurable.testing import FakeClock
from tests.waiting import eventually


def _child(client, is_async: bool, calls: list, fail: bool = False):
    if is_async:

        @client.create_function(fn_id="child", retries=0)
        async def child(ctx):
            async def add():
                calls.append(ctx.event.data)
                if fail:
                    raise ValueError("child broke")
                return ctx.event.data["a"] + ctx.event.data["b"]

            return await ctx.step.run("add", add)

    else:

        @client.create_function(fn_id="child", retries=0)
        def child(ctx):
            def add():
                calls.append(ctx.event.data)
                if fail:
                    raise ValueError("child broke")
                return ctx.event.data["a"] + ctx.event.data["b"]

            return ctx.step.run("add", add)

    return child


def _parent(client, is_async: bool, child, timeout=None, catch=False):
    if is_async:

        @client.create_function(fn_id="parent", retries=0)
        async def parent(ctx):
            try:
                total = await ctx.step.invoke("sum", function=child, data={"a": 1, "b": 2}, timeout=timeout)
            except nbdurable.StepError as err:
                if not catch:
                    raise
                return f"caught {err.name}: {err.message}"
            return {"total": total, "run": ctx.run_id}

    else:

        @client.create_function(fn_id="parent", retries=0)
        def parent(ctx):
            try:
                total = ctx.step.invoke("sum", function=child, data={"a": 1, "b": 2}, timeout=timeout)
            except nbdurable.StepError as err:
                if not catch:
                    raise
                return f"caught {err.name}: {err.message}"
            return {"total": total, "run": ctx.run_id}

    return parent


@pytest.mark.parametrize("parent_async", [False, True])
@pytest.mark.parametrize("child_async", [False, True])
def test_invoke_runs_the_child_once_as_its_own_run(client, parent_async: bool, child_async: bool) -> None:
    """The child runs as its own stored run with the data; re-running the parent replays its output."""
    calls: list = []
    child = _child(client, child_async, calls)
    parent = _parent(client, parent_async, child)
    out = parent.run()
    assert out["total"] == 3
    assert calls == [{"a": 1, "b": 2}]
    [child_run] = child.runs()
    assert child_run.status is nbdurable.RunStatus.COMPLETED
    assert parent.run() == out
    assert calls == [{"a": 1, "b": 2}]
    step = next(s for s in client.get_run(out["run"]).steps if s.key == "sum")
    assert step.kind == "invoke"


def test_child_run_id_derives_from_parent_run_and_step(client) -> None:
    """The same parent run finds the same child run; another parent run gets another child."""
    child = _child(client, False, [])

    @client.create_function(fn_id="parent")
    def parent(ctx):
        return ctx.step.invoke("sum", function=child, data={"a": ctx.event.data["k"], "b": 0})

    parent.run({"k": 1})
    parent.run({"k": 1})
    assert len(child.runs()) == 1
    parent.run({"k": 2})
    assert len(child.runs()) == 2


@pytest.mark.parametrize("is_async", [False, True])
def test_child_failure_is_a_step_error_at_the_call_site(client, is_async: bool) -> None:
    """A failed child raises StepError in the parent, which can catch it."""
    child = _child(client, is_async, [], fail=True)
    parent = _parent(client, is_async, child, catch=True)
    out = parent.run()
    assert out.startswith("caught RunFailedError")
    assert "child broke" in out


def test_uncaught_child_failure_fails_the_parent(client) -> None:
    """Uncaught, the StepError fails the parent run at the invoke step."""
    child = _child(client, False, [], fail=True)
    parent = _parent(client, False, child)
    with pytest.raises(nbdurable.RunFailedError) as info:
        parent.run()
    assert info.value.step_id == "sum"


@pytest.mark.parametrize("is_async", [False, True])
def test_invoke_timeout_is_a_step_error(client, clock: FakeClock, is_async: bool) -> None:
    """A child that does not finish within the timeout raises StepError (TimeoutError) at the call site."""
    release = threading.Event()

    @client.create_function(fn_id="slow")
    def slow(ctx):
        return ctx.step.run("block", lambda: release.wait(5))

    parent = _parent(client, is_async, slow, timeout=datetime.timedelta(seconds=30), catch=True)
    run = parent.start()
    eventually(lambda: any(s.key == "sum" for s in run.steps))
    assert run.steps[0].deadline == clock.now() + 30
    clock.advance(30)
    assert run.wait(5).startswith("caught TimeoutError")
    release.set()
    eventually(lambda: [r.status for r in slow.runs()] == [nbdurable.RunStatus.COMPLETED])


def test_invoke_rejects_a_plain_function(client) -> None:
    """function= must be a durable function."""

    @client.create_function(fn_id="p", retries=0)
    def parent(ctx):
        ctx.step.invoke("x", function=lambda ctx: 1)

    with pytest.raises(nbdurable.RunFailedError) as info:
        parent.run()
    assert "create_function" in str(info.value.__cause__)


@pytest.mark.parametrize("is_async", [False, True])
def test_send_event_sends_once_and_replays_ids(client, is_async: bool) -> None:
    """send_event stores the ids; a replayed run returns them and sends nothing again."""
    got: list[dict] = []

    @client.create_function(fn_id="listener", trigger=nbdurable.TriggerEvent(event="app/notified"))
    def listener(ctx):
        got.append(ctx.event.data)

    if is_async:

        @client.create_function(fn_id="sender")
        async def sender(ctx):
            return await ctx.step.send_event("notify", [nbdurable.Event("app/notified", {"n": 1})])

    else:

        @client.create_function(fn_id="sender")
        def sender(ctx):
            return ctx.step.send_event("notify", nbdurable.Event("app/notified", {"n": 1}))

    ids = sender.run()
    assert len(ids) == 1
    eventually(lambda: got == [{"n": 1}])
    assert sender.run() == ids
    stored = [r.id for _, r in _events.events_after(client.store, client.app_id, 0)]
    assert stored == ids
    eventually(lambda: all(r.status.finished for r in listener.runs()))
    assert got == [{"n": 1}]
    step = client.get_run(sender.runs()[0].id).steps[0]
    assert (step.key, step.kind) == ("notify", "send")


def test_send_event_rejects_non_events(client) -> None:
    """A bad events argument is a TypeError naming the step."""

    @client.create_function(fn_id="s", retries=0)
    def sender(ctx):
        ctx.step.send_event("notify", ["app/x"])

    with pytest.raises(nbdurable.RunFailedError) as info:
        sender.run()
    assert "send_event('notify')" in str(info.value.__cause__)


def test_send_event_triggers_an_async_function_on_the_same_loop(client) -> None:
    """An async function started by send_event (a task on the sender's loop) runs its own steps normally."""

    @client.create_function(fn_id="listener", trigger=nbdurable.TriggerEvent(event="app/ping"))
    async def listener(ctx):
        return await ctx.step.run("pong", lambda: "pong")

    @client.create_function(fn_id="sender")
    async def sender(ctx):
        await ctx.step.send_event("ping", nbdurable.Event("app/ping"))
        await ctx.step.sleep("let-it-run", 10)  # yields to the loop

    async def main():
        await sender.run_async()
        while not (listener.runs() and listener.runs()[0].status.finished):
            await asyncio.sleep(0.005)

    asyncio.run(asyncio.wait_for(main(), 10))
    assert [r.status for r in listener.runs()] == [nbdurable.RunStatus.COMPLETED]


@pytest.mark.parametrize(("data", "text"), [([1, 2], "data must be a dict"), ({"when": datetime.date.today()}, "JSON")])
def test_invoke_rejects_bad_data_before_starting_the_child(client, data, text) -> None:
    """Non-dict or non-JSON data fails at the call, naming the step; no child run starts."""
    child = _child(client, False, [])

    @client.create_function(fn_id="p", retries=0)
    def parent(ctx):
        ctx.step.invoke("sum", function=child, data=data)

    with pytest.raises(nbdurable.RunFailedError) as info:
        parent.run()
    assert "step.invoke('sum')" in str(info.value.__cause__)
    assert text in str(info.value.__cause__)
    assert child.runs() == []
