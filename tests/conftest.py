"""Shared fixtures: a client on a fresh temporary store with a fake clock."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

import nbdurable
from nbdurable.testing import FakeClock, temporary_client


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def client(tmp_path: Path, clock: FakeClock) -> Iterator[nbdurable.Client]:
    with temporary_client(tmp_path / "store", clock=clock) as c:
        yield c


def eventually(predicate, timeout: float = 5.0):
    """Poll ``predicate`` (real time, tiny steps) until it is truthy; fail after ``timeout``."""
    import time

    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        time.sleep(0.002)
    raise AssertionError(f"condition not met within {timeout} s: {predicate}")


def waiting_step(run, key: str | None = None):
    """The step of ``run`` waiting for an event (once it waits)."""
    return eventually(
        lambda: next(
            (s for s in run.steps if s.status is nbdurable.StepStatus.WAITING and (key is None or s.key == key)),
            None,
        )
    )
