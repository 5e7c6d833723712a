"""``Client``: where functions are registered, events sent, and runs found; the default client."""

from __future__ import annotations

import datetime
import difflib
import hashlib
import os
import threading
import warnings
from collections.abc import Callable
from concurrent.futures import Executor
from typing import TYPE_CHECKING, Any, TypeVar, overload

from nbdurable import _events, _history, _keys, _records, _store
from nbdurable._clock import SYSTEM_CLOCK, Clock
from nbdurable._events import Cancel, Concurrency, Event, TriggerCron, TriggerEvent, as_events, resolve_waiters
from nbdurable._function import Function
from nbdurable._lifecycle import cancel_if_matching
from nbdurable._process import STATE, FlightKey, Where
from nbdurable._run import Run, RunState
from nbdurable._serde import check_serializer
from nbdurable._store import Store
from nbdurable._types import CORRUPT, MISSING, Backoff, RunStatus

if TYPE_CHECKING:
    from nbdurable._cron import CronScheduler

T = TypeVar("T")
DEFAULT_STORE = ".nbdurable"
INNGEST_OPTIONS = frozenset(
    {
        "api_base_url",
        "app_version",
        "env",
        "event_api_base_url",
        "event_key",
        "is_production",
        "logger",
        "middleware",
        "request_timeout",
        "signing_key",
    }
)
"""Options of ``inngest.Inngest`` accepted, and ignored, so Inngest code runs unchanged (nothing is served)."""
_OPTIONS = ("app_id", "store", "serializer", "backoff", "executor", "mmap", "clock")


class Client:
    """Registers durable functions and owns their store. ``nbdurable.Inngest`` is this class.

    Args:
        app_id: namespaces every run in the store.
        store: the store directory (default ``$NBDURABLE_STORE`` or ``./.nbdurable``).
        serializer: ``"json"`` (strict, default) or ``"pickle"``.
        backoff: delays between attempts of failing steps.
        executor: a ``concurrent.futures.Executor`` to run step handlers on (threads, processes,
            or a Dask cluster's ``distributed.Client(cluster).get_executor()``); the kernel
            still stores every output. None: handlers run in the calling thread or loop.
        mmap: memory-map stored arrays and Arrow tables of 1 MB and more when they replay
            (copy-on-write: the array is writable, the stored file never changes). ``False``
            reads them into memory instead.
        clock: time source (tests pass a fake one).
        **inngest_options: options of ``inngest.Inngest`` that have no meaning here
            (``signing_key``, ``is_production``...): accepted and ignored. Any other keyword
            is a ``TypeError`` naming the closest valid option.

    Example:
        >>> import tempfile
        >>> client = Client(app_id="notebook", store=tempfile.mkdtemp())
        >>> @client.create_function(fn_id="double")
        ... def double(ctx) -> int:
        ...     return ctx.step.run("double", lambda: ctx.event.data["x"] * 2)
        >>> double.run({"x": 21})
        42
        >>> Client(app_id="a", stroe="x")
        Traceback (most recent call last):
        TypeError: Client() got an unexpected keyword argument 'stroe'. Fix: did you mean store=?
    """

    def __init__(
        self,
        app_id: str = "notebook",
        *,
        store: str | os.PathLike[str] | None = None,
        serializer: str = "json",
        backoff: Backoff | None = None,
        executor: Executor | None = None,
        mmap: bool = True,
        clock: Clock | None = None,
        **inngest_options: Any,
    ) -> None:
        unknown = sorted(set(inngest_options) - INNGEST_OPTIONS)
        if unknown:
            close = difflib.get_close_matches(unknown[0], [*_OPTIONS, *INNGEST_OPTIONS], n=1)
            hint = f"did you mean {close[0]}=?" if close else f"the options are {', '.join(_OPTIONS)}"
            msg = f"Client() got an unexpected keyword argument {unknown[0]!r}. Fix: {hint}"
            raise TypeError(msg)
        _keys.check_id(app_id, "app_id", "Client(app_id='notebook')")
        self.app_id = app_id
        self.store_path = os.fspath(store) if store is not None else os.environ.get("NBDURABLE_STORE", DEFAULT_STORE)
        self.where: Where = (os.path.abspath(self.store_path), app_id)
        """The store and app this client's runs live in: ``(absolute store path, app id)``."""
        self.serializer = check_serializer(serializer)
        self.backoff = backoff or Backoff()
        self.executor = executor
        self.mmap = mmap
        self.clock = clock or SYSTEM_CLOCK
        self.functions: dict[str, Function[Any]] = {}
        self._store: Store | None = None
        self._states: dict[tuple[str, str], RunState[Any]] = {}
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
        executor: Executor | None = None,
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
            executor: a ``concurrent.futures.Executor`` to run this function's step handlers on
                (default: the client's ``executor``); a Dask cluster's is
                ``distributed.Client(cluster).get_executor()``.

        Example:
            >>> @client.create_function(fn_id="etl", retries=2)
            ... async def etl(ctx: nbdurable.Context) -> int:
            ...     return await ctx.step.run("load", lambda: 7)
            >>> etl.run()
            7
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
                executor=executor,
            )
            self.functions[fn_id] = fn
            with STATE.lock:
                # The latest definition owns the schedule: a client made again by a re-run cell
                # takes it over, and the old client's scheduler stops firing the old code.
                STATE.cron_owners[self.schedule_key(fn_id)] = self
            if any(isinstance(t, TriggerCron) for t in fn.triggers):
                self.start_cron()
            return fn

        return decorate

    def owns_schedule(self, fn_id: str) -> bool:
        """Whether this client holds the latest definition of ``fn_id`` for its store and app."""
        with STATE.lock:
            return STATE.cron_owners.get(self.schedule_key(fn_id)) is self

    def schedule_key(self, fn_id: str) -> tuple[str, str, str]:
        """Who owns a function's schedule is kept per ``(store, app, function id)``."""
        return (self.where[0], self.where[1], fn_id)

    def run_state(self, fn_id: str, run_id: str, event: Event, flight: FlightKey) -> RunState[Any]:
        """The state this client keeps of a run (one per run, so handles stay the same object)."""
        with self._lock:
            state = self._states.get((fn_id, run_id))
            if state is None:
                state = self._states[(fn_id, run_id)] = RunState(self, fn_id, run_id, event, flight)
            return state

    def forget_run(self, fn_id: str, run_id: str) -> None:
        """Drop the state kept of a run (it was cleared from the store)."""
        with self._lock:
            self._states.pop((fn_id, run_id), None)

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
        """
        return self.send_sync(events)

    def send_sync(self, events: Event | list[Event]) -> list[str]:
        """Send events from sync code; see :meth:`send`.

        Example:
            >>> @client.create_function(fn_id="greet", trigger=nbdurable.TriggerEvent(event="app/hello"))
            ... def greet(ctx: nbdurable.ContextSync) -> str:
            ...     return ctx.step.run("say", lambda: "hi " + ctx.event.data["name"])
            >>> ids = client.send_sync(nbdurable.Event("app/hello", {"name": "ada"}))
            >>> _ = wait_until(lambda: [r.status.value for r in greet.runs()] == ["COMPLETED"])
            >>> greet.runs()[0].wait()
            'hi ada'
        """
        items = as_events(events, "send")
        store = self.store
        ids = []
        for event in items:
            record = _records.EventRecord(**event.to_dict(), received_at=self.clock.now())
            seq = _events.append_event(store, self.app_id, record)
            resolve_waiters(self.where, seq, event)
            self._cancel_matching(event)
            self.trigger(event)
            ids.append(event.id)
        return ids

    def _cancel_matching(self, event: Event) -> None:
        """Apply ``event`` to the cancel options of every run of this store and app in flight here."""
        with STATE.lock:
            live = [s for key, s in STATE.in_flight.items() if key[:2] == self.where and not s.finished.is_set()]
        for state in live:
            owner = state.client or self
            fn = owner.functions.get(state.function_id)
            if fn is not None:
                cancel_if_matching(state, fn, event, self.clock.now())

    def trigger(self, event: Event) -> None:
        """Start a background run of every function of this client that ``event`` triggers."""
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
        """Stop the cron scheduler (runs already started continue)."""
        if self._cron is not None:
            self._cron.stop()

    # -- runs in the store -------------------------------------------------------------------

    def runs(
        self, fn_id: str | None = None, status: RunStatus | str | None = None, *, limit: int | None = None
    ) -> list[Run[Any]]:
        """Runs in the store, newest first (by last update), optionally of one function and one status.

        Read through the store's run index: the time taken follows the number of runs
        returned, not the number stored. Each run's ``steps`` and ``output`` are read from the
        store when first asked for.

        Args:
            fn_id: only this function's runs.
            status: only runs in this status (as shown: a run whose process died is INTERRUPTED).
            limit: at most this many runs (the newest).

        Example:
            >>> @client.create_function(fn_id="listed")
            ... def listed(ctx: nbdurable.ContextSync) -> int:
            ...     return ctx.step.run("a", lambda: 1)
            >>> _ = listed.run()
            >>> [(r.function_id, r.status.value, len(r.steps)) for r in client.runs("listed", limit=10)]
            [('listed', 'COMPLETED', 1)]
        """
        return _history.runs(self, fn_id, status, limit)

    def get_run(self, run_id: str) -> Run[Any] | None:
        """A run by id (any function), with its steps and output; ``None`` if the store has none."""
        return _history.get_run(self, run_id)

    def clear(self, fn_id: str | None = None, *, older_than: int | datetime.timedelta | None = None) -> int:
        """Delete runs of this app with their steps and data files, to reclaim disk space.

        Runs executing anywhere (here, or in another process holding them) are never touched.

        Args:
            fn_id: only this function's runs (every function's when omitted: then give ``older_than``).
            older_than: only runs last updated longer ago than this (a ``timedelta``, or ms).

        Returns:
            How many runs were deleted.

        Example:
            >>> @client.create_function(fn_id="old")
            ... def old(ctx: nbdurable.ContextSync) -> int:
            ...     return ctx.step.run("a", lambda: 1)
            >>> _ = old.run()
            >>> client.clear(older_than=datetime.timedelta(days=7))  # nothing that old
            0
            >>> client.clear("old")
            1
        """
        if fn_id is None and older_than is None:
            msg = "Client.clear() needs fn_id or older_than. Fix: e.g. client.clear(older_than=timedelta(days=7))"
            raise ValueError(msg)
        return _history.clear(self, fn_id, older_than=older_than)


def default_client() -> Client:
    """The client ``@nbdurable.function`` registers on (app ``notebook``, default store)."""
    with STATE.lock:
        if STATE.default_client is None:
            STATE.default_client = Client("notebook")
        return STATE.default_client


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
        >>> @nbdurable.function(retries=3, client=client)
        ... def quick(ctx: nbdurable.ContextSync) -> int:
        ...     return ctx.step.run("one", lambda: 1)
        >>> quick.id, quick.run()
        ('quick', 1)
    """

    def decorate(fn: Callable[[Any], Any]) -> Function[Any]:
        owner = client or default_client()
        return owner.create_function(fn_id=fn_id or fn.__name__, **options)(fn)

    return decorate(handler) if handler is not None else decorate
