"""Executing a run: its start and end, step keys, memo lookup, and the one attempt loop.

``Execution`` is one pass of a run's body. It is the only writer of the run's
``RunState`` while it lasts, and it publishes every change to the run's listeners. The
special step kinds (sleep, wait_for_event, invoke, send_event) are planned in ``_kinds``
on top of it; the drivers that perform the plans are in ``_actions``.
"""

from __future__ import annotations

import contextvars
import threading
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from nbdurable import _keys, _records
from nbdurable._actions import IN_HANDLER, Call, Plan, Replayed, Runner, Sleep
from nbdurable._clock import Signal
from nbdurable._fingerprint import fingerprint, plain_args_fingerprint
from nbdurable._lifecycle import CancelSignal, LeaseLost, Lifecycle, error_info, error_record
from nbdurable._process import STATE
from nbdurable._serde import Codec, codec_for, return_annotation
from nbdurable._types import CORRUPT, HIDE_FRAMES, MISSING, UNREADABLE, ErrorInfo, StepInfo, StepStatus
from nbdurable._values import StepValues
from nbdurable.errors import (
    NestedStepError,
    NonRetriableError,
    OutputUnserializableError,
    RetryAfterError,
    StaleStepWarning,
    StepError,
)

if TYPE_CHECKING:
    from nbdurable._client import Client
    from nbdurable._function import Function
    from nbdurable._records import DataRef, StepRecord
    from nbdurable._run import RunState


class GroupMember:
    """One member of a parallel group, as seen by step keys.

    A member's first step is keyed by the enclosing scope (the run, or an outer member), and
    members take those first keys in the order they were given: a member waits for the one
    before it to key its first step (or to end) before keying its own, so keys follow from
    the program, never from timing. Every later step of the member is keyed under its first
    key (``first/id``), so concurrent members never race for numbers.
    """

    __slots__ = ("counts", "first", "keyed", "parent", "turn")

    def __init__(self, parent: GroupMember | None, turn: Signal | None) -> None:
        scope: GroupMember | None = parent
        while scope is not None and scope.first is None:
            scope = scope.parent  # an outer member with no key yet has no scope to lend
        self.parent: GroupMember | None = scope
        self.turn = turn
        """Set once the member before this one keyed its first step or ended (None: the first)."""
        self.keyed = Signal()
        self.first: str | None = None
        self.counts: dict[str, int] = {}


MMAP_FROM = 1 << 20
"""Data files from this size up are memory-mapped on replay (copy-on-write), when the client allows it."""
_ABSENT: Any = object()
_PLAIN = frozenset({dict, list, tuple, str, int, float, bool, type(None), bytes})

MEMBER: contextvars.ContextVar[GroupMember | None] = contextvars.ContextVar("nbdurable_member", default=None)
CURRENT_RUN: contextvars.ContextVar[RunState[Any] | None] = contextvars.ContextVar("nbdurable_run", default=None)
"""The run whose body executes in this context (a run cannot wait for itself)."""


class Pending:
    """A step that must execute: its handler, arguments, codec and fingerprint."""

    __slots__ = ("args", "codec", "fp", "handler", "info", "key", "local", "replaces")

    def __init__(
        self,
        key: str,
        handler: Callable[..., Any],
        args: tuple[Any, ...],
        codec: Codec,
        fp: str | None,
        info: StepInfo,
        *,
        local: bool = False,
    ) -> None:
        self.key = key
        self.handler = handler
        self.args = args
        self.codec = codec
        self.fp = fp
        self.info = info
        self.local = local
        self.replaces: DataRef | None = None
        """The data file of the record this step's output replaces (deleted once the new one is stored)."""


class Execution:
    """One pass of a run's body: step keys, memo lookup and the attempt loop, over its ``Lifecycle``.

    Args:
        client: the client whose store and options the run uses.
        fn: the durable function.
        state: the run's state, written by this execution while it lasts.
    """

    def __init__(self, client: Client, fn: Function[Any], state: RunState[Any]) -> None:
        self.client = client
        self.fn = fn
        self.state = state
        self.store = client.store
        self.clock = client.clock
        self.runner = Runner(client.clock, client.executor if fn.executor is None else fn.executor)
        self.life = Lifecycle(client, fn, state)
        self.prefix = self.life.prefix
        self.counts: dict[str, int] = {}
        self.key_lock = threading.Lock()
        self.max_attempts = fn.retries + 1
        self.serializer = self.life.serializer
        self.preloaded: dict[str, bytes | None] | None = None
        self.replaying = False
        """True until a step executes: ``ctx.logger`` stays silent meanwhile."""
        self.logged = state.observed
        """Whether the ``nbdurable`` logger hears step changes (checked once: steps are many)."""
        self.values = StepValues(
            self.store, fn.id, self.store.data.folder(client.app_id, fn.id, state.id), mmap=client.mmap
        )
        self.last_output: tuple[Any, str] | None = None
        """The latest step's value and key: a run returning it stores it once, with the step."""

    def begin(self) -> None:
        """Take the run (or raise ``RunLockedError``); replays start."""
        self.life.begin()
        self.replaying = not self.life.fresh

    @property
    def current(self) -> StepInfo | None:
        """The step executing now."""
        return self.life.current

    @current.setter
    def current(self, info: StepInfo | None) -> None:
        self.life.current = info

    # -- requests ----------------------------------------------------------------------------

    def new_signal(self) -> Signal:
        """A wake-up for one sleep or wait of this run, set by ``Run.cancel()``."""
        sig = Signal()
        self.state.signals.add(sig)
        if self.state.cancel_reason is not None or self.state.interrupt_reason is not None:
            sig.set()
        return sig

    def drop_signal(self, sig: Signal) -> None:
        """Forget a wake-up once its sleep or wait ended."""
        self.state.signals.discard(sig)

    def check_cancel(self) -> None:
        """Stop the run here if it was cancelled (or its caller went away: an interruption)."""
        if self.state.cancel_reason is not None:
            raise CancelSignal(self.state.cancel_reason)
        if self.state.interrupt_reason is not None:
            raise KeyboardInterrupt(self.state.interrupt_reason)

    # -- keys and memo -----------------------------------------------------------------------

    def turn(self) -> Signal | None:
        """What a parallel member must wait for before keying its first step (None: nothing)."""
        member = MEMBER.get()
        if member is None or member.first is not None or member.turn is None or member.turn.is_set():
            return None
        return member.turn

    def step_key(self, step_id: Any, tool: str) -> str:
        """Check the call may happen here and give the step its key (``id`` or ``id:n``)."""
        outer = IN_HANDLER.get()
        if outer is not None:
            msg = (
                f"step.{tool}({step_id!r}) was called inside the handler of step {_keys.label(outer)!r}. Steps cannot "
                "be nested. Fix: call it from the function body, or call the inner work as a plain function."
            )
            raise NestedStepError(msg)
        if self.life.ended:
            msg = (
                f"step.{tool}({step_id!r}) was called after run {self.state.id!r} ended. Fix: use ctx.step "
                "only inside the durable function while it runs."
            )
            raise NestedStepError(msg)
        self.check_cancel()
        if self.life.lease.lost:
            raise LeaseLost
        if type(step_id) is not str or step_id not in _keys.CHECKED:
            _keys.check_id(step_id, "step id", f"ctx.step.{tool}('fetch-users', ...)")
        member = MEMBER.get()
        if member is None:
            return self.numbered(None, step_id)
        if member.first is None:
            key = member.first = self.numbered(member.parent, step_id)
            member.keyed.set()
            return key
        return self.numbered(member, step_id)

    def numbered(self, scope: GroupMember | None, step_id: str) -> str:
        """``id`` for the first use in a scope, ``id:n`` for the n-th repeat (scoped under a member)."""
        counts = self.counts if scope is None else scope.counts
        with self.key_lock:
            n = counts.get(step_id, 0)
            counts[step_id] = n + 1
        if scope is None and n == 0 and not self.life.legacy_keys:  # the common case, on every step
            return _keys.ESCAPED.get(step_id) or _keys.escape(step_id)
        return _keys.step_key(None if scope is None else scope.first, step_id, n, legacy=self.life.legacy_keys)

    def lookup(self, key: str) -> tuple[StepRecord, bytes] | None:
        """The stored record of a step, or None (nothing stored, or unreadable)."""
        if self.life.fresh:
            return None
        if self.preloaded is None:
            self.preloaded = self.store.scan(self.prefix)
        full = self.prefix + key
        raw = self.preloaded.pop(full, _ABSENT)
        if raw is _ABSENT:
            return None
        got = self.store.decode_step(full, raw)
        return None if got is MISSING or got is CORRUPT else got

    def execute_from_here(self) -> None:
        """A step executes (replays are over): only where the store may be written, else ``StoreError``.

        A read-only store replays its runs; the first step that would execute stops the run
        here, before its handler is called, with the error saying why.
        """
        self.store.check_writable()
        self.replaying = False

    def add_step(self, info: StepInfo, kind: str) -> None:
        """Show a step in the run (and tell the listeners)."""
        self.state.steps.append(info)
        if self.state.listeners or self.logged:
            self.state.emit(kind, info)

    # -- step.run ------------------------------------------------------------------------------

    def plan_run(self, step_id: Any, handler: Any, args: tuple[Any, ...], output_type: Any) -> Replayed[Any] | Pending:
        """Replay ``step.run`` from the store, or plan its execution."""
        key = self.step_key(step_id, "run")
        if not callable(handler):
            msg = (
                f"step {step_id!r}: handler must be callable, got {type(handler).__name__} {handler!r:.60}. "
                f"Fix: pass the function itself, e.g. ctx.step.run({step_id!r}, fetch, arg) and not fetch(arg)."
            )
            raise TypeError(msg)
        codec, fp = self.handler_meta(handler, args, output_type)
        got = self.lookup(key)
        if got is not None and got[0].status == "COMPLETED":
            rec, payload = got
            stale = fp is not None and rec.fingerprint is not None and rec.fingerprint != fp
            if not (stale and self.fn.on_change == "rerun"):
                replayed = self.replay(key, step_id, rec, payload, codec, stale)
                if replayed is not None:
                    return replayed
        self.execute_from_here()
        info = StepInfo(key=key, step_id=step_id, max_attempts=self.max_attempts)
        if key == self.life.in_flight_before:
            info.note = "previous attempt never finished"
        pending = Pending(key, handler, args, codec, fp, info)
        pending.replaces = got[0].data if got is not None else None
        return pending

    def handler_meta(self, handler: Any, args: tuple[Any, ...], output_type: Any) -> tuple[Codec, str | None]:
        """The codec and fingerprint of a step call.

        Cached per code object: the codec, and the fingerprint of the code, to which plain
        arguments (numbers, strings...) are added by hashing their ``repr`` (what
        ``fingerprint`` would do, without looking the code up again).
        """
        code = getattr(handler, "__code__", None)
        cacheable = code is not None and output_type is None
        ignore = self.fn.on_change == "ignore"
        key: tuple[object, ...] = ()
        if cacheable:
            # Closures made by one factory share a code object, not their return annotation.
            key = (code, self.serializer, handler.__annotations__.get("return"))
            try:
                meta = STATE.handler_meta.data.get(key)
            except TypeError:  # an unhashable annotation object: not cached
                cacheable, meta = False, None
            if meta is not None:
                if ignore:
                    return meta[0], None
                fp = meta[1] if not args else plain_args_fingerprint(meta[1], args) or fingerprint(handler, args)
                return meta[0], fp
        codec = codec_for(self.serializer, return_annotation(handler) if output_type is None else output_type)
        if cacheable:
            STATE.handler_meta.put(key, (codec, fingerprint(handler, ())))
        return codec, None if ignore else fingerprint(handler, args)

    def replay(
        self, key: str, step_id: str, rec: StepRecord, payload: bytes, codec: Codec, stale: bool
    ) -> Replayed[Any] | None:
        """Rebuild a stored output; None when it cannot be read (the step then executes again)."""
        if rec.data is not None:
            value = self.values.read_data(key, rec.data)
        else:
            same = rec.serializer == codec.name and codec.name != "pickle"  # the usual case: no question to ask
            safe = codec if same else self.values.safe_codec(key, rec.serializer, codec)
            value = UNREADABLE if safe is None else self.values.stored_value(key, safe.loads, payload)
        if value is UNREADABLE:
            return None
        if stale:
            warnings.warn(
                f"step {_keys.label(key)!r} of {self.fn.id!r} replayed an output stored before its code or "
                f"arguments changed. Fix: {self.fn.id}.invalidate({self.state.id!r}, from_step={_keys.label(key)!r}) "
                "to run it again, or on_change='rerun' to do so automatically.",
                StaleStepWarning,
                stacklevel=4,
            )
        return self.replayed(key, step_id, rec, value, max_attempts=self.max_attempts, stale=stale)

    def replayed(
        self,
        key: str,
        step_id: str,
        rec: StepRecord,
        value: Any,
        event: str | None = None,
        *,
        has_output: bool = True,
        max_attempts: int = 1,
        stale: bool = False,
    ) -> Replayed[Any]:
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
        if has_output:
            self.last_output = (value, key)
        return Replayed(value)

    def attempts(self, p: Pending) -> Plan[Any]:
        """Execute a step: call its handler until it succeeds or its attempts run out."""
        __tracebackhide__ = HIDE_FRAMES
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
                self.state.emit("step_started", info)
            ok, value = yield Call(p.handler, p.args, p.key, local=p.local)
            if ok:
                return self.complete(p, value, started)
            failures += 1
            exc: Exception = value
            info.error = error_info(exc)
            info.errors.append(info.error)
            info.duration = self.clock.now() - started
            # A nested step is a mistake in the code: retrying cannot make it succeed.
            if isinstance(exc, (NonRetriableError, NestedStepError)) or failures >= self.max_attempts:
                self.fail(p, started)
                raise StepError(str(exc), type(exc).__name__, info.error.stack, p.key) from exc
            delay = exc.delay_seconds(self.clock.now()) if isinstance(exc, RetryAfterError) else None
            delay = self.client.backoff.delay(failures) if delay is None else delay
            info.status = StepStatus.RETRYING
            info.deadline = self.clock.now() + delay
            self.state.emit("step_retrying", info)
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
        data = None
        try:
            data = self.values.write_data(p.key, value, p.codec)
            if data is None:
                payload = p.codec.dumps(value, p.key)
                out = p.codec.loads(payload)
            else:
                payload, out = b"", value  # the codec is exact: the value is what a replay gives
        except OutputUnserializableError as exc:
            info.error = error_info(exc)
            self.state.failed_step = p.key
            self.fail(p, started)
            raise
        self.store.put_completed_step(
            self.prefix + p.key,
            kind=info.kind,
            attempts=info.attempts,
            started_at=started,
            ended_at=now,
            serializer="data" if data is not None else p.codec.name,
            fingerprint=p.fp,
            payload=payload,
            data=data,
        )
        if p.replaces is not None:
            self.store.data.delete(p.replaces)
        self.last_output = (out, p.key)
        self.current = None
        info.status = StepStatus.COMPLETED
        info.duration = now - started
        info.output = out
        info.has_output = True
        info.error = None
        if self.state.listeners or self.logged:
            self.state.emit("step_completed", info)
        return out

    def fail(self, p: Pending, started: float) -> None:
        """Record a step that failed for good in this execution."""
        info = p.info
        now = self.clock.now()
        info.status = StepStatus.FAILED
        info.duration = now - started
        self.current = None
        err = info.error or ErrorInfo("Error", "")
        rec = _records.StepRecord(
            status="FAILED",
            attempts=info.attempts,
            started_at=started,
            ended_at=now,
            duration=now - started,
            serializer=p.codec.name,
            fingerprint=p.fp,
            error=error_record(err),
            kind=info.kind,
        )
        self.store.put(self.prefix + p.key, rec)
        self.state.emit("step_failed", info)
