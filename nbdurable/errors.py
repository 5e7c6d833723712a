"""Every error and warning users of nbdurable may catch.

All errors derive from :class:`NbdurableError`. Control-flow signals used inside the engine
derive from ``BaseException`` and are private, so user code that catches ``Exception`` can
never swallow them (a lost executor stops a run through one, then its caller gets
:class:`ExecutorLostError`).
"""

from __future__ import annotations

import datetime as _dt

__all__ = [
    "ExecutorLostError",
    "InputUnserializableError",
    "NbdurableError",
    "NestedStepError",
    "NonRetriableError",
    "OutputUnserializableError",
    "RetryAfterError",
    "RunCancelledError",
    "RunFailedError",
    "RunLockedError",
    "StaleStepWarning",
    "StepError",
    "StoreError",
]


class NbdurableError(Exception):
    """Root of every error nbdurable raises on purpose."""


class NonRetriableError(NbdurableError):
    """Raise in a step (or the function body) to fail at once, without retries.

    Args:
        message: what went wrong.
        quiet: do not log the error when the run fails.

    Example:
        >>> def charge() -> None:
        ...     raise NonRetriableError("card declined")
    """

    def __init__(self, message: str | None = None, quiet: bool = False) -> None:
        super().__init__(message or "non-retriable error")
        self.message = message
        self.quiet = quiet


class RetryAfterError(NbdurableError):
    """Raise in a step to retry it after a given delay instead of the backoff.

    Args:
        message: what went wrong.
        retry_after: milliseconds (int), a ``timedelta``, or a ``datetime`` to retry at.
        quiet: do not log the error.

    Example:
        >>> def call_api() -> None:
        ...     raise RetryAfterError("rate limited", retry_after=5_000)  # the next attempt in 5 s
    """

    def __init__(
        self,
        message: str | None,
        retry_after: float | _dt.timedelta | _dt.datetime,
        quiet: bool = False,
    ) -> None:
        super().__init__(message or "retry later")
        self.message = message
        self.retry_after = retry_after
        self.quiet = quiet

    def delay_seconds(self, now: float) -> float:
        """The delay before the next attempt, in seconds, given the wall clock ``now``."""
        after = self.retry_after
        if isinstance(after, _dt.datetime):
            return max(0.0, after.timestamp() - now)  # a naive datetime is local time, as in sleep_until
        if isinstance(after, _dt.timedelta):
            return max(0.0, after.total_seconds())
        return max(0.0, float(after) / 1000.0)


class StepError(NbdurableError):
    """A step failed for good: raised at the ``step.run`` call site in the function body.

    Catch it to handle the failure in the body; uncaught, it fails the run. ``__cause__``
    is the original exception when the failure happened in this process.

    Attributes:
        message: the original error's message.
        name: the original error's type name.
        stack: the original traceback as text.
        step_id: the step's key (``id`` or ``id:n``).
    """

    def __init__(self, message: str, name: str, stack: str | None = None, step_id: str = "") -> None:
        super().__init__(f"step {step_id!r} failed: {name}: {message}" if step_id else f"{name}: {message}")
        self.message = message
        self.name = name
        self.stack = stack
        self.step_id = step_id


class RunFailedError(NbdurableError):
    """A run failed; ``__cause__`` is the exception that failed it.

    Attributes:
        run_id: the failed run's id.
        function_id: the function's id.
        step_id: the step that failed the run, if a step did.
    """

    def __init__(self, message: str, *, run_id: str, function_id: str, step_id: str | None = None) -> None:
        super().__init__(message)
        self.run_id = run_id
        self.function_id = function_id
        self.step_id = step_id


class OutputUnserializableError(NbdurableError, TypeError):
    """A step returned a value its serializer cannot store. Not retried."""


class InputUnserializableError(NonRetriableError, TypeError):
    """A step's handler or an argument cannot be pickled to be sent to the executor's workers.

    Raised at once, without retries (it would fail the same way every time); the message
    names the step, what cannot be pickled, and the fix.
    """


class ExecutorLostError(NbdurableError):
    """The executor running step handlers is gone: the run stopped INTERRUPTED, resumable on a new one.

    That is a process pool broken by a dead worker process, an executor shut down, or a Dask
    client that lost its scheduler. No step is stored as failed, so running the function
    again with a new executor replays the completed steps and executes the rest. Inside the
    run it travels as a private signal a body's ``except Exception`` cannot swallow; the
    caller of ``run()`` (or ``wait()``) gets this error.
    """


class RunLockedError(NbdurableError):
    """Another live process is executing this run right now."""


class RunCancelledError(NbdurableError):
    """The run was cancelled (by ``Run.cancel()`` or a cancel event)."""


class StoreError(NbdurableError):
    """The store cannot be opened, read or written; the message names the path and the fix."""


class NestedStepError(NbdurableError):
    """A step tool (``step.run`` ...) was called where it cannot be.

    That is: inside another step's handler, or outside a running durable function.
    """


class StaleStepWarning(UserWarning):
    """A replayed step's code or arguments changed since its output was stored."""
