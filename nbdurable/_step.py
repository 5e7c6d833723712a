"""``Step`` / ``StepSync`` and ``Context`` / ``ContextSync``: thin faces over the engine."""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from nbdurable._engine import Execution, Replayed, drive_async, drive_sync

if TYPE_CHECKING:
    from nbdurable._events import Event

T = TypeVar("T")


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


class Group:
    """Concurrent step groups of an async durable function (``ctx.group``)."""

    __slots__ = ("_ex",)

    def __init__(self, ex: Execution) -> None:
        self._ex = ex

    async def parallel(self, callables: Sequence[Callable[[], Awaitable[T]]]) -> tuple[T, ...]:
        """Run step callables concurrently as tasks; results in the order given.

        Example:
            >>> a, b = await ctx.group.parallel([
            ...     lambda: ctx.step.run("a", fetch, 1),
            ...     lambda: ctx.step.run("b", fetch, 2),
            ... ])  # doctest: +SKIP
        """
        return tuple(await asyncio.gather(*(c() for c in callables)))


class GroupSync:
    """Concurrent step groups of a sync durable function (``ctx.group``)."""

    __slots__ = ("_ex",)

    def __init__(self, ex: Execution) -> None:
        self._ex = ex

    def parallel(self, callables: Sequence[Callable[[], T]]) -> tuple[T, ...]:
        """Run step callables concurrently in a thread pool; results in the order given."""
        if not callables:
            return ()
        with concurrent.futures.ThreadPoolExecutor(max_workers=min(32, len(callables))) as pool:
            return tuple(pool.map(lambda c: c(), callables))


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
