"""Time, injected: the engine never calls ``time`` or ``asyncio.sleep`` directly.

Waiting is on a :class:`Signal`, which threads and asyncio tasks can both wait for, so a
sleep or an event wait can be woken early (by ``Run.cancel()`` or a matching event)
without blocking an event loop.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections.abc import Callable


class Signal:
    """A one-shot wake-up that threads and asyncio tasks (on any loop) can wait for."""

    __slots__ = ("_callbacks", "_event", "_lock")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._event = threading.Event()
        self._callbacks: list[Callable[[], None]] = []

    def set(self) -> None:
        """Wake every waiter (idempotent)."""
        with self._lock:
            if self._event.is_set():
                return
            self._event.set()
            callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            callback()

    def is_set(self) -> bool:
        """True once ``set`` was called."""
        return self._event.is_set()

    def wait(self, seconds: float | None) -> bool:
        """Block the calling thread until set or ``seconds`` pass (None: no limit); True if set."""
        return self._event.wait(seconds)

    def add_callback(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` (from the setting thread) when set; at once if already set."""
        with self._lock:
            if not self._event.is_set():
                self._callbacks.append(callback)
                return
        callback()

    def remove_callback(self, callback: Callable[[], None]) -> None:
        """Forget a callback added with ``add_callback``."""
        with self._lock:
            if callback in self._callbacks:
                self._callbacks.remove(callback)


def _finite(seconds: float | None) -> float | None:
    return None if seconds is None or math.isinf(seconds) else max(0.0, seconds)


async def await_callbacks(register: Callable[[Callable[[], None]], Callable[[], None]], seconds: float | None) -> None:
    """Suspend the calling task until a registered callback fires or ``seconds`` pass.

    ``register(wake)`` hooks ``wake`` up (it may be called from any thread) and returns a
    function undoing that.
    """
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[None] = loop.create_future()

    def resolve() -> None:
        if not fut.done():
            fut.set_result(None)

    def wake() -> None:
        if not loop.is_closed():
            loop.call_soon_threadsafe(resolve)

    undo = register(wake)
    try:
        await asyncio.wait_for(fut, _finite(seconds))
    except asyncio.TimeoutError:
        pass
    finally:
        undo()


def _on_signal(signal: Signal) -> Callable[[Callable[[], None]], Callable[[], None]]:
    def register(wake: Callable[[], None]) -> Callable[[], None]:
        signal.add_callback(wake)
        return lambda: signal.remove_callback(wake)

    return register


class Clock:
    """Wall clock, monotonic clock and waiting. Tests pass a fake (see ``nbdurable.testing``)."""

    def now(self) -> float:
        """Seconds since the epoch."""
        return time.time()

    def monotonic(self) -> float:
        """Seconds on a clock that never goes back."""
        return time.monotonic()

    def sleep(self, seconds: float, wake: Signal | None = None) -> None:
        """Block the calling thread for ``seconds`` (less if ``wake`` is set meanwhile)."""
        if seconds <= 0:
            return
        if wake is None:
            time.sleep(seconds)
        else:
            wake.wait(_finite(seconds))

    async def asleep(self, seconds: float, wake: Signal | None = None) -> None:
        """Suspend the calling task for ``seconds`` (less if ``wake`` is set meanwhile)."""
        if seconds <= 0:
            return
        if wake is None:
            await asyncio.sleep(seconds)
        else:
            await self.await_signal(wake, seconds)

    def wait(self, signal: Signal, seconds: float | None) -> bool:
        """Block until ``signal`` is set or ``seconds`` pass (None: no limit); True if set.

        Unlike ``sleep``, a fake clock does not skip this: it returns when the signal is
        set or when its time is moved past the deadline.
        """
        return signal.wait(_finite(seconds))

    async def await_signal(self, signal: Signal, seconds: float | None) -> bool:
        """Suspend the calling task until ``signal`` is set or ``seconds`` pass; True if set."""
        if not signal.is_set():
            await await_callbacks(_on_signal(signal), seconds)
        return signal.is_set()


SYSTEM_CLOCK = Clock()
