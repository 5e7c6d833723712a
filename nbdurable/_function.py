"""``Function``: a durable function, with ``run`` / ``run_async`` / ``start`` and run ids."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import contextvars
import functools
import hashlib
import inspect
import os
import threading
import weakref
from collections.abc import Awaitable, Callable, Coroutine
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from nbdurable import _store
from nbdurable._clock import Signal
from nbdurable._engine import _IN_HANDLER, CancelSignal, Execution, wait_sync
from nbdurable._events import Cancel, Concurrency, Event, TriggerCron, TriggerEvent, canonical_json
from nbdurable._run import NO_OUTPUT, Run
from nbdurable._serde import check_serializer
from nbdurable._step import Context, ContextSync, make_context
from nbdurable._types import RunStatus

if TYPE_CHECKING:
    from nbdurable._client import Client

T = TypeVar("T")
ON_CHANGE = ("warn", "rerun", "ignore")


_TEMPORARY_LOOPS: weakref.WeakSet[asyncio.AbstractEventLoop] = weakref.WeakSet()
"""Loops ``run_blocking`` made for one call: background runs must not become their tasks."""


def run_blocking(awaitable: Awaitable[T]) -> T:
    """Run an awaitable to completion from sync code, also inside a running loop (Jupyter)."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        loop = None
    try:
        if loop is None:
            return asyncio.run(_as_coroutine(awaitable, temporary=True))
        import nest_asyncio

        nest_asyncio.apply(loop)
        return _run_nested(loop, _as_coroutine(awaitable, temporary=False))
    except _Interrupted as carried:
        interrupt = carried.interrupt
    raise interrupt  # outside the except block: the interrupt keeps its own traceback and context


_HELD: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, list[asyncio.Handle]] = weakref.WeakKeyDictionary()
"""Per loop re-entered by ``run_blocking``: callbacks that cannot run until the outermost call returns."""


def _run_nested(loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, T]) -> T:
    """``loop.run_until_complete(coro)`` from inside one of the running loop's own callbacks.

    nest_asyncio makes the loop re-entrant, but a callback whose ``contextvars.Context`` is
    already entered up this thread's stack cannot run: ``Context.run`` raises "cannot enter
    context: ... is already entered", and the loop logs it ("Exception in callback
    Task.__step()") and drops the callback, so its task never resumes. Jupyter's kernel
    (ipykernel 7) runs every shell message as a task in one shared Context, and the cell that
    blocks here is one of them: a message arriving meanwhile (a click on a run view's button,
    a completion request) would be lost. Such callbacks are held back, in order, and run once
    their Context is free again (at the latest when the outermost call returns), as they would
    had nothing re-entered the loop. This is nest_asyncio's ``run_until_complete`` otherwise.
    """
    base: Any = loop  # BaseEventLoop's private queue and step, which nest_asyncio re-enters too
    outermost = loop not in _HELD
    held = _HELD.setdefault(loop, [])
    task: Any = asyncio.ensure_future(coro, loop=loop)
    task._log_destroy_pending = False  # as nest_asyncio: an interrupted call leaves it pending quietly
    try:
        while not task.done():
            _hold_back(base._ready, held)
            base._run_once()
            if base._stopping:
                break
    finally:
        if outermost:
            del _HELD[loop]
            base._ready.extendleft(reversed(held))
    if not task.done():
        msg = "Event loop stopped before Future completed."
        raise RuntimeError(msg)
    return task.result()  # type: ignore[no-any-return]


def _hold_back(ready: collections.deque[asyncio.Handle], held: list[asyncio.Handle]) -> None:
    """Move callbacks whose Context is entered from ``ready`` to ``held``, and those free again back first."""
    free: list[asyncio.Handle] = []
    still: list[asyncio.Handle] = []
    for handle in [*held, *ready]:
        (still if _entered(handle) else free).append(handle)
    held[:] = still
    ready.clear()
    ready.extend(free)


def _entered(handle: asyncio.Handle) -> bool:
    """True when running ``handle`` now would fail because its Context is entered (the only test there is)."""
    context: contextvars.Context | None = getattr(handle, "_context", None)
    if context is None or handle.cancelled():
        return False
    try:
        context.run(_nothing)
    except RuntimeError:
        return True
    return False


def _nothing() -> None:
    return None


class _Interrupted(Exception):  # noqa: N818 - a carrier, never seen by users
    """Carries a KeyboardInterrupt / SystemExit out of a task.

    A task that raises one of them keeps it as an exception nobody retrieves; its
    "never retrieved" log, when garbage collected, can land anywhere (even inside a
    parse by the compiler). As an ordinary exception it is retrieved and re-raised.
    """

    def __init__(self, interrupt: BaseException) -> None:
        super().__init__(repr(interrupt))
        self.interrupt = interrupt


async def _as_coroutine(awaitable: Awaitable[T], *, temporary: bool) -> T:
    if temporary:
        _TEMPORARY_LOOPS.add(asyncio.get_running_loop())
    try:
        return await awaitable
    except (KeyboardInterrupt, SystemExit) as exc:
        raise _Interrupted(exc) from None


class _Slots:
    """In-process concurrency limits: runs take every slot they need at once, or queue."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._used: dict[tuple[str, int, str], int] = {}
        self._queued: dict[tuple[str, int, str], list[Signal]] = {}

    def take(self, keys: list[tuple[tuple[str, int, str], int]], wake: Signal) -> bool:
        """Take a slot of every key, or none and queue ``wake`` to be set when one frees."""
        with self._lock:
            for key, limit in keys:
                if self._used.get(key, 0) >= limit:
                    self._queued.setdefault(key, []).append(wake)
                    return False
            for key, _ in keys:
                self._used[key] = self._used.get(key, 0) + 1
            return True

    def give_back(self, keys: list[tuple[tuple[str, int, str], int]]) -> None:
        """Free the slots a run took and wake the runs queued for them."""
        woken: list[Signal] = []
        with self._lock:
            for key, _ in keys:
                self._used[key] -= 1
                woken += self._queued.pop(key, [])
        for wake in woken:
            wake.set()


SLOTS = _Slots()


class Function(Generic[T]):
    """A durable function: every ``ctx.step.run`` inside it is stored, retried and replayed.

    Create one with ``client.create_function(...)`` or ``@nbdurable.function``.

    Example:
        >>> @client.create_function(fn_id="hello")  # doctest: +SKIP
        ... def hello(ctx: nbdurable.ContextSync) -> str:
        ...     return ctx.step.run("greet", lambda: f"hi {ctx.event.data['name']}")
        >>> hello.run({"name": "ada"})  # doctest: +SKIP
        'hi ada'
    """

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
    ) -> None:
        if not isinstance(fn_id, str) or not fn_id:
            msg = f"fn_id must be a non-empty str, got {fn_id!r}"
            raise ValueError(msg)
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
        self.is_async = inspect.iscoroutinefunction(handler)
        self.failure_function: Function[Any] | None = None
        """The durable function running ``on_failure`` (id ``"{fn_id}-failure"``)."""
        if on_failure is not None:
            self.failure_function = Function(client, on_failure, fn_id=f"{fn_id}-failure", retries=retries)
        functools.update_wrapper(self, handler)  # type: ignore[arg-type]

    def __repr__(self) -> str:
        return f"<nbdurable.Function {self.id!r}>"

    # -- identity ----------------------------------------------------------------------------

    def _event(self, data: dict[str, Any] | None, event: Event | None) -> Event:
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

    def run_id_for(self, event: Event) -> str:
        """The run id for an event: the ``idempotency`` key, else a hash of the event's name and data."""
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

    def _claim(self, data: dict[str, Any] | None, run_id: str | None, event: Event | None) -> tuple[Run[T], bool]:
        ev = self._event(data, event)
        if run_id is None:
            run_id = self.run_id_for(ev)
        elif not isinstance(run_id, str) or not run_id:
            msg = f"function {self.id!r}: run_id must be a non-empty str, got {run_id!r}"
            raise ValueError(msg)
        return self.client._claim_run(self, run_id, ev)

    # -- executing ---------------------------------------------------------------------------

    def _open(self, run: Run[T]) -> tuple[Execution, Context | ContextSync]:
        ex = Execution(self.client, self, run)
        try:
            ex.begin()
        except BaseException as exc:
            _store.retire_owner(ex.owner)
            self.client._release_run(run, NO_OUTPUT, exc)
            raise
        return ex, make_context(ex, self.is_async)

    def _close(self, ex: Execution, output: Any, exc: BaseException | None) -> T:
        try:
            result = ex.end(output, exc)
        except BaseException as err:
            if ex.run.status is RunStatus.FAILED:
                self.client._after_failure(self, ex.run)
            self.client._release_run(ex.run, NO_OUTPUT, err)
            raise
        self.client._release_run(ex.run, result, None)
        return result  # type: ignore[no-any-return]

    def _slot_keys(self, run: Run[T]) -> list[tuple[tuple[str, int, str], int]]:
        return [
            (
                (
                    f"{os.path.abspath(self.client.store_path)}\x00{self.client.app_id}\x00{self.id}",
                    i,
                    c.group(run.event),
                ),
                c.limit,
            )
            for i, c in enumerate(self.concurrency)
        ]

    def _try_slots(self, run: Run[T], keys: list[tuple[tuple[str, int, str], int]]) -> Signal | None:
        """Take the concurrency slots (None), or queue the run and return what wakes it to try again.

        The signal is also set by ``Run.cancel()``; the caller waits on it, then forgets it.
        """
        wake = Signal()
        run._signals.add(wake)
        if SLOTS.take(keys, wake):
            run._signals.discard(wake)
            return None
        run.status = RunStatus.QUEUED
        return wake

    def _queue_sync(self, run: Run[T], keys: list[tuple[tuple[str, int, str], int]]) -> bool:
        """Wait for concurrency slots; False when the run was cancelled while queued."""
        while run._cancel_reason is None:
            wake = self._try_slots(run, keys)
            if wake is None:
                return True
            try:
                wait_sync(self.client.clock, wake, None)
            finally:
                run._signals.discard(wake)
        return False

    async def _queue_async(self, run: Run[T], keys: list[tuple[tuple[str, int, str], int]]) -> bool:
        """Wait for concurrency slots without blocking the loop; False when cancelled while queued."""
        while run._cancel_reason is None:
            wake = self._try_slots(run, keys)
            if wake is None:
                return True
            try:
                await self.client.clock.await_signal(wake, None)
            finally:
                run._signals.discard(wake)
        return False

    def _execute_sync(self, run: Run[T]) -> T:
        # A run started from inside a step (send_event, invoke) is not inside that step.
        token = _IN_HANDLER.set(None)
        try:
            return self._execute_sync_inner(run)
        except BaseException as exc:
            self._release_unfinished(run, exc)
            raise
        finally:
            _IN_HANDLER.reset(token)

    def _execute_sync_inner(self, run: Run[T]) -> T:
        keys = self._slot_keys(run) if self.concurrency else []
        if keys and not self._queue_sync(run, keys):
            ex, _ = self._open(run)
            return self._close(ex, NO_OUTPUT, CancelSignal(run._cancel_reason or "cancelled"))
        try:
            ex, ctx = self._open(run)
            try:
                output = self.handler(ctx)
            except BaseException as exc:  # noqa: BLE001 - the engine decides what each means
                return self._close(ex, NO_OUTPUT, exc)
            return self._close(ex, output, None)
        finally:
            if keys:
                SLOTS.give_back(keys)

    async def _execute_async(self, run: Run[T]) -> T:
        token = _IN_HANDLER.set(None)
        try:
            return await self._execute_async_inner(run)
        except BaseException as exc:
            self._release_unfinished(run, exc)
            raise
        finally:
            _IN_HANDLER.reset(token)

    def _claim_shown(self, data: dict[str, Any] | None, run_id: str | None, event: Event | None) -> tuple[Run[T], bool]:
        """Claim the run and show its view (a view that fails to show releases the claim)."""
        run, attached = self._claim(data, run_id, event)
        if not attached:
            run._blocking = True
        try:
            self.client._show(run)
        except BaseException as exc:
            if not attached:
                self._release_unfinished(run, exc)
            raise
        return run, attached

    def _release_unfinished(self, run: Run[T], exc: BaseException) -> None:
        """A claimed run that failed before its execution could end (e.g. the store would not open)."""
        if not run.done:
            self.client._release_run(run, NO_OUTPUT, exc)

    async def _execute_async_inner(self, run: Run[T]) -> T:
        keys = self._slot_keys(run) if self.concurrency else []
        if keys and not await self._queue_async(run, keys):
            ex, _ = self._open(run)
            return self._close(ex, NO_OUTPUT, CancelSignal(run._cancel_reason or "cancelled"))
        try:
            ex, ctx = self._open(run)
            try:
                output = await self.handler(ctx)
            except BaseException as exc:  # noqa: BLE001 - the engine decides what each means
                return self._close(ex, NO_OUTPUT, exc)
            return self._close(ex, output, None)
        finally:
            if keys:
                SLOTS.give_back(keys)

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
            >>> fn.run({"user_id": 1})  # doctest: +SKIP
        """
        run, attached = self._claim_shown(data, run_id, event)
        if attached:
            return run.wait()
        if self.is_async:
            return run_blocking(self._execute_async(run))
        return self._execute_sync(run)

    async def run_async(
        self, data: dict[str, Any] | None = None, *, run_id: str | None = None, event: Event | None = None
    ) -> T:
        """Execute the run to the end and return its output, awaiting it.

        Example:
            >>> await fn.run_async({"user_id": 1})  # doctest: +SKIP
        """
        run, attached = self._claim_shown(data, run_id, event)
        if attached:
            return await run
        if self.is_async:
            return await self._execute_async(run)
        try:
            return await asyncio.to_thread(self._execute_sync, run)
        except asyncio.CancelledError:
            # The worker thread cannot be stopped mid-step: it stops, INTERRUPTED, at the next one.
            run._interrupt("the task awaiting the run was cancelled")
            raise

    def start(
        self, data: dict[str, Any] | None = None, *, run_id: str | None = None, event: Event | None = None
    ) -> Run[T]:
        """Start the run in the background and return its ``Run`` at once.

        An async function runs as a task on the running loop (the kernel's, in Jupyter),
        else in a thread with its own loop; a sync function runs in a worker thread. Either
        way the caller (the kernel) stays free. ``Run.cancel()`` stops it between steps.

        Example:
            >>> run = fn.start({"user_id": 1}); run.wait()  # doctest: +SKIP
        """
        run, attached = self._claim(data, run_id, event)
        if attached:
            return run
        run._blocking = False
        if self.is_async:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                loop = None
            if loop is not None and loop not in _TEMPORARY_LOOPS:
                run._task = loop.create_task(_quietly(self._execute_async(run)))
                return run
            target: Callable[[], Any] = lambda: asyncio.run(_quietly(self._execute_async(run)))  # noqa: E731
        else:
            target = lambda: _quietly_sync(self._execute_sync, run)  # noqa: E731
        threading.Thread(target=target, name=f"nbdurable-{self.id}-{run.id}", daemon=True).start()
        return run

    # -- managing runs -----------------------------------------------------------------------

    def runs(self, status: RunStatus | str | None = None) -> list[Run[T]]:
        """This function's runs in the store (newest first)."""
        return self.client.runs(self.id, status=status)

    def clear(self, run_id: str | None = None) -> int:
        """Delete a run (or every run of this function) and its stored steps; returns runs deleted."""
        return self.client._clear(self.id, run_id)

    def invalidate(self, run_id: str, from_step: str | None = None) -> list[str]:
        """Forget stored steps of a run so they execute again on the next run.

        Args:
            run_id: the run.
            from_step: forget this step and every step after it (in the latest execution's
                order); all steps when omitted.

        Returns:
            The keys of the steps forgotten.
        """
        return self.client._invalidate(self.id, run_id, from_step)


async def _quietly(coro: Coroutine[Any, Any, Any]) -> None:
    """Run a background execution; its outcome is kept in its ``Run``, not re-raised here."""
    with contextlib.suppress(BaseException):  # already recorded in the Run
        await coro


def _quietly_sync(fn: Callable[[Run[Any]], Any], run: Run[Any]) -> None:
    with contextlib.suppress(BaseException):  # already recorded in the Run
        fn(run)


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
