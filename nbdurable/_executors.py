"""Step handlers on an executor: threads, processes or a Dask cluster, and what each fault means.

A handler given to an executor can fail in three ways, and each has its own outcome:

- it cannot be sent (the handler or an argument does not pickle): ``InputUnserializableError``,
  a non-retriable failure, since every attempt would fail the same way;
- the executor is gone (a process pool broken by a dead worker, a pool shut down, a Dask
  client that lost its scheduler): ``ExecutorGone``, which stops the run INTERRUPTED (its
  caller gets ``ExecutorLostError``) so it resumes on a new executor;
- anything else (the handler raised, or a Dask worker died running it, ``KilledWorker``) is
  one failed attempt, retried as usual.

Whether a failure was a pickling one is checked only after an attempt failed, so a step that
succeeds pays nothing for the check. ``distributed`` is never imported: a Dask executor is
recognised by the module of its class.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import contextvars
import pickle
import uuid
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Any

from nbdurable import _keys
from nbdurable._lifecycle import ExecutorGone
from nbdurable.errors import InputUnserializableError

THREADS = "threads"
PROCESSES = "processes"
DASK = "dask"
OTHER = "other"


def kind_of(executor: Executor) -> str:
    """What sort of executor this is: ``threads``, ``processes``, ``dask`` or ``other``.

    Example:
        >>> from concurrent.futures import ThreadPoolExecutor
        >>> with ThreadPoolExecutor(1) as pool:
        ...     kind_of(pool)
        'threads'
    """
    if isinstance(executor, concurrent.futures.ThreadPoolExecutor):
        return THREADS
    if isinstance(executor, concurrent.futures.ProcessPoolExecutor):
        return PROCESSES
    if type(executor).__module__.startswith("distributed.") and getattr(executor, "_client", None) is not None:
        return DASK
    return OTHER


def call(fn: Callable[..., Any], *args: Any) -> Any:
    """Call a handler in a pool's thread or process; a coroutine it returns runs there, in a loop of its own."""
    value = fn(*args)
    if asyncio.iscoroutine(value):
        value = asyncio.run(value)
    return value


def on_worker(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``call`` for a Dask worker, as a closure Dask pickles by value: workers need not install nbdurable.

    A handler such as ``lambda: fetch(2)`` returns a coroutine, which could not travel back
    to the kernel (and Dask would wait for it forever): it runs on the worker instead.
    """

    def step(*args: Any) -> Any:
        import asyncio

        value = fn(*args)
        if asyncio.iscoroutine(value):
            value = asyncio.run(value)
        return value

    return step


class Target:
    """One executor, with the rules for submitting a handler to it and reading the outcome.

    Args:
        executor: any ``concurrent.futures.Executor``; a Dask cluster's comes from
            ``distributed.Client.get_executor()``.
    """

    __slots__ = ("dask_client", "executor", "kind")

    def __init__(self, executor: Executor) -> None:
        self.executor = executor
        self.kind = kind_of(executor)
        self.dask_client: Any = getattr(executor, "_client", None) if self.kind == DASK else None

    def submit(self, fn: Callable[..., Any], args: tuple[Any, ...], key: str) -> concurrent.futures.Future[Any]:
        """Hand ``fn(*args)`` (the handler of step ``key``) to the executor."""
        if self.kind == DASK:
            status = getattr(self.dask_client, "status", "running")
            if status != "running":
                raise self.lost(key, f"its Dask client is {status!r}: the scheduler is gone or the client was closed")
        try:
            if self.kind == THREADS:
                # A handler on a thread pool still sees this step's context (the nesting checks).
                return self.executor.submit(contextvars.copy_context().run, call, fn, *args)
            if self.kind == DASK:
                # Dask runs an async function in its worker's event loop. An explicit key: Dask would
                # otherwise give equal calls (a retry) the same task.
                target = fn if asyncio.iscoroutinefunction(fn) else on_worker(fn)
                name = getattr(fn, "__name__", "step")
                return self.executor.submit(target, *args, key=f"{name}-{uuid.uuid4().hex}")
            return self.executor.submit(call, fn, *args)
        except concurrent.futures.BrokenExecutor as exc:
            raise self.broken(key) from exc
        except Exception as exc:
            if isinstance(exc, RuntimeError) and "shutdown" in str(exc):
                raise self.lost(key, "it was shut down") from exc
            error = self.classify(exc, fn, args, key)
            if error is exc:
                raise
            raise error from exc

    def outcome(
        self, future: concurrent.futures.Future[Any], fn: Callable[..., Any], args: tuple[Any, ...], key: str
    ) -> Any:
        """The handler's value, or its failure told apart (see the module's docstring)."""
        if future.cancelled():
            raise self.lost(key, "its task was cancelled (the executor was shut down, or lost its scheduler)")
        exc = future.exception()
        if exc is None:
            return future.result()
        if isinstance(exc, concurrent.futures.BrokenExecutor):
            raise self.broken(key) from exc
        raise self.classify(exc, fn, args, key)

    def classify(self, exc: BaseException, fn: Callable[..., Any], args: tuple[Any, ...], key: str) -> BaseException:
        """``InputUnserializableError`` if the handler or an argument cannot be pickled, else ``exc`` itself."""
        if self.kind not in (PROCESSES, DASK):
            return exc
        found = unpicklable(fn, args, cloud=self.kind == DASK)
        if found is None:
            return exc
        index, err = found
        where = "a ProcessPoolExecutor's workers" if self.kind == PROCESSES else "the Dask cluster's workers"
        if index < 0:
            subject = f"its handler {getattr(fn, '__qualname__', fn)!r}"
            fix = (
                "define the handler with def at the top level of a module the workers import (a process pool "
                "pickles functions by name, so lambdas and nested functions cannot be sent), or use a thread pool "
                "or a Dask executor (Dask sends lambdas and closures by value)"
                if self.kind == PROCESSES
                else "make the handler refer to no open resource (a lock, a file, a connection): create it inside"
            )
        else:
            subject = f"argument {index} ({type(args[index]).__name__} {args[index]!r:.60})"
            fix = (
                "pass picklable values (data, paths, settings) and open files, locks or connections inside the handler"
            )
        msg = (
            f"step {_keys.label(key)!r} cannot be sent to {where}: {subject} cannot be pickled "
            f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}). Fix: {fix}."
        )
        out = InputUnserializableError(msg)
        out.__cause__ = err
        return out

    def lost(self, key: str, why: str) -> ExecutorGone:
        """The error that stops a run whose executor is gone."""
        example = {
            THREADS: "concurrent.futures.ThreadPoolExecutor()",
            PROCESSES: "concurrent.futures.ProcessPoolExecutor()",
            DASK: "distributed.Client(cluster).get_executor()",
        }.get(self.kind, "<a new executor>")
        return ExecutorGone(
            f"step {_keys.label(key)!r} cannot run on {self.name()}: {why}. The run stops here, INTERRUPTED, with "
            f"no step stored as failed. Fix: give the client (or the function) a new executor, e.g. "
            f"client.executor = {example}, and run again: completed steps replay."
        )

    def broken(self, key: str) -> ExecutorGone:
        """The error that stops a run whose process pool is broken."""
        return ExecutorGone(
            f"step {_keys.label(key)!r} cannot run on {self.name()}: the pool is broken, because one of its worker "
            "processes died (killed, out of memory, or unable to load a handler defined after the pool started), "
            "and a broken pool runs nothing more. The run stops here, INTERRUPTED, with no step stored as failed. "
            "Fix: make a new pool, client.executor = concurrent.futures.ProcessPoolExecutor(), and run again: "
            "completed steps replay."
        )

    def name(self) -> str:
        """The executor, as named in messages."""
        if self.kind == DASK:
            return f"the Dask cluster of {self.dask_client!r}"
        return f"{type(self.executor).__name__} at {id(self.executor):#x}"


async def until_done(future: concurrent.futures.Future[Any]) -> None:
    """Wait for an executor's future without blocking the loop; cancelling the wait cancels the future.

    Unlike ``asyncio.wrap_future``, a future cancelled by its executor does not cancel the
    waiting task: the caller reads the cancellation from the future and says what it means.
    """
    loop = asyncio.get_running_loop()
    done = loop.create_future()

    def wake(_: concurrent.futures.Future[Any]) -> None:
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: nobody waits any more
            loop.call_soon_threadsafe(_settle, done)

    future.add_done_callback(wake)
    try:
        await done
    except BaseException:
        future.cancel()
        raise


def _settle(done: asyncio.Future[None]) -> None:
    if not done.done():
        done.set_result(None)


class _Discard:
    """A file that forgets what is written: checking that a value pickles costs no memory."""

    def write(self, data: Any) -> int:
        return len(data)


def unpicklable(fn: Callable[..., Any], args: tuple[Any, ...], *, cloud: bool) -> tuple[int, BaseException] | None:
    """What cannot be pickled as an executor would: ``(-1, error)`` for the handler, ``(i, error)`` for argument i.

    Out-of-band buffers (numpy arrays, frames) are dropped, not copied, so a large argument
    costs the walk over its structure, not its bytes.

    Example:
        >>> import threading
        >>> unpicklable(print, (1, threading.Lock()), cloud=False)[0]
        1
        >>> unpicklable(lambda: 1, (), cloud=False)[0], unpicklable(print, (1,), cloud=False)
        (-1, None)
    """
    dispatch: Any = None
    if cloud:
        import cloudpickle

        pickler: Any = cloudpickle.Pickler
    else:
        from multiprocessing.reduction import ForkingPickler

        # A process pool pickles with ForkingPickler, whose reducers live in its dispatch table.
        pickler, dispatch = pickle.Pickler, ForkingPickler(_Discard()).dispatch_table
    for index, obj in enumerate((fn, *args), start=-1):
        try:
            check = pickler(_Discard(), pickle.HIGHEST_PROTOCOL, buffer_callback=_drop)
            if dispatch is not None:
                check.dispatch_table = dispatch
            check.dump(obj)
        except Exception as err:  # noqa: BLE001 - whatever pickling raises means "cannot be sent"
            return index, err
    return None


def _drop(_: pickle.PickleBuffer) -> None:
    """Out-of-band buffers are not needed to know that a value pickles."""
