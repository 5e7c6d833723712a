"""The one path every execution of a run takes, and its three entry points.

``run`` (blocking), ``run_async`` (awaited) and ``start`` (background) all claim the run
in this process (or attach to the execution already in flight), then drive the same plan:
queue for concurrency slots, take the lease, call the body, write the end state. The plan
is a generator of actions, so the sync and async drivers share every rule.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import warnings
from collections.abc import Coroutine, Generator
from typing import TYPE_CHECKING, Any, TypeVar

from nbdurable._actions import IN_HANDLER, Action, Call, Plan, Runner, Wait, drive_async, drive_sync
from nbdurable._clock import Signal
from nbdurable._engine import CURRENT_RUN, Execution
from nbdurable._events import Event
from nbdurable._lifecycle import CancelSignal
from nbdurable._loop import is_home_loop, run_blocking, running_loop
from nbdurable._process import STATE, FlightKey, SlotKey
from nbdurable._run import Run, RunState
from nbdurable._step import make_context
from nbdurable._types import HIDE_FRAMES, NO_OUTPUT, ErrorInfo, RunStatus
from nbdurable.errors import NestedStepError

if TYPE_CHECKING:
    from nbdurable._function import Function

T = TypeVar("T")
FAILED_EVENT = "inngest/function.failed"


def claim(
    fn: Function[T], data: dict[str, Any] | None, run_id: str | None, event: Event | None, *, blocking: bool
) -> tuple[RunState[T], bool]:
    """The run's state, claimed for a new execution here; or the execution in flight (True) to attach to."""
    ev = fn.event_for(data, event)
    rid = fn.run_id_for(ev) if run_id is None else fn.check_run_id(run_id)
    client = fn.client
    flight: FlightKey = (*client.where, fn.id, rid)
    with STATE.lock:
        live = STATE.in_flight.get(flight)
        if live is not None and not live.finished.is_set():
            if blocking and CURRENT_RUN.get() is live:
                msg = (
                    f"{fn.id}.run() was called for run {rid!r} from inside that very run (its body or one of its "
                    "steps); it would wait for itself forever. Fix: call the work directly, or start another run "
                    "(another run_id, or step.invoke)."
                )
                raise NestedStepError(msg)
            return live, True
        state = client.run_state(fn.id, rid, ev, flight)
        state.claim(ev, blocking=blocking)
        STATE.in_flight[flight] = state
        return state, False


def release(state: RunState[Any], output: Any, exc: BaseException | None) -> None:
    """The execution in flight ended (or never started): keep its outcome, forget it as in flight."""
    state.release(output, exc)
    with STATE.lock:
        if state.flight is not None and STATE.in_flight.get(state.flight) is state:
            del STATE.in_flight[state.flight]


def show(state: RunState[Any]) -> None:
    """Show a run a caller is about to block on (the presenter, then the run hooks)."""
    handle = state.handle
    presenter = STATE.presenter
    if presenter is not None:
        presenter.show(handle)
    for hook in tuple(STATE.run_hooks):
        hook(handle)


def _slot_keys(fn: Function[Any], state: RunState[Any]) -> list[tuple[SlotKey, int]]:
    where = "\x00".join((*fn.client.where, fn.id))
    return [((where, i, c.group(state.event)), c.limit) for i, c in enumerate(fn.concurrency)]


def _queue(state: RunState[Any], keys: list[tuple[SlotKey, int]]) -> Generator[Action, Any, bool]:
    """Wait for concurrency slots (without blocking a loop); False when cancelled while queued."""
    while state.cancel_reason is None:
        wake = Signal()
        state.signals.add(wake)
        if STATE.slots.take(keys, wake):
            state.signals.discard(wake)
            return True
        state.status = RunStatus.QUEUED
        try:
            yield Wait(wake, None)
        finally:
            state.signals.discard(wake)
    return False


def execution(fn: Function[T], state: RunState[T]) -> Plan[T]:
    """One execution of a claimed run, as a plan: queue, take the lease, call the body, end."""
    __tracebackhide__ = HIDE_FRAMES
    # A run started from inside a step (send_event, invoke) is not inside that step.
    tokens = IN_HANDLER.set(None), CURRENT_RUN.set(state)
    try:
        keys = _slot_keys(fn, state) if fn.concurrency else []
        taken = (yield from _queue(state, keys)) if keys else True
        try:
            ex = Execution(fn.client, fn, state)
            try:
                ex.begin()
            except BaseException as exc:
                release(state, NO_OUTPUT, exc)
                raise
            if not taken:
                return _close(fn, ex, NO_OUTPUT, CancelSignal(state.cancel_reason or "cancelled"))
            ok, value = yield Call(fn.handler, (make_context(ex, fn.is_async),), "", body=True)
            return _close(fn, ex, value if ok else NO_OUTPUT, None if ok else value)
        finally:
            if keys and taken:
                STATE.slots.give_back(keys)
    except BaseException as exc:
        if not state.finished.is_set():
            release(state, NO_OUTPUT, exc)  # failed before its execution could end
        raise
    finally:
        CURRENT_RUN.reset(tokens[1])
        IN_HANDLER.reset(tokens[0])


def _close(fn: Function[T], ex: Execution, output: Any, exc: BaseException | None) -> T:
    __tracebackhide__ = HIDE_FRAMES
    last = ex.last_output
    from_step = last[1] if exc is None and last is not None and last[0] is output else None
    try:
        result: T = ex.life.end(output, exc, from_step=from_step)
    except BaseException as err:
        if ex.state.status is RunStatus.FAILED:
            after_failure(fn, ex.state)
        release(ex.state, NO_OUTPUT, err)
        raise
    release(ex.state, result, None)
    return result


def after_failure(fn: Function[Any], state: RunState[Any]) -> Run[Any] | None:
    """Start the function's ``on_failure`` handler (in the background) after a run failed.

    Its context's ``event`` is ``inngest/function.failed`` with ``error``, ``event``,
    ``function_id`` and ``run_id`` in its data. One handler run per failed execution.
    """
    failure = fn.failure_function
    if failure is None:
        return None
    err = state.error or ErrorInfo("Error", "")
    data = {
        "error": {"name": err.name, "message": err.message, "stack": err.stack},
        "event": state.event.to_dict(),
        "function_id": fn.id,
        "run_id": state.id,
    }
    try:
        return start(failure, None, f"{state.id}-failure-{state.executions}", Event(FAILED_EVENT, data))
    except Exception as exc:  # noqa: BLE001 - a failing failure handler must not hide the run's error
        warnings.warn(f"nbdurable: on_failure of {fn.id!r} could not start: {exc!r}", RuntimeWarning, stacklevel=2)
        return None


# --- the three entry points -------------------------------------------------------------------


def run_sync(fn: Function[T], data: dict[str, Any] | None, run_id: str | None, event: Event | None) -> T:
    """``fn.run()``: execute to the end and return the output, blocking (also inside a running loop)."""
    __tracebackhide__ = HIDE_FRAMES
    state, attached = claim(fn, data, run_id, event, blocking=True)
    _show_or_release(state, attached)
    if attached:
        return state.handle.wait()
    runner = Runner(fn.client.clock, None)
    if fn.is_async:
        return run_blocking(drive_async(runner, execution(fn, state)))
    return drive_sync(runner, execution(fn, state))


async def run_async(fn: Function[T], data: dict[str, Any] | None, run_id: str | None, event: Event | None) -> T:
    """``await fn.run_async()``: the same, awaited (a sync function runs in a worker thread)."""
    __tracebackhide__ = HIDE_FRAMES
    state, attached = claim(fn, data, run_id, event, blocking=True)
    _show_or_release(state, attached)
    if attached:
        return await state.handle
    runner = Runner(fn.client.clock, None)
    if fn.is_async:
        return await drive_async(runner, execution(fn, state))
    try:
        return await asyncio.to_thread(drive_sync, runner, execution(fn, state))
    except asyncio.CancelledError:
        # The worker thread cannot be stopped mid-step: it stops, INTERRUPTED, at the next one.
        state.request_stop("the task awaiting the run was cancelled", interrupt=True)
        raise


def start(fn: Function[T], data: dict[str, Any] | None, run_id: str | None, event: Event | None) -> Run[T]:
    """``fn.start()``: execute in the background (a task on the running loop, or a thread); return at once."""
    state, attached = claim(fn, data, run_id, event, blocking=False)
    if attached:
        return state.handle
    runner = Runner(fn.client.clock, None)
    plan = execution(fn, state)
    if fn.is_async:
        loop = running_loop()
        if is_home_loop(loop):
            assert loop is not None
            state.task = loop.create_task(_quietly(drive_async(runner, plan)))
            return state.handle
        target: Any = lambda: asyncio.run(_quietly(drive_async(runner, plan)))  # noqa: E731
    else:
        target = lambda: _quietly_sync(runner, plan)  # noqa: E731
    threading.Thread(target=target, name=f"nbdurable-{fn.id}-{state.id}", daemon=True).start()
    return state.handle


def _show_or_release(state: RunState[Any], attached: bool) -> None:
    """Show the run; a view that fails to show releases a claim made for it."""
    try:
        show(state)
    except BaseException as exc:
        if not attached:
            release(state, NO_OUTPUT, exc)
        raise


async def _quietly(coro: Coroutine[Any, Any, Any]) -> None:
    """Run a background execution; its outcome is kept in its state, not re-raised here."""
    with contextlib.suppress(BaseException):
        await coro


def _quietly_sync(runner: Runner, plan: Plan[Any]) -> None:
    with contextlib.suppress(BaseException):  # kept in the run's state
        drive_sync(runner, plan)
