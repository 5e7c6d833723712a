"""A run's record while an execution holds it: taking the run, keeping its record current, writing its end.

``Lifecycle`` owns the lease side of an execution: it takes the run (or raises
``RunLockedError``), marks it RUNNING, refreshes the heartbeat and the step in flight,
records sleeps and waits, and writes the end state, turning the exception that ended the
body (if any) into the run's status and the error its caller gets.
"""

from __future__ import annotations

import threading
import traceback
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from nbdurable import _events, _keys, _lease, _records, _store
from nbdurable._codecs import codec_for as data_codec_for
from nbdurable._events import Event
from nbdurable._preview import preview
from nbdurable._serde import codec_for
from nbdurable._types import CORRUPT, HIDE_FRAMES, MISSING, NO_OUTPUT, ErrorInfo, RunStatus, StepInfo, StepStatus
from nbdurable.errors import (
    ExecutorLostError,
    OutputUnserializableError,
    RunCancelledError,
    RunFailedError,
    RunLockedError,
    StepError,
)

if TYPE_CHECKING:
    from nbdurable._client import Client
    from nbdurable._function import Function
    from nbdurable._records import DataRef, ErrorRecord, RunRecord
    from nbdurable._run import RunState


_PLAIN = frozenset({dict, list, tuple, str, int, float, bool, type(None), bytes})
_IN_FLIGHT = (StepStatus.RUNNING, StepStatus.RETRYING, StepStatus.SLEEPING, StepStatus.WAITING)


class CancelSignal(BaseException):
    """Private: stops a run between steps. A ``BaseException`` so user code cannot swallow it."""


class ExecutorGone(BaseException):
    """Private: the executor running step handlers is gone; the run stops INTERRUPTED.

    A ``BaseException`` so a body's ``except Exception`` cannot swallow it and carry on
    without an executor; the caller gets ``ExecutorLostError`` with the same message.
    """


class LeaseLost(BaseException):
    """Private: another process took this run over (this one stalled past its lease); stop here."""


def error_info(exc: BaseException) -> ErrorInfo:
    """An exception as data: its type name, message and traceback text."""
    return ErrorInfo(
        name=type(exc).__name__,
        message=str(exc),
        stack="".join(traceback.format_exception(type(exc), exc, exc.__traceback__)),
    )


def error_record(info: ErrorInfo) -> ErrorRecord:
    """An error as stored."""
    return _records.ErrorRecord(name=info.name, message=info.message, stack=info.stack)


def cancel_if_matching(state: RunState[Any], fn: Function[Any], event: Event, now: float) -> bool:
    """Cancel a run in flight if ``event`` matches one of its function's ``cancel`` options."""
    if not fn.cancel or state.finished.is_set():
        return False
    age = now - (state.created_at or now)
    for option in fn.cancel:
        if option.matches(state.event, event, age):
            state.request_stop(f"cancelled by event {event.name!r} ({event.id})", interrupt=False)
            return True
    return False


class Lifecycle:
    """The run record of one execution, from taking the lease to writing the end state."""

    def __init__(self, client: Client, fn: Function[Any], state: RunState[Any]) -> None:
        self.client = client
        self.fn = fn
        self.state = state
        self.store = client.store
        self.clock = client.clock
        self.serializer = fn.serializer or client.serializer
        self.prefix = _store.step_prefix(client.app_id, fn.id, state.id)
        self.lease = _lease.Lease(
            self.store, _store.run_key(client.app_id, fn.id, state.id), f"run {state.id!r} of {fn.id!r}"
        )
        self.fresh = False
        """Nothing was stored for the run: no step can replay."""
        self.legacy_keys = False
        """The run was stored before keys were escaped: it keeps its old keys."""
        self.in_flight_before: str | None = None
        """The step a dead owner was executing (it executes again, and says so)."""
        self.current: StepInfo | None = None
        """The step executing now (the heartbeat records it once it has run a while)."""
        self.record: RunRecord | None = None
        self.previous: RunRecord | None = None
        self.beat_marked: str | None = None
        self.last_beat = 0.0
        self.lock = threading.Lock()
        self.ended = False
        self.interrupted_step: str | None = None

    def begin(self) -> None:
        """Take the lease (or raise ``RunLockedError``) and mark the run RUNNING."""
        now = self.clock.now()
        state = self.state

        def build(cur: RunRecord | None, absent: bool) -> RunRecord:
            if cur is not None and cur.status.active and cur.owner is not None:
                self.in_flight_before = cur.current_step  # its owner is gone: the lease let us in
                state.note = "resumed after the previous execution was interrupted"
            elif cur is not None and cur.status is RunStatus.INTERRUPTED:
                self.in_flight_before = cur.current_step  # stopped (Ctrl-C, the stop button) mid-step
                state.note = "resumed after the previous execution was interrupted"
            self.fresh = absent
            self.previous = cur
            # Runs stored before keys were escaped keep their keys; others (and new ones) escape them.
            self.legacy_keys = (
                cur is not None and cur.keys == _records.KEYS_LEGACY and bool(self.store.keys(self.prefix))
            )
            if cur is not None and self.fn.idempotency is not None:
                ev = cur.event  # one idempotency key, one run: its body sees the event that created it
                state.event = Event(ev.name, ev.data, ev.id, ev.ts)
            base = cur or _records.RunRecord(
                app=self.client.app_id,
                function_id=self.fn.id,
                run_id=state.id,
                status=RunStatus.QUEUED,
                event=_records.EventRecord(**state.event.to_dict()),
                created_at=now,
                updated_at=now,
            )
            self.record = base.model_copy(
                update={
                    "status": RunStatus.RUNNING,
                    "updated_at": now,
                    "started_at": now,
                    "ended_at": None,
                    "executions": base.executions + 1,
                    "error": None,
                    "failed_step": None,
                    "current_step": None,
                    "current_since": None,
                    "serializer": self.serializer,
                    "keys": _records.KEYS_LEGACY if self.legacy_keys else _records.KEYS_ESCAPED,
                    "owner": self.lease.owner,
                    "heartbeat_at": now,
                }
            )
            return self.record

        if self.store.read_only:
            self._replay_only(build)
        else:
            self.lease.take(now, build)
        assert self.record is not None
        state.status = RunStatus.RUNNING
        state.created_at = self.record.created_at
        state.started_at = now
        state.ended_at = None
        state.executions = self.record.executions
        state.error = None
        state.failed_step = None
        state.steps = []
        self.last_beat = now
        if not self.store.read_only:
            _lease.heartbeat().add(self.beat)
        state.emit("run_started")
        self.cancel_from_store()

    def _replay_only(self, build: Callable[[RunRecord | None, bool], RunRecord]) -> None:
        """Begin without a lease on a store nothing may be written to: its stored steps replay, nothing is written.

        A run with nothing stored cannot even begin: ``StoreError`` says the store is read-only.
        """
        got = self.store.get_run(self.lease.key)
        if got is MISSING or got is CORRUPT:
            _lease.retire_owner(self.lease.owner)
            self.store.check_writable()
            return  # pragma: no cover - check_writable raised
        build(got[0], False)  # noqa: FBT003 - build(current, absent), as the lease calls it

    def cancel_from_store(self) -> None:
        """Apply ``cancel`` events sent while no process executed this run (it was interrupted).

        Events sent while it ran here cancelled it then; events sent by another process
        while it waited are seen by the wait's looks in the store.
        """
        prev = self.previous
        if not self.fn.cancel or prev is None or prev.status.finished:
            return
        for _, rec in _events.events_after(self.store, self.client.app_id, 0):
            if rec.received_at is not None and rec.received_at >= prev.updated_at:
                cancel_if_matching(self.state, self.fn, Event(rec.name, rec.data, rec.id, rec.ts), self.clock.now())

    def beat(self) -> None:
        """Refresh the lease; record the step in flight once it has run a while."""
        now = self.clock.now()
        cur = self.current
        period = _lease.Heartbeat.PERIOD
        marker = cur.key if cur is not None and cur.started_at is not None and now - cur.started_at >= period else None
        if marker == self.beat_marked and now - self.last_beat < _lease.Heartbeat.REFRESH:
            return
        status = self.state.status if self.state.status.active else RunStatus.RUNNING
        self._write(
            heartbeat_at=now,
            current_step=marker,
            current_since=cur.started_at if marker and cur else None,
            status=status,
        )
        self.beat_marked = marker

    def set_status(self, status: RunStatus) -> None:
        """Record that the run sleeps, waits or runs again (views and other processes read it)."""
        if self.state.status is status:
            return
        self.state.status = status
        self._write(status=status, heartbeat_at=self.clock.now())

    def _write(self, **changes: Any) -> None:
        now = self.clock.now()
        with self.lock:
            if self.ended or self.record is None:
                return
            self.record = self.record.model_copy(update={**changes, "updated_at": now})
            if not self.store.read_only:
                self.lease.write(self.record)
            self.last_beat = now

    def end(self, output: Any = NO_OUTPUT, exc: BaseException | None = None, *, from_step: str | None = None) -> Any:
        """Write the end state, release the lease, and return the output or raise.

        ``from_step`` names the step whose stored value the output is: it is then stored once,
        with the step, and the run record refers to it.
        """
        __tracebackhide__ = HIDE_FRAMES
        state = self.state
        status, raise_exc, error = self._outcome(exc)
        now = self.clock.now()
        payload, data, shown = b"", None, None
        if status is RunStatus.COMPLETED:
            shown = preview(output)
            if from_step is None and not self.store.read_only:
                payload, data = self._output_payload(output)
        assert self.record is not None
        replaced = self.record.output_data
        _lease.heartbeat().remove(self.beat)
        try:
            with self.lock:
                self.ended = True
                assert self.record is not None
                self.record = self.record.model_copy(
                    update={
                        "status": status,
                        "owner": None,
                        "heartbeat_at": now,
                        "updated_at": now,
                        "ended_at": now,
                        "steps": [s.key for s in state.steps],
                        # An interrupted run remembers its step in flight: it says so when it resumes.
                        "current_step": self.interrupted_step if status is RunStatus.INTERRUPTED else None,
                        "current_since": None,
                        "error": error_record(error) if error else None,
                        "failed_step": state.failed_step,
                        "output_preview": shown,
                        "has_output": bool(payload) or data is not None or from_step is not None,
                        "output_step": from_step if status is RunStatus.COMPLETED else None,
                        "output_data": data,
                    }
                )
                written = not self.store.read_only and self.lease.write(self.record, payload)
                if written and replaced is not None and replaced != data:
                    self.store.data.delete(replaced)
        finally:
            self.lease.release()
            state.status = status
            state.error = error
            state.ended_at = now
        state.emit("run_finished")
        if self.lease.lost:
            msg = (
                f"run {state.id!r} of {self.fn.id!r} was taken over by another process while this one was "
                "stalled past its lease; the other process finishes it. Fix: run it again to see its outcome."
            )
            raise RunLockedError(msg) from (None if isinstance(exc, LeaseLost) else exc)
        if raise_exc is not None:
            raise raise_exc
        return output

    def _output_payload(self, output: Any) -> tuple[bytes, DataRef | None]:
        """The run's output as a payload, or in a data file of the run; nothing if it cannot be stored."""
        data_codec = data_codec_for(output) if type(output) not in _PLAIN else None
        try:
            if data_codec is not None:
                folder = self.store.data.folder(self.client.app_id, self.fn.id, self.state.id)
                return b"", self.store.data.write(folder, data_codec, output)
            return codec_for(self.serializer, self.fn.output_type).dumps(output, "<run output>"), None
        except OutputUnserializableError:
            return b"", None

    def _outcome(self, exc: BaseException | None) -> tuple[RunStatus, BaseException | None, ErrorInfo | None]:
        """The end status an exception (or none) means, what to raise, and the error to store."""
        state = self.state
        if exc is None:
            return RunStatus.COMPLETED, None, None
        if isinstance(exc, CancelSignal):
            error = ErrorInfo("RunCancelledError", str(exc))
            return (
                RunStatus.CANCELLED,
                RunCancelledError(f"run {state.id!r} of {self.fn.id!r} was cancelled: {exc}"),
                error,
            )
        if not isinstance(exc, Exception):  # an interruption: resumable, nothing stored as a failure
            raised: BaseException = exc
            if isinstance(exc, ExecutorGone):
                raised = ExecutorLostError(str(exc))
                raised.__cause__ = exc.__cause__
            for step in state.steps:
                if step.status in _IN_FLIGHT:
                    step.status = StepStatus.INTERRUPTED
                    step.note = "interrupted; run again to resume"
                    self.interrupted_step = self.interrupted_step or step.key
            return RunStatus.INTERRUPTED, raised, None
        root: BaseException = exc.__cause__ if isinstance(exc, StepError) and exc.__cause__ is not None else exc
        step_id = exc.step_id if isinstance(exc, StepError) else None
        if isinstance(exc, OutputUnserializableError):
            step_id = state.failed_step
        where = f" at step {_keys.label(step_id)!r}" if step_id else ""
        error = error_info(root)
        failed = RunFailedError(
            f"run {state.id!r} of {self.fn.id!r} failed{where}: {error.name}: {error.message}",
            run_id=state.id,
            function_id=self.fn.id,
            step_id=step_id,
        )
        failed.__cause__ = root
        state.failed_step = step_id
        return RunStatus.FAILED, failed, error
