"""nbdurable: durable workflows in Jupyter notebooks.

Every ``ctx.step.run`` of a durable function is stored on disk; re-running replays
completed steps instantly and retries the failed ones, also after a kernel restart.

Example:
    >>> import nbdurable, tempfile
    >>> client = nbdurable.Client(app_id="doc", store=tempfile.mkdtemp())
    >>> calls = []
    >>> @client.create_function(fn_id="greet")
    ... def greet(ctx: nbdurable.ContextSync) -> str:
    ...     return ctx.step.run("hello", lambda: calls.append(1) or f"hi {ctx.event.data['name']}")
    >>> greet.run({"name": "ada"}), greet.run({"name": "ada"}), len(calls)
    ('hi ada', 'hi ada', 1)
"""

from __future__ import annotations

from typing import Any

from nbdurable import _display, _process
from nbdurable._client import Client, default_client, function
from nbdurable._codecs import DataCodec, register_codec
from nbdurable._events import Cancel, Concurrency, Event, TriggerCron, TriggerEvent
from nbdurable._function import Function
from nbdurable._inngest import to_inngest
from nbdurable._run import Run
from nbdurable._step import Context, ContextSync, Group, GroupSync, Step, StepSync
from nbdurable._types import Backoff, RunStatus, StepInfo, StepStatus
from nbdurable.errors import (
    ExecutorLostError,
    InputUnserializableError,
    NbdurableError,
    NestedStepError,
    NonRetriableError,
    OutputUnserializableError,
    RetryAfterError,
    RunCancelledError,
    RunFailedError,
    RunLockedError,
    StaleStepWarning,
    StepError,
    StoreError,
)

Inngest = Client
"""The same class as :class:`Client`, so ``import nbdurable as inngest`` reads like the Inngest SDK."""

__version__ = "0.1.0"

_process.STATE.presenter = _display.PRESENTER


def load_ipython_extension(ipython: Any) -> None:
    """``%load_ext nbdurable``: the magics, the live run view, and a note of interrupted runs.

    IPython is imported only here, when the extension loads, never by ``import nbdurable``.

    In a notebook cell::

        %load_ext nbdurable

    Args:
        ipython: the IPython shell.
    """
    from nbdurable._magics import load_ipython_extension as load

    load(ipython)


def unload_ipython_extension(ipython: Any) -> None:
    """``%unload_ext nbdurable``: remove exactly what loading added.

    In a notebook cell::

        %unload_ext nbdurable

    Args:
        ipython: the IPython shell.
    """
    from nbdurable._magics import unload_ipython_extension as unload

    unload(ipython)


__all__ = [
    "Backoff",
    "Cancel",
    "Client",
    "Concurrency",
    "Context",
    "ContextSync",
    "DataCodec",
    "Event",
    "ExecutorLostError",
    "Function",
    "Group",
    "GroupSync",
    "Inngest",
    "InputUnserializableError",
    "NbdurableError",
    "NestedStepError",
    "NonRetriableError",
    "OutputUnserializableError",
    "RetryAfterError",
    "Run",
    "RunCancelledError",
    "RunFailedError",
    "RunLockedError",
    "RunStatus",
    "StaleStepWarning",
    "Step",
    "StepError",
    "StepInfo",
    "StepStatus",
    "StepSync",
    "StoreError",
    "TriggerCron",
    "TriggerEvent",
    "default_client",
    "function",
    "load_ipython_extension",
    "register_codec",
    "to_inngest",
    "unload_ipython_extension",
]
