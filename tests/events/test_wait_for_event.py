"""step.wait_for_event: matches events sent after it began, if_exp filters, timeouts store None."""

from __future__ import annotations

import asyncio
import datetime
import subprocess
import sys
import textwrap

import pytest

import nbdurable
from nbdurable import _events
from nbdurable.testing import FakeClock, simulate_restart
from tests.waiting import StopsInWait, eventually, waiting_step

HOUR = datetime.timedelta(hours=1)


def _approval(client, is_async: bool, calls: list[str], if_exp: str | None = None, fn_id: str = "approve"):
    if is_async:

        @client.create_function(fn_id=fn_id, retries=0)
        async def fn(ctx: nbdurable.Context):
            ev = await ctx.step.wait_for_event("approval", event="app/approved", if_exp=if_exp, timeout=HOUR)
            await ctx.step.run("after", lambda: calls.append("after"))
            return None if ev is None else ev.data

    else:

        @client.create_function(fn_id=fn_id, retries=0)
        def fn(ctx: nbdurable.ContextSync):
            ev = ctx.step.wait_for_event("approval", event="app/approved", if_exp=if_exp, timeout=HOUR)
            ctx.step.run("after", lambda: calls.append("after"))
            return None if ev is None else ev.data

    return fn


@pytest.mark.parametrize("is_async", [False, True])
def test_wait_that_began_before_the_event_gets_it(client, is_async: bool) -> None:
    """A run waiting in the background resolves with the event sent afterwards; a replay returns it stored."""
    calls: list[str] = []
    fn = _approval(client, is_async, calls)
    run = fn.start({"order": 7})
    step = waiting_step(run)
    assert (step.kind, step.event) == ("wait", "app/approved")
    assert step.deadline == client.clock.now() + 3600
    assert run.status is nbdurable.RunStatus.WAITING
    [event_id] = client.send_sync(nbdurable.Event("app/approved", {"by": "ada"}))
    assert run.wait(5) == {"by": "ada"}
    assert calls == ["after"]
    assert fn.run({"order": 7}) == {"by": "ada"}
    assert calls == ["after"]
    stored = client.get_run(run.id)
    first = stored.steps[0]
    assert (first.key, first.kind, first.status.value) == ("approval", "wait", "COMPLETED")
    assert [e.id for _, e in _events.events_after(client.store, client.app_id, 0)] == [event_id]


@pytest.mark.parametrize("is_async", [False, True])
def test_wait_that_began_after_the_event_does_not_get_it(client, clock: FakeClock, is_async: bool) -> None:
    """An event sent before the wait began is not matched, even at the same (fake) instant."""
    client.send_sync(nbdurable.Event("app/approved", {"by": "early"}))
    fn = _approval(client, is_async, [])
    run = fn.start()
    waiting_step(run)
    clock.advance(3600)
    assert run.wait(5) is None


@pytest.mark.parametrize("is_async", [False, True])
def test_if_exp_filters_candidates(client, is_async: bool) -> None:
    """if_exp compares the triggering event (event) with the candidate (async)."""
    fn = _approval(client, is_async, [], if_exp="event.data.order == async.data.order")
    run = fn.start({"order": 7})
    waiting_step(run)
    client.send_sync([nbdurable.Event("app/approved", {"order": 8}), nbdurable.Event("app/other", {"order": 7})])
    assert not run.done
    assert run.status is nbdurable.RunStatus.WAITING
    client.send_sync(nbdurable.Event("app/approved", {"order": 7, "ok": True}))
    assert run.wait(5) == {"order": 7, "ok": True}


@pytest.mark.parametrize("is_async", [False, True])
def test_timeout_returns_none_stores_it_and_replays_instantly(client, clock: FakeClock, is_async: bool) -> None:
    """After the timeout the wait gives None; the next execution returns None without waiting."""
    calls: list[str] = []
    fn = _approval(client, is_async, calls)
    run = fn.start()
    waiting_step(run)
    clock.advance(3599)
    with pytest.raises(TimeoutError):
        run.wait(0.05)  # one second short of the deadline: still waiting
    clock.advance(1)
    assert run.wait(5) is None
    assert fn.run() is None  # would hang (no one advances the clock) if it waited again
    assert calls == ["after"]
    stored = next(s for s in client.get_run(run.id).steps if s.key == "approval")
    assert stored.status is nbdurable.StepStatus.COMPLETED


@pytest.mark.parametrize("is_async", [False, True])
def test_one_event_resolves_every_matching_wait(client, is_async: bool) -> None:
    """Two runs waiting for the same event name both get it."""
    fn = _approval(client, is_async, [])
    runs = [fn.start({"n": 1}), fn.start({"n": 2})]
    for run in runs:
        waiting_step(run)
    client.send_sync(nbdurable.Event("app/approved", {"ok": 1}))
    assert [r.wait(5) for r in runs] == [{"ok": 1}, {"ok": 1}]


@pytest.mark.parametrize("is_async", [False, True])
def test_wait_resumed_after_restart_sees_events_sent_while_down(tmp_path, is_async: bool) -> None:
    """The wait's start is stored: an event sent while no kernel waited still resolves it on resume."""
    clock = StopsInWait()
    client = nbdurable.Client("t", store=tmp_path / "s", clock=clock)
    fn = _approval(client, is_async, [])
    with pytest.raises(KeyboardInterrupt):
        fn.run()
    assert fn.runs()[0].status is nbdurable.RunStatus.INTERRUPTED
    client = simulate_restart(client)
    client.send_sync(nbdurable.Event("app/approved", {"while": "down"}))
    clock.advance(60)
    fn = _approval(client, is_async, [])
    assert fn.run() == {"while": "down"}
    nbdurable._store.Store.forget(tmp_path / "s")


def test_event_arriving_after_the_deadline_is_not_matched_on_resume(tmp_path) -> None:
    """On resume past the deadline, an event stored after the deadline does not count: the wait timed out."""
    clock = StopsInWait()
    client = nbdurable.Client("t", store=tmp_path / "s", clock=clock)
    with pytest.raises(KeyboardInterrupt):
        _approval(client, False, []).run()
    clock.advance(7200)
    client = simulate_restart(client)
    client.send_sync(nbdurable.Event("app/approved", {"late": True}))
    assert _approval(client, False, []).run() is None
    nbdurable._store.Store.forget(tmp_path / "s")


def test_invalid_if_exp_fails_before_anything_runs(client) -> None:
    """A CEL syntax error is a ValueError at the call, naming the step; nothing waits or is stored."""
    calls: list[str] = []

    @client.create_function(fn_id="bad", retries=0)
    def fn(ctx):
        ctx.step.run("a", lambda: calls.append("a"))
        ctx.step.wait_for_event("w", event="x", if_exp="event.data.id ==", timeout=1000)

    with pytest.raises(nbdurable.RunFailedError) as info:
        fn.run()
    assert isinstance(info.value.__cause__, ValueError)
    assert "'w'" in str(info.value.__cause__)
    assert "invalid CEL" in str(info.value.__cause__)
    assert [s.key for s in client.get_run(fn.runs()[0].id).steps] == ["a"]


@pytest.mark.parametrize(
    ("kwargs", "text"),
    [({"event": "", "timeout": 1}, "event name"), ({"event": "x", "timeout": "1h"}, "milliseconds")],
)
def test_bad_wait_arguments(client, kwargs, text) -> None:
    """An empty event name or a bad timeout is a clear error."""

    @client.create_function(fn_id="bad", retries=0)
    def fn(ctx):
        ctx.step.wait_for_event("w", **kwargs)

    with pytest.raises(nbdurable.RunFailedError) as info:
        fn.run()
    assert text in str(info.value.__cause__)


def test_async_wait_keeps_the_loop_free(client) -> None:
    """A background async run waits as a task: the same loop sends the event that resolves it."""
    fn = _approval(client, True, [])

    async def main():
        run = fn.start()
        while not any(s.status is nbdurable.StepStatus.WAITING for s in run.steps):
            await asyncio.sleep(0.005)
        await client.send(nbdurable.Event("app/approved", {"from": "loop"}))
        return await run

    assert asyncio.run(main()) == {"from": "loop"}


def test_send_awaited_sends_the_event_with_the_trigger_data(client) -> None:
    """Run.send_awaited (the view's "send" button) resolves a wait whose if_exp compares with the trigger."""
    fn = _approval(client, False, [], if_exp="event.data.order == async.data.order")
    run = fn.start({"order": 3})
    step = waiting_step(run)
    run.send_awaited(step)
    assert run.wait(5) == {"order": 3}


def test_wait_resolved_by_another_process(tmp_path) -> None:
    """An event sent by another process (store only) resolves the wait at its next look in the store."""
    store = tmp_path / "s"
    client = nbdurable.Client("t", store=store)
    fn = _approval(client, False, [])
    run = fn.start()
    waiting_step(run)
    code = textwrap.dedent(f"""
        import nbdurable
        nbdurable.Client("t", store={str(store)!r}).send_sync(nbdurable.Event("app/approved", {{"pid": "other"}}))
    """)
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
    assert run.wait(10) == {"pid": "other"}
    eventually(lambda: run.done)
    nbdurable._store.Store.forget(store)


def test_a_waiting_run_reads_as_waiting_from_the_store(client) -> None:
    """Other readers (client.runs, another process) see WAITING while it waits, COMPLETED after."""
    fn = _approval(client, False, [])
    run = fn.start()
    waiting_step(run)
    assert [r.status for r in client.runs("approve")] == [nbdurable.RunStatus.WAITING]
    reader = nbdurable.Client(client.app_id, store=client.store_path, clock=client.clock)  # knows no live runs
    stored = reader.get_run(run.id)
    assert stored is not None
    [step] = stored.steps
    assert (step.status, step.event, step.deadline) == (
        nbdurable.StepStatus.WAITING,
        "app/approved",
        client.clock.now() + 3600,
    )
    client.send_sync(nbdurable.Event("app/approved"))
    run.wait(5)
    assert [r.status for r in client.runs("approve")] == [nbdurable.RunStatus.COMPLETED]


def test_step_waiting_is_emitted_with_deadline_and_event(client) -> None:
    """A listener attached before the run starts (as the run view is) sees step_waiting with the countdown data."""
    seen: list[tuple[str, str, float | None, str | None]] = []

    def listener(kind, run, step):
        if step is not None and step.key == "approval":
            seen.append((kind, step.status.value, step.deadline, step.event))

    fn = _approval(client, True, [])
    started = client.clock.now()

    async def main():
        nbdurable._process.STATE.run_hooks.append(lambda run: run.add_listener(listener))
        try:
            task = asyncio.ensure_future(fn.run_async())
            while not seen:
                await asyncio.sleep(0.005)
            await client.send(nbdurable.Event("app/approved"))
            return await task
        finally:
            nbdurable._process.STATE.run_hooks.pop()

    asyncio.run(main())
    assert seen[0] == ("step_waiting", "WAITING", started + 3600, "app/approved")
    assert seen[-1][:2] == ("step_completed", "COMPLETED")
