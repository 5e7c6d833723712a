"""Names the documentation's examples use: a client on a fresh store with a fake clock."""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Any

import pytest

import nbdurable
from nbdurable.testing import FakeClock


@pytest.fixture(autouse=True)
def _doctest_names(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> None:
    if not isinstance(request.node, pytest.DoctestItem):
        return
    from tests.waiting import eventually

    namespace: dict[str, Any] = request.getfixturevalue("doctest_namespace")
    store: Path = tmp_path_factory.mktemp("doc") / "store"
    client = nbdurable.Client(
        "doc", store=str(store), clock=FakeClock(), backoff=nbdurable.Backoff(initial=0, jitter=0)
    )
    namespace.update(nbdurable=nbdurable, client=client, datetime=datetime, wait_until=eventually)
