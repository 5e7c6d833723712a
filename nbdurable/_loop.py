"""Running blocking calls from sync code, also inside Jupyter's running event loop.

The only module that imports nest_asyncio. A Jupyter kernel runs every cell inside its
event loop, so a sync ``fn.run()`` of an async function (or a sync function sleeping or
waiting while background runs live on that loop) must turn the loop it is already in.
"""

from __future__ import annotations

import asyncio
import collections
import contextvars
from collections.abc import Awaitable, Coroutine
from typing import Any, TypeVar

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
        return _run_nested(loop, _as_coroutine(awaitable, temporary=False))
    except _Interrupted as carried:
        interrupt = carried.interrupt
    raise interrupt  # outside the except block: the interrupt keeps its own traceback and context


def _run_nested(loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, T]) -> T:
    """``loop.run_until_complete(coro)`` from inside one of the running loop's own callbacks.

    nest_asyncio makes the loop re-entrant, but a callback whose ``contextvars.Context`` is
    already entered up this thread's stack cannot run: ``Context.run`` raises "cannot enter
    context: ... is already entered", and the loop logs it ("Exception in callback
    Task.__step()") and drops the callback, so its task never resumes. Jupyter's kernel
    (ipykernel 7) runs every shell message as a task in one shared Context, and the cell that
    blocks here is one of them: a message arriving meanwhile (a click on a run view's button,
    a completion request) would be lost. Such callbacks are held back, in order, and run once
    their Context is free again (at the latest when the outermost call returns), as they would
    had nothing re-entered the loop. This is nest_asyncio's ``run_until_complete`` otherwise.
    """
    base: Any = loop  # BaseEventLoop's private queue and step, which nest_asyncio re-enters too
    outermost = loop not in STATE.held_callbacks
    held = STATE.held_callbacks.setdefault(loop, [])
    task: Any = asyncio.ensure_future(coro, loop=loop)
    task._log_destroy_pending = False  # noqa: SLF001 - as nest_asyncio: an interrupted call leaves it quietly
    try:
        while not task.done():
            _hold_back(base._ready, held)  # noqa: SLF001 - the loop's queue: this module's one job
            base._run_once()  # noqa: SLF001
            if base._stopping:  # noqa: SLF001
                break
    finally:
        if outermost:
            del STATE.held_callbacks[loop]
            base._ready.extendleft(reversed(held))  # noqa: SLF001
    if not task.done():
        msg = "Event loop stopped before Future completed."
        raise RuntimeError(msg)
    result: T = task.result()
    return result


def _hold_back(ready: collections.deque[asyncio.Handle], held: list[asyncio.Handle]) -> None:
    """Move callbacks whose Context is entered from ``ready`` to ``held``, and those free again back first."""
    free: list[asyncio.Handle] = []
    still: list[asyncio.Handle] = []
    for handle in [*held, *ready]:
        (still if _entered(handle) else free).append(handle)
    held[:] = still
    ready.clear()
    ready.extend(free)


def _entered(handle: asyncio.Handle) -> bool:
    """True when running ``handle`` now would fail because its Context is entered (the only test there is)."""
    context: contextvars.Context | None = getattr(handle, "_context", None)
    if context is None or handle.cancelled():
        return False
    try:
        context.run(_nothing)
    except RuntimeError:
        return True
    return False


def _nothing() -> None:
    return None


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
