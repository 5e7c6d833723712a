"""DESIGN 3.9: strict JSON by default, rich values via pydantic, pickle on request."""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any

import pydantic
import pytest

import nbdurable
from nbdurable.testing import simulate_restart
from tests.durable import MODES, Counter, define


class User(pydantic.BaseModel):
    name: str
    joined: dt.date


@dataclasses.dataclass
class Point:
    x: int
    y: int


@pytest.mark.parametrize("mode", MODES)
def test_non_json_output_fails_at_once_naming_the_step(client: nbdurable.Client, mode: str) -> None:
    """A set is not JSON: OutputUnserializableError names the step, the type and the fix; no retry."""
    count = Counter()
    fn = define(client, mode, lambda ctx: (yield ("tags", count.returning("tags", {"a", "b"}))), retries=3)
    with pytest.raises(nbdurable.RunFailedError) as info:
        fn.run()
    cause = info.value.__cause__
    assert isinstance(cause, nbdurable.OutputUnserializableError)
    assert "'tags'" in str(cause)
    assert "builtins.set" in str(cause)
    assert 'serializer="pickle"' in str(cause)
    assert count["tags"] == 1


def test_return_annotation_rebuilds_pydantic_models(client: nbdurable.Client) -> None:
    """A handler annotated -> User returns a User on the first run and after a restart."""
    count = Counter()

    def fetch() -> User:
        count.hit("fetch")
        return User(name="ada", joined=dt.date(2020, 1, 2))

    @client.create_function(fn_id="users")
    def users(ctx: nbdurable.ContextSync) -> str:
        user = ctx.step.run("fetch", fetch)
        assert isinstance(user, User)
        return user.joined.isoformat()

    assert users.run() == "2020-01-02"
    again = simulate_restart(client)
    again.create_function(fn_id="users")(users.handler)
    assert again.functions["users"].run() == "2020-01-02"
    assert count["fetch"] == 1


@pytest.mark.parametrize("mode", MODES)
def test_output_type_rebuilds_dataclasses_and_datetimes(client: nbdurable.Client, mode: str) -> None:
    """output_type= stores and rebuilds values the handler does not annotate."""
    when = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc)
    seen: list[Any] = []

    if mode == "sync":

        @client.create_function(fn_id="rich")
        def rich(ctx: nbdurable.ContextSync) -> None:
            seen.append(ctx.step.run("p", lambda: Point(1, 2), output_type=Point))
            seen.append(ctx.step.run("t", lambda: when, output_type=dt.datetime))

    else:

        @client.create_function(fn_id="rich")
        async def rich(ctx: nbdurable.Context) -> None:
            seen.append(await ctx.step.run("p", lambda: Point(1, 2), output_type=Point))
            seen.append(await ctx.step.run("t", lambda: when, output_type=dt.datetime))

    rich.run()
    rich.run()
    assert seen == [Point(1, 2), when, Point(1, 2), when]


def test_annotation_that_does_not_match_the_value(client: nbdurable.Client) -> None:
    """Returning a str from a handler annotated -> User is a clear error naming both."""

    def fetch() -> User:
        return "not a user"  # type: ignore[return-value]

    @client.create_function(fn_id="users", retries=0)
    def users(ctx: nbdurable.ContextSync) -> None:
        ctx.step.run("fetch", fetch)

    with pytest.raises(nbdurable.RunFailedError) as info:
        users.run()
    cause = info.value.__cause__
    assert isinstance(cause, nbdurable.OutputUnserializableError)
    assert "'fetch'" in str(cause)
    assert "User" in str(cause)


def test_pickle_serializer_stores_arbitrary_objects(tmp_path: Any) -> None:
    """serializer="pickle" keeps objects JSON cannot, across a restart."""
    from nbdurable.testing import temporary_client

    count = Counter()

    with temporary_client(tmp_path / "s", serializer="pickle") as client:

        @client.create_function(fn_id="box")
        def box(ctx: nbdurable.ContextSync) -> list[int]:
            value = ctx.step.run("make", lambda: count.hit("make") or {1, 2, 3})
            return sorted(value)

        assert box.run() == [1, 2, 3]
        again = simulate_restart(client)
        again.create_function(fn_id="box")(box.handler)
        assert again.functions["box"].run() == [1, 2, 3]
        assert count["make"] == 1


def test_function_level_serializer_overrides_the_client(client: nbdurable.Client) -> None:
    """A function can choose pickle while its client stays JSON."""

    @client.create_function(fn_id="p", serializer="pickle")
    def p(ctx: nbdurable.ContextSync) -> Any:
        return ctx.step.run("s", lambda: frozenset({1}))

    assert p.run() == frozenset({1})


def test_unknown_serializer_is_refused(client: nbdurable.Client) -> None:
    """A serializer name we do not know fails at definition time."""
    with pytest.raises(ValueError, match="serializer"):
        client.create_function(fn_id="x", serializer="yaml")(lambda ctx: None)


@pytest.mark.parametrize("mode", MODES)
def test_non_str_dict_keys_are_refused_not_coerced(client: nbdurable.Client, mode: str) -> None:
    """{1: "x"} would come back as {"1": "x"}: strict JSON refuses it, naming the key and the fix."""
    fn = define(client, mode, lambda ctx: (yield ("ids", lambda: {"ok": [{1: "x"}]})), retries=3)
    with pytest.raises(nbdurable.RunFailedError) as info:
        fn.run()
    cause = info.value.__cause__
    assert isinstance(cause, nbdurable.OutputUnserializableError)
    assert "dict keys must be str, got 1" in str(cause)
    assert 'serializer="pickle"' in str(cause)
