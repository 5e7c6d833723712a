"""Write a durable-function body once and run it through the sync and the async face.

A body is a generator: it yields ``(step_id, handler, *args)`` tuples and receives each
step's value (or has the step's exception thrown into it), so the same scenario drives
``StepSync.run`` and ``await Step.run``.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import Any

import nbdurable

Body = Callable[[Any], Generator[tuple[Any, ...], Any, Any]]
MODES = ("sync", "async")


def define(
    client: nbdurable.Client, mode: str, body: Body, *, fn_id: str = "f", **options: Any
) -> nbdurable.Function[Any]:
    """A durable function on ``client`` whose steps are the calls ``body`` yields."""
    if mode == "sync":

        def sync_fn(ctx: nbdurable.ContextSync) -> Any:
            gen = body(ctx)
            send: Any = gen.send
            arg: Any = None
            while True:
                try:
                    call = send(arg)
                except StopIteration as stop:
                    return stop.value
                try:
                    arg, send = ctx.step.run(*call), gen.send
                except nbdurable.NbdurableError as exc:
                    arg, send = exc, gen.throw

        return client.create_function(fn_id=fn_id, **options)(sync_fn)

    async def async_fn(ctx: nbdurable.Context) -> Any:
        gen = body(ctx)
        send: Any = gen.send
        arg: Any = None
        while True:
            try:
                call = send(arg)
            except StopIteration as stop:
                return stop.value
            try:
                arg, send = await ctx.step.run(*call), gen.send
            except nbdurable.NbdurableError as exc:
                arg, send = exc, gen.throw

    return client.create_function(fn_id=fn_id, **options)(async_fn)


class Counter:
    """Counts calls per name: proves "ran exactly once"."""

    def __init__(self) -> None:
        self.calls: dict[str, int] = {}

    def __getitem__(self, name: str) -> int:
        return self.calls.get(name, 0)

    def hit(self, name: str) -> None:
        self.calls[name] = self.calls.get(name, 0) + 1

    def returning(self, name: str, value: Any) -> Callable[..., Any]:
        """A handler that counts and returns ``value``."""

        def handler(*_args: Any) -> Any:
            self.hit(name)
            return value

        handler.__name__ = f"handler_{name}"
        return handler

    def failing(
        self, name: str, times: int, exc: Callable[[], BaseException] = lambda: ValueError("boom"), value: Any = "ok"
    ) -> Callable[..., Any]:
        """A handler that raises ``exc()`` the first ``times`` calls, then returns ``value``."""

        def handler(*_args: Any) -> Any:
            self.hit(name)
            if self[name] <= times:
                raise exc()
            return value

        return handler
