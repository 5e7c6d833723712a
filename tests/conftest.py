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
