"""``Function``: a durable function, its options and run ids; ``run`` / ``run_async`` / ``start``."""

from __future__ import annotations

import functools
import hashlib
import inspect
from collections.abc import Callable
from concurrent.futures import Executor
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from nbdurable import _execute, _history, _keys
from nbdurable._events import Cancel, Concurrency, Event, TriggerCron, TriggerEvent, canonical_json
from nbdurable._run import Run
from nbdurable._serde import check_serializer
from nbdurable._types import RunStatus
from nbdurable.errors import RunFailedError

if TYPE_CHECKING:
    from nbdurable._client import Client

T = TypeVar("T")
ON_CHANGE = ("warn", "rerun", "ignore")


class Function(Generic[T]):
    """A durable function: every ``ctx.step.run`` inside it is stored, retried and replayed.

    Create one with ``client.create_function(...)`` or ``@nbdurable.function``.

    Example:
        >>> @client.create_function(fn_id="hello")
        ... def hello(ctx: nbdurable.ContextSync) -> str:
        ...     return ctx.step.run("greet", lambda: f"hi {ctx.event.data['name']}")
        >>> hello.run({"name": "ada"})
        'hi ada'
    """

    is_durable_function = True
    """Marks durable functions (``step.invoke`` checks it without importing this module)."""

    def __init__(
        self,
        client: Client,
        handler: Callable[[Any], Any],
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
    ) -> None:
        _keys.check_id(fn_id, "fn_id", "create_function(fn_id='etl')")
        if not callable(handler):
            msg = f"function {fn_id!r}: the decorated object must be callable, got {handler!r:.60}"
            raise TypeError(msg)
        if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
            msg = f"function {fn_id!r}: retries must be an int >= 0, got {retries!r}"
            raise ValueError(msg)
        if on_change not in ON_CHANGE:
            msg = f"function {fn_id!r}: on_change must be one of {ON_CHANGE}, got {on_change!r}"
            raise ValueError(msg)
        if serializer is not None:
            check_serializer(serializer)
        if idempotency is not None:
            from nbdurable._cel import compile_cel

            try:
                compile_cel(idempotency)
            except ValueError as exc:
                msg = f"function {fn_id!r} idempotency: {exc}"
                raise ValueError(msg) from None
        _check_list(fn_id, "trigger", trigger, (TriggerEvent, TriggerCron), "nbdurable.TriggerEvent('app/x')")
        _check_list(fn_id, "cancel", cancel, (Cancel,), "[nbdurable.Cancel(event='app/stop')]")
        _check_list(fn_id, "concurrency", concurrency, (Concurrency,), "[nbdurable.Concurrency(limit=2)]")
        if executor is not None and not isinstance(executor, Executor):
            msg = (
                f"function {fn_id!r}: executor must be a concurrent.futures.Executor, got "
                f"{type(executor).__name__} {executor!r:.60}. Fix: e.g. executor=ThreadPoolExecutor(4), or "
                "executor=dask_client.get_executor() for a Dask cluster"
            )
            raise TypeError(msg)
        if on_failure is not None and not callable(on_failure):
            msg = f"function {fn_id!r}: on_failure must be a function taking ctx, got {on_failure!r:.60}"
            raise TypeError(msg)
        self.client = client
        self.handler = handler
        self.id = fn_id
        self.name = name or fn_id
        triggers = trigger if isinstance(trigger, list) else [trigger] if trigger is not None else []
        self.triggers: list[TriggerEvent | TriggerCron] = triggers
        self.retries = retries
        self.on_failure = on_failure
        self.idempotency = idempotency
        self.cancel = list(cancel or [])
        self.concurrency = list(concurrency or [])
        self.output_type = output_type
        self.serializer = serializer
        self.on_change = on_change
        self.executor = executor
        """Where this function's step handlers run (None: the client's ``executor``, or in process)."""
        self.is_async = inspect.iscoroutinefunction(handler)
        self.failure_function: Function[Any] | None = None
        """The durable function running ``on_failure`` (id ``"{fn_id}-failure"``)."""
        if on_failure is not None:
            self.failure_function = Function(
                client, on_failure, fn_id=f"{fn_id}-failure", retries=retries, executor=executor
            )
        functools.update_wrapper(self, handler)  # type: ignore[arg-type]  # typeshed: only for functions

    def __repr__(self) -> str:
        return f"<nbdurable.Function {self.id!r}>"

    # -- identity ----------------------------------------------------------------------------

    def event_for(self, data: dict[str, Any] | None, event: Event | None) -> Event:
        """The triggering event of a call: ``event``, or one named after the trigger carrying ``data``."""
        if event is not None:
            if data is not None:
                msg = f"function {self.id!r}: pass either data or event, not both"
                raise ValueError(msg)
            if not isinstance(event, Event):
                msg = f"function {self.id!r}: event must be an nbdurable.Event, got {type(event).__name__}"
                raise TypeError(msg)
            return event
        name = next((t.event for t in self.triggers if isinstance(t, TriggerEvent) and "*" not in t.event), None)
        return Event(name or f"run/{self.id}", data or {})

    def check_run_id(self, run_id: object) -> str:
        """``run_id`` if it is a usable run id; a ``ValueError`` naming it and the fix otherwise."""
        return _keys.check_id(run_id, f"function {self.id!r}: run_id", f"{self.id}.run(run_id='day-1')")

    def run_id_for(self, event: Event) -> str:
        """The run id for an event: the ``idempotency`` key, else a hash of the event's name and data.

        Example:
            >>> @client.create_function(fn_id="hashed")
            ... def hashed(ctx: nbdurable.ContextSync) -> None: ...
            >>> hashed.run_id_for(nbdurable.Event("run/hashed", {"x": 1})) == hashed.run_id_for(
            ...     nbdurable.Event("run/hashed", {"x": 1})
            ... )
            True
        """
        if self.idempotency is not None:
            from nbdurable._cel import evaluate

            key = evaluate(self.idempotency, event=event.to_dict())
            if key is None:
                msg = (
                    f"function {self.id!r}: idempotency expression {self.idempotency!r} gave no value "
                    f"for event data {event.data!r:.80}. Fix: make it refer to fields the data has."
                )
                raise ValueError(msg)
            basis = f"idem\x00{self.id}\x00{canonical_json(key, what='idempotency key')}"
        else:
            basis = f"{self.id}\x00{event.name}\x00{canonical_json(event.data, what=f'{self.id} event data')}"
        return hashlib.sha256(basis.encode()).hexdigest()[:16]

    # -- executing ---------------------------------------------------------------------------

    def run(self, data: dict[str, Any] | None = None, *, run_id: str | None = None, event: Event | None = None) -> T:
        """Execute the run to the end and return its output (blocking, also in Jupyter).

        Completed steps replay from the store; failed or missing ones execute. In a
        notebook the live run view is shown.

        Args:
            data: the event data (``ctx.event.data``); same data means same run.
            run_id: an explicit run id instead of one derived from the data.
            event: a full ``Event`` instead of ``data``.

        Raises:
            RunFailedError: the run failed; ``__cause__`` is the exception that failed it.
            RunLockedError: another live process executes this run.

        Example:
            >>> @client.create_function(fn_id="double")
            ... def double(ctx: nbdurable.ContextSync) -> int:
            ...     return ctx.step.run("x2", lambda: ctx.event.data["x"] * 2)
            >>> double.run({"x": 21}), double.run({"x": 21})  # the second call replays
            (42, 42)
        """
        try:
            return _execute.run_sync(self, data, run_id, event)
        except RunFailedError as exc:
            raise exc.with_traceback(None) from exc.__cause__  # the traceback ends here, at the call

    async def run_async(
        self, data: dict[str, Any] | None = None, *, run_id: str | None = None, event: Event | None = None
    ) -> T:
        """Execute the run to the end and return its output, awaiting it (see :meth:`run`)."""
        try:
            return await _execute.run_async(self, data, run_id, event)
        except RunFailedError as exc:
            raise exc.with_traceback(None) from exc.__cause__  # the traceback ends here, at the call

    def start(
        self, data: dict[str, Any] | None = None, *, run_id: str | None = None, event: Event | None = None
    ) -> Run[T]:
        """Start the run in the background and return its ``Run`` at once.

        An async function runs as a task on the running loop (the kernel's, in Jupyter),
        else in a thread with its own loop; a sync function runs in a worker thread. Either
        way the caller (the kernel) stays free. ``Run.cancel()`` stops it between steps.

        Example:
            >>> @client.create_function(fn_id="background")
            ... def background(ctx: nbdurable.ContextSync) -> str:
            ...     return ctx.step.run("work", lambda: "done")
            >>> run = background.start()
            >>> run.wait(10)
            'done'
        """
        return _execute.start(self, data, run_id, event)

    # -- managing runs -----------------------------------------------------------------------

    def runs(self, status: RunStatus | str | None = None, *, limit: int | None = None) -> list[Run[T]]:
        """This function's runs in the store (newest first; at most ``limit``)."""
        return self.client.runs(self.id, status=status, limit=limit)

    def clear(self, run_id: str | None = None, *, older_than: Any = None) -> int:
        """Delete a run (or every run of this function, or those older than ``older_than``); returns runs deleted."""
        return _history.clear(self.client, self.id, run_id, older_than=older_than)

    def invalidate(self, run_id: str, from_step: str | None = None) -> list[str]:
        """Forget stored steps of a run so they execute again on the next run.

        Args:
            run_id: the run.
            from_step: forget this step and every step after it (in the latest execution's
                order); all steps when omitted.

        Returns:
            The keys of the steps forgotten.
        """
        return _history.invalidate(self.client, self.id, run_id, from_step)


def _check_list(fn_id: str, what: str, value: Any, types: tuple[type, ...], example: str) -> None:
    items = value if isinstance(value, list) else [value] if value is not None else []
    for item in items:
        if not isinstance(item, types):
            names = " or ".join(t.__name__ for t in types)
            msg = (
                f"function {fn_id!r}: {what} takes {names} objects, got {type(item).__name__} {item!r:.60}. "
                f"Fix: e.g. {what}={example}"
            )
            raise TypeError(msg)
