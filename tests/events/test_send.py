"""Client.send / send_sync: ids, storage, triggered background runs (wildcards, expressions)."""

from __future__ import annotations

import asyncio
import threading

import pytest

import nbdurable
from nbdurable import _events
from tests.waiting import eventually


def _stored_events(client):
    return [rec for _, rec in _events.events_after(client.store, client.app_id, 0)]


def test_send_returns_ids_and_stores_events(client) -> None:
    """Every event sent is stored (name, data, id, ts) in order; the ids come back in order."""
    a, b = nbdurable.Event("app/a", {"x": 1}), nbdurable.Event("app/b")
    ids = client.send_sync([a, b])
    assert ids == [a.id, b.id]
    stored = _stored_events(client)
    assert [(e.name, e.data, e.id, e.ts) for e in stored] == [
        ("app/a", {"x": 1}, a.id, a.ts),
        ("app/b", {}, b.id, b.ts),
    ]
    assert all(e.received_at == client.clock.now() for e in stored)


def test_async_send_is_the_same(client) -> None:
    """await client.send(...) stores and returns ids like send_sync."""
    ids = asyncio.run(client.send(nbdurable.Event("app/a")))
    assert len(ids) == 1
    assert [e.id for e in _stored_events(client)] == ids


def test_send_rejects_non_events(client) -> None:
    """A dict is not an Event: a TypeError saying how to build one."""
    with pytest.raises(TypeError, match=r"nbdurable\.Event"):
        client.send_sync({"name": "app/a"})


@pytest.mark.parametrize("is_async", [False, True])
def test_send_starts_a_background_run_per_matching_function(client, is_async: bool) -> None:
    """A matching trigger (exact or wildcard) starts a run with the event; others are not started."""
    seen: list[tuple[str, dict]] = []
    done = threading.Event()

    def body(ctx):
        seen.append((ctx.event.name, ctx.event.data))
        if len(seen) == 2:
            done.set()
        return ctx.event.data["n"]

    async def abody(ctx):
        return body(ctx)

    handler = abody if is_async else body
    client.create_function(fn_id="exact", trigger=nbdurable.TriggerEvent(event="shop/order.created"))(handler)
    client.create_function(fn_id="wild", trigger=nbdurable.TriggerEvent(event="shop/*"))(handler)
    client.create_function(fn_id="other", trigger=nbdurable.TriggerEvent(event="blog/*"))(handler)

    def finished(fn_id):
        return [r.status for r in client.runs(fn_id)] == [nbdurable.RunStatus.COMPLETED]

    async def send():
        await client.send(nbdurable.Event("shop/order.created", {"n": 1}))
        while not (done.is_set() and finished("exact") and finished("wild")):
            await asyncio.sleep(0.005)

    asyncio.run(asyncio.wait_for(send(), 10))
    assert sorted(seen) == [("shop/order.created", {"n": 1})] * 2
    assert client.runs("other") == []


def test_each_event_gets_its_own_run(client) -> None:
    """Two events with identical data start two runs (fresh ids per event)."""
    count = []

    @client.create_function(fn_id="f", trigger=nbdurable.TriggerEvent(event="app/go"))
    def fn(ctx):
        return ctx.step.run("s", lambda: count.append(1) or len(count))

    client.send_sync([nbdurable.Event("app/go", {"same": 1}), nbdurable.Event("app/go", {"same": 1})])
    eventually(lambda: len([r for r in fn.runs() if r.status is nbdurable.RunStatus.COMPLETED]) == 2)
    assert len(count) == 2


def test_trigger_expression_filters(client) -> None:
    """TriggerEvent.expression (CEL over event) decides which events start runs."""
    got = []

    @client.create_function(
        fn_id="big", trigger=nbdurable.TriggerEvent(event="app/order", expression="event.data.total > 100")
    )
    def fn(ctx):
        got.append(ctx.event.data["total"])

    client.send_sync([nbdurable.Event("app/order", {"total": 5}), nbdurable.Event("app/order", {"total": 500})])
    eventually(lambda: got == [500])
    eventually(lambda: fn.runs() and all(r.status.finished for r in fn.runs()))
    assert len(fn.runs()) == 1


def test_invalid_expressions_fail_at_definition(client) -> None:
    """A CEL typo fails when the trigger, Cancel or Concurrency is created, naming where."""
    with pytest.raises(ValueError, match=r"TriggerEvent\('app/x'\) expression: invalid CEL"):
        nbdurable.TriggerEvent(event="app/x", expression="event.data.total >")
    with pytest.raises(ValueError, match=r"Cancel\('app/stop'\) if_exp: invalid CEL"):
        nbdurable.Cancel(event="app/stop", if_exp="async.data.id ==")
    with pytest.raises(ValueError, match="Concurrency key: invalid CEL"):
        nbdurable.Concurrency(limit=1, key="event.data.(")
    with pytest.raises(ValueError, match="idempotency: invalid CEL"):
        client.create_function(fn_id="x", idempotency="event.data.")(lambda ctx: None)
    with pytest.raises(ValueError, match="invalid cron"):
        nbdurable.TriggerCron(cron="every minute")
    with pytest.raises(TypeError, match="cancel takes Cancel"):
        client.create_function(fn_id="x", cancel=["app/stop"])(lambda ctx: None)


def test_event_keys_are_ordered_by_send(client) -> None:
    """Events are stored under a store-wide sequence, so reading after a number gives later sends only."""
    client.send_sync([nbdurable.Event("a"), nbdurable.Event("b"), nbdurable.Event("c")])
    assert _events.last_seq(client.store) == 3
    assert [r.name for _, r in _events.events_after(client.store, client.app_id, 1)] == ["b", "c"]
    assert _events.event_key("app", 2, "x") < _events.event_key("app", 10, "x")


def test_an_event_and_its_sequence_number_are_stored_together(client, monkeypatch) -> None:
    """If storing an event fails, its sequence number is not taken either: readers never skip one."""
    import sqlite3

    store = client.store
    before = _events.last_seq(store)

    def broken(*_args, **_kwargs):
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(store, "put", broken)
    with pytest.raises(nbdurable.StoreError, match="free disk space"):
        client.send_sync(nbdurable.Event("app/x", {}))
    monkeypatch.undo()
    assert _events.last_seq(store) == before
    client.send_sync(nbdurable.Event("app/x", {}))
    assert _events.last_seq(store) == before + 1
