"""DESIGN 3.8: fingerprints notice changed code or arguments; on_change decides."""

from __future__ import annotations

from typing import Any

import pytest

import nbdurable
from nbdurable._process import STATE
from tests.durable import MODES, define


def _versions() -> tuple[Any, Any]:
    def v1() -> int:
        return 1

    def v2() -> int:
        return 2

    return v1, v2


@pytest.mark.parametrize("mode", MODES)
def test_warn_replays_and_marks_stale(client: nbdurable.Client, mode: str) -> None:
    """on_change='warn': the old value replays, the step is stale and the warning names the fix."""
    v1, v2 = _versions()
    handler = {"h": v1}
    fn = define(client, mode, lambda ctx: (yield ("calc", handler["h"])))
    assert fn.run() == 1
    handler["h"] = v2
    shown: list[nbdurable.Run[Any]] = []
    STATE.run_hooks.append(shown.append)
    try:
        with pytest.warns(nbdurable.StaleStepWarning, match=r"invalidate\(.*from_step='calc'"):
            assert fn.run() == 1
    finally:
        STATE.run_hooks.remove(shown.append)
    assert shown[0].steps[0].stale


@pytest.mark.parametrize("mode", MODES)
def test_rerun_executes_the_changed_step_again(client: nbdurable.Client, mode: str) -> None:
    """on_change='rerun': a changed handler executes again and its new value is stored."""
    v1, v2 = _versions()
    handler = {"h": v1}
    fn = define(client, mode, lambda ctx: (yield ("calc", handler["h"])), on_change="rerun")
    assert fn.run() == 1
    handler["h"] = v2
    assert fn.run() == 2
    assert fn.run() == 2


def test_changed_arguments_count_as_a_change(client: nbdurable.Client) -> None:
    """The same handler with other arguments is a changed step."""
    args = {"x": 1}

    @client.create_function(fn_id="args", on_change="rerun")
    def with_args(ctx: nbdurable.ContextSync) -> int:
        return ctx.step.run("double", lambda x: x * 2, args["x"])

    assert with_args.run() == 2
    args["x"] = 5
    assert with_args.run() == 10


def test_ignore_uses_step_ids_only(client: nbdurable.Client) -> None:
    """on_change='ignore': no fingerprint, no warning, the stored value replays."""
    v1, v2 = _versions()
    handler = {"h": v1}
    fn = define(client, "sync", lambda ctx: (yield ("calc", handler["h"])), on_change="ignore")
    assert fn.run() == 1
    handler["h"] = v2
    assert fn.run() == 1


def test_unchanged_code_does_not_warn(client: nbdurable.Client) -> None:
    """Replaying with the very same code is silent (warnings are errors in this suite)."""
    v1, _ = _versions()
    fn = define(client, "sync", lambda ctx: (yield ("calc", v1)))
    fn.run()
    assert fn.run() == 1


def test_invalidate_from_a_step_reruns_it_and_what_follows(client: nbdurable.Client) -> None:
    """invalidate(run, from_step) forgets that step and the later ones only."""
    calls: list[str] = []

    @client.create_function(fn_id="chain")
    def chain(ctx: nbdurable.ContextSync) -> None:
        for name in ("a", "b", "c"):
            ctx.step.run(name, lambda n=name: calls.append(n))

    chain.run()
    run_id = client.runs("chain")[0].id
    assert chain.invalidate(run_id, from_step="b") == ["b", "c"]
    chain.run()
    assert calls == ["a", "b", "c", "b", "c"]
    with pytest.raises(KeyError, match="no stored step 'zzz'"):
        chain.invalidate(run_id, from_step="zzz")


def test_clear_forgets_runs(client: nbdurable.Client) -> None:
    """clear() deletes a function's runs and steps: the next run executes everything."""
    calls: list[int] = []

    @client.create_function(fn_id="c")
    def c(ctx: nbdurable.ContextSync) -> None:
        ctx.step.run("a", lambda: calls.append(1))

    c.run()
    assert c.clear() == 1
    assert c.runs() == []
    c.run()
    assert calls == [1, 1]


def test_invalidate_after_a_kill_follows_execution_order(client: nbdurable.Client) -> None:
    """With no step list recorded (the process died mid-run), from_step follows start times, not key order."""
    from nbdurable import _store

    @client.create_function(fn_id="order")
    def order(ctx: nbdurable.ContextSync) -> None:
        for name in ("zeta", "alpha", "mid"):
            ctx.step.run(name, lambda: client.clock.advance(1))  # type: ignore[attr-defined]

    order.run()
    run_id = client.runs("order")[0].id
    key = _store.run_key(client.app_id, "order", run_id)
    rec, payload = client.store.get_run(key)
    client.store.put(key, rec.model_copy(update={"steps": []}), payload)  # as after a kill
    assert order.invalidate(run_id, from_step="alpha") == ["alpha", "mid"]
