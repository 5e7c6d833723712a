"""Time, injected: the engine never calls ``time`` or ``asyncio.sleep`` directly."""

from __future__ import annotations

import asyncio
import time


class Clock:
    """Wall clock, monotonic clock and sleeping. Tests pass a fake (see ``nbdurable.testing``)."""

    def now(self) -> float:
        """Seconds since the epoch."""
        return time.time()

    def monotonic(self) -> float:
        """Seconds on a clock that never goes back."""
        return time.monotonic()

    def sleep(self, seconds: float) -> None:
        """Block the calling thread."""
        if seconds > 0:
            time.sleep(seconds)

    async def asleep(self, seconds: float) -> None:
        """Suspend the calling task."""
        if seconds > 0:
            await asyncio.sleep(seconds)


SYSTEM_CLOCK = Clock()
