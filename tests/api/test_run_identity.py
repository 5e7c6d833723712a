"""DESIGN 3.1: run identity decides what replays."""

from __future__ import annotations

import pytest

import nbdurable
from tests.durable import MODES, Counter, define


@pytest.mark.parametrize("mode", MODES)
def test_same_data_is_the_same_run(client: nbdurable.Client, mode: str) -> None:
    """Running twice with equal data replays: the handler runs once."""
    count = Counter()
    fn = define(client, mode, lambda ctx: (yield ("a", count.returning("a", ctx.event.data["x"]))))
    assert fn.run({"x": 1}) == 1
    assert fn.run({"x": 1}) == 1
    assert count["a"] == 1
    assert len(client.runs("f")) == 1


@pytest.mark.parametrize("mode", MODES)
def test_different_data_is_a_different_run(client: nbdurable.Client, mode: str) -> None:
    """Other data means another run id and a fresh memo."""
    count = Counter()
    fn = define(client, mode, lambda ctx: (yield ("a", count.returning("a", ctx.event.data["x"]))))
    assert fn.run({"x": 1}) == 1
    assert fn.run({"x": 2}) == 2
    assert count["a"] == 2
    assert len(client.runs("f")) == 2


def test_key_order_of_data_does_not_matter(client: nbdurable.Client) -> None:
    """The derived run id hashes canonical JSON, so dict order is irrelevant."""
    fn = define(client, "sync", lambda ctx: (yield ("a", lambda: 1)))
    assert fn.run_id_for(nbdurable.Event("e", {"a": 1, "b": 2})) == fn.run_id_for(
        nbdurable.Event("e", {"b": 2, "a": 1})
    )


@pytest.mark.parametrize("mode", MODES)
def test_explicit_run_id_wins(client: nbdurable.Client, mode: str) -> None:
    """An explicit run_id keys the memo, whatever the data."""
    count = Counter()
    fn = define(client, mode, lambda ctx: (yield ("a", count.returning("a", "v"))))
    fn.run({"x": 1}, run_id="nightly")
    fn.run({"x": 2}, run_id="nightly")
    assert count["a"] == 1
    assert [r.id for r in client.runs("f")] == ["nightly"]


def test_idempotency_expression_maps_data_to_one_run(client: nbdurable.Client) -> None:
    """An idempotency CEL key makes runs with the same key share one memo."""
    count = Counter()
    fn = define(client, "sync", lambda ctx: (yield ("a", count.returning("a", 1))), idempotency="event.data.user")
    fn.run({"user": "ada", "attempt": 1})
    fn.run({"user": "ada", "attempt": 2})
    assert count["a"] == 1
    fn.run({"user": "bob"})
    assert count["a"] == 2


def test_non_json_event_data_is_refused(client: nbdurable.Client) -> None:
    """Event data that is not JSON fails before anything runs, naming the value and the fix."""
    count = Counter()
    fn = define(client, "sync", lambda ctx: (yield ("a", count.returning("a", 1))))
    with pytest.raises(TypeError, match=r"must be JSON data.*Fix"):
        fn.run({"when": object()})
    assert count["a"] == 0
