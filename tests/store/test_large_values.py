"""Large values are written once and read once: no copy to join a header on, none to cut it off."""

from __future__ import annotations

import os
import tracemalloc
from collections.abc import Callable
from typing import Any

import nbdurable
from nbdurable import _store

SIZE = 20_000_000


def _peak(action: Callable[[], Any]) -> tuple[Any, int]:
    """What ``action`` returns and the most memory Python allocated while it ran."""
    tracemalloc.start()
    try:
        got = action()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return got, peak


def _key(client: nbdurable.Client) -> str:
    return _store.step_prefix(client.app_id, "f", "r") + "big"


def _write(client: nbdurable.Client, payload: bytes) -> None:
    client.store.put_completed_step(
        _key(client),
        kind="run",
        attempts=1,
        started_at=1.0,
        ended_at=2.0,
        serializer="pickle",
        fingerprint=None,
        payload=payload,
    )


def test_a_large_step_is_written_without_joining_header_and_payload(client: nbdurable.Client) -> None:
    """Storing a 20 MB payload allocates far less than another 20 MB (it streams to its file)."""
    payload = os.urandom(SIZE)
    _, peak = _peak(lambda: _write(client, payload))
    assert peak < SIZE // 4
    rec, stored = client.store.get_step(_key(client))  # type: ignore[misc]
    assert stored == payload
    assert rec.serializer == "pickle"


def test_a_large_step_is_read_into_one_buffer(client: nbdurable.Client) -> None:
    """Reading a 20 MB record allocates its payload once: the header is not cut off with a copy."""
    payload = os.urandom(SIZE)
    _write(client, payload)
    got, peak = _peak(lambda: client.store.get_step(_key(client)))
    assert got[1] == payload
    assert peak < SIZE * 1.2


def test_a_large_pickled_output_replays(client: nbdurable.Client) -> None:
    """A step returning 20 MB under pickle replays equal, its handler not called again."""
    client.serializer = "pickle"
    value = os.urandom(SIZE)
    calls = []

    @client.create_function(fn_id="f")
    def f(ctx: nbdurable.ContextSync) -> bytes:
        return ctx.step.run("big", lambda: calls.append(1) or value)

    assert f.run(run_id="r") == value
    assert f.run(run_id="r") == value
    assert calls == [1]
