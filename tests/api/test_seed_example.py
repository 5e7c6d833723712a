"""The Inngest step.run reference example runs unchanged on nbdurable."""

from __future__ import annotations

import functools

import nbdurable as inngest


def test_reference_example_runs_and_replays(client: inngest.Client, capsys) -> None:
    """The example's four steps run once; a second run with the same data calls no handler."""
    calls: list[object] = []

    async def my_fn() -> None:
        calls.append("my_fn")

    async def my_fn_with_args(a: int, b: str) -> None:
        calls.append(("my_fn_with_args", a, b))

    async def my_fn_with_args_and_kwargs(a: int, *, b: str) -> None:
        calls.append(("my_fn_with_args_and_kwargs", a, b))

    inngest_client = client

    @inngest_client.create_function(fn_id="my_function", trigger=inngest.TriggerEvent(event="app/my_function"))
    async def fn(ctx: inngest.Context) -> None:
        await ctx.step.run("my_fn", my_fn)
        await ctx.step.run("my_fn_with_args", my_fn_with_args, 1, "a")
        await ctx.step.run("my_fn_with_args_and_kwargs", functools.partial(my_fn_with_args_and_kwargs, 1, b="a"))

        def use_scoped_variable() -> None:
            print(ctx.event.data["user_id"])

        await ctx.step.run("use_scoped_variable", use_scoped_variable)

    assert fn.run({"user_id": 1}) is None
    assert calls == ["my_fn", ("my_fn_with_args", 1, "a"), ("my_fn_with_args_and_kwargs", 1, "a")]
    assert capsys.readouterr().out == "1\n"

    assert fn.run({"user_id": 1}) is None
    assert len(calls) == 3
    assert capsys.readouterr().out == ""
    run = client.runs("my_function")[0]
    assert run.status is inngest.RunStatus.COMPLETED
