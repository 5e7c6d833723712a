"""``Step`` / ``StepSync`` and ``Context`` / ``ContextSync``: thin faces over the engine."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import contextvars
import dataclasses
import logging
import threading
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from nbdurable._engine import (
    MEMBER,
    Execution,
    GroupMember,
    Replayed,
    StepGen,
    drive_async,
    drive_sync,
    duration_seconds,
    timestamp_of,
)
from nbdurable._events import Event, as_events

if TYPE_CHECKING:
    import datetime as _dt

    from nbdurable._function import Function

T = TypeVar("T")


def _plan_sleep(ex: Execution, step_id: str, duration: Any) -> Replayed | StepGen:
    seconds = duration_seconds(duration, f"step.sleep({step_id!r}) duration")
    return ex.plan_sleep(step_id, lambda now: now + seconds, "sleep")


def _plan_sleep_until(ex: Execution, step_id: str, until: Any) -> Replayed | StepGen:
    ts = timestamp_of(until, f"step.sleep_until({step_id!r}) until")
    return ex.plan_sleep(step_id, lambda _now: ts, "sleep_until")


def _plan_wait(ex: Execution, step_id: str, event: Any, if_exp: Any, timeout: Any) -> Replayed | StepGen:
    what = f"step.wait_for_event({step_id!r})"
    if not isinstance(event, str) or not event:
        msg = f"{what}: event must be a non-empty event name, got {event!r}. Fix: event='app/approved'"
        raise ValueError(msg)
    if if_exp is not None:
        from nbdurable._cel import compile_cel

        try:
            compile_cel(if_exp)
        except ValueError as exc:
            msg = f"{what} if_exp: {exc}"
            raise ValueError(msg) from None
    seconds = duration_seconds(timeout, f"{what} timeout")
    return ex.plan_wait(step_id, event, if_exp, seconds)


def _plan_invoke(ex: Execution, step_id: str, function: Any, data: Any, timeout: Any) -> Any:
    from nbdurable._function import Function

    what = f"step.invoke({step_id!r})"
    if not isinstance(function, Function):
        msg = (
            f"{what}: function must be a durable function (made with create_function), got "
            f"{type(function).__name__} {function!r:.60}. Fix: step.invoke({step_id!r}, function=my_fn, data={{...}})"
        )
        raise TypeError(msg)
    if data is not None and not isinstance(data, dict):
        msg = f"{what}: data must be a dict of JSON values, got {type(data).__name__} {data!r:.60}"
        raise TypeError(msg)
    try:
        Event("inngest/function.invoked", data or {})  # checks the data is JSON before anything runs
    except TypeError as exc:
        msg = f"{what}: {exc}"
        raise TypeError(msg) from None
    seconds = None if timeout is None else duration_seconds(timeout, f"{what} timeout")
    return ex.plan_invoke(step_id, function, dict(data or {}), seconds)


class Step:
    """Step tools of an async durable function (``ctx.step``)."""

    __slots__ = ("_ex",)

    def __init__(self, ex: Execution) -> None:
        self._ex = ex

    async def run(
        self,
        step_id: str,
        handler: Callable[..., Awaitable[T]] | Callable[..., T],
        *handler_args: Any,
        output_type: Any = None,
    ) -> T:
        """Run ``handler(*handler_args)`` once; later executions return its stored output.

        Args:
            step_id: unique within the function; repeats are keyed ``id:1``, ``id:2``...
            handler: a sync or async callable; kwargs via ``functools.partial``.
            *handler_args: positional arguments for the handler.
            output_type: the type to store and rebuild the output as (default: the
                handler's return annotation).

        Example:
            >>> users = await ctx.step.run("fetch-users", fetch_users, 10)  # doctest: +SKIP
        """
        plan = self._ex.plan_run(step_id, handler, handler_args, output_type)
        if type(plan) is Replayed:
            return plan.value  # type: ignore[no-any-return]
        return await drive_async(self._ex, self._ex.attempts(plan))  # type: ignore[arg-type, no-any-return]

    async def sleep(self, step_id: str, duration: int | _dt.timedelta) -> None:
        """Pause the run; the wake time is stored, so a later execution waits only the rest.

        The kernel stays free while the run sleeps (it is a task awaiting a timer).

        Args:
            step_id: the step's id.
            duration: milliseconds (int) or a ``timedelta``.

        Example:
            >>> await ctx.step.sleep("cool-down", datetime.timedelta(minutes=5))  # doctest: +SKIP
        """
        plan = _plan_sleep(self._ex, step_id, duration)
        if type(plan) is not Replayed:
            await drive_async(self._ex, plan)  # type: ignore[arg-type]

    async def sleep_until(self, step_id: str, until: _dt.datetime) -> None:
        """Pause the run until a wall time (a naive datetime is local time).

        Example:
            >>> await ctx.step.sleep_until("tomorrow", tomorrow_9am)  # doctest: +SKIP
        """
        plan = _plan_sleep_until(self._ex, step_id, until)
        if type(plan) is not Replayed:
            await drive_async(self._ex, plan)  # type: ignore[arg-type]

    async def wait_for_event(
        self, step_id: str, *, event: str, if_exp: str | None = None, timeout: int | _dt.timedelta
    ) -> Event | None:
        """Wait for an event sent after this wait began; ``None`` after ``timeout``.

        The result is stored either way: a later execution returns it at once.

        Args:
            step_id: the step's id.
            event: the awaited event's name.
            if_exp: CEL over ``event`` (the run's triggering event) and ``async`` (the
                candidate), e.g. ``"event.data.order_id == async.data.order_id"``.
            timeout: milliseconds (int) or a ``timedelta``.

        Example:
            >>> approval = await ctx.step.wait_for_event(
            ...     "approval", event="app/approved", timeout=datetime.timedelta(hours=1)
            ... )  # doctest: +SKIP
        """
        plan = _plan_wait(self._ex, step_id, event, if_exp, timeout)
        if type(plan) is Replayed:
            return plan.value  # type: ignore[no-any-return]
        return await drive_async(self._ex, plan)  # type: ignore[arg-type, no-any-return]

    async def invoke(
        self,
        step_id: str,
        *,
        function: Function[T],
        data: dict[str, Any] | None = None,
        timeout: int | _dt.timedelta | None = None,
    ) -> T:
        """Run another durable function as a child run and return its output.

        The child's run id is derived from this run and the step, so a re-execution finds
        the same child. Its failure (or not finishing within ``timeout``) raises
        ``StepError`` here.

        Example:
            >>> total = await ctx.step.invoke("sum", function=add, data={"a": 1, "b": 2})  # doctest: +SKIP
        """
        plan = _plan_invoke(self._ex, step_id, function, data, timeout)
        if type(plan) is Replayed:
            return plan.value  # type: ignore[no-any-return]
        return await drive_async(self._ex, plan)  # type: ignore[no-any-return]

    async def send_event(self, step_id: str, events: Event | list[Event]) -> list[str]:
        """Send events once: a replayed run returns the stored ids without sending again.

        Example:
            >>> ids = await ctx.step.send_event("notify", nbdurable.Event("app/done", {"id": 1}))  # doctest: +SKIP
        """
        items = as_events(events, f"step.send_event({step_id!r})")
        plan = self._ex.plan_send(step_id, items)
        if type(plan) is Replayed:
            return plan.value  # type: ignore[no-any-return]
        return await drive_async(self._ex, plan)  # type: ignore[arg-type, no-any-return]


class StepSync:
    """Step tools of a sync durable function (``ctx.step``)."""

    __slots__ = ("_ex",)

    def __init__(self, ex: Execution) -> None:
        self._ex = ex

    def run(self, step_id: str, handler: Callable[..., T], *handler_args: Any, output_type: Any = None) -> T:
        """Run ``handler(*handler_args)`` once; later executions return its stored output.

        Args:
            step_id: unique within the function; repeats are keyed ``id:1``, ``id:2``...
            handler: a callable; kwargs via ``functools.partial``.
            *handler_args: positional arguments for the handler.
            output_type: the type to store and rebuild the output as (default: the
                handler's return annotation).

        Example:
            >>> users = ctx.step.run("fetch-users", fetch_users, 10)  # doctest: +SKIP
        """
        plan = self._ex.plan_run(step_id, handler, handler_args, output_type)
        if type(plan) is Replayed:
            return plan.value  # type: ignore[no-any-return]
        return drive_sync(self._ex, self._ex.attempts(plan))  # type: ignore[arg-type, no-any-return]

    def sleep(self, step_id: str, duration: int | _dt.timedelta) -> None:
        """Pause the run; the wake time is stored, so a later execution waits only the rest.

        A run started with ``start()`` sleeps in its worker thread; the kernel stays free.

        Args:
            step_id: the step's id.
            duration: milliseconds (int) or a ``timedelta``.

        Example:
            >>> ctx.step.sleep("cool-down", datetime.timedelta(minutes=5))  # doctest: +SKIP
        """
        plan = _plan_sleep(self._ex, step_id, duration)
        if type(plan) is not Replayed:
            drive_sync(self._ex, plan)  # type: ignore[arg-type]

    def sleep_until(self, step_id: str, until: _dt.datetime) -> None:
        """Pause the run until a wall time (a naive datetime is local time).

        Example:
            >>> ctx.step.sleep_until("tomorrow", tomorrow_9am)  # doctest: +SKIP
        """
        plan = _plan_sleep_until(self._ex, step_id, until)
        if type(plan) is not Replayed:
            drive_sync(self._ex, plan)  # type: ignore[arg-type]

    def wait_for_event(
        self, step_id: str, *, event: str, if_exp: str | None = None, timeout: int | _dt.timedelta
    ) -> Event | None:
        """Wait for an event sent after this wait began; ``None`` after ``timeout``.

        The result is stored either way: a later execution returns it at once.

        Args:
            step_id: the step's id.
            event: the awaited event's name.
            if_exp: CEL over ``event`` (the run's triggering event) and ``async`` (the
                candidate), e.g. ``"event.data.order_id == async.data.order_id"``.
            timeout: milliseconds (int) or a ``timedelta``.

        Example:
            >>> approval = ctx.step.wait_for_event(
            ...     "approval", event="app/approved", timeout=datetime.timedelta(hours=1)
            ... )  # doctest: +SKIP
        """
        plan = _plan_wait(self._ex, step_id, event, if_exp, timeout)
        if type(plan) is Replayed:
            return plan.value  # type: ignore[no-any-return]
        return drive_sync(self._ex, plan)  # type: ignore[arg-type, no-any-return]

    def invoke(
        self,
        step_id: str,
        *,
        function: Function[T],
        data: dict[str, Any] | None = None,
        timeout: int | _dt.timedelta | None = None,
    ) -> T:
        """Run another durable function as a child run and return its output.

        The child's run id is derived from this run and the step, so a re-execution finds
        the same child. Its failure (or not finishing within ``timeout``) raises
        ``StepError`` here.

        Example:
            >>> total = ctx.step.invoke("sum", function=add, data={"a": 1, "b": 2})  # doctest: +SKIP
        """
        plan = _plan_invoke(self._ex, step_id, function, data, timeout)
        if type(plan) is Replayed:
            return plan.value  # type: ignore[no-any-return]
        return drive_sync(self._ex, plan)  # type: ignore[no-any-return]

    def send_event(self, step_id: str, events: Event | list[Event]) -> list[str]:
        """Send events once: a replayed run returns the stored ids without sending again.

        Example:
            >>> ids = ctx.step.send_event("notify", nbdurable.Event("app/done", {"id": 1}))  # doctest: +SKIP
        """
        items = as_events(events, f"step.send_event({step_id!r})")
        plan = self._ex.plan_send(step_id, items)
        if type(plan) is Replayed:
            return plan.value  # type: ignore[no-any-return]
        return drive_sync(self._ex, plan)  # type: ignore[arg-type, no-any-return]


class Group:
    """Concurrent step groups of an async durable function (``ctx.group``)."""

    __slots__ = ("_ex",)

    def __init__(self, ex: Execution) -> None:
        self._ex = ex

    async def parallel(self, callables: Sequence[Callable[[], Awaitable[T]]]) -> tuple[T, ...]:
        """Run step callables concurrently as tasks; results in the order given.

        Each inner step is stored on its own, so a re-execution replays the finished ones
        and runs only the rest. Members are started in order, each once the one before has
        keyed its first step (``item``, ``item:1``...); a member's later steps are keyed
        under its first one (``item:1/parse``), so every value maps to the same member on
        every execution.

        Example:
            >>> a, b = await ctx.group.parallel([
            ...     lambda: ctx.step.run("a", fetch, 1),
            ...     lambda: ctx.step.run("b", fetch, 2),
            ... ])  # doctest: +SKIP
        """
        parent = MEMBER.get()
        tasks = []
        try:
            for member in callables:
                keyed = asyncio.Event()
                tasks.append(asyncio.ensure_future(_amember(member, GroupMember(parent, keyed.set), keyed)))
                # Start members in turn (see GroupSync.parallel), never stalling on one that has no step.
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(keyed.wait(), _KEY_TURN_SECONDS)
            return tuple(await asyncio.gather(*tasks))
        except BaseException:
            # One member failed (or the run was stopped): the others must not run on, nor retry,
            # after this execution ended.
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise


class GroupSync:
    """Concurrent step groups of a sync durable function (``ctx.group``)."""

    __slots__ = ("_ex",)

    def __init__(self, ex: Execution) -> None:
        self._ex = ex

    def parallel(self, callables: Sequence[Callable[[], T]]) -> tuple[T, ...]:
        """Run step callables concurrently in a thread pool; results in the order given.

        Each inner step is stored on its own, so a re-execution replays the finished ones
        and runs only the rest. Members are started in order, each once the one before has
        keyed its first step (``item``, ``item:1``...); a member's later steps are keyed
        under its first one (``item:1/parse``), so every value maps to the same member on
        every execution.

        Example:
            >>> a, b = ctx.group.parallel([
            ...     lambda: ctx.step.run("a", fetch, 1),
            ...     lambda: ctx.step.run("b", fetch, 2),
            ... ])  # doctest: +SKIP
        """
        if not callables:
            return ()
        parent = MEMBER.get()
        # Leaving the pool waits for every member, so none runs on after this call returns.
        with concurrent.futures.ThreadPoolExecutor(max_workers=min(32, len(callables))) as pool:
            futures = []
            for member in callables:
                keyed = threading.Event()
                context = contextvars.copy_context()
                context.run(MEMBER.set, GroupMember(parent, keyed.set))
                futures.append(pool.submit(context.run, _member, member, keyed))
                # A member that never reaches a step (or waits on a later one) must not stall the group.
                keyed.wait(_KEY_TURN_SECONDS)
            return tuple(f.result() for f in futures)


_KEY_TURN_SECONDS = 5.0


async def _amember(member: Callable[[], Awaitable[T]], scope: GroupMember, keyed: asyncio.Event) -> T:
    MEMBER.set(scope)
    try:
        return await member()
    finally:
        keyed.set()


def _member(member: Callable[[], T], keyed: threading.Event) -> T:
    try:
        return member()
    finally:
        keyed.set()


class _ReplayAwareLogger(logging.LoggerAdapter):  # type: ignore[type-arg]
    """Silent while the run replays stored steps; speaks once steps execute live."""

    def __init__(self, logger: logging.Logger, ex: Execution) -> None:
        super().__init__(logger, {})
        self._ex = ex

    def isEnabledFor(self, level: int) -> bool:  # noqa: N802 - logging's API
        return not self._ex.replaying and self.logger.isEnabledFor(level)

    def log(self, level: int, msg: object, *args: Any, **kwargs: Any) -> None:
        if not self._ex.replaying:
            super().log(level, msg, *args, **kwargs)


@dataclasses.dataclass
class _ContextBase:
    event: Event
    events: list[Event]
    run_id: str
    attempt: int
    logger: logging.LoggerAdapter  # type: ignore[type-arg]


@dataclasses.dataclass
class Context(_ContextBase):
    """What an async durable function receives.

    Attributes:
        event: the triggering event (``ctx.event.data`` holds the run's data).
        events: the triggering events (one here).
        run_id: this run's id.
        attempt: how many earlier executions this run had (0 on the first).
        logger: a logger silent while steps replay.
        step: the step tools (``await ctx.step.run(...)``).
        group: ``await ctx.group.parallel([...])``.
    """

    step: Step
    group: Group


@dataclasses.dataclass
class ContextSync(_ContextBase):
    """What a sync durable function receives (``ctx.step.run(...)`` without ``await``)."""

    step: StepSync
    group: GroupSync


def make_context(ex: Execution, is_async: bool) -> Context | ContextSync:
    """The context for one execution."""
    logger = _ReplayAwareLogger(logging.getLogger(f"nbdurable.{ex.fn.id}"), ex)
    run = ex.run
    common = (run.event, [run.event], run.id, max(0, run.executions - 1), logger)
    if is_async:
        return Context(*common, step=Step(ex), group=Group(ex))
    return ContextSync(*common, step=StepSync(ex), group=GroupSync(ex))
