"""``ctx.step``, ``ctx.group`` and ``ctx`` itself: thin sync and async faces over one engine.

Every tool plans through the engine (``_engine``, ``_kinds``): a stored result comes back
as ``Replayed`` and is returned at once; otherwise the face drives the plan, in this thread
(``StepSync``) or as part of the running task (``Step``). The faces differ only in that.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import dataclasses
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from nbdurable import _kinds
from nbdurable._actions import Plan, Replayed, drive_async, drive_sync
from nbdurable._engine import MEMBER, Execution, GroupMember, Pending
from nbdurable._events import Event, as_events
from nbdurable._loop import wait_sync
from nbdurable._types import HIDE_FRAMES

if TYPE_CHECKING:
    import datetime as _dt

    from nbdurable._function import Function

T = TypeVar("T")
Planned = Callable[[], "Replayed[T] | Plan[T]"]


class StepSync:
    """Step tools of a sync durable function (``ctx.step``)."""

    __slots__ = ("_ex",)

    def __init__(self, ex: Execution) -> None:
        self._ex = ex

    def _do(self, plan: Planned[T]) -> T:
        __tracebackhide__ = HIDE_FRAMES
        turn = self._ex.turn()
        if turn is not None:
            wait_sync(self._ex.clock, turn, None)
        planned = plan()
        return planned.value if isinstance(planned, Replayed) else drive_sync(self._ex.runner, planned)

    def run(self, step_id: str, handler: Callable[..., T], *handler_args: Any, output_type: Any = None) -> T:
        """Run ``handler(*handler_args)`` once; later executions return its stored output.

        Args:
            step_id: unique within the function; repeats are keyed ``id:1``, ``id:2``...
            handler: a callable; kwargs via ``functools.partial``.
            *handler_args: positional arguments for the handler.
            output_type: the type to store and rebuild the output as (default: the
                handler's return annotation).

        Example:
            >>> @client.create_function(fn_id="users")
            ... def users(ctx: nbdurable.ContextSync) -> list[str]:
            ...     return ctx.step.run("fetch-users", lambda n: ["ada"] * n, 2)
            >>> users.run()
            ['ada', 'ada']
        """
        ex = self._ex  # the hot path of every step: _do's work, inlined
        if MEMBER.get() is not None:
            turn = ex.turn()
            if turn is not None:
                wait_sync(ex.clock, turn, None)
        planned = ex.plan_run(step_id, handler, handler_args, output_type)
        if isinstance(planned, Pending):
            out: T = drive_sync(ex.runner, ex.attempts(planned))
            return out
        value: T = planned.value
        return value

    def sleep(self, step_id: str, duration: int | _dt.timedelta) -> None:
        """Pause the run; the wake time is stored, so a later execution waits only the rest.

        A run started with ``start()`` sleeps in its worker thread; the kernel stays free.

        Args:
            step_id: the step's id.
            duration: milliseconds (int) or a ``timedelta``.

        Example:
            >>> @client.create_function(fn_id="pause")
            ... def pause(ctx: nbdurable.ContextSync) -> str:
            ...     ctx.step.sleep("cool-down", datetime.timedelta(minutes=5))  # the fake clock skips it
            ...     return "rested"
            >>> pause.run()
            'rested'
        """
        self._do(lambda: _kinds.plan_sleep(self._ex, step_id, duration))

    def sleep_until(self, step_id: str, until: _dt.datetime) -> None:
        """Pause the run until a wall time (a naive datetime is local time)."""
        self._do(lambda: _kinds.plan_sleep_until(self._ex, step_id, until))

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
            >>> @client.create_function(fn_id="approval")
            ... def approval(ctx: nbdurable.ContextSync) -> bool:
            ...     got = ctx.step.wait_for_event("approved", event="app/approved", timeout=60_000)
            ...     return got is not None
            >>> run = approval.start()
            >>> _ = wait_until(lambda: run.status.value == "WAITING")
            >>> _ = client.send_sync(nbdurable.Event("app/approved"))
            >>> run.wait(10)
            True
        """
        return self._do(lambda: _kinds.plan_wait(self._ex, step_id, event, if_exp, timeout))

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
            >>> @client.create_function(fn_id="add")
            ... def add(ctx: nbdurable.ContextSync) -> int:
            ...     return ctx.event.data["a"] + ctx.event.data["b"]
            >>> @client.create_function(fn_id="total")
            ... def total(ctx: nbdurable.ContextSync) -> int:
            ...     return ctx.step.invoke("sum", function=add, data={"a": 1, "b": 2})
            >>> total.run()
            3
        """
        return self._do(lambda: _kinds.plan_invoke(self._ex, step_id, function, data, timeout))

    def send_event(self, step_id: str, events: Event | list[Event]) -> list[str]:
        """Send events once: a replayed run returns the stored ids without sending again."""
        items = as_events(events, f"step.send_event({step_id!r})")
        return self._do(lambda: _kinds.plan_send(self._ex, step_id, items))


class Step:
    """Step tools of an async durable function (``ctx.step``): the same tools as :class:`StepSync`, awaited."""

    __slots__ = ("_ex",)

    def __init__(self, ex: Execution) -> None:
        self._ex = ex

    async def _do(self, plan: Planned[T]) -> T:
        __tracebackhide__ = HIDE_FRAMES
        turn = self._ex.turn()
        if turn is not None:
            await self._ex.clock.await_signal(turn, None)
        planned = plan()
        return planned.value if isinstance(planned, Replayed) else await drive_async(self._ex.runner, planned)

    async def run(
        self,
        step_id: str,
        handler: Callable[..., Awaitable[T]] | Callable[..., T],
        *handler_args: Any,
        output_type: Any = None,
    ) -> T:
        """Run ``handler(*handler_args)`` once (sync or async); see :meth:`StepSync.run`.

        Example:
            >>> async def fetch(n: int) -> list[str]:
            ...     return ["ada"] * n
            >>> @client.create_function(fn_id="users_async")
            ... async def users(ctx: nbdurable.Context) -> list[str]:
            ...     return await ctx.step.run("fetch-users", fetch, 2)
            >>> users.run()
            ['ada', 'ada']
        """

        def plan() -> Replayed[T] | Plan[T]:
            planned = self._ex.plan_run(step_id, handler, handler_args, output_type)
            return planned if isinstance(planned, Replayed) else self._ex.attempts(planned)

        return await self._do(plan)

    async def sleep(self, step_id: str, duration: int | _dt.timedelta) -> None:
        """Pause the run without blocking the loop; see :meth:`StepSync.sleep`."""
        await self._do(lambda: _kinds.plan_sleep(self._ex, step_id, duration))

    async def sleep_until(self, step_id: str, until: _dt.datetime) -> None:
        """Pause the run until a wall time; see :meth:`StepSync.sleep_until`."""
        await self._do(lambda: _kinds.plan_sleep_until(self._ex, step_id, until))

    async def wait_for_event(
        self, step_id: str, *, event: str, if_exp: str | None = None, timeout: int | _dt.timedelta
    ) -> Event | None:
        """Wait for an event sent after this wait began; see :meth:`StepSync.wait_for_event`."""
        return await self._do(lambda: _kinds.plan_wait(self._ex, step_id, event, if_exp, timeout))

    async def invoke(
        self,
        step_id: str,
        *,
        function: Function[T],
        data: dict[str, Any] | None = None,
        timeout: int | _dt.timedelta | None = None,
    ) -> T:
        """Run another durable function as a child run; see :meth:`StepSync.invoke`."""
        return await self._do(lambda: _kinds.plan_invoke(self._ex, step_id, function, data, timeout))

    async def send_event(self, step_id: str, events: Event | list[Event]) -> list[str]:
        """Send events once; see :meth:`StepSync.send_event`."""
        items = as_events(events, f"step.send_event({step_id!r})")
        return await self._do(lambda: _kinds.plan_send(self._ex, step_id, items))


class GroupSync:
    """Concurrent step groups of a sync durable function (``ctx.group``)."""

    __slots__ = ("_ex",)

    def __init__(self, ex: Execution) -> None:
        self._ex = ex

    def parallel(self, callables: Sequence[Callable[[], T]]) -> tuple[T, ...]:
        """Run step callables concurrently in a thread pool; results in the order given.

        Each inner step is stored on its own, so a re-execution replays the finished ones and
        runs only the rest. A member's first step is keyed in the order the members were
        given (``item``, ``item:1``...; a member waits for the one before it to key its first
        step), and its later steps under that key (``item:1/parse``), so every value maps to
        the same member on every execution, whatever the timing.

        Example:
            >>> @client.create_function(fn_id="fan_out")
            ... def fan_out(ctx: nbdurable.ContextSync) -> tuple[int, ...]:
            ...     return ctx.group.parallel([lambda i=i: ctx.step.run("item", lambda: i * i) for i in range(3)])
            >>> fan_out.run()
            (0, 1, 4)
        """
        if not callables:
            return ()
        parent = MEMBER.get()
        turn = None
        # Leaving the pool waits for every member, so none runs on after this call returns.
        with concurrent.futures.ThreadPoolExecutor(max_workers=min(32, len(callables))) as pool:
            futures = []
            for member in callables:
                scope = GroupMember(parent, turn)
                turn = scope.keyed
                context = contextvars.copy_context()
                context.run(MEMBER.set, scope)
                futures.append(pool.submit(context.run, _member, member, scope))
            return tuple(f.result() for f in futures)


class Group:
    """Concurrent step groups of an async durable function (``ctx.group``)."""

    __slots__ = ("_ex",)

    def __init__(self, ex: Execution) -> None:
        self._ex = ex

    async def parallel(self, callables: Sequence[Callable[[], Awaitable[T]]]) -> tuple[T, ...]:
        """Run step callables concurrently as tasks; results in the order given. See :meth:`GroupSync.parallel`.

        Example:
            >>> @client.create_function(fn_id="fan_out_async")
            ... async def fan_out(ctx: nbdurable.Context) -> tuple[int, ...]:
            ...     return await ctx.group.parallel([lambda i=i: ctx.step.run("item", lambda: i * i) for i in range(3)])
            >>> fan_out.run()
            (0, 1, 4)
        """
        parent = MEMBER.get()
        turn = None
        tasks = []
        for member in callables:
            scope = GroupMember(parent, turn)
            turn = scope.keyed
            tasks.append(asyncio.ensure_future(_amember(member, scope)))
        try:
            return tuple(await asyncio.gather(*tasks))
        except BaseException:
            # One member failed (or the run was stopped): the others must not run on, nor retry,
            # after this execution ended.
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise


async def _amember(member: Callable[[], Awaitable[T]], scope: GroupMember) -> T:
    MEMBER.set(scope)
    try:
        return await member()
    finally:
        scope.keyed.set()


def _member(member: Callable[[], T], scope: GroupMember) -> T:
    try:
        return member()
    finally:
        scope.keyed.set()


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
    state = ex.state
    common = (state.event, [state.event], state.id, max(0, state.executions - 1), logger)
    if is_async:
        return Context(*common, step=Step(ex), group=Group(ex))
    return ContextSync(*common, step=StepSync(ex), group=GroupSync(ex))
