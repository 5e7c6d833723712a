"""DESIGN 3.2, 3.3, 3.10, 3.15: step identity, values, completed runs, nesting, logging."""

from __future__ import annotations

import logging
from typing import Any

import pytest

import nbdurable
from nbdurable._process import STATE
from tests.durable import MODES, Counter, define


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("bad", ["", None, 3, b"a"])
def test_bad_step_id_is_a_value_error_before_anything_runs(client: nbdurable.Client, mode: str, bad: Any) -> None:
    """A step id that is not a non-empty str raises ValueError; no handler runs."""
    count = Counter()

    def body(ctx: Any) -> Any:
        yield ("ok", count.returning("ok", 1))
        return (yield (bad, count.returning("bad", 1)))

    fn = define(client, mode, body)
    with pytest.raises(nbdurable.RunFailedError) as info:
        fn.run()
    assert isinstance(info.value.__cause__, ValueError)
    assert "non-empty str" in str(info.value.__cause__)
    assert count["bad"] == 0


@pytest.mark.parametrize("mode", MODES)
def test_non_callable_handler_is_a_type_error(client: nbdurable.Client, mode: str) -> None:
    """A handler that is not callable raises TypeError naming the step and the fix."""
    fn = define(client, mode, lambda ctx: (yield ("fetch", 42)))
    with pytest.raises(nbdurable.RunFailedError) as info:
        fn.run()
    assert isinstance(info.value.__cause__, TypeError)
    assert "'fetch'" in str(info.value.__cause__)
    assert "Fix" in str(info.value.__cause__)


@pytest.mark.parametrize("mode", MODES)
def test_repeated_ids_in_a_loop_get_numbered_keys(client: nbdurable.Client, mode: str) -> None:
    """The n-th repeat of an id is keyed id:n, so loops replay each iteration."""
    count = Counter()

    def body(ctx: Any) -> Any:
        out = []
        for i in range(3):
            out.append((yield ("item", count.returning(f"item{i}", i * 10))))
        return out

    fn = define(client, mode, body)
    assert fn.run() == [0, 10, 20]
    assert fn.run() == [0, 10, 20]
    assert count.calls == {"item0": 1, "item1": 1, "item2": 1}
    run = client.get_run(client.runs("f")[0].id)
    assert run is not None
    assert [s.key for s in run.steps] == ["item", "item:1", "item:2"]


@pytest.mark.parametrize("mode", MODES)
def test_first_run_returns_the_stored_value(client: nbdurable.Client, mode: str) -> None:
    """A tuple comes back as a list on the first run too, so both runs see the same value."""
    seen: list[Any] = []

    def body(ctx: Any) -> Any:
        value = yield ("pair", lambda: (1, 2))
        seen.append(value)
        return value

    fn = define(client, mode, body)
    assert fn.run() == [1, 2]
    assert fn.run() == [1, 2]
    assert seen == [[1, 2], [1, 2]]


@pytest.mark.parametrize("mode", MODES)
def test_completed_run_reexecutes_body_with_steps_replayed(client: nbdurable.Client, mode: str) -> None:
    """Running a completed run again executes the body (output recomputed) with no handler call."""
    count = Counter()
    body_runs = Counter()

    def body(ctx: Any) -> Any:
        body_runs.hit("body")
        a = yield ("a", count.returning("a", 2))
        return a * 21

    fn = define(client, mode, body)
    assert fn.run() == 42
    assert fn.run() == 42
    assert body_runs["body"] == 2
    assert count["a"] == 1
    run = client.runs("f")[0]
    assert run.status is nbdurable.RunStatus.COMPLETED


def test_nested_step_run_is_refused(client: nbdurable.Client) -> None:
    """step.run inside a step handler raises NestedStepError naming both steps; nothing is stored."""
    inner = Counter()

    @client.create_function(fn_id="nest", retries=0)
    def nest(ctx: nbdurable.ContextSync) -> Any:
        return ctx.step.run("outer", lambda: ctx.step.run("inner", inner.returning("inner", 1)))

    with pytest.raises(nbdurable.RunFailedError) as info:
        nest.run()
    cause = info.value.__cause__
    assert isinstance(cause, nbdurable.NestedStepError)
    assert "'inner'" in str(cause)
    assert "'outer'" in str(cause)
    assert inner["inner"] == 0


async def test_nested_step_run_is_refused_async(client: nbdurable.Client) -> None:
    """The async face refuses nesting too, also from an async handler."""

    @client.create_function(fn_id="nest", retries=0)
    async def nest(ctx: nbdurable.Context) -> Any:
        async def outer() -> Any:
            return await ctx.step.run("inner", lambda: 1)

        return await ctx.step.run("outer", outer)

    with pytest.raises(nbdurable.RunFailedError) as info:
        await nest.run_async()
    assert isinstance(info.value.__cause__, nbdurable.NestedStepError)


def test_step_after_the_run_ended_is_refused(client: nbdurable.Client) -> None:
    """A ctx kept after its run ended cannot run steps."""
    kept: list[nbdurable.ContextSync] = []

    @client.create_function(fn_id="keep")
    def keep(ctx: nbdurable.ContextSync) -> None:
        kept.append(ctx)

    keep.run()
    with pytest.raises(nbdurable.NestedStepError, match="after run"):
        kept[0].step.run("late", lambda: 1)


def test_logger_is_silent_while_replaying(client: nbdurable.Client, caplog: pytest.LogCaptureFixture) -> None:
    """ctx.logger speaks during live execution and stays silent while steps replay."""

    @client.create_function(fn_id="talk")
    def talk(ctx: nbdurable.ContextSync) -> None:
        ctx.step.run("a", lambda: 1)
        ctx.logger.info("after a")

    with caplog.at_level(logging.INFO, logger="nbdurable"):
        talk.run()
        first = [r.message for r in caplog.records]
        caplog.clear()
        talk.run()
        second = [r.message for r in caplog.records]
    assert first == ["after a"]
    assert second == []


def test_function_decorator_sugar_uses_the_name(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """@nbdurable.function registers on the default client with fn_id = __name__."""
    monkeypatch.setenv("NBDURABLE_STORE", str(tmp_path / "default"))
    monkeypatch.setattr(STATE, "default_client", None)

    @nbdurable.function(retries=1)
    def quick(ctx: nbdurable.ContextSync) -> int:
        return ctx.step.run("one", lambda: 1)

    assert quick.id == "quick"
    assert quick.retries == 1
    assert quick.run() == 1
    assert nbdurable.default_client().functions["quick"] is quick
    nbdurable._store.Store.forget(tmp_path / "default")


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_running_a_run_from_inside_its_own_step_is_refused_at_once(client, mode: str) -> None:
    """fn.run() of the very run in flight, called in one of its steps, fails at once instead of waiting forever."""
    calls = []

    if mode == "sync":

        @client.create_function(fn_id="selfish", retries=3)
        def selfish(ctx: nbdurable.ContextSync) -> Any:
            return ctx.step.run("again", lambda: calls.append(1) or selfish.run(run_id=ctx.run_id))

    else:

        @client.create_function(fn_id="selfish", retries=3)
        async def selfish(ctx: nbdurable.Context) -> Any:
            async def again() -> Any:
                calls.append(1)
                return await selfish.run_async(run_id=ctx.run_id)

            return await ctx.step.run("again", again)

    with pytest.raises(nbdurable.RunFailedError) as info:
        selfish.run(run_id="me")
    assert isinstance(info.value.__cause__, nbdurable.NestedStepError)
    assert "wait for itself" in str(info.value.__cause__)
    assert calls == [1]  # a mistake in the code: not retried
