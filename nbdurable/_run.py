"""A run's state (written by the engine alone) and ``Run``, the read-only handle users hold.

``RunState`` is the one object that knows where a run is in this process: status, steps,
output, the execution in flight. The engine and the execute path are its only writers;
listeners (views) are told of every change. ``Run`` reads it and waits for it; the only
things a handle does to a run are requests (``cancel``), which the engine acts on.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import warnings
from collections.abc import Callable, Generator
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from nbdurable._loop import run_blocking, running_loop
from nbdurable._process import STATE, FlightKey
from nbdurable._types import HIDE_FRAMES, NO_OUTPUT, ErrorInfo, NoOutput, RunStatus, StepInfo, StepStatus
from nbdurable.errors import RunCancelledError, RunFailedError

if TYPE_CHECKING:
    from nbdurable._client import Client
    from nbdurable._clock import Signal
    from nbdurable._events import Event
    from nbdurable._records import RunRecord

T = TypeVar("T")
log = logging.getLogger("nbdurable")
"""Every change of every run, with the fields ``function``, ``run_id``, ``step_id``, ``status``,
``attempt`` and ``event``: route it as any library's logs (silent until you configure logging)."""
log.addHandler(logging.NullHandler())

Listener = Callable[[str, "Run[Any]", "StepInfo | None"], None]
"""Called with (what happened, the run, the step concerned or None) on every state change."""


class RunState(Generic[T]):
    """Everything this process knows of one run.

    Written only by the engine (``Execution``) and the execute path; every other module
    reads it, through a ``Run`` handle or directly. Cancel and interrupt requests are
    inputs: a handle sets them, the engine acts on them between steps.
    """

    def __init__(
        self, client: Client | None, function_id: str, run_id: str, event: Event, flight: FlightKey | None = None
    ) -> None:
        self.client = client
        self.app = client.app_id if client is not None else ""
        self.id = run_id
        self.function_id = function_id
        self.event = event
        self.flight = flight
        self.status = RunStatus.QUEUED
        self.steps: list[StepInfo] = []
        self.error: ErrorInfo | None = None
        self.failed_step: str | None = None
        self.created_at: float | None = None
        self.started_at: float | None = None
        self.ended_at: float | None = None
        self.executions = 0
        self.note = ""
        self.output: T | NoOutput = NO_OUTPUT
        self.exception: BaseException | None = None
        self.finished = threading.Event()
        self.finished.set()
        self.task: asyncio.Future[Any] | None = None
        self.blocking = False
        """A cell is blocked in ``run()`` / ``run_async()`` on the execution in flight."""
        self.listeners: list[Listener] = []
        self.signals: set[Signal] = set()
        self.cancel_reason: str | None = None
        self.interrupt_reason: str | None = None
        self.done_callbacks: list[Callable[[], None]] = []
        self.output_loader: Callable[[], Any] | None = None
        """Reads the stored output of a run read back from the store, on first use."""
        self.steps_loader: Callable[[], list[StepInfo]] | None = None
        """Reads the stored steps of a run read back from the store, on first use (listings stay cheap)."""
        self.handle: Run[T] = Run(self)

    # -- the execute path ----------------------------------------------------------------------

    def claim(self, event: Event, *, blocking: bool) -> None:
        """A new execution starts: forget the last one's end, so a view built now shows this one."""
        self.event = event
        self.status = RunStatus.QUEUED
        self.steps = []
        self.error = None
        self.failed_step = None
        self.cancel_reason = None
        self.interrupt_reason = None
        self.blocking = blocking
        self.output = NO_OUTPUT
        self.exception = None
        self.finished.clear()

    def release(self, output: T | NoOutput, exception: BaseException | None) -> None:
        """The execution in flight ended: keep its outcome and wake every waiter."""
        self.output = output
        self.exception = exception
        self.finished.set()
        callbacks, self.done_callbacks = self.done_callbacks, []
        for callback in callbacks:
            callback()

    def add_done_callback(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` (from the finishing thread) when the execution in flight ends."""
        self.done_callbacks.append(callback)
        if self.finished.is_set() and callback in self.done_callbacks:
            self.done_callbacks.remove(callback)
            callback()

    def stored_output(self) -> T | NoOutput:
        """The output, read from the store on first use for a run read back."""
        if self.output is NO_OUTPUT and self.output_loader is not None:
            loader, self.output_loader = self.output_loader, None
            self.output = loader()
        return self.output

    def stored_steps(self) -> list[StepInfo]:
        """The steps, read from the store on first use for a run read back."""
        if self.steps_loader is not None:
            loader, self.steps_loader = self.steps_loader, None
            self.steps = loader()
        return self.steps

    def result(self) -> T:
        """The execution's output, or its error raised; for a run read back, its stored outcome."""
        __tracebackhide__ = HIDE_FRAMES
        if self.exception is not None:
            raise self.exception
        out = self.stored_output()
        if out is NO_OUTPUT:
            self._raise_stored_outcome()
            return None  # type: ignore[return-value]  # a completed run whose output is not stored
        return out

    def _raise_stored_outcome(self) -> None:
        err = self.error
        if self.status is RunStatus.FAILED:
            where = f" at step {self.failed_step!r}" if self.failed_step else ""
            detail = f": {err.name}: {err.message}" if err is not None else ""
            msg = f"run {self.id!r} of {self.function_id!r} failed{where}{detail}"
            raise RunFailedError(msg, run_id=self.id, function_id=self.function_id, step_id=self.failed_step)
        if self.status is RunStatus.CANCELLED:
            msg = f"run {self.id!r} of {self.function_id!r} was cancelled" + (f": {err.message}" if err else "")
            raise RunCancelledError(msg)
        if not self.status.finished and self.status is not RunStatus.QUEUED:
            msg = (
                f"run {self.id!r} of {self.function_id!r} is {self.status.value} and no execution of it in this "
                f"process can be waited for. Fix: resume it ({self.function_id}.run(run_id={self.id!r}), or "
                "`%nbdurable resume`), then wait."
            )
            raise RuntimeError(msg)

    # -- listeners -----------------------------------------------------------------------------

    @property
    def observed(self) -> bool:
        """Whether anyone hears about changes (a listener, or the ``nbdurable`` logger at DEBUG)."""
        return bool(self.listeners) or log.isEnabledFor(logging.DEBUG)

    def emit(self, kind: str, step: StepInfo | None = None) -> None:
        """Log the change and tell the listeners; a failing listener never breaks the run (it is removed)."""
        if log.isEnabledFor(logging.DEBUG):
            self._log(kind, step)
        for listener in tuple(self.listeners):
            try:
                listener(kind, self.handle, step)
            except Exception as exc:  # noqa: BLE001 - a view must never fail a run
                warnings.warn(
                    f"nbdurable: a run listener failed and was removed: {exc!r}", RuntimeWarning, stacklevel=2
                )
                if listener in self.listeners:
                    self.listeners.remove(listener)

    def _log(self, kind: str, step: StepInfo | None) -> None:
        """One record per change on the ``nbdurable`` logger, with structured fields for handlers."""
        status = step.status if step is not None else self.status
        if kind == "step_replayed":
            level = logging.DEBUG
        elif status in (StepStatus.FAILED, RunStatus.FAILED) or kind == "step_retrying":
            level = logging.WARNING
        else:
            level = logging.INFO
        if not log.isEnabledFor(level):
            return
        fields = {
            "function": self.function_id,
            "run_id": self.id,
            "step_id": step.label if step is not None else None,
            "status": "REPLAYED" if kind == "step_replayed" else status.value,
            "attempt": step.attempts if step is not None else None,
            "event": kind,
        }
        where = f" step {fields['step_id']} attempt {fields['attempt']}" if step is not None else ""
        error = step.error if step is not None else self.error
        detail = f": {error.name}: {error.message}" if error is not None and level >= logging.WARNING else ""
        log.log(level, "%s/%s%s %s%s", self.function_id, self.id, where, fields["status"], detail, extra=fields)

    # -- requests ------------------------------------------------------------------------------

    def request_stop(self, reason: str, *, interrupt: bool) -> None:
        """Ask the execution in flight to stop at its next step (cancelled, or interrupted)."""
        if self.finished.is_set():
            return
        if interrupt:
            self.interrupt_reason = reason
        else:
            self.cancel_reason = reason
        for signal in tuple(self.signals):
            signal.set()


class Run(Generic[T]):
    """One run of a durable function: live while it executes here, read back from the store after.

    Attributes:
        id: the run id.
        function_id: the function's id.

    Example:
        >>> import nbdurable, tempfile
        >>> client = nbdurable.Client(app_id="doc", store=tempfile.mkdtemp())
        >>> @client.create_function(fn_id="one")
        ... def one(ctx: nbdurable.ContextSync) -> int:
        ...     return ctx.step.run("a", lambda: 1)
        >>> run = one.start()
        >>> run.wait(), run.status.value, [s.label for s in run.steps]
        (1, 'COMPLETED', ['a'])
    """

    __slots__ = ("_state",)

    def __init__(self, state: RunState[T]) -> None:
        self._state = state

    # -- state (read-only) -----------------------------------------------------------------------

    @property
    def id(self) -> str:
        """The run id."""
        return self._state.id

    @property
    def function_id(self) -> str:
        """The function's id."""
        return self._state.function_id

    @property
    def app(self) -> str:
        """The app id of the client the run belongs to."""
        return self._state.app

    @property
    def client(self) -> Client | None:
        """The ``Client`` the run belongs to (the view's "send" button sends with it)."""
        return self._state.client

    @property
    def event(self) -> Event:
        """The triggering event."""
        return self._state.event

    @property
    def status(self) -> RunStatus:
        """Where the run is."""
        return self._state.status

    @property
    def steps(self) -> list[StepInfo]:
        """A :class:`StepInfo` per step of the latest execution (a copy)."""
        return list(self._state.stored_steps())

    @property
    def error(self) -> ErrorInfo | None:
        """The error that failed the run, as data (``None`` otherwise)."""
        return self._state.error

    @property
    def failed_step(self) -> str | None:
        """The key of the step that failed the run, if a step did."""
        return self._state.failed_step

    @property
    def note(self) -> str:
        """One line about the run for views (e.g. "resumed after ... interrupted")."""
        return self._state.note

    @property
    def executions(self) -> int:
        """How many executions the run has had (this one included)."""
        return self._state.executions

    @property
    def created_at(self) -> float | None:
        """Wall time the run was first stored."""
        return self._state.created_at

    @property
    def started_at(self) -> float | None:
        """Wall time the latest execution started."""
        return self._state.started_at

    @property
    def ended_at(self) -> float | None:
        """Wall time the latest execution ended (None while it runs)."""
        return self._state.ended_at

    @property
    def output(self) -> T | None:
        """The run's output once it completed (``None`` before, or when it is not stored)."""
        out = self._state.stored_output()
        return None if out is NO_OUTPUT else out

    @property
    def done(self) -> bool:
        """True when no execution of this run is in flight in this process."""
        return self._state.finished.is_set()

    @property
    def blocking(self) -> bool:
        """True while a cell is blocked in ``run()`` on this run (a click in its view could not arrive)."""
        return self._state.blocking and not self.done

    @property
    def elapsed(self) -> float | None:
        """Seconds from the start of the latest execution to its end (or to now)."""
        state = self._state
        if state.started_at is None:
            return None
        return (state.ended_at or time.time()) - state.started_at

    def counts(self) -> dict[str, int]:
        """How many steps are in each view status."""
        out: dict[str, int] = {}
        for step in self._state.stored_steps():
            out[step.status.value] = out.get(step.status.value, 0) + 1
        return out

    def executed_steps(self) -> list[StepInfo]:
        """Steps whose handler ran in the latest execution."""
        return [s for s in self._state.stored_steps() if s.status is not StepStatus.REPLAYED]

    # -- listeners -------------------------------------------------------------------------------

    def add_listener(self, listener: Listener) -> None:
        """Call ``listener(kind, run, step)`` on every state change of this run."""
        if listener not in self._state.listeners:
            self._state.listeners.append(listener)

    def remove_listener(self, listener: Listener) -> None:
        """Stop calling ``listener``."""
        if listener in self._state.listeners:
            self._state.listeners.remove(listener)

    @property
    def listening(self) -> bool:
        """Whether any listener follows the run."""
        return bool(self._state.listeners)

    # -- waiting ---------------------------------------------------------------------------------

    def wait(self, timeout: float | None = None) -> T:
        """Block until the run's execution in this process ends; return its output.

        Raises the run's error (``RunFailedError``, ``RunCancelledError``...) if it had one.
        Inside a running event loop whose task executes the run, the loop keeps turning. A
        run read back from the store returns its stored output (or raises its stored failure).
        """
        __tracebackhide__ = HIDE_FRAMES
        state = self._state
        task = state.task
        if task is not None and not task.done():
            loop = running_loop()
            if loop is not None and task.get_loop() is loop:

                async def _wait() -> None:
                    await asyncio.wait_for(asyncio.shield(task), timeout)

                run_blocking(_wait())
                return state.result()
        if not state.finished.wait(timeout):
            msg = f"run {self.id!r} did not finish within {timeout} s (status {self.status.value})"
            raise TimeoutError(msg)
        return state.result()

    def __await__(self) -> Generator[Any, None, T]:
        return self._await().__await__()

    async def _await(self) -> T:
        __tracebackhide__ = HIDE_FRAMES
        state = self._state
        task = state.task
        if task is not None and not task.done():
            await asyncio.shield(task)
        else:
            await asyncio.to_thread(state.finished.wait)
        return state.result()

    def cancel(self, reason: str = "cancelled by Run.cancel()") -> None:
        """Stop the run between steps; its status becomes CANCELLED.

        A step handler that is executing finishes first; a sleep, a wait for an event or a
        retry delay ends at once. The run's ``wait()`` then raises ``RunCancelledError``.
        Nothing happens to a run that no execution in this process is executing.

        Example:
            >>> import nbdurable, tempfile, datetime
            >>> client = nbdurable.Client(app_id="doc", store=tempfile.mkdtemp())
            >>> @client.create_function(fn_id="nap")
            ... def nap(ctx: nbdurable.ContextSync) -> None:
            ...     ctx.step.sleep("long", datetime.timedelta(hours=1))
            >>> run = nap.start()
            >>> run.cancel()
            >>> run.wait()
            Traceback (most recent call last):
            nbdurable.errors.RunCancelledError: run '...' of 'nap' was cancelled: cancelled by Run.cancel()
        """
        self._state.request_stop(reason, interrupt=False)

    def add_done_callback(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` (from the finishing thread) when the execution in flight here ends (at once if none)."""
        self._state.add_done_callback(callback)

    def send_awaited(self, step: StepInfo, data: dict[str, Any] | None = None) -> list[str]:
        """Send the event a waiting step awaits (the "send" button of the run view).

        Args:
            step: a step of this run waiting for an event (``step.event`` is its name).
            data: the event data; by default the data of the run's triggering event.

        Returns:
            The ids of the events sent.
        """
        from nbdurable._events import Event

        if step.event is None:
            msg = f"step {step.label!r} of run {self.id!r} does not wait for an event"
            raise ValueError(msg)
        client = self._state.client
        if client is None:
            msg = f"run {self.id!r} has no client to send events with"
            raise RuntimeError(msg)
        return client.send_sync(Event(step.event, dict(self.event.data if data is None else data)))

    # -- display ---------------------------------------------------------------------------------

    def summary(self) -> str:
        """A text summary: a header line and a line per step."""
        presenter = STATE.presenter
        return repr(self) if presenter is None else presenter.text(self)

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, Any]:
        """The run view in a notebook front end (a widget), its text summary elsewhere."""
        presenter = STATE.presenter
        if presenter is None:
            return {"text/plain": repr(self)}
        return presenter.bundle(self, include, exclude)

    def __repr__(self) -> str:
        return f"<Run {self.function_id}/{self.id} {self.status.value} steps={len(self._state.stored_steps())}>"


def loaded_state(
    client: Client,
    rec: RunRecord,
    status: RunStatus,
    *,
    steps: Callable[[], list[StepInfo]] | None = None,
    output: Callable[[], Any] | None = None,
) -> RunState[Any]:
    """The state of a run read back from the store (no execution of it in flight here).

    ``steps`` and ``output`` read the run's steps and output from the store when first asked for.
    """
    from nbdurable._events import Event

    ev = rec.event
    state: RunState[Any] = RunState(client, rec.function_id, rec.run_id, Event(ev.name, ev.data, ev.id, ev.ts))
    state.status = status
    state.created_at = rec.created_at
    state.started_at = rec.started_at
    state.ended_at = rec.ended_at
    state.executions = rec.executions
    state.failed_step = rec.failed_step
    state.output_loader = output
    if rec.error is not None:
        state.error = ErrorInfo(rec.error.name, rec.error.message, rec.error.stack)
    if status is RunStatus.INTERRUPTED and rec.current_step:
        state.note = f"step {rec.current_step!r} was in flight when its process stopped"
    state.steps_loader = steps
    return state
