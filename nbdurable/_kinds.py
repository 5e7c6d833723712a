"""The special step kinds: ``sleep``, ``sleep_until``, ``wait_for_event``, ``invoke``, ``send_event``.

Each is planned here on top of an ``Execution``: a stored result replays (``Replayed``),
otherwise a plan (a generator of actions) performs it. The faces in ``_step`` check the
user's arguments here, before anything is keyed or stored, and drive the plans.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from nbdurable import _doorbell, _events, _records
from nbdurable._actions import Plan, Replayed, Sleep, Wait
from nbdurable._clock import Signal
from nbdurable._engine import Execution, Pending
from nbdurable._events import Event, Waiter, add_waiter, remove_waiter
from nbdurable._lifecycle import cancel_if_matching, error_info
from nbdurable._serde import JSON, Codec, codec_for
from nbdurable._types import NO_TYPE, UNREADABLE, RunStatus, StepInfo, StepStatus, duration_seconds, timestamp_of
from nbdurable.errors import StepError

if TYPE_CHECKING:
    from nbdurable._function import Function

T = TypeVar("T")

STORE_POLL = 1.0
"""Seconds between looks in the store while waiting, whatever rings: sends of other processes ring at once
(``_doorbell``); this look is the safety net should a ring be lost."""


def _load_event(payload: bytes) -> Event | None:
    data = JSON.loads(payload) if payload else None
    return Event(**data) if data is not None else None


def finish(
    ex: Execution,
    info: StepInfo,
    payload: bytes,
    value: Any,
    meta: dict[str, Any] | None = None,
    *,
    has_output: bool = True,
    serializer: str = "json",
) -> None:
    """Store a sleep, wait or invoke as completed (on disk before the step returns)."""
    now = ex.clock.now()
    started = info.started_at if info.started_at is not None else now
    rec = _records.StepRecord(
        status="COMPLETED",
        kind=info.kind,
        attempts=1,
        started_at=started,
        ended_at=now,
        duration=now - started,
        serializer=serializer,
        wake_at=info.deadline,
        meta=meta,
    )
    ex.store.put(ex.prefix + info.key, rec, payload)
    if ex.current is info:
        ex.current = None
    info.status = StepStatus.COMPLETED
    info.attempts = 1
    info.duration = now - started
    info.output = value
    info.has_output = has_output
    info.deadline = None
    ex.state.emit("step_completed", info)


def _pause(
    ex: Execution, key: str, step_id: str, status: StepStatus, started: float, deadline: float, event: str | None
) -> tuple[StepInfo, Signal]:
    """Show a sleeping or waiting step (with its deadline) and give it a wake-up for cancels."""
    kind = "sleep" if status is StepStatus.SLEEPING else "wait"
    info = StepInfo(
        key=key,
        step_id=step_id,
        kind=kind,
        status=status,
        attempts=1,
        started_at=started,
        deadline=deadline,
        event=event,
    )
    ex.add_step(info, f"step_{status.value.lower()}")
    ex.current = info
    return info, ex.new_signal()


# --- sleep ------------------------------------------------------------------------------------


def plan_sleep(ex: Execution, step_id: Any, duration: Any) -> Replayed[None] | Plan[None]:
    """``step.sleep``: a duration in ms or a ``timedelta``."""
    seconds = duration_seconds(duration, f"step.sleep({step_id!r}) duration")
    return _plan_sleep(ex, step_id, lambda now: now + seconds, "sleep")


def plan_sleep_until(ex: Execution, step_id: Any, until: Any) -> Replayed[None] | Plan[None]:
    """``step.sleep_until``: a ``datetime`` (naive means local time)."""
    ts = timestamp_of(until, f"step.sleep_until({step_id!r}) until")
    return _plan_sleep(ex, step_id, lambda _now: ts, "sleep_until")


def _plan_sleep(
    ex: Execution, step_id: Any, wake_at: Callable[[float], float], tool: str
) -> Replayed[None] | Plan[None]:
    """Replay a finished sleep, or plan one: its wake time is stored at first execution."""
    key = ex.step_key(step_id, tool)
    got = ex.lookup(key)
    if got is not None and got[0].status == "COMPLETED":
        return ex.replayed(key, step_id, got[0], None, has_output=False)
    ex.execute_from_here()
    if got is not None and got[0].status == "SLEEPING" and got[0].wake_at is not None:
        started, until = got[0].started_at, got[0].wake_at
    else:
        started = ex.clock.now()
        until = wake_at(started)
        ex.store.put(
            ex.prefix + key, _records.StepRecord(status="SLEEPING", kind="sleep", started_at=started, wake_at=until)
        )
    return _sleep(ex, key, step_id, started, until)


def _sleep(ex: Execution, key: str, step_id: str, started: float, until: float) -> Plan[None]:
    info, wake = _pause(ex, key, step_id, StepStatus.SLEEPING, started, until, None)
    try:
        ex.life.set_status(RunStatus.SLEEPING)
        while (left := until - ex.clock.now()) > 0:
            ex.check_cancel()
            yield Sleep(left, wake)
        ex.check_cancel()
    finally:
        ex.drop_signal(wake)
    ex.life.set_status(RunStatus.RUNNING)
    finish(ex, info, b"null", None, has_output=False)


# --- wait_for_event ---------------------------------------------------------------------------


def plan_wait(
    ex: Execution, step_id: Any, event: Any, if_exp: Any, timeout: Any
) -> Replayed[Event | None] | Plan[Event | None]:
    """``step.wait_for_event``: replay its stored event (or None), or plan the wait."""
    what = f"step.wait_for_event({step_id!r})"
    if not isinstance(event, str) or not event:
        msg = f"{what}: event must be a non-empty event name, got {event!r}. Fix: event='app/approved'"
        raise ValueError(msg)
    if if_exp is not None:
        from nbdurable._cel import compile_cel

        try:
            compile_cel(if_exp)
        except ValueError as exc:
            msg = f"{what} if_exp: {exc}"
            raise ValueError(msg) from None
    seconds = duration_seconds(timeout, f"{what} timeout")
    key = ex.step_key(step_id, "wait_for_event")
    got = ex.lookup(key)
    if got is not None and got[0].status == "COMPLETED":
        value = ex.values.stored_value(key, _load_event, got[1])
        if value is not UNREADABLE:
            return ex.replayed(key, step_id, got[0], value, event)
        got = None
    ex.execute_from_here()
    meta = got[0].meta if got is not None and got[0].status == "WAITING" else None
    if got is not None and meta is not None and got[0].wake_at is not None:
        started, deadline, after = got[0].started_at, got[0].wake_at, int(meta.get("after", 0))
    else:
        started = ex.clock.now()
        deadline = started + seconds
        after = _events.last_seq(ex.store)
        meta = {"event": event, "if_exp": if_exp, "after": after}
        ex.store.put(
            ex.prefix + key,
            _records.StepRecord(status="WAITING", kind="wait", started_at=started, wake_at=deadline, meta=meta),
        )
    return _wait(ex, key, step_id, (event, if_exp), started, deadline, after)


def _wait(
    ex: Execution, key: str, step_id: str, awaited: tuple[str, str | None], started: float, deadline: float, after: int
) -> Plan[Event | None]:
    name, if_exp = awaited
    info, wake = _pause(ex, key, step_id, StepStatus.WAITING, started, deadline, name)
    waiter = Waiter(name, if_exp, ex.state.event.to_dict(), after, wake)
    where = (ex.store.path, ex.client.app_id)
    add_waiter(where, waiter)
    bell: _doorbell.Subscription | None = None
    found: Event | None = None
    try:
        ex.life.set_status(RunStatus.WAITING)
        bell = _doorbell.subscribe(ex.store.path)  # sends from other processes ring it
        last = after
        while True:
            rung = bell.arm()  # before looking: a send committed after the look rings it
            wake.add_callback(rung.set)
            # The store first: events sent while no process waited (kernel down) or by
            # another process; then the ones sent in this process.
            for seq, rec in _events.events_after(ex.store, ex.client.app_id, last):
                last = seq
                candidate = Event(rec.name, rec.data, rec.id, rec.ts)
                if rec.received_at is not None and rec.received_at > deadline:
                    continue
                if found is None and waiter.matches(candidate):
                    found = candidate
                cancel_if_matching(ex.state, ex.fn, candidate, ex.clock.now())
            if found is None:
                found = waiter.event
            ex.check_cancel()
            left = deadline - ex.clock.now()
            if found is not None or left <= 0:
                break
            yield Wait(rung, min(left, STORE_POLL))
            wake.remove_callback(rung.set)
    finally:
        if bell is not None:
            bell.close()
        remove_waiter(where, waiter)
        ex.drop_signal(wake)
    ex.life.set_status(RunStatus.RUNNING)
    payload = JSON.dumps(found.to_dict() if found is not None else None, key)
    finish(ex, info, payload, found, {"event": name, "if_exp": if_exp, "after": after})
    return found


# --- invoke -----------------------------------------------------------------------------------


def plan_invoke(ex: Execution, step_id: Any, function: Function[T], data: Any, timeout: Any) -> Replayed[T] | Plan[T]:
    """``step.invoke``: replay the child's stored output, or plan starting the child run."""
    what = f"step.invoke({step_id!r})"
    if not getattr(function, "is_durable_function", False):
        msg = (
            f"{what}: function must be a durable function (made with create_function), got "
            f"{type(function).__name__} {function!r:.60}. Fix: step.invoke({step_id!r}, function=my_fn, data={{...}})"
        )
        raise TypeError(msg)
    if data is not None and not isinstance(data, dict):
        msg = f"{what}: data must be a dict of JSON values, got {type(data).__name__} {data!r:.60}"
        raise TypeError(msg)
    try:
        Event("inngest/function.invoked", data or {})  # checks the data is JSON before anything runs
    except TypeError as exc:
        msg = f"{what}: {exc}"
        raise TypeError(msg) from None
    seconds = None if timeout is None else duration_seconds(timeout, f"{what} timeout")
    key = ex.step_key(step_id, "invoke")
    codec = codec_for(ex.serializer, function.output_type if function.output_type is not None else NO_TYPE)
    got = ex.lookup(key)
    if got is not None and got[0].status == "COMPLETED":
        safe = ex.values.safe_codec(key, got[0].serializer, codec)
        value = UNREADABLE if safe is None else ex.values.stored_value(key, safe.loads, got[1])
        if value is not UNREADABLE:
            return ex.replayed(key, step_id, got[0], value)
    ex.execute_from_here()
    child_id = hashlib.sha256(f"{ex.fn.id}\x00{ex.state.id}\x00{key}".encode()).hexdigest()[:16]
    return _invoke(ex, key, step_id, function, (dict(data or {}), seconds, child_id), codec)


def _invoke(
    ex: Execution,
    key: str,
    step_id: str,
    function: Function[T],
    how: tuple[dict[str, Any], float | None, str],
    codec: Codec,
) -> Plan[T]:
    data, timeout, child_id = how
    started = ex.clock.now()
    deadline = started + timeout if timeout is not None else None
    info = StepInfo(
        key=key,
        step_id=step_id,
        kind="invoke",
        status=StepStatus.RUNNING,
        attempts=1,
        started_at=started,
        deadline=deadline,
        note=f"run {child_id} of {function.id}",
    )
    ex.add_step(info, "step_started")
    ex.current = info
    child = function.start(event=Event("inngest/function.invoked", data), run_id=child_id)
    wake = ex.new_signal()
    child.add_done_callback(wake.set)
    try:
        while not child.done:
            ex.check_cancel()
            left = None if deadline is None else deadline - ex.clock.now()
            if left is not None and left <= 0:
                break
            yield Wait(wake, left)
        ex.check_cancel()
    finally:
        ex.drop_signal(wake)
    if not child.done:
        exc: Exception = TimeoutError(
            f"invoked function {function.id!r} (run {child_id!r}) did not finish within {timeout} s"
        )
    else:
        try:
            value = child.wait()
        except Exception as err:  # noqa: BLE001 - the child's failure becomes this step's
            exc = err
        else:
            payload = codec.dumps(value, key)
            out: T = codec.loads(payload)  # the stored value, as a replay gives it
            info.deadline = None
            meta = {"function_id": function.id, "run_id": child_id}
            finish(ex, info, payload, out, meta, serializer=codec.name)
            return out
    info.error = error_info(exc)
    info.deadline = None
    ex.fail(Pending(key, function.handler, (), codec, None, info), started)
    raise StepError(str(exc), type(exc).__name__, info.error.stack, key) from exc


# --- send_event -------------------------------------------------------------------------------


def plan_send(ex: Execution, step_id: Any, events: list[Event]) -> Replayed[list[str]] | Plan[list[str]]:
    """``step.send_event``: replay the stored ids (nothing is sent again), or send on the attempt loop."""
    key = ex.step_key(step_id, "send_event")
    got = ex.lookup(key)
    if got is not None and got[0].status == "COMPLETED":
        ids = ex.values.stored_value(key, JSON.loads, got[1])
        if ids is not UNREADABLE:  # else the events are sent again: at-least-once, never lost
            return ex.replayed(key, step_id, got[0], ids)
    ex.execute_from_here()
    info = StepInfo(key=key, step_id=step_id, kind="send", max_attempts=ex.max_attempts)
    return ex.attempts(Pending(key, ex.client.send_sync, (events,), JSON, None, info, local=True))
