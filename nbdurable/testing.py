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
import os
import shutil
import tempfile
import threading
from collections.abc import Iterator
from typing import Any

from nbdurable._client import Client
from nbdurable._clock import Clock
from nbdurable._store import Store

__all__ = ["FakeClock", "simulate_restart", "temporary_client"]


class FakeClock(Clock):
    """A clock whose sleeps return at once and move its time forward.

    Attributes:
        slept: every sleep requested, in seconds, in order.
    """

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self._now = start
        self._mono = 0.0
        self.slept: list[float] = []
        self._lock = threading.Lock()

    def now(self) -> float:
        """Fake wall time."""
        return self._now

    def monotonic(self) -> float:
        """Fake monotonic time."""
        return self._mono

    def advance(self, seconds: float) -> None:
        """Move time forward."""
        with self._lock:
            self._now += seconds
            self._mono += seconds

    def sleep(self, seconds: float) -> None:
        """Record the sleep and advance time instead of blocking."""
        self.slept.append(seconds)
        self.advance(max(0.0, seconds))

    async def asleep(self, seconds: float) -> None:
        """Record the sleep, advance time, and yield to the loop once."""
        self.slept.append(seconds)
        self.advance(max(0.0, seconds))
        await asyncio.sleep(0)


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
        Store.forget(where)
        if made:
            shutil.rmtree(where, ignore_errors=True)


def simulate_restart(client: Client) -> Client:
    """A new client on the same store, as after a kernel restart: nothing kept in memory.

    The store is closed and reopened; functions must be registered again on the new client
    (re-run the cells that define them).
    """
    Store.forget(client.store_path)
    return Client(client.app_id, store=client.store_path, clock=client.clock, backoff=client.backoff)
