"""Helpers for tests of background runs: poll briefly until a run reaches a state."""

from __future__ import annotations

import nbdurable
from nbdurable.testing import FakeClock


def eventually(predicate, timeout: float = 5.0, what: str = ""):
    """Poll ``predicate`` (real time, tiny steps) until it is truthy, and return its value.

    Fails with an ``AssertionError`` naming ``what`` after ``timeout`` seconds. The predicate
    may itself fail (a process it waits on died) to stop the wait at once.
    """
    import time

    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        time.sleep(0.002)
    raise AssertionError(f"not within {timeout} s: {what or predicate}")


def waiting_step(run, key: str | None = None):
    """The step of ``run`` waiting for an event (once it waits)."""
    return eventually(
        lambda: next(
            (s for s in run.steps if s.status is nbdurable.StepStatus.WAITING and (key is None or s.key == key)),
            None,
        )
    )


class StopsInWait(FakeClock):
    """A fake clock whose first wait is interrupted, as when the kernel stops mid-wait."""

    def __init__(self) -> None:
        super().__init__()
        self.stop = True

    def wait(self, signal, seconds):
        if self.stop:
            self.stop = False
            raise KeyboardInterrupt
        return super().wait(signal, seconds)

    async def await_signal(self, signal, seconds):
        if self.stop:
            self.stop = False
            raise KeyboardInterrupt
        return await super().await_signal(signal, seconds)
