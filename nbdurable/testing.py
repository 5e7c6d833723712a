"""Helpers for users' own tests of durable functions.

Example:
    >>> from nbdurable.testing import temporary_client
    >>> with temporary_client() as client:
    ...     @client.create_function(fn_id="one")
    ...     def one(ctx):
    ...         return ctx.step.run("a", lambda: 1)
    ...     one.run()
    1
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator
from typing import Any

from nbdurable._client import Client
from nbdurable._clock import Clock, Signal, await_callbacks
from nbdurable._store import Store

__all__ = ["FakeClock", "simulate_restart", "temporary_client"]


class FakeClock(Clock):
    """A clock whose sleeps return at once and move its time forward.

    ``sleep`` (step sleeps, retry delays) advances the fake time instantly. ``wait`` (a
    ``wait_for_event`` timeout, an ``invoke`` timeout, the cron scheduler) really blocks
    until its signal is set or until the fake time is moved past its deadline, by
    :meth:`advance` or by another sleep.

    Attributes:
        slept: every sleep requested, in seconds, in order.

    Example:
        >>> clock = FakeClock(start=100.0)
        >>> clock.sleep(5)
        >>> clock.now(), clock.slept
        (105.0, [5])
    """

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self._now = start
        self._mono = 0.0
        self.slept: list[float] = []
        self._cond = threading.Condition()
        self._watchers: list[Callable[[], None]] = []

    def now(self) -> float:
        """Fake wall time."""
        return self._now

    def monotonic(self) -> float:
        """Fake monotonic time."""
        return self._mono

    def advance(self, seconds: float) -> None:
        """Move time forward, waking waits whose deadline passed."""
        with self._cond:
            self._now += seconds
            self._mono += seconds
            watchers = list(self._watchers)
            self._cond.notify_all()
        for watcher in watchers:
            watcher()

    def sleep(self, seconds: float, wake: Signal | None = None) -> None:
        """Record the sleep and advance time instead of blocking."""
        self.slept.append(seconds)
        if wake is None or not wake.is_set():
            self.advance(max(0.0, seconds))

    async def asleep(self, seconds: float, wake: Signal | None = None) -> None:
        """Record the sleep, advance time, and yield to the loop once."""
        self.sleep(seconds, wake)
        await asyncio.sleep(0)

    def wait(self, signal: Signal, seconds: float | None) -> bool:
        """Block until ``signal`` is set or the fake time passes the deadline."""
        deadline = math.inf if seconds is None else self._now + seconds

        def poke() -> None:
            with self._cond:
                self._cond.notify_all()

        signal.add_callback(poke)
        try:
            with self._cond:
                while not signal.is_set() and self._now < deadline:
                    self._cond.wait(1.0)
        finally:
            signal.remove_callback(poke)
        return signal.is_set()

    async def await_signal(self, signal: Signal, seconds: float | None) -> bool:
        """Suspend the task until ``signal`` is set or the fake time passes the deadline."""
        deadline = math.inf if seconds is None else self._now + seconds

        def register(wake: Callable[[], None]) -> Callable[[], None]:
            signal.add_callback(wake)
            with self._cond:
                self._watchers.append(wake)
            if self._now >= deadline:  # advanced between the check and the registration
                wake()

            def undo() -> None:
                signal.remove_callback(wake)
                with self._cond:
                    self._watchers.remove(wake)

            return undo

        while not signal.is_set() and self._now < deadline:
            await await_callbacks(register, None)
        return signal.is_set()


@contextlib.contextmanager
def temporary_client(
    path: str | os.PathLike[str] | None = None, *, app_id: str = "test", clock: Clock | None = None, **options: Any
) -> Iterator[Client]:
    """A client on a fresh store that is closed (and deleted, if it made it) afterwards.

    Args:
        path: the store directory (a new temporary one when omitted).
        app_id: the client's app id.
        clock: e.g. a :class:`FakeClock`, so retries never really sleep.
        **options: more ``Client`` options.
    """
    made = path is None
    where = tempfile.mkdtemp(prefix="nbdurable-") if path is None else os.fspath(path)
    client = Client(app_id, store=where, clock=clock or FakeClock(), **options)
    try:
        yield client
    finally:
        client.stop_cron()
        Store.forget(where)
        if made:
            shutil.rmtree(where, ignore_errors=True)


def simulate_restart(client: Client) -> Client:
    """A new client on the same store, as after a kernel restart: nothing kept in memory.

    The store is closed and reopened; functions must be registered again on the new client
    (re-run the cells that define them).
    """
    Store.forget(client.store_path)
    return Client(
        client.app_id,
        store=client.store_path,
        serializer=client.serializer,
        backoff=client.backoff,
        executor=client.executor,
        clock=client.clock,
    )
