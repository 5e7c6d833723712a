"""One function body, two runtimes: nbdurable and ``inngest.experimental.mocked.trigger``.

Each body is written once and run under both; the outputs are compared. The mock hands
step outputs back as returned, while a real Inngest server (and nbdurable) hand back their
JSON round trip, so the mock's output is compared after ``json.loads(json.dumps(...))``.
Waits get stubs under the mock and real sent events under nbdurable.
"""

from __future__ import annotations

import datetime
import json

import inngest
import pytest
from inngest.experimental import mocked

import nbdurable
from nbdurable.testing import FakeClock
from tests.waiting import waiting_step

INNGEST = inngest.Inngest(app_id="compat", is_production=False)
MOCK = mocked.Inngest(app_id="compat-mock", is_production=False)


# --- the bodies, written once ------------------------------------------------------------


def values_sync(ctx):
    a = ctx.step.run("tuple", lambda: (1, "x", None))
    b = ctx.step.run("nested", lambda: {"k": [1.5, True, {"z": None}], "n": ctx.event.data["n"]})
    c = ctx.step.run("none", lambda: None)
    return {"a": a, "b": b, "c": c}


async def values_async(ctx):
    async def nested():
        return {"k": [1.5, True, {"z": None}], "n": ctx.event.data["n"]}

    a = await ctx.step.run("tuple", lambda: (1, "x", None))
    b = await ctx.step.run("nested", nested)
    c = await ctx.step.run("none", lambda: None)
    return {"a": a, "b": b, "c": c}


def loop_sync(ctx):
    squares = [ctx.step.run("square", lambda i=i: i * i) for i in range(4)]
    total = ctx.step.run("square", lambda: sum(squares))
    return {"squares": squares, "total": total}


async def loop_async(ctx):
    squares = [await ctx.step.run("square", lambda i=i: i * i) for i in range(4)]
    total = await ctx.step.run("square", lambda: sum(squares))
    return {"squares": squares, "total": total}


def sleep_sync(ctx):
    before = ctx.step.run("before", lambda: "b")
    ctx.step.sleep("nap", datetime.timedelta(seconds=5))
    ctx.step.sleep("nap-ms", 2_000)
    return [before, ctx.step.run("after", lambda: "a")]


async def sleep_async(ctx):
    before = await ctx.step.run("before", lambda: "b")
    await ctx.step.sleep("nap", datetime.timedelta(seconds=5))
    await ctx.step.sleep("nap-ms", 2_000)
    return [before, await ctx.step.run("after", lambda: "a")]


def wait_sync(ctx):
    approved = ctx.step.wait_for_event(
        "approval", event="app/approved", if_exp="event.data.n == async.data.n", timeout=60_000
    )
    late = ctx.step.wait_for_event("second", event="app/never", timeout=datetime.timedelta(minutes=1))
    return {"approved": None if approved is None else dict(approved.data), "late": late}


async def wait_async(ctx):
    approved = await ctx.step.wait_for_event(
        "approval", event="app/approved", if_exp="event.data.n == async.data.n", timeout=60_000
    )
    late = await ctx.step.wait_for_event("second", event="app/never", timeout=datetime.timedelta(minutes=1))
    return {"approved": None if approved is None else dict(approved.data), "late": late}


CASES = {
    "values": (values_sync, values_async),
    "loop": (loop_sync, loop_async),
    "sleep": (sleep_sync, sleep_async),
}


def _under_mock(body, data, stubs=None):
    fn = INNGEST.create_function(fn_id=f"compat-{body.__name__}", trigger=inngest.TriggerEvent(event="test/go"))(body)
    result = mocked.trigger(fn, inngest.Event(name="test/go", data=data), MOCK, step_stubs=stubs or {})
    assert result.status is mocked.Status.COMPLETED, result.error
    return json.loads(json.dumps(result.output))


def _under_nbdurable(client, body, data):
    fn = client.create_function(fn_id=f"compat-{body.__name__}", trigger=nbdurable.TriggerEvent(event="test/go"))(body)
    first = fn.run(data)
    assert fn.run(data) == first  # and a replay gives the same
    return first


@pytest.mark.parametrize("flavour", [0, 1], ids=["sync", "async"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_same_output_under_both(client, clock: FakeClock, case: str, flavour: int) -> None:
    """The body's output under nbdurable equals the mock's, JSON round trip included."""
    body = CASES[case][flavour]
    expected = _under_mock(body, {"n": 3})
    assert _under_nbdurable(client, body, {"n": 3}) == expected
    if case == "sleep":
        assert clock.slept == [5.0, 2.0]


@pytest.mark.parametrize("flavour", [0, 1], ids=["sync", "async"])
def test_wait_for_event_stub_vs_real_event(client, clock: FakeClock, flavour: int) -> None:
    """The mock's stubs (an event, a timeout) and nbdurable's real sent event and real timeout agree."""
    body = (wait_sync, wait_async)[flavour]
    stubs = {"approval": inngest.Event(name="app/approved", data={"n": 3, "by": "ada"}), "second": mocked.Timeout}
    expected = _under_mock(body, {"n": 3}, stubs)

    fn = client.create_function(fn_id=f"compat-{body.__name__}", trigger=nbdurable.TriggerEvent(event="test/go"))(body)
    run = fn.start({"n": 3})
    waiting_step(run, "approval")
    client.send_sync(nbdurable.Event("app/approved", {"n": 4, "by": "wrong order"}))  # filtered by if_exp
    client.send_sync(nbdurable.Event("app/approved", {"n": 3, "by": "ada"}))
    waiting_step(run, "second")
    clock.advance(60)
    assert run.wait(5) == expected == {"approved": {"n": 3, "by": "ada"}, "late": None}


@pytest.mark.parametrize("flavour", [0, 1], ids=["sync", "async"])
def test_to_inngest_serves_the_same_body(client, flavour: int) -> None:
    """A function handed over with to_inngest runs under Inngest's mock with the same output and options."""
    body = CASES["loop"][flavour]
    ours = client.create_function(
        fn_id="handed-over",
        trigger=nbdurable.TriggerEvent(event="test/go", expression="event.data.n > 0"),
        retries=2,
        idempotency="event.data.n",
        cancel=[nbdurable.Cancel(event="test/stop", if_exp="event.data.n == async.data.n")],
        concurrency=[nbdurable.Concurrency(limit=3, key="event.data.n")],
    )(body)
    theirs = nbdurable.to_inngest(ours, INNGEST)
    assert isinstance(theirs, inngest.Function)
    config = theirs.get_config("http://localhost").main
    assert config.id.endswith("handed-over")
    assert config.steps["step"].retries.attempts == 2
    assert config.triggers[0].event == "test/go"
    assert config.triggers[0].expression == "event.data.n > 0"
    assert config.idempotency == "event.data.n"
    result = mocked.trigger(theirs, inngest.Event(name="test/go", data={"n": 3}), MOCK)
    assert result.status is mocked.Status.COMPLETED, result.error
    assert json.loads(json.dumps(result.output)) == ours.run({"n": 3})


def test_to_inngest_needs_a_trigger(client) -> None:
    """Inngest functions need a trigger: a function without one is refused with the fix."""
    ours = client.create_function(fn_id="no-trigger")(loop_sync)
    with pytest.raises(ValueError, match=r"no trigger.*Fix"):
        nbdurable.to_inngest(ours, INNGEST)
