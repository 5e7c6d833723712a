"""``Client``: where functions are registered and runs are tracked; the default client."""

from __future__ import annotations

import hashlib
import os
import threading
import warnings
from collections.abc import Callable
from concurrent.futures import Executor
from typing import TYPE_CHECKING, Any, TypeVar, overload

from nbdurable import _keys, _lease, _records, _store
from nbdurable._clock import SYSTEM_CLOCK, Clock
from nbdurable._events import Cancel, Concurrency, Event, TriggerCron, TriggerEvent, as_events, resolve_waiters
from nbdurable._function import Function
from nbdurable._run import NO_OUTPUT, Run
from nbdurable._serde import NO_TYPE, PICKLE, check_serializer, codec_for
from nbdurable._store import CORRUPT, MISSING, Store
from nbdurable._types import Backoff, ErrorInfo, RunStatus, StepInfo, StepStatus

if TYPE_CHECKING:
    from nbdurable._cron import CronScheduler

T = TypeVar("T")
DEFAULT_STORE = ".nbdurable"
FAILED_EVENT = "inngest/function.failed"

_in_flight: dict[tuple[str, str, str, str], Run[Any]] = {}
"""Runs executing in this process, by (store path, app, function, run id)."""
_in_flight_lock = threading.Lock()
cron_owners: dict[tuple[str, str, str], Client] = {}
"""The client holding the latest definition of each function, by (store path, app, function id)."""

RunHook = Callable[[Run[Any]], None]
run_hooks: list[RunHook] = []
"""Called with each run a blocking ``run()`` is about to execute (the notebook view attaches here)."""


class Client:
    """Registers durable functions and owns their store. ``nbdurable.Inngest`` is this class.

    Args:
        app_id: namespaces every run in the store.
        store: the store directory (default ``$NBDURABLE_STORE`` or ``./.nbdurable``).
        serializer: ``"json"`` (strict, default) or ``"pickle"``.
        backoff: delays between attempts of failing steps.
        executor: a ``concurrent.futures.Executor`` to run sync step handlers on.
        clock: time source (tests pass a fake one).

    Example:
        >>> import tempfile
        >>> client = Client(app_id="notebook", store=tempfile.mkdtemp())
        >>> @client.create_function(fn_id="double")
        ... def double(ctx) -> int:
        ...     return ctx.step.run("double", lambda: ctx.event.data["x"] * 2)
        >>> double.run({"x": 21})
        42
    """

    def __init__(
        self,
        app_id: str = "notebook",
        *,
        store: str | os.PathLike[str] | None = None,
        serializer: str = "json",
        backoff: Backoff | None = None,
        executor: Executor | None = None,
        clock: Clock | None = None,
        **_inngest_options: Any,
    ) -> None:
        _keys.check_id(app_id, "app_id", "Client(app_id='notebook')")
        self.app_id = app_id
        self.store_path = os.fspath(store) if store is not None else os.environ.get("NBDURABLE_STORE", DEFAULT_STORE)
        self.serializer = check_serializer(serializer)
        self.backoff = backoff or Backoff()
        self.executor = executor
        self.clock = clock or SYSTEM_CLOCK
        self.functions: dict[str, Function[Any]] = {}
        self._store: Store | None = None
        self._runs: dict[tuple[str, str], Run[Any]] = {}
        self._lock = threading.Lock()
        self._cron: CronScheduler | None = None

    def __repr__(self) -> str:
        return f"<nbdurable.Client app_id={self.app_id!r} store={self.store_path!r}>"

    @property
    def store(self) -> Store:
        """The opened store (opened on first use)."""
        if self._store is None:
            self._store = Store.open(self.store_path)
        return self._store

    # -- functions ---------------------------------------------------------------------------

    def create_function(
        self,
        *,
        fn_id: str,
        trigger: TriggerEvent | TriggerCron | list[TriggerEvent | TriggerCron] | None = None,
        retries: int = 4,
        on_failure: Callable[[Any], Any] | None = None,
        idempotency: str | None = None,
        cancel: list[Cancel] | None = None,
        concurrency: list[Concurrency] | None = None,
        output_type: Any = None,
        serializer: str | None = None,
        on_change: str = "warn",
        name: str | None = None,
    ) -> Callable[[Callable[[Any], Any]], Function[Any]]:
        """Decorate a function taking ``ctx`` to make it durable.

        Args:
            fn_id: the function's id (stable across kernels: it keys the store).
            trigger: ``TriggerEvent`` / ``TriggerCron`` (or a list) that start runs.
            retries: retries per step (``retries + 1`` attempts each).
            on_failure: called with a context after a run fails.
            idempotency: CEL over ``event`` giving the run's identity.
            cancel: events that cancel a running run.
            concurrency: limits on concurrent runs.
            output_type: the type of the function's output, for storing it.
            serializer: ``"json"`` or ``"pickle"`` (default: the client's).
            on_change: ``"warn"``, ``"rerun"`` or ``"ignore"`` when a step's code changed.
            name: a display name.

        Example:
            >>> @client.create_function(fn_id="etl", retries=2)  # doctest: +SKIP
            ... async def etl(ctx: Context) -> None: ...
        """

        def decorate(handler: Callable[[Any], Any]) -> Function[Any]:
            fn: Function[Any] = Function(
                self,
                handler,
                fn_id=fn_id,
                trigger=trigger,
                retries=retries,
                on_failure=on_failure,
                idempotency=idempotency,
                cancel=cancel,
                concurrency=concurrency,
                output_type=output_type,
                serializer=serializer,
                on_change=on_change,
                name=name,
            )
            self.functions[fn_id] = fn
            with _in_flight_lock:
                # The latest definition owns the schedule: a client made again by a re-run cell
                # takes it over, and the old client's scheduler stops firing the old code.
                cron_owners[(os.path.abspath(self.store_path), self.app_id, fn_id)] = self
            if any(isinstance(t, TriggerCron) for t in fn.triggers):
                self.start_cron()
            return fn

        return decorate

    def owns_schedule(self, fn_id: str) -> bool:
        """Whether this client holds the latest definition of ``fn_id`` for its store and app."""
        with _in_flight_lock:
            return cron_owners.get((os.path.abspath(self.store_path), self.app_id, fn_id)) is self

    # -- runs in this process ----------------------------------------------------------------

    def _claim_run(self, fn: Function[Any], run_id: str, event: Event) -> tuple[Run[Any], bool]:
        """The Run for ``run_id``, and whether an execution of it is already in flight here."""
        # Process-wide, so a run in flight is found even from a client made again by a re-run cell.
        flight = (os.path.abspath(self.store_path), self.app_id, fn.id, run_id)
        with _in_flight_lock:
            live = _in_flight.get(flight)
            if live is not None and not live.done:
                return live, True
            run = self._runs.get((fn.id, run_id))
            if run is None:
                run = self._runs[(fn.id, run_id)] = Run(fn.id, run_id, event, app=self.app_id)
                run.client = self
            else:
                run.event = event
            # A new execution starts clean: a view built before it starts must not show the last one's end.
            run.status = RunStatus.QUEUED
            run.steps = []
            run.error = None
            run._cancel_reason = None
            run._interrupt_reason = None
            run._blocking = False
            run._begin()
            _in_flight[flight] = run
            run._flight = flight
            return run, False

    def _release_run(self, run: Run[Any], output: Any, exc: BaseException | None) -> None:
        run._finish(output, exc)
        with _in_flight_lock:
            if _in_flight.get(run._flight) is run:
                del _in_flight[run._flight]

    def _show(self, run: Run[Any]) -> None:
        hooks = tuple(run_hooks)
        if not hooks:  # no extension loaded: the default view (text outside a notebook)
            from nbdurable._text import show_run

            show_run(run)
        for hook in hooks:
            hook(run)

    def _after_failure(self, fn: Function[Any], run: Run[Any]) -> Run[Any] | None:
        """Start the function's ``on_failure`` handler (in the background) after ``run`` failed.

        Its context's ``event`` is ``inngest/function.failed`` with ``error``, ``event``,
        ``function_id`` and ``run_id`` in its data. One handler run per failed execution.
        """
        failure = fn.failure_function
        if failure is None:
            return None
        err = run.error or ErrorInfo("Error", "")
        data = {
            "error": {"name": err.name, "message": err.message, "stack": err.stack},
            "event": run.event.to_dict(),
            "function_id": fn.id,
            "run_id": run.id,
        }
        try:
            return failure.start(event=Event(FAILED_EVENT, data), run_id=f"{run.id}-failure-{run.executions}")
        except Exception as exc:  # noqa: BLE001 - a failing failure handler must not hide the run's error
            warnings.warn(f"nbdurable: on_failure of {fn.id!r} could not start: {exc!r}", RuntimeWarning, stacklevel=2)
            return None

    # -- events ------------------------------------------------------------------------------

    async def send(self, events: Event | list[Event]) -> list[str]:
        """Send events: store them, start the runs they trigger, resolve waits for them.

        Every function of this client whose ``TriggerEvent`` matches (``*`` wildcards,
        ``expression``) gets a background run (a fresh one per event unless its
        ``idempotency`` key names an existing run). ``wait_for_event`` steps waiting for a
        matching event (in this process, or polling the store in another) get it, if they
        began before it was sent. ``cancel`` options of running runs are applied.

        Args:
            events: an ``Event`` or a list of them.

        Returns:
            The events' ids, in order.

        Example:
            >>> await client.send(nbdurable.Event("app/approved", {"order": 7}))  # doctest: +SKIP
            ['5f0c...']
        """
        return self._send_now(events)

    def send_sync(self, events: Event | list[Event]) -> list[str]:
        """Send events from sync code; see :meth:`send`.

        Example:
            >>> client.send_sync([nbdurable.Event("app/approved", {"order": 7})])  # doctest: +SKIP
        """
        return self._send_now(events)

    def _send_now(self, events: Event | list[Event]) -> list[str]:
        items = as_events(events, "send")
        store = self.store
        ids = []
        for event in items:
            record = _records.EventRecord(**event.to_dict(), received_at=self.clock.now())
            seq = store.append_event(self.app_id, record)
            resolve_waiters(store.path, self.app_id, seq, event)
            self._cancel_matching(event)
            self._trigger(event)
            ids.append(event.id)
        return ids

    def _cancel_for(self, event: Event, fn: Function[Any], run: Run[Any]) -> bool:
        """Cancel ``run`` if ``event`` matches one of its function's ``cancel`` options."""
        if not fn.cancel or run.done:
            return False
        age = self.clock.now() - (run.created_at or self.clock.now())
        for option in fn.cancel:
            if option.matches(run.event, event, age):
                run.cancel(f"cancelled by event {event.name!r} ({event.id})")
                return True
        return False

    def _live_runs(self) -> list[Run[Any]]:
        """Runs of this store and app executing in this process, whichever client started them."""
        here = (os.path.abspath(self.store_path), self.app_id)
        with _in_flight_lock:
            return [run for key, run in _in_flight.items() if key[:2] == here and not run.done]

    def _refuse_if_live(self, fn_id: str, run_id: str, doing: str) -> None:
        with _in_flight_lock:
            run = _in_flight.get((os.path.abspath(self.store_path), self.app_id, fn_id, run_id))
        if run is not None and not run.done:
            msg = f"run {run_id!r} of {fn_id!r} is executing; wait for it (or cancel it) before {doing} it"
            raise RuntimeError(msg)

    def _cancel_matching(self, event: Event) -> None:
        for run in self._live_runs():
            owner = run.client or self
            fn = owner.functions.get(run.function_id)
            if fn is not None:
                owner._cancel_for(event, fn, run)

    def _trigger(self, event: Event) -> None:
        for fn in list(self.functions.values()):
            if not any(isinstance(t, TriggerEvent) and t.matches(event) for t in fn.triggers):
                continue
            if fn.idempotency is not None:
                try:
                    run_id = fn.run_id_for(event)
                except ValueError as exc:  # one function's bad key must not stop the others
                    warnings.warn(
                        f"nbdurable: {exc} Event {event.name!r} ({event.id}) started no run of it.", stacklevel=4
                    )
                    continue
                stored = self.store.get_run(_store.run_key(self.app_id, fn.id, run_id))
                if stored is not MISSING and stored is not CORRUPT:
                    continue  # one run per idempotency key: later events are ignored
            else:
                run_id = hashlib.sha256(f"{fn.id}\x00{event.id}".encode()).hexdigest()[:16]
            fn.start(event=event, run_id=run_id)

    # -- cron --------------------------------------------------------------------------------

    def start_cron(self) -> None:
        """Start the cron scheduler: ``TriggerCron`` functions run on schedule while it runs.

        It starts by itself when a cron function is created; schedules count from the
        time it starts. Each run's id is its scheduled time (``2026-01-02T03:04:00Z``).

        Example:
            >>> client.start_cron()  # doctest: +SKIP
        """
        from nbdurable._cron import CronScheduler

        with self._lock:
            if self._cron is None:
                self._cron = CronScheduler(self)
            cron = self._cron
        if cron.running:
            cron.refresh()
        else:
            cron.start()

    def stop_cron(self) -> None:
        """Stop the cron scheduler (runs already started continue).

        Example:
            >>> client.stop_cron()  # doctest: +SKIP
        """
        if self._cron is not None:
            self._cron.stop()

    # -- runs in the store -------------------------------------------------------------------

    def _load(self, rec: _records.RunRecord, *, with_steps: bool = True) -> Run[Any]:
        live = self._runs.get((rec.function_id, rec.run_id))
        if live is not None and not live.done:
            return live
        ev = rec.event
        run: Run[Any] = Run(rec.function_id, rec.run_id, Event(ev.name, ev.data, ev.id, ev.ts), app=self.app_id)
        run.client = self
        run.status = _lease.effective_status(rec, self.clock.now())
        run.created_at = rec.created_at
        run.started_at = rec.started_at
        run.ended_at = rec.ended_at
        run.executions = rec.executions
        run.failed_step = rec.failed_step
        if rec.error is not None:
            run.error = ErrorInfo(rec.error.name, rec.error.message, rec.error.stack)
        if run.status is RunStatus.INTERRUPTED and rec.current_step:
            run.note = f"step {rec.current_step!r} was in flight when its process stopped"
        if with_steps:
            run.steps = self._stored_steps(rec)
        return run

    def _step_order(self, rec: _records.RunRecord) -> list[tuple[str, _records.StepRecord]]:
        """A run's stored steps in execution order.

        First the latest execution's list, then any others (stored by an execution that never
        reached its end, e.g. a killed kernel) by start time.
        """
        prefix = _store.step_prefix(self.app_id, rec.function_id, rec.run_id)
        found: dict[str, _records.StepRecord] = {}
        for full in self.store.keys(prefix):
            got = self.store.get_step(full)
            if got is not MISSING and got is not CORRUPT:
                found[full[len(prefix) :]] = got[0]
        listed = [k for k in rec.steps if k in found]
        seen = set(listed)
        rest = sorted((k for k in found if k not in seen), key=lambda k: found[k].started_at)
        return [(k, found[k]) for k in listed + rest]

    def _stored_steps(self, rec: _records.RunRecord) -> list[StepInfo]:
        out = []
        for key, srec in self._step_order(rec):
            info = StepInfo(
                key=key,
                step_id=_keys.step_id_of(key),
                kind=srec.kind,
                status=StepStatus(srec.status),
                attempts=srec.attempts,
                started_at=srec.started_at,
                duration=srec.duration,
            )
            if srec.error is not None:
                info.error = ErrorInfo(srec.error.name, srec.error.message, srec.error.stack)
            if info.status in (StepStatus.SLEEPING, StepStatus.WAITING):
                info.deadline = srec.wake_at
            if srec.kind == "wait" and srec.meta is not None:
                info.event = srec.meta.get("event")
            out.append(info)
        if rec.current_step and rec.current_step not in {s.key for s in out}:
            out.append(
                StepInfo(key=rec.current_step, step_id=rec.current_step, note="in flight when its process stopped")
            )
        return out

    def runs(self, fn_id: str | None = None, status: RunStatus | str | None = None) -> list[Run[Any]]:
        """Runs in the store, newest first, optionally of one function and one status.

        Example:
            >>> client.runs(status="FAILED")  # doctest: +SKIP
        """
        want = RunStatus(status) if status is not None else None
        recs = sorted(self.store.runs(self.app_id, fn_id), key=lambda r: r.updated_at, reverse=True)
        out = [self._load(r, with_steps=False) for r in recs]
        return [r for r in out if want is None or r.status is want]

    def get_run(self, run_id: str) -> Run[Any] | None:
        """A run by id (any function), with its steps and output; ``None`` if the store has none."""
        for rec in self.store.runs(self.app_id):
            if rec.run_id == run_id:
                run = self._load(rec)
                if run.done and rec.status is RunStatus.COMPLETED and rec.has_output:
                    got = self.store.get_run(_store.run_key(self.app_id, rec.function_id, rec.run_id))
                    if got is not MISSING and got is not CORRUPT:
                        run._set_stored_output(self._stored_output(rec, got[1]))
                return run
        return None

    def _stored_output(self, rec: _records.RunRecord, payload: bytes) -> Any:
        """A completed run's stored output, rebuilt as its function (if defined here) would, or NO_OUTPUT.

        A pickled output is loaded only by a client or function that chose pickle, from a store
        this user created.
        """
        fn = self.functions.get(rec.function_id)
        serializer = (fn.serializer if fn is not None else None) or self.serializer
        if rec.serializer == "pickle" and (serializer != "pickle" or not self.store.trusted):
            if serializer == "pickle":
                self.store.warn_untrusted()
            return NO_OUTPUT
        output_type = fn.output_type if fn is not None and fn.output_type is not None else NO_TYPE
        codec = PICKLE if rec.serializer == "pickle" else codec_for("json", output_type)
        try:
            return codec.loads(payload)
        except Exception:  # noqa: BLE001 - an unreadable output is shown as absent, never a crash
            return NO_OUTPUT

    def _clear(self, fn_id: str | None, run_id: str | None) -> int:
        recs = [r for r in self.store.runs(self.app_id, fn_id) if run_id is None or r.run_id == run_id]
        for rec in recs:
            self._refuse_if_live(rec.function_id, rec.run_id, "clearing")
        for rec in recs:
            self.store.delete_prefix(_store.step_prefix(self.app_id, rec.function_id, rec.run_id))
            self.store.delete(_store.run_key(self.app_id, rec.function_id, rec.run_id))
            self._runs.pop((rec.function_id, rec.run_id), None)
        return len(recs)

    def _invalidate(self, fn_id: str, run_id: str, from_step: str | None) -> list[str]:
        self._refuse_if_live(fn_id, run_id, "invalidating")
        got = self.store.get_run(_store.run_key(self.app_id, fn_id, run_id))
        if got is MISSING or got is CORRUPT:
            msg = f"function {fn_id!r} has no stored run {run_id!r}. Fix: see {fn_id}.runs() for run ids."
            raise KeyError(msg)
        prefix = _store.step_prefix(self.app_id, fn_id, run_id)
        order = [key for key, _ in self._step_order(got[0])]
        if from_step is not None:
            if from_step not in order:  # a step as views show it (its label), else unknown
                from_step = next((k for k in order if _keys.label(k) == from_step), from_step)
            if from_step not in order:
                msg = f"run {run_id!r} of {fn_id!r} has no stored step {from_step!r}; stored steps: {order}"
                raise KeyError(msg)
            order = order[order.index(from_step) :]
        for key in order:
            self.store.delete(prefix + key)
        return order


_default_client: Client | None = None
_default_lock = threading.Lock()


def default_client() -> Client:
    """The client ``@nbdurable.function`` registers on (app ``notebook``, default store)."""
    global _default_client  # noqa: PLW0603 - one lazily built default, like logging's root logger
    with _default_lock:
        if _default_client is None:
            _default_client = Client("notebook")
        return _default_client


@overload
def function(handler: Callable[[Any], Any], /) -> Function[Any]: ...
@overload
def function(
    handler: None = None, /, *, fn_id: str | None = None, client: Client | None = None, **options: Any
) -> Callable[[Callable[[Any], Any]], Function[Any]]: ...


def function(
    handler: Callable[[Any], Any] | None = None,
    /,
    *,
    fn_id: str | None = None,
    client: Client | None = None,
    **options: Any,
) -> Function[Any] | Callable[[Callable[[Any], Any]], Function[Any]]:
    """Make a function durable on the default client; its id is its ``__name__``.

    Args:
        handler: the function (when used as ``@nbdurable.function`` without parentheses).
        fn_id: the id (default: the function's name).
        client: another client than the default one.
        **options: as for ``Client.create_function`` (``retries``, ``serializer``...).

    Example:
        >>> @function(retries=3)  # doctest: +SKIP
        ... def quick(ctx):
        ...     return ctx.step.run("one", lambda: 1)
    """

    def decorate(fn: Callable[[Any], Any]) -> Function[Any]:
        owner = client or default_client()
        return owner.create_function(fn_id=fn_id or fn.__name__, **options)(fn)

    return decorate(handler) if handler is not None else decorate
