"""``Run``: the handle of one run, live while it executes, loaded from the store after."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Generator
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from nbdurable._types import ErrorInfo, RunStatus, StepInfo, StepStatus

if TYPE_CHECKING:
    from nbdurable._clock import Signal
    from nbdurable._events import Event

T = TypeVar("T")

Listener = Callable[[str, "Run[Any]", "StepInfo | None"], None]
"""Called with (what happened, the run, the step concerned or None) on every state change."""


class _NoOutput:
    def __repr__(self) -> str:
        return "NO_OUTPUT"


NO_OUTPUT: Any = _NoOutput()


class Run(Generic[T]):
    """One run of a durable function.

    Attributes:
        id: the run id.
        function_id: the function's id.
        status: a :class:`RunStatus`.
        steps: a :class:`StepInfo` per step of the latest execution.
        error: the error that failed the run, as data (``None`` otherwise).
        event: the triggering event.

    Example:
        >>> run = fn.start({"x": 1})  # doctest: +SKIP
        >>> run.wait()  # doctest: +SKIP
    """

    def __init__(self, function_id: str, run_id: str, event: Event, *, app: str = "") -> None:
        self.id = run_id
        self.function_id = function_id
        self.app = app
        self.event = event
        self.status = RunStatus.QUEUED
        self.steps: list[StepInfo] = []
        self.error: ErrorInfo | None = None
        self.failed_step: str | None = None
        self.created_at: float | None = None
        self.started_at: float | None = None
        self.ended_at: float | None = None
        self.executions = 0
        self.note = ""
        self._output: Any = NO_OUTPUT
        self._exception: BaseException | None = None
        self._done = threading.Event()
        self._done.set()
        self._task: asyncio.Future[Any] | None = None
        self._listeners: list[Listener] = []
        self._cancel_reason: str | None = None
        self._interrupt_reason: str | None = None
        self._blocking = False  # a cell is blocked in run() / run_async() on this execution
        self._flight: tuple[str, str, str, str] = ("", "", "", "")
        self.client: Any = None
        """The ``Client`` the run belongs to (set by the client; the view's "send" button uses it)."""
        self._signals: set[Signal] = set()
        self._done_callbacks: list[Callable[[], None]] = []

    # -- state -------------------------------------------------------------------------------

    @property
    def output(self) -> T | None:
        """The run's output once it completed (``None`` before)."""
        return None if self._output is NO_OUTPUT else self._output

    @property
    def done(self) -> bool:
        """True when no execution of this run is in flight in this process."""
        return self._done.is_set()

    @property
    def elapsed(self) -> float | None:
        """Seconds from the start of the latest execution to its end (or to now)."""
        if self.started_at is None:
            return None
        import time

        return (self.ended_at or time.time()) - self.started_at

    def counts(self) -> dict[str, int]:
        """How many steps are in each view status."""
        out: dict[str, int] = {}
        for step in self.steps:
            out[step.status.value] = out.get(step.status.value, 0) + 1
        return out

    def executed_steps(self) -> list[StepInfo]:
        """Steps whose handler ran in the latest execution."""
        return [s for s in self.steps if s.status is not StepStatus.REPLAYED]

    # -- listeners ---------------------------------------------------------------------------

    def add_listener(self, listener: Listener) -> None:
        """Call ``listener(kind, run, step)`` on every state change of this run."""
        if listener not in self._listeners:
            self._listeners.append(listener)

    def remove_listener(self, listener: Listener) -> None:
        """Stop calling ``listener``."""
        if listener in self._listeners:
            self._listeners.remove(listener)

    def emit(self, kind: str, step: StepInfo | None = None) -> None:
        """Tell the listeners; a failing listener never breaks the run."""
        for listener in tuple(self._listeners):
            try:
                listener(kind, self, step)
            except Exception as exc:  # noqa: BLE001 - a view must never fail a run
                import warnings

                warnings.warn(
                    f"nbdurable: a run listener failed and was removed: {exc!r}", RuntimeWarning, stacklevel=2
                )
                self.remove_listener(listener)

    # -- waiting -----------------------------------------------------------------------------

    def _begin(self) -> None:
        self._done.clear()
        self._output = NO_OUTPUT
        self._exception = None

    def _finish(self, output: Any = NO_OUTPUT, exception: BaseException | None = None) -> None:
        self._output = output
        self._exception = exception
        self._done.set()
        callbacks, self._done_callbacks = self._done_callbacks, []
        for callback in callbacks:
            callback()

    def _add_done_callback(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` (from the finishing thread) when the execution in flight ends."""
        self._done_callbacks.append(callback)
        if self.done and callback in self._done_callbacks:
            self._done_callbacks.remove(callback)
            callback()

    def _set_stored_output(self, output: Any) -> None:
        """The output of a completed run read back from the store."""
        self._output = output

    def _result(self) -> T:
        if self._exception is not None:
            raise self._exception
        if self._output is NO_OUTPUT:
            self._raise_stored_outcome()
            return None  # type: ignore[return-value]
        return self._output  # type: ignore[no-any-return]

    def _raise_stored_outcome(self) -> None:
        """What waiting for a run read back from the store gives when it has no output here."""
        from nbdurable.errors import RunCancelledError, RunFailedError

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

    def wait(self, timeout: float | None = None) -> T:
        """Block until the run's execution in this process ends; return its output.

        Raises the run's error (``RunFailedError``, ``RunCancelledError``...) if it had one.
        Inside a running event loop whose task executes the run, the loop keeps turning.
        """
        task = self._task
        if task is not None and not task.done():
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                loop = None
            if loop is not None and task.get_loop() is loop:
                from nbdurable._function import run_blocking

                async def _wait() -> None:
                    await asyncio.wait_for(asyncio.shield(task), timeout)

                run_blocking(_wait())
                return self._result()
        if not self._done.wait(timeout):
            msg = f"run {self.id!r} did not finish within {timeout} s (status {self.status.value})"
            raise TimeoutError(msg)
        return self._result()

    def __await__(self) -> Generator[Any, None, T]:
        return self._await().__await__()

    async def _await(self) -> T:
        task = self._task
        if task is not None and not task.done():
            await asyncio.shield(task)
        else:
            await asyncio.to_thread(self._done.wait)
        return self._result()

    def cancel(self, reason: str = "cancelled by Run.cancel()") -> None:
        """Stop the run between steps; its status becomes CANCELLED.

        A step handler that is executing finishes first; a sleep, a wait for an event or a
        retry delay ends at once. The run's ``wait()`` then raises ``RunCancelledError``.
        Nothing happens to a run that no execution in this process is executing.

        Example:
            >>> run = fn.start({"x": 1}); run.cancel(); run.wait()  # doctest: +SKIP
            Traceback (most recent call last):
            RunCancelledError: run '...' of 'fn' was cancelled: cancelled by Run.cancel()
        """
        if self.done:
            return
        self._cancel_reason = reason
        for signal in tuple(self._signals):
            signal.set()

    def _interrupt(self, reason: str) -> None:
        """Stop the run at its next step as an interruption (resumable, no attempt used)."""
        if self.done:
            return
        self._interrupt_reason = reason
        for signal in tuple(self._signals):
            signal.set()

    def send_awaited(self, step: StepInfo, data: dict[str, Any] | None = None) -> list[str]:
        """Send the event a waiting step awaits (the "send" button of the run view).

        Args:
            step: a step of this run waiting for an event (``step.event`` is its name).
            data: the event data; by default the data of the run's triggering event.

        Returns:
            The ids of the events sent.

        Example:
            >>> waiting = [s for s in run.steps if s.status is StepStatus.WAITING]  # doctest: +SKIP
            >>> run.send_awaited(waiting[0])  # doctest: +SKIP
        """
        from nbdurable._events import Event

        if step.event is None:
            msg = f"step {step.key!r} of run {self.id!r} does not wait for an event"
            raise ValueError(msg)
        send_sync = getattr(self.client, "send_sync", None)
        if send_sync is None:
            msg = f"run {self.id!r} has no client to send events with"
            raise RuntimeError(msg)
        ids: list[str] = send_sync(Event(step.event, dict(self.event.data if data is None else data)))
        return ids

    # -- display -----------------------------------------------------------------------------

    def summary(self) -> str:
        """A text summary: a header line and a line per step."""
        from nbdurable._text import run_summary

        return run_summary(self)

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, Any]:
        """The run view in a notebook front end (a widget), its text summary elsewhere."""
        from nbdurable._text import in_widget_frontend

        text = self.summary()
        if not in_widget_frontend():
            return {"text/plain": text}
        from nbdurable._view import RunView

        view = RunView(self)
        if self.done:
            view.close()
        bundle: dict[str, Any] = view.widget._repr_mimebundle_(include=include, exclude=exclude) or {}
        return {**bundle, "text/plain": text}

    def __repr__(self) -> str:
        return f"<Run {self.function_id}/{self.id} {self.status.value} steps={len(self.steps)}>"
