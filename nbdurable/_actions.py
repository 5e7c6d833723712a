"""What step plans yield and the two drivers that perform it: one engine, a sync and an async face.

A step's execution is a generator (sans-IO): it yields actions (call the handler, sleep,
wait for a signal) and receives their outcomes. ``drive_sync`` and ``drive_async`` are
the only places that call handlers, sleep or wait, so both faces share every rule.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
from collections.abc import Callable, Generator
from concurrent.futures import Executor
from typing import Any, Generic, TypeVar, cast

from nbdurable._clock import Clock, Signal
from nbdurable._executors import Target, until_done
from nbdurable._loop import run_blocking, sleep_sync, wait_sync
from nbdurable._types import HIDE_FRAMES

T = TypeVar("T")

IN_HANDLER: contextvars.ContextVar[str | None] = contextvars.ContextVar("nbdurable_in_handler", default=None)
"""The key of the step whose handler runs in this context (steps cannot be nested)."""


class Call:
    """Call ``fn(*args)``: a step's handler (reply ``(True, value)`` or ``(False, exception)``).

    ``local`` calls run in the driver's own thread or loop, never on an executor (the
    engine's own work, such as sending events). ``body`` marks the durable function's body:
    every exception, interrupts included, is replied as data, and no step key is set.
    """

    __slots__ = ("args", "body", "fn", "key", "local")

    def __init__(
        self, fn: Callable[..., Any], args: tuple[Any, ...], key: str, *, local: bool = False, body: bool = False
    ) -> None:
        self.fn = fn
        self.args = args
        self.key = key
        self.local = local
        self.body = body


class Sleep:
    """Sleep ``seconds`` (a fake clock skips it), less if ``wake`` is set; reply ``None``."""

    __slots__ = ("seconds", "wake")

    def __init__(self, seconds: float, wake: Signal | None = None) -> None:
        self.seconds = seconds
        self.wake = wake


class Wait:
    """Wait until ``signal`` is set or ``seconds`` pass (None: no limit); reply whether it was set.

    Unlike ``Sleep``, a fake clock does not skip it: its time must be moved on.
    """

    __slots__ = ("seconds", "signal")

    def __init__(self, signal: Signal, seconds: float | None) -> None:
        self.signal = signal
        self.seconds = seconds


Action = Call | Sleep | Wait
Plan = Generator[Action, Any, T]
"""A step's (or a run's) execution: actions out, outcomes in, its value returned."""


class Replayed(Generic[T]):
    """A step whose stored value is returned without running anything."""

    __slots__ = ("value",)

    def __init__(self, value: T) -> None:
        self.value = value


class Runner:
    """Where handlers run: in the calling thread or loop, or on an executor (see ``_executors``).

    On an executor every step handler runs there, sync or async (an async one in the Dask
    worker's event loop, or in a loop of its own on other pools); the kernel waits for it
    without blocking its loop, and stores the output itself when it arrives.
    """

    __slots__ = ("clock", "executor", "target")

    def __init__(self, clock: Clock, executor: Executor | None) -> None:
        self.clock = clock
        self.executor = executor
        self.target = None if executor is None else Target(executor)

    def call_sync(self, fn: Callable[..., Any], args: tuple[Any, ...], key: str = "") -> Any:
        """Call a handler from sync code (an async handler runs to completion here)."""
        __tracebackhide__ = HIDE_FRAMES
        if self.target is not None:
            future = self.target.submit(fn, args, key)
            try:
                concurrent.futures.wait([future])
            except BaseException:
                future.cancel()  # interrupted: the task is not left running on the executor
                raise
            return self.target.outcome(future, fn, args, key)
        value = fn(*args)
        if asyncio.iscoroutine(value) or isinstance(value, asyncio.Future):
            value = run_blocking(value)
        return value

    async def call_async(self, fn: Callable[..., Any], args: tuple[Any, ...], key: str = "") -> Any:
        """Call a handler from a task, awaiting it (a handler on an executor does not block the loop)."""
        __tracebackhide__ = HIDE_FRAMES
        if self.target is not None:
            future = self.target.submit(fn, args, key)
            await until_done(future)
            return self.target.outcome(future, fn, args, key)
        value = fn(*args)
        if asyncio.iscoroutine(value) or isinstance(value, asyncio.Future):
            value = await value
        return value


def drive_sync(runner: Runner, plan: Plan[T]) -> T:
    """Perform a plan in this thread: call handlers, sleep and wait with the runner's clock.

    When this thread runs an event loop (a sync function executed in a Jupyter cell), sleeps
    and waits keep that loop turning, so background runs on it make progress.
    """
    __tracebackhide__ = HIDE_FRAMES
    reply: Any = None
    try:
        while True:
            action = plan.send(reply)
            if isinstance(action, Call):
                reply = _call_sync(runner, action)
            elif isinstance(action, Wait):
                reply = wait_sync(runner.clock, action.signal, action.seconds)
            else:
                sleep_sync(runner.clock, action.seconds, action.wake)
                reply = None
    except StopIteration as stop:
        return cast("T", stop.value)


def _call_sync(runner: Runner, action: Call) -> tuple[bool, Any]:
    __tracebackhide__ = HIDE_FRAMES
    if action.body:
        try:
            return True, action.fn(*action.args)
        except BaseException as exc:  # noqa: BLE001 - the engine decides what each means
            return False, exc
    token = IN_HANDLER.set(action.key)
    try:
        return True, action.fn(*action.args) if action.local else runner.call_sync(action.fn, action.args, action.key)
    except Exception as exc:  # noqa: BLE001 - handed to the engine as data
        return False, exc
    finally:
        IN_HANDLER.reset(token)


async def drive_async(runner: Runner, plan: Plan[T]) -> T:
    """Perform a plan as a task: await handlers, sleep and wait without blocking the loop."""
    __tracebackhide__ = HIDE_FRAMES
    reply: Any = None
    try:
        while True:
            action = plan.send(reply)
            if isinstance(action, Call):
                reply = await _call_async(runner, action)
            elif isinstance(action, Wait):
                reply = await runner.clock.await_signal(action.signal, action.seconds)
            else:
                await runner.clock.asleep(action.seconds, action.wake)
                reply = None
    except StopIteration as stop:
        return cast("T", stop.value)


async def _call_async(runner: Runner, action: Call) -> tuple[bool, Any]:
    __tracebackhide__ = HIDE_FRAMES
    if action.body:
        try:
            return True, await action.fn(*action.args)
        except BaseException as exc:  # noqa: BLE001 - the engine decides what each means
            return False, exc
    token = IN_HANDLER.set(action.key)
    try:
        if action.local:
            value = action.fn(*action.args)
            if asyncio.iscoroutine(value):
                value = await value
        else:
            value = await runner.call_async(action.fn, action.args, action.key)
    except Exception as exc:  # noqa: BLE001 - handed to the engine as data
        return False, exc
    else:
        return True, value
    finally:
        IN_HANDLER.reset(token)
