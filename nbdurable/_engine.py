"""Executing a run: memo lookup, retries, leases, status transitions.

The engine is sans-IO: a step's attempts are a generator that yields actions (call the
handler, sleep, wait for a signal) and receives their outcomes. ``drive_sync`` and
``drive_async`` are the only places that call handlers, sleep or wait, so the sync and
async faces share every rule.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import datetime as _dt
import hashlib
import logging
import math
import threading
import traceback
import warnings
from collections.abc import Callable, Generator
from typing import TYPE_CHECKING, Any

from nbdurable import _keys, _lease, _store
from nbdurable._clock import Signal
from nbdurable._events import Event, Waiter, add_waiter, remove_waiter
from nbdurable._fingerprint import fingerprint
from nbdurable._records import KEYS_ESCAPED, KEYS_LEGACY, ErrorRecord, EventRecord, RunRecord, StepRecord
from nbdurable._run import NO_OUTPUT, Run
from nbdurable._serde import JSON, NO_TYPE, PICKLE, Codec, codec_for, json_default_preview, return_annotation
from nbdurable._store import CORRUPT, MISSING
from nbdurable._types import ErrorInfo, RunStatus, StepInfo, StepStatus
from nbdurable.errors import (
    NestedStepError,
    NonRetriableError,
    OutputUnserializableError,
    RetryAfterError,
    RunCancelledError,
    RunFailedError,
    RunLockedError,
    StaleStepWarning,
    StepError,
)

if TYPE_CHECKING:
    from nbdurable._client import Client
    from nbdurable._clock import Clock
    from nbdurable._function import Function

_IN_HANDLER: contextvars.ContextVar[str | None] = contextvars.ContextVar("nbdurable_in_handler", default=None)


class GroupMember:
    """One member of a parallel group, as seen by step keys.

    A member's first step is keyed by the enclosing scope (the run, or an outer member),
    and members take that first key in order (``keyed`` lets the next one start). Every
    later step of the member is keyed under its first key (``first/id``, ``first/id:n``),
    so concurrent members never race for numbers and replay maps each value to its member.
    """

    __slots__ = ("counts", "first", "keyed", "parent")

    def __init__(self, parent: GroupMember | None, keyed: Callable[[], None]) -> None:
        scope: GroupMember | None = parent
        while scope is not None and scope.first is None:
            scope = scope.parent  # an outer member with no key yet has no scope to lend
        self.parent: GroupMember | None = scope
        self.keyed = keyed
        self.first: str | None = None
        self.counts: dict[str, int] = {}


MEMBER: contextvars.ContextVar[GroupMember | None] = contextvars.ContextVar("nbdurable_member", default=None)
log = logging.getLogger("nbdurable")
_META: dict[tuple[object, str, object], tuple[Codec, str]] = {}


class CancelSignal(BaseException):
    """Private: stops a run between steps. A ``BaseException`` so user code cannot swallow it."""


class LeaseLost(BaseException):
    """Private: another process took this run over (this one stalled past its lease); stop here."""


INTERRUPTS = (KeyboardInterrupt, SystemExit, asyncio.CancelledError, GeneratorExit)
STORE_POLL = 1.0
"""Seconds between looks in the store, while waiting, for events sent by other processes."""


# --- actions the step generators yield --------------------------------------------------


class Call:
    """Call ``fn(*args)`` as the handler of step ``key``; reply ``(True, value)`` or ``(False, exc)``.

    ``local`` calls run in the driver's own thread or loop, never on the client's executor
    (the engine's own work, such as sending events).
    """

    __slots__ = ("args", "fn", "key", "local")

    def __init__(self, fn: Callable[..., Any], args: tuple[Any, ...], key: str, local: bool = False) -> None:
        self.fn = fn
        self.args = args
        self.key = key
        self.local = local


class Sleep:
    """Sleep ``seconds`` (a fake clock skips it), less if ``wake`` is set; reply ``None``."""

    __slots__ = ("seconds", "wake")

    def __init__(self, seconds: float, wake: Signal | None = None) -> None:
        self.seconds = seconds
        self.wake = wake


class Wait:
    """Wait until ``signal`` is set or ``seconds`` pass (None: no limit); reply whether it was set.

    Unlike ``Sleep``, a fake clock does not skip it: its time must be moved on.
    """

    __slots__ = ("seconds", "signal")

    def __init__(self, signal: Signal, seconds: float | None) -> None:
        self.signal = signal
        self.seconds = seconds


def _in_context(executor: Any, fn: Callable[..., Any], args: tuple[Any, ...]) -> tuple[Any, ...]:
    """What to submit so a handler on a thread pool still sees this step's context (nesting checks)."""
    if isinstance(executor, concurrent.futures.ThreadPoolExecutor):
        return (contextvars.copy_context().run, fn, *args)
    return (fn, *args)


UNREADABLE: Any = type("Unreadable", (), {"__repr__": lambda _: "UNREADABLE"})()
"""A stored output that cannot be rebuilt."""


def _load_event(payload: bytes) -> Event | None:
    data = JSON.loads(payload) if payload else None
    return Event(**data) if data is not None else None


class Replayed:
    """A step whose stored value is returned without running anything."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value


class Pending:
    """A step that must execute."""

    __slots__ = ("args", "codec", "fp", "handler", "info", "key")

    def __init__(
        self, key: str, handler: Callable[..., Any], args: tuple[Any, ...], codec: Codec, fp: str | None, info: StepInfo
    ) -> None:
        self.key = key
        self.handler = handler
        self.args = args
        self.codec = codec
        self.fp = fp
        self.info = info


Action = Call | Sleep | Wait
StepGen = Generator[Action, Any, Any]


def _error_info(exc: BaseException) -> ErrorInfo:
    return ErrorInfo(
        name=type(exc).__name__,
        message=str(exc),
        stack="".join(traceback.format_exception(type(exc), exc, exc.__traceback__)),
    )


def _error_record(info: ErrorInfo) -> ErrorRecord:
    return ErrorRecord(name=info.name, message=info.message, stack=info.stack)


# --- drivers --------------------------------------------------------------------------------


def _loop_here() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def wait_sync(clock: Clock, signal: Signal, seconds: float | None) -> bool:
    """Block until ``signal`` is set or ``seconds`` pass, keeping this thread's event loop turning."""
    if _loop_here() is not None:
        from nbdurable._function import run_blocking

        return run_blocking(clock.await_signal(signal, seconds))
    return clock.wait(signal, seconds)


def drive_sync(ex: Execution, gen: StepGen) -> Any:
    """Run a step generator in this thread: call handlers, sleep and wait with the injected clock.

    When this thread runs an event loop (a sync function executed in a Jupyter cell), sleeps
    and waits keep that loop turning, so background runs on it (e.g. an invoked async
    child) make progress.
    """
    reply: Any = None
    try:
        while True:
            action = gen.send(reply)
            if isinstance(action, Call):
                token = _IN_HANDLER.set(action.key)
                try:
                    value = action.fn(*action.args) if action.local else ex.call_sync(action.fn, action.args)
                    reply = (True, value)
                except Exception as exc:  # noqa: BLE001 - handed to the engine as data
                    reply = (False, exc)
                finally:
                    _IN_HANDLER.reset(token)
            elif isinstance(action, Wait):
                reply = wait_sync(ex.clock, action.signal, action.seconds)
            else:
                if _loop_here() is not None:
                    from nbdurable._function import run_blocking

                    run_blocking(ex.clock.asleep(action.seconds, action.wake))
                else:
                    ex.clock.sleep(action.seconds, action.wake)
                reply = None
    except StopIteration as stop:
        return stop.value


async def drive_async(ex: Execution, gen: StepGen) -> Any:
    """Run a step generator as a task: await async handlers, sleep and wait without blocking the loop."""
    reply: Any = None
    try:
        while True:
            action = gen.send(reply)
            if isinstance(action, Call):
                token = _IN_HANDLER.set(action.key)
                try:
                    value = action.fn(*action.args) if action.local else await ex.call_async(action.fn, action.args)
                    if action.local and asyncio.iscoroutine(value):
                        value = await value
                    reply = (True, value)
                except Exception as exc:  # noqa: BLE001 - handed to the engine as data
                    reply = (False, exc)
                finally:
                    _IN_HANDLER.reset(token)
            elif isinstance(action, Wait):
                reply = await ex.clock.await_signal(action.signal, action.seconds)
            else:
                await ex.clock.asleep(action.seconds, action.wake)
                reply = None
    except StopIteration as stop:
        return stop.value


# --- heartbeat --------------------------------------------------------------------------


class _Heartbeat:
    """One daemon thread for the process: refreshes leases and records the step in flight.

    A step's in-flight marker is written only once it has run for ``PERIOD`` seconds, so
    trivial steps cost no extra write, and a kernel killed during a long step leaves a
    record saying which step never finished.
    """

    PERIOD = 0.25
    REFRESH = 5.0

    def __init__(self) -> None:
        self._active: set[Execution] = set()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    def add(self, ex: Execution) -> None:
        with self._lock:
            self._active.add(ex)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._loop, name="nbdurable-heartbeat", daemon=True)
                self._thread.start()

    def remove(self, ex: Execution) -> None:
        with self._lock:
            self._active.discard(ex)

    def _loop(self) -> None:
        while True:
            self._wake.wait(self.PERIOD)
            with self._lock:
                active = list(self._active)
            for ex in active:
                try:
                    ex.beat()
                except Exception:
                    log.debug("heartbeat failed", exc_info=True)


HEARTBEAT = _Heartbeat()


# --- one execution ----------------------------------------------------------------------


class Execution:
    """One pass of a run's body: from taking the lease to writing the end state."""

    def __init__(self, client: Client, fn: Function[Any], run: Run[Any]) -> None:
        self.client = client
        self.fn = fn
        self.run = run
        self.store = client.store
        self.clock: Clock = client.clock
        self.key = _store.run_key(client.app_id, fn.id, run.id)
        self.prefix = _store.step_prefix(client.app_id, fn.id, run.id)
        self.counts: dict[str, int] = {}
        self.key_lock = threading.Lock()
        self.max_attempts = fn.retries + 1
        self.serializer = fn.serializer or client.serializer
        self.on_change = fn.on_change
        self.backoff = client.backoff
        self.fresh = False
        self.preloaded: dict[str, bytes | None] | None = None
        self.replaying = False
        self.in_flight_before: str | None = None
        self.record: RunRecord | None = None
        self.previous: RunRecord | None = None
        self.current: StepInfo | None = None
        self.beat_marked: str | None = None
        self.last_beat = 0.0
        self.lock = threading.Lock()
        self.ended = False
        self.lease_lost = False
        self.owner = _lease.new_owner()
        self.legacy_keys = False

    # -- lease -------------------------------------------------------------------------------

    def begin(self) -> None:
        """Take the lease (or raise ``RunLockedError``) and mark the run RUNNING."""
        now = self.clock.now()
        run = self.run
        event = run.event

        def change(got: Any) -> tuple[RunRecord, bytes]:
            cur: RunRecord | None = got[0] if got is not MISSING and got is not CORRUPT else None
            if cur is not None and cur.status.active and cur.owner is not None:
                if _lease.owner_alive(cur.owner, cur.heartbeat_at, now):
                    msg = (
                        f"run {run.id!r} of {self.fn.id!r} is being executed by another process "
                        f"(host {cur.owner.host}, pid {cur.owner.pid}). Fix: wait for it to finish and "
                        "run again (completed steps will replay), or stop that process."
                    )
                    raise RunLockedError(msg)
                self.in_flight_before = cur.current_step
                run.note = "resumed after the previous execution was interrupted"
            self.fresh = got is MISSING
            self.previous = cur
            # Runs stored before keys were escaped keep their keys; others (and new ones) escape them.
            self.legacy_keys = cur is not None and cur.keys == KEYS_LEGACY and bool(self.store.keys(self.prefix))
            if cur is not None and self.fn.idempotency is not None:
                # One idempotency key, one run: its body sees the event that created it.
                ev = cur.event
                run.event = Event(ev.name, ev.data, ev.id, ev.ts)
            base = cur or RunRecord(
                app=self.client.app_id,
                function_id=self.fn.id,
                run_id=run.id,
                status=RunStatus.QUEUED,
                event=EventRecord(**event.to_dict()),
                created_at=now,
                updated_at=now,
            )
            rec = base.model_copy(
                update={
                    "status": RunStatus.RUNNING,
                    "owner": self.owner,
                    "heartbeat_at": now,
                    "updated_at": now,
                    "started_at": now,
                    "ended_at": None,
                    "executions": base.executions + 1,
                    "error": None,
                    "failed_step": None,
                    "current_step": None,
                    "current_since": None,
                    "serializer": self.serializer,
                    "keys": KEYS_LEGACY if self.legacy_keys else KEYS_ESCAPED,
                }
            )
            self.record = rec
            return rec, b""

        self.store.update_run(self.key, change)
        assert self.record is not None
        self.replaying = not self.fresh
        run.status = RunStatus.RUNNING
        run.created_at = self.record.created_at
        run.started_at = now
        run.ended_at = None
        run.executions = self.record.executions
        run.error = None
        run.failed_step = None
        run.steps = []
        self.last_beat = now
        HEARTBEAT.add(self)
        run.emit("run_started")
        self.cancel_from_store()

    def cancel_from_store(self) -> None:
        """Apply ``cancel`` events sent while no process executed this run (it was interrupted).

        Events sent while it ran here cancelled it then; events sent by another process
        while it waited are seen by the wait's looks in the store.
        """
        prev = self.previous
        if not self.fn.cancel or prev is None or prev.status.finished:
            return
        for _, rec in self.store.events_after(self.client.app_id, 0):
            if rec.received_at is not None and rec.received_at >= prev.updated_at:
                self.client._cancel_for(Event(rec.name, rec.data, rec.id, rec.ts), self.fn, self.run)

    def beat(self) -> None:
        """Refresh the lease; record the step in flight once it has run a while."""
        now = self.clock.now()
        cur = self.current
        marker = (
            cur.key
            if cur is not None and cur.started_at is not None and now - cur.started_at >= HEARTBEAT.PERIOD
            else None
        )
        if marker == self.beat_marked and now - self.last_beat < HEARTBEAT.REFRESH:
            return
        with self.lock:
            if self.ended or self.record is None:
                return
            self.record = self.record.model_copy(
                update={
                    "heartbeat_at": now,
                    "updated_at": now,
                    "current_step": marker,
                    "current_since": cur.started_at if marker and cur else None,
                    "status": self.run.status if self.run.status.active else RunStatus.RUNNING,
                }
            )
            self.write_own(self.record)
            self.beat_marked = marker
            self.last_beat = now

    def write_own(self, record: RunRecord, payload: bytes = b"") -> None:
        """Write the run record only while this execution still owns the run.

        A process that stalled past its lease (another host's view) may find the run taken
        over: then nothing is written, and the run stops before its next step.
        """

        def change(got: Any) -> tuple[RunRecord, bytes] | None:
            cur = got[0] if got is not MISSING and got is not CORRUPT else None
            if cur is not None and (cur.owner is None or cur.owner.token != self.owner.token):
                self.lease_lost = True
                return None
            return record, payload

        self.store.update_run(self.key, change)

    def end(self, output: Any = NO_OUTPUT, exc: BaseException | None = None) -> Any:
        """Write the end state, release the lease, and return the output or raise."""
        run = self.run
        raise_exc: BaseException | None = None
        error: ErrorInfo | None = None
        if exc is None:
            status = RunStatus.COMPLETED
        elif isinstance(exc, CancelSignal):
            status = RunStatus.CANCELLED
            raise_exc = RunCancelledError(f"run {run.id!r} of {self.fn.id!r} was cancelled: {exc}")
            error = ErrorInfo("RunCancelledError", str(exc))
        elif isinstance(exc, Exception):
            status = RunStatus.FAILED
            root: BaseException = exc
            if isinstance(exc, StepError) and exc.__cause__ is not None:
                root = exc.__cause__
            step_id = exc.step_id if isinstance(exc, StepError) else None
            if isinstance(exc, OutputUnserializableError):
                step_id = run.failed_step
            where = f" at step {step_id!r}" if step_id else ""
            error = _error_info(root)
            raise_exc = RunFailedError(
                f"run {run.id!r} of {self.fn.id!r} failed{where}: {error.name}: {error.message}",
                run_id=run.id,
                function_id=self.fn.id,
                step_id=step_id,
            )
            raise_exc.__cause__ = root
            run.failed_step = step_id
        else:
            status = RunStatus.INTERRUPTED
            raise_exc = exc
            for step in run.steps:
                if step.status in (StepStatus.RUNNING, StepStatus.RETRYING, StepStatus.SLEEPING, StepStatus.WAITING):
                    step.note = "interrupted; run again to resume"
        now = self.clock.now()
        payload = b""
        preview = None
        if status is RunStatus.COMPLETED:
            preview = json_default_preview(output)
            try:
                payload = codec_for(self.serializer, self.fn.output_type).dumps(output, "<run output>")
            except OutputUnserializableError:
                payload = b""
        HEARTBEAT.remove(self)
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
                        "steps": [s.key for s in run.steps],
                        "current_step": None,
                        "current_since": None,
                        "error": _error_record(error) if error else None,
                        "failed_step": run.failed_step,
                        "output_preview": preview,
                        "has_output": bool(payload),
                    }
                )
                self.write_own(self.record, payload)
        finally:
            _lease.retire_owner(self.owner)
            run.status = status
            run.error = error
            run.ended_at = now
        run.emit("run_finished")
        if self.lease_lost:
            msg = (
                f"run {run.id!r} of {self.fn.id!r} was taken over by another process while this one was "
                "stalled past its lease; the other process finishes it. Fix: run it again to see its outcome."
            )
            raise RunLockedError(msg) from (None if isinstance(exc, LeaseLost) else exc)
        if raise_exc is not None:
            raise raise_exc
        return output

    # -- handlers ----------------------------------------------------------------------------

    def call_sync(self, fn: Callable[..., Any], args: tuple[Any, ...]) -> Any:
        executor = self.client.executor
        if executor is not None and not asyncio.iscoroutinefunction(fn):
            return executor.submit(*_in_context(executor, fn, args)).result()
        value = fn(*args)
        if asyncio.iscoroutine(value) or isinstance(value, asyncio.Future):
            from nbdurable._function import run_blocking

            value = run_blocking(value)
        return value

    async def call_async(self, fn: Callable[..., Any], args: tuple[Any, ...]) -> Any:
        executor = self.client.executor
        if executor is not None and not asyncio.iscoroutinefunction(fn):
            return await asyncio.wrap_future(executor.submit(*_in_context(executor, fn, args)))
        value = fn(*args)
        if asyncio.iscoroutine(value) or isinstance(value, asyncio.Future):
            value = await value
        return value

    # -- steps -------------------------------------------------------------------------------

    def step_key(self, step_id: Any, tool: str) -> str:
        """Check the call may happen here and give the step its key (``id`` or ``id:n``)."""
        outer = _IN_HANDLER.get()
        if outer is not None:
            msg = (
                f"step.{tool}({step_id!r}) was called inside the handler of step {outer!r}. Steps cannot "
                "be nested. Fix: call it from the function body, or call the inner work as a plain function."
            )
            raise NestedStepError(msg)
        if self.ended:
            msg = (
                f"step.{tool}({step_id!r}) was called after run {self.run.id!r} ended. Fix: use ctx.step "
                "only inside the durable function while it runs."
            )
            raise NestedStepError(msg)
        self.check_cancel()
        if self.lease_lost:
            raise LeaseLost
        _keys.check_id(step_id, "step id", f"ctx.step.{tool}('fetch-users', ...)")
        member = MEMBER.get()
        if member is None:
            return self.numbered(None, step_id)
        if member.first is None:
            key = member.first = self.numbered(member.parent, step_id)
            member.keyed()
            return key
        return self.numbered(member, step_id)

    def numbered(self, scope: GroupMember | None, step_id: str) -> str:
        """``id`` for the first use in a scope, ``id:n`` for the n-th repeat (scoped under a member)."""
        counts = self.counts if scope is None else scope.counts
        with self.key_lock:
            n = counts.get(step_id, 0)
            counts[step_id] = n + 1
        return _keys.step_key(None if scope is None else scope.first, step_id, n, legacy=self.legacy_keys)

    def lookup(self, key: str) -> tuple[StepRecord, bytes] | None:
        """The stored record of a step, or None (nothing stored, or unreadable)."""
        if self.fresh:
            return None
        if self.preloaded is None:
            self.preloaded = self.store.scan(self.prefix)
        full = self.prefix + key
        raw = self.preloaded.pop(full, MISSING)
        if raw is MISSING:
            return None
        got = self.store.decode_step(full, raw)
        if got is MISSING or got is CORRUPT:
            return None
        return got

    def add_step(self, info: StepInfo, kind: str) -> None:
        self.run.steps.append(info)
        if self.run._listeners:
            self.run.emit(kind, info)

    def plan_run(self, step_id: Any, handler: Any, args: tuple[Any, ...], output_type: Any) -> Replayed | Pending:
        """Replay ``step.run`` from the store, or plan its execution."""
        key = self.step_key(step_id, "run")
        if not callable(handler):
            msg = (
                f"step {key!r}: handler must be callable, got {type(handler).__name__} {handler!r:.60}. "
                f"Fix: pass the function itself, e.g. ctx.step.run({step_id!r}, fetch, arg) and not fetch(arg)."
            )
            raise TypeError(msg)
        codec, fp = self.handler_meta(handler, args, output_type)
        got = self.lookup(key)
        if got is not None:
            rec, payload = got
            if rec.status == "COMPLETED":
                stale = fp is not None and rec.fingerprint is not None and rec.fingerprint != fp
                if not (stale and self.on_change == "rerun"):
                    replayed = self.replay(key, step_id, rec, payload, codec, stale)
                    if replayed is not None:
                        return replayed
        self.replaying = False
        info = StepInfo(key=key, step_id=step_id, max_attempts=self.max_attempts)
        if key == self.in_flight_before:
            info.note = "previous attempt never finished"
        return Pending(key, handler, args, codec, fp, info)

    def handler_meta(self, handler: Any, args: tuple[Any, ...], output_type: Any) -> tuple[Codec, str | None]:
        """The codec and fingerprint of a step call; cached per code object for plain calls."""
        code = getattr(handler, "__code__", None)
        cacheable = code is not None and not args and output_type is None
        key: tuple[object, str, object] = (code, self.serializer, None)
        if cacheable:
            # Closures made by one factory share a code object, not their return annotation.
            key = (code, self.serializer, handler.__annotations__.get("return"))
            try:
                meta = _META.get(key)
            except TypeError:  # an unhashable annotation object: not cached
                cacheable, meta = False, None
            if meta is not None:
                return meta[0], None if self.on_change == "ignore" else meta[1]
        out_type = return_annotation(handler) if output_type is None else output_type
        codec = codec_for(self.serializer, out_type)
        fp = fingerprint(handler, args)
        if cacheable:
            _META[key] = (codec, fp)
        return codec, None if self.on_change == "ignore" else fp

    def stored_value(self, key: str, load: Callable[[bytes], Any], payload: bytes) -> Any:
        """A stored output rebuilt by ``load``, or ``UNREADABLE`` (with a warning) so the step executes again."""
        try:
            return load(payload)
        except Exception as exc:  # noqa: BLE001 - an unreadable output is re-executed, never a crash
            warnings.warn(
                f"nbdurable: the stored output of step {key!r} cannot be rebuilt ({type(exc).__name__}: "
                f"{exc}); the step executes again.",
                RuntimeWarning,
                stacklevel=5,
            )
            return UNREADABLE

    def safe_codec(self, key: str, stored: str, codec: Codec) -> Codec | None:
        """The codec to rebuild a stored output with, or None when it must not be loaded.

        A pickle is loaded only where the reader chose pickle, and only from a store this user
        created (``_trust``): a store folder someone handed over never runs code here.
        """
        if stored == "pickle":
            if codec.name != "pickle":
                warnings.warn(
                    f"nbdurable: step {key!r} of {self.fn.id!r} is stored as a pickle, but {self.fn.id!r} uses the "
                    "json serializer, and pickles are loaded only where serializer='pickle' was chosen; the step "
                    "executes again.",
                    RuntimeWarning,
                    stacklevel=5,
                )
                return None
            if not self.store.trusted:
                self.store.warn_untrusted()
                return None
            return PICKLE
        if stored != codec.name:
            return JSON
        return codec

    def replay(
        self, key: str, step_id: str, rec: StepRecord, payload: bytes, codec: Codec, stale: bool
    ) -> Replayed | None:
        """Rebuild a stored output; None when it cannot be read (the step then executes again)."""
        safe = self.safe_codec(key, rec.serializer, codec)
        if safe is None:
            return None
        value = self.stored_value(key, safe.loads, payload)
        if value is UNREADABLE:
            return None
        if stale:
            warnings.warn(
                f"step {key!r} of {self.fn.id!r} replayed an output stored before its code or arguments "
                f"changed. Fix: {self.fn.id}.invalidate({self.run.id!r}, from_step={key!r}) to run it again, "
                "or on_change='rerun' to do so automatically.",
                StaleStepWarning,
                stacklevel=4,
            )
        return self._replayed(key, step_id, rec, value, max_attempts=self.max_attempts, stale=stale)

    def attempts(self, p: Pending) -> StepGen:
        """Execute a step: call its handler until it succeeds or its attempts run out."""
        info = p.info
        self.add_step(info, "step_started")
        failures = 0
        while True:
            info.attempts += 1
            info.status = StepStatus.RUNNING
            info.deadline = None
            started = info.started_at = self.clock.now()
            self.current = info
            if info.attempts > 1:
                self.run.emit("step_started", info)
            ok, value = yield Call(p.handler, p.args, p.key)
            if ok:
                return self.complete(p, value, started)
            failures += 1
            exc: Exception = value
            info.error = _error_info(exc)
            info.duration = self.clock.now() - started
            # A nested step is a mistake in the code: retrying cannot make it succeed.
            if isinstance(exc, (NonRetriableError, NestedStepError)) or failures >= self.max_attempts:
                self.fail(p, started)
                raise StepError(exc.__str__(), type(exc).__name__, info.error.stack, p.key) from exc
            if isinstance(exc, RetryAfterError):
                delay = exc.delay_seconds(self.clock.now())
            else:
                delay = self.backoff.delay(failures)
            info.status = StepStatus.RETRYING
            info.deadline = self.clock.now() + delay
            self.run.emit("step_retrying", info)
            wake = self.new_signal()
            try:
                yield Sleep(delay, wake)
            finally:
                self.drop_signal(wake)
            self.check_cancel()  # a cancel (or interrupt) ends the delay: no attempt is made after it

    def complete(self, p: Pending, value: Any, started: float) -> Any:
        """Store a step's output (on disk before this returns) and give back the stored value."""
        info = p.info
        now = self.clock.now()
        try:
            payload = p.codec.dumps(value, p.key)
        except OutputUnserializableError as exc:
            info.error = _error_info(exc)
            self.run.failed_step = p.key
            self.fail(p, started)
            raise
        out = p.codec.loads(payload)
        self.store.put_completed_step(
            self.prefix + p.key,
            kind=info.kind,
            attempts=info.attempts,
            started_at=started,
            ended_at=now,
            serializer=p.codec.name,
            fingerprint=p.fp,
            payload=payload,
        )
        self.current = None
        info.status = StepStatus.COMPLETED
        info.duration = now - started
        info.output = out
        info.has_output = True
        info.error = None
        if self.run._listeners:
            self.run.emit("step_completed", info)
        return out

    def fail(self, p: Pending, started: float) -> None:
        """Record a step that failed for good in this execution."""
        info = p.info
        now = self.clock.now()
        info.status = StepStatus.FAILED
        info.duration = now - started
        self.current = None
        err = info.error or ErrorInfo("Error", "")
        rec = StepRecord(
            status="FAILED",
            attempts=info.attempts,
            started_at=started,
            ended_at=now,
            duration=now - started,
            serializer=p.codec.name,
            fingerprint=p.fp,
            error=_error_record(err),
            kind=info.kind,
        )
        self.store.put(self.prefix + p.key, rec)
        self.run.emit("step_failed", info)

    # -- sleeps, waits, invokes, sends ---------------------------------------------------------

    def new_signal(self) -> Signal:
        """A wake-up for one sleep or wait of this run, set by ``Run.cancel()``."""
        sig = Signal()
        self.run._signals.add(sig)
        if self.run._cancel_reason is not None or self.run._interrupt_reason is not None:
            sig.set()
        return sig

    def drop_signal(self, sig: Signal) -> None:
        """Forget a wake-up once its sleep or wait ended."""
        self.run._signals.discard(sig)

    def check_cancel(self) -> None:
        """Stop the run here if it was cancelled (or its caller went away: an interruption)."""
        reason = self.run._cancel_reason
        if reason is not None:
            raise CancelSignal(reason)
        if self.run._interrupt_reason is not None:
            raise KeyboardInterrupt(self.run._interrupt_reason)

    def set_status(self, status: RunStatus) -> None:
        """Record that the run sleeps, waits or runs again (views and other processes read it)."""
        if self.run.status is status:
            return
        self.run.status = status
        now = self.clock.now()
        with self.lock:
            if self.ended or self.record is None:
                return
            self.record = self.record.model_copy(update={"status": status, "heartbeat_at": now, "updated_at": now})
            self.write_own(self.record)
            self.last_beat = now

    def _replayed(
        self,
        key: str,
        step_id: str,
        rec: StepRecord,
        value: Any,
        event: str | None = None,
        has_output: bool = True,
        *,
        max_attempts: int = 1,
        stale: bool = False,
    ) -> Replayed:
        """Show a stored step as replayed and hand back its value."""
        info = StepInfo(
            key=key,
            step_id=step_id,
            kind=rec.kind,
            status=StepStatus.REPLAYED,
            attempts=rec.attempts,
            max_attempts=max_attempts,
            started_at=rec.started_at,
            duration=rec.duration,
            output=value,
            has_output=has_output,
            event=event,
            stale=stale,
        )
        self.add_step(info, "step_replayed")
        return Replayed(value)

    def _finish_special(
        self,
        info: StepInfo,
        payload: bytes,
        value: Any,
        meta: dict[str, Any] | None = None,
        *,
        has_output: bool = True,
        serializer: str = "json",
    ) -> None:
        """Store a sleep, wait or invoke as completed (on disk before the step returns)."""
        now = self.clock.now()
        started = info.started_at if info.started_at is not None else now
        rec = StepRecord(
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
        self.store.put(self.prefix + info.key, rec, payload)
        if self.current is info:
            self.current = None
        info.status = StepStatus.COMPLETED
        info.attempts = 1
        info.duration = now - started
        info.output = value
        info.has_output = has_output
        info.deadline = None
        self.run.emit("step_completed", info)

    def plan_sleep(self, step_id: Any, wake_at: Callable[[float], float], tool: str) -> Replayed | StepGen:
        """Replay a finished sleep, or plan one: its wake time is stored at first execution."""
        key = self.step_key(step_id, tool)
        got = self.lookup(key)
        if got is not None and got[0].status == "COMPLETED":
            return self._replayed(key, step_id, got[0], None, has_output=False)
        self.replaying = False
        if got is not None and got[0].status == "SLEEPING" and got[0].wake_at is not None:
            started, until = got[0].started_at, got[0].wake_at
        else:
            started = self.clock.now()
            until = wake_at(started)
            rec = StepRecord(status="SLEEPING", kind="sleep", started_at=started, wake_at=until)
            self.store.put(self.prefix + key, rec)
        return self._sleep(key, step_id, started, until)

    def _pause(
        self,
        key: str,
        step_id: str,
        kind: str,
        status: StepStatus,
        started: float,
        deadline: float,
        event: str | None = None,
    ) -> tuple[StepInfo, Signal]:
        """Show a sleeping or waiting step (with its deadline) and give it a wake-up for cancels."""
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
        self.add_step(info, f"step_{status.value.lower()}")
        self.current = info
        return info, self.new_signal()

    def _sleep(self, key: str, step_id: str, started: float, until: float) -> StepGen:
        info, wake = self._pause(key, step_id, "sleep", StepStatus.SLEEPING, started, until)
        try:
            self.set_status(RunStatus.SLEEPING)
            while (left := until - self.clock.now()) > 0:
                self.check_cancel()
                yield Sleep(left, wake)
            self.check_cancel()
        finally:
            self.drop_signal(wake)
        self.set_status(RunStatus.RUNNING)
        self._finish_special(info, b"null", None, has_output=False)

    def plan_wait(self, step_id: Any, event: Any, if_exp: Any, timeout: float) -> Replayed | StepGen:
        """Replay a finished ``wait_for_event`` (its event or None), or plan the wait."""
        key = self.step_key(step_id, "wait_for_event")
        got = self.lookup(key)
        if got is not None and got[0].status == "COMPLETED":
            value = self.stored_value(key, _load_event, got[1])
            if value is not UNREADABLE:
                return self._replayed(key, step_id, got[0], value, event)
            got = None
        self.replaying = False
        meta = got[0].meta if got is not None and got[0].status == "WAITING" else None
        if got is not None and meta is not None and got[0].wake_at is not None:
            started, deadline, after = got[0].started_at, got[0].wake_at, int(meta.get("after", 0))
        else:
            started = self.clock.now()
            deadline = started + timeout
            after = self.store.last_seq()
            meta = {"event": event, "if_exp": if_exp, "after": after}
            rec = StepRecord(status="WAITING", kind="wait", started_at=started, wake_at=deadline, meta=meta)
            self.store.put(self.prefix + key, rec)
        return self._wait(key, step_id, event, if_exp, started, deadline, after)

    def _wait(
        self, key: str, step_id: str, name: str, if_exp: str | None, started: float, deadline: float, after: int
    ) -> StepGen:
        info, wake = self._pause(key, step_id, "wait", StepStatus.WAITING, started, deadline, name)
        waiter = Waiter(name, if_exp, self.run.event.to_dict(), after, wake)
        app = self.client.app_id
        add_waiter(self.store.path, app, waiter)
        found: Event | None = None
        try:
            self.set_status(RunStatus.WAITING)
            last = after
            while True:
                # The store first: events sent while no process waited (kernel down) or by
                # another process; then the ones sent in this process.
                for seq, rec in self.store.events_after(app, last):
                    last = seq
                    candidate = Event(rec.name, rec.data, rec.id, rec.ts)
                    if rec.received_at is not None and rec.received_at > deadline:
                        continue
                    if found is None and waiter.matches(candidate):
                        found = candidate
                    self.client._cancel_for(candidate, self.fn, self.run)
                if found is None:
                    found = waiter.event
                self.check_cancel()
                left = deadline - self.clock.now()
                if found is not None or left <= 0:
                    break
                yield Wait(wake, min(left, STORE_POLL))
        finally:
            remove_waiter(self.store.path, app, waiter)
            self.drop_signal(wake)
        self.set_status(RunStatus.RUNNING)
        payload = JSON.dumps(found.to_dict() if found is not None else None, key)
        self._finish_special(info, payload, found, {"event": name, "if_exp": if_exp, "after": after})
        return found

    def plan_invoke(self, step_id: Any, function: Function[Any], data: dict[str, Any], timeout: float | None) -> Any:
        """Replay a finished ``invoke`` (the child's output), or plan starting the child run."""
        key = self.step_key(step_id, "invoke")
        codec = codec_for(self.serializer, function.output_type if function.output_type is not None else NO_TYPE)
        got = self.lookup(key)
        if got is not None and got[0].status == "COMPLETED":
            safe = self.safe_codec(key, got[0].serializer, codec)
            value = UNREADABLE if safe is None else self.stored_value(key, safe.loads, got[1])
            if value is not UNREADABLE:
                return self._replayed(key, step_id, got[0], value)
        self.replaying = False
        basis = f"{self.fn.id}\x00{self.run.id}\x00{key}"
        child_id = hashlib.sha256(basis.encode()).hexdigest()[:16]
        return self._invoke(key, step_id, function, data, timeout, child_id, codec)

    def _invoke(
        self,
        key: str,
        step_id: str,
        function: Function[Any],
        data: dict[str, Any],
        timeout: float | None,
        child_id: str,
        codec: Codec,
    ) -> StepGen:
        started = self.clock.now()
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
        self.add_step(info, "step_started")
        self.current = info
        child = function.start(event=Event("inngest/function.invoked", data), run_id=child_id)
        wake = self.new_signal()
        child._add_done_callback(wake.set)
        try:
            while not child.done:
                self.check_cancel()
                left = None if deadline is None else deadline - self.clock.now()
                if left is not None and left <= 0:
                    break
                yield Wait(wake, left)
            self.check_cancel()
        finally:
            self.drop_signal(wake)
        pending = Pending(key, function.handler, (), codec, None, info)
        if not child.done:
            exc: Exception = TimeoutError(
                f"invoked function {function.id!r} (run {child_id!r}) did not finish within {timeout} s"
            )
        else:
            try:
                value = child._result()
            except Exception as err:  # noqa: BLE001 - the child's failure becomes this step's
                exc = err
            else:
                meta = {"function_id": function.id, "run_id": child_id}
                payload = codec.dumps(value, key)
                out = codec.loads(payload)
                info.deadline = None
                self._finish_special(info, payload, out, meta, serializer=codec.name)
                return out
        info.error = _error_info(exc)
        info.deadline = None
        self.fail(pending, started)
        raise StepError(str(exc), type(exc).__name__, info.error.stack, key) from exc

    def plan_send(self, step_id: Any, events: list[Event]) -> Replayed | StepGen:
        """Replay a ``send_event`` (the stored ids: nothing is sent again), or plan sending."""
        key = self.step_key(step_id, "send_event")
        got = self.lookup(key)
        if got is not None and got[0].status == "COMPLETED":
            ids = self.stored_value(key, JSON.loads, got[1])
            if ids is not UNREADABLE:  # else the events are sent again: at-least-once, never lost
                return self._replayed(key, step_id, got[0], ids)
        self.replaying = False
        info = StepInfo(key=key, step_id=step_id, kind="send", max_attempts=self.max_attempts)
        pending = Pending(key, self.client._send_now, (events,), JSON, None, info)
        return self._send(pending)

    def _send(self, p: Pending) -> StepGen:
        info = p.info
        self.add_step(info, "step_started")
        failures = 0
        while True:
            info.attempts += 1
            started = info.started_at = self.clock.now()
            ok, value = yield Call(p.handler, p.args, p.key, local=True)
            if ok:
                return self.complete(p, value, started)
            failures += 1
            info.error = _error_info(value)
            if failures >= self.max_attempts:
                self.fail(p, started)
                raise StepError(str(value), type(value).__name__, info.error.stack, p.key) from value
            wake = self.new_signal()
            try:
                yield Sleep(self.backoff.delay(failures), wake)
            finally:
                self.drop_signal(wake)
            self.check_cancel()


def duration_seconds(value: Any, what: str) -> float:
    """Milliseconds (int) or a ``timedelta`` as seconds; a clear error naming ``what`` otherwise."""
    if isinstance(value, _dt.timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        seconds = value / 1000.0
    else:
        msg = (
            f"{what} must be milliseconds (int) or a datetime.timedelta, got {type(value).__name__} {value!r:.60}. "
            "Fix: e.g. 60_000 or datetime.timedelta(minutes=1)."
        )
        raise TypeError(msg)
    if seconds < 0:
        msg = f"{what} must not be negative, got {value!r}"
        raise ValueError(msg)
    return seconds


def timestamp_of(value: Any, what: str) -> float:
    """A ``datetime`` as epoch seconds (naive means local time, as ``datetime.timestamp``)."""
    if not isinstance(value, _dt.datetime):
        msg = (
            f"{what} must be a datetime.datetime, got {type(value).__name__} {value!r:.60}. "
            "Fix: e.g. datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(hours=1)."
        )
        raise TypeError(msg)
    return value.timestamp()
