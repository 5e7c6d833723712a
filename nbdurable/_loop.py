"""Running blocking calls from sync code, also inside Jupyter's running event loop.

The only module that imports nest_asyncio. A Jupyter kernel runs every cell inside its
event loop, so a sync ``fn.run()`` of an async function (or a sync function sleeping or
waiting while background runs live on that loop) must turn the loop it is already in.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

from nbdurable._clock import Clock, Signal
from nbdurable._process import STATE
from nbdurable._types import HIDE_FRAMES

T = TypeVar("T")


def running_loop() -> asyncio.AbstractEventLoop | None:
    """The event loop running in this thread, or None."""
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def is_home_loop(loop: asyncio.AbstractEventLoop | None) -> bool:
    """Whether background runs may live on ``loop`` (a long-lived loop, not one made for one call)."""
    return loop is not None and loop not in STATE.temporary_loops


def run_blocking(awaitable: Awaitable[T]) -> T:
    """Run an awaitable to completion from sync code, also inside a running loop (Jupyter).

    Example:
        >>> async def two() -> int:
        ...     return 2
        >>> run_blocking(two())
        2
    """
    __tracebackhide__ = HIDE_FRAMES
    loop = running_loop()
    try:
        if loop is None:
            return asyncio.run(_as_coroutine(awaitable, temporary=True))
        import nest_asyncio

        nest_asyncio.apply(loop)
        return loop.run_until_complete(_as_coroutine(awaitable, temporary=False))
    except _Interrupted as carried:
        interrupt = carried.interrupt
    raise interrupt  # outside the except block: the interrupt keeps its own traceback and context


def patch_loop(loop: asyncio.AbstractEventLoop) -> None:
    """Let ``loop`` be re-entered by blocking runs (process-wide and idempotent, as nest_asyncio is)."""
    import nest_asyncio

    nest_asyncio.apply(loop)


def wait_sync(clock: Clock, signal: Signal, seconds: float | None) -> bool:
    """Block until ``signal`` is set or ``seconds`` pass, keeping this thread's event loop turning."""
    if running_loop() is not None:
        return run_blocking(clock.await_signal(signal, seconds))
    return clock.wait(signal, seconds)


def sleep_sync(clock: Clock, seconds: float, wake: Signal | None) -> None:
    """Sleep ``seconds`` (less if ``wake`` is set), keeping this thread's event loop turning."""
    if running_loop() is not None:
        run_blocking(clock.asleep(seconds, wake))
    else:
        clock.sleep(seconds, wake)


class _Interrupted(Exception):  # noqa: N818 - a carrier, never seen by users
    """Carries a KeyboardInterrupt / SystemExit out of a task.

    A task that raises one of them keeps it as an exception nobody retrieves; its
    "never retrieved" log, when garbage collected, can land anywhere (even inside a
    parse by the compiler). As an ordinary exception it is retrieved and re-raised.
    """

    def __init__(self, interrupt: BaseException) -> None:
        super().__init__(repr(interrupt))
        self.interrupt = interrupt


async def _as_coroutine(awaitable: Awaitable[T], *, temporary: bool) -> T:
    __tracebackhide__ = HIDE_FRAMES
    if temporary:
        STATE.temporary_loops.add(asyncio.get_running_loop())
    try:
        return await awaitable
    except (KeyboardInterrupt, SystemExit) as exc:
        raise _Interrupted(exc) from None
