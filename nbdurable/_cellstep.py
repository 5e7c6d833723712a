"""``%%step``: a notebook cell as a durable step, invalidated by dataflow. No IPython import.

A cell step is a run of the function ``%%step`` (``%%step[scope]`` for a notebook's own
scope) named by the cell, with one step: executing the cell. The step's arguments are the
cell's source and the content fingerprints of every name it reads, so it replays exactly
when neither changed: editing an upstream cell re-executes only the cells that read what it
binds, and an upstream cell that yields the same values invalidates nothing. Its output is
a manifest (JSON): each name the cell bound, stored on its own (``_cellstore``), the outputs
the cell showed (``_cellio``), what it read and why it executed.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import hashlib
import inspect
import linecache
import os
import shlex
import types
from typing import Any, NoReturn

from nbdurable import _execute, _history, _index, _records, _store
from nbdurable._actions import Runner, drive_sync
from nbdurable._cellast import CellShape, analyse, assigned_names
from nbdurable._cellio import Capture, replay
from nbdurable._cellstore import (
    UnpicklableVariableError,
    entry_files,
    load_entry,
    load_outputs,
    restore_names,
    store_names,
    store_outputs,
    value_digest,
)
from nbdurable._client import Client
from nbdurable._clock import Clock
from nbdurable._events import Event
from nbdurable._function import Function
from nbdurable._loop import run_blocking
from nbdurable._run import Run
from nbdurable._step import ContextSync
from nbdurable._text import seconds, when
from nbdurable._types import CORRUPT, MISSING, Backoff, StepInfo, StepStatus
from nbdurable.errors import RunFailedError

__all__ = ["CELL_FUNCTION", "CellStepUsageError", "CellSteps", "UnpicklableVariableError", "assigned_names"]

CELL_FUNCTION = "%%step"
"""The function id cell steps are stored under (one run per cell step, named by the cell)."""
CELL_STEP = "cell.v2"
"""The step executing the cell (``.v2``: the manifest format; older cell steps execute once again)."""


class CellStepUsageError(Exception):
    """A mistake in a ``%%step`` line: the message says what and how to fix it."""


def _fail(message: str) -> NoReturn:
    raise CellStepUsageError(message)


class _ArgParser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        _fail(f"{self.prog}: {message}. See %nbdurable help")


def function_id(scope: str) -> str:
    """The function id of a scope's cell steps (``%%step`` without a scope)."""
    return f"{CELL_FUNCTION}[{scope}]" if scope else CELL_FUNCTION


def default_scope(shell: Any) -> str:
    """The notebook's path (relative to the kernel's folder), when the front end tells it; else none."""
    path = os.environ.get("JPY_SESSION_NAME") or shell.user_ns.get("__session__") or ""
    if not isinstance(path, str) or not path:
        return ""
    with contextlib.suppress(ValueError):
        relative = os.path.relpath(path)
        if not relative.startswith(".."):
            return relative
    return path


def _cell_traceback(tb: types.TracebackType | None) -> types.TracebackType | None:
    """The traceback from the cell's own code on (the engine's frames say nothing to the user)."""
    last = tb
    while tb is not None:
        if tb.tb_frame.f_code.co_filename.startswith("<%%step"):
            return tb
        last = tb
        tb = tb.tb_next
    return last


class _RetryNotes:
    """Prints a line when a cell step fails an attempt and will retry."""

    def __init__(self, run: Run[Any], name: str, clock: Clock) -> None:
        self.run = run
        self.name = name
        self.clock = clock
        run.add_listener(self.on_event)

    def on_event(self, kind: str, _run: Run[Any], step: StepInfo | None) -> None:
        if kind == "step_retrying" and step is not None and step.error is not None:
            wait = seconds(step.deadline - self.clock.now()) if step.deadline else "-"
            print(  # noqa: T201
                f"%%step {self.name}: attempt {step.attempts}/{step.max_attempts} failed "
                f"({step.error.name}: {step.error.message}); retrying in {wait}"
            )

    def close(self) -> None:
        self.run.remove_listener(self.on_event)


class CellSteps:
    """The ``%%step`` cells of one kernel: their client per store, and where each name came from.

    Args:
        shell: the IPython shell (its ``user_ns``, ``user_module``, ``transform_cell``, ``display_pub``).
    """

    def __init__(self, shell: Any) -> None:
        self.shell = shell
        self.clients: dict[str, Client] = {}
        self.bound_by: dict[str, tuple[str, str | None]] = {}
        """Name -> (the cell step that last bound it here, the digest it stored)."""
        self.clock: Clock | None = None
        """Time source of cell steps' retries (tests inject a fake one)."""
        self.backoff: Backoff | None = None
        """Delays between attempts of failing cell steps (default: ``Backoff()``)."""

    def client(self, store_path: str) -> Client:
        """The client cell steps are stored with (the current store)."""
        path = os.path.abspath(store_path)
        client = self.clients.get(path)
        if client is None:
            client = self.clients[path] = Client("notebook", store=path, clock=self.clock, backoff=self.backoff)
        return client

    def close(self) -> None:
        """Close the stores cell steps opened."""
        for client in self.clients.values():
            _store.Store.forget(client.store_path)
        self.clients.clear()

    # -- the store -----------------------------------------------------------------------------

    def manifest(self, client: Client, fn_id: str, name: str) -> dict[str, Any] | None:
        """The manifest a cell step stored last (None: never stored, or unreadable)."""
        got = client.store.get_step(_store.step_prefix(client.app_id, fn_id, name) + CELL_STEP)
        if got is MISSING or got is CORRUPT or got[0].status != "COMPLETED":
            return None
        import json

        try:
            found = json.loads(got[1])
        except ValueError:
            return None
        return found if isinstance(found, dict) else None

    def _bring_back(self, client: Client, fn_id: str, names: list[str]) -> list[str]:
        """Restore names a cell reads that this kernel lacks, from the cell step that stored them last."""
        ns = self.shell.user_ns
        missing = [n for n in names if n not in ns]
        if not missing or not client.store.trusted:
            return []
        found: list[str] = []
        for entry in _index.runs(client.store, client.app_id, fn_id):  # newest first
            rec = entry.record
            manifest = self.manifest(client, fn_id, rec.run_id)
            entries = (manifest or {}).get("names", {})
            for var in [n for n in missing if n in entries and n not in found]:
                with contextlib.suppress(Exception):
                    value = load_entry(client.store, entries[var], ns, f"<%%step {rec.run_id}: {var}>")
                    if var not in ns:  # a def executes itself into the namespace
                        ns[var] = value
                    found.append(var)
                    self.bound_by[var] = (rec.run_id, entries[var].get("digest"))
        return found

    # -- one cell ----------------------------------------------------------------------------------

    def run(self, line: str, cell: str, store_path: str) -> None:
        """``%%step NAME [--retries N] [--refresh] [--strict] [--scope S]``: execute or restore the cell."""
        p = _ArgParser(prog="%%step", add_help=False)
        p.add_argument("name")
        p.add_argument("--retries", type=int, default=0)
        p.add_argument("--refresh", action="store_true")
        p.add_argument("--strict", action="store_true")
        p.add_argument("--scope")
        ns = p.parse_args(shlex.split(line))
        name: str = ns.name
        if ns.retries < 0:
            _fail(f"%%step {name}: --retries must be >= 0, got {ns.retries}")
        client = self.client(store_path)
        fn_id = function_id(default_scope(self.shell) if ns.scope is None else ns.scope)
        source: str = self.shell.transform_cell(cell)
        shape = analyse(ast.parse(source, f"<%%step {name}>"), source)
        previous = self.manifest(client, fn_id, name)
        brought = self._bring_back(client, fn_id, shape.reads)
        if brought:
            print(f"%%step {name}: restored {', '.join(brought)} (which it reads) from the cell steps that made them")  # noqa: T201
        reads = self._read_digests(shape)
        changed = _changed(previous, source, reads)
        if previous is not None and not client.store.trusted:
            client.store.warn_untrusted()
            changed = changed or "its store was not created by you"
        if ns.refresh or changed:
            with contextlib.suppress(KeyError):
                _history.invalidate(client, fn_id, name, None)
        why = "--refresh" if ns.refresh else changed or ("first run" if previous is None else "it had not finished")
        stored = self._execute_step(client, fn_id, name, source, shape, why, ns, previous)
        state_steps = stored[1]
        manifest = stored[0]
        info = state_steps[0] if state_steps else None
        for var, entry in manifest.get("names", {}).items():
            self.bound_by[var] = (name, entry.get("digest"))
        if info is not None and info.status is StepStatus.REPLAYED:
            self._restore(client, name, manifest, info)
        else:
            self._after_execution(client, name, manifest, previous)

    def _execute_step(
        self,
        client: Client,
        fn_id: str,
        name: str,
        source: str,
        shape: CellShape,
        why: str,
        options: argparse.Namespace,
        previous: dict[str, Any] | None,
    ) -> tuple[dict[str, Any], list[StepInfo]]:
        shell = self.shell
        folder = client.store.data.folder(client.app_id, fn_id, name)
        before = self._read_digests(shape)
        origins = {var: self._origin(var, digest) for var, digest in before.items()}

        def execute(code_text: str) -> dict[str, Any]:
            with Capture(shell) as capture:
                _exec_cell(shell, name, code_text)
            # What it read, as it left it: a cell that appends to a list it reads is not changed by that.
            reads = self._read_digests(shape)
            user_module = getattr(shell.user_module, "__name__", "__main__")
            entries, skipped = store_names(
                client.store, folder, shell.user_ns, shape, code_text, user_module, (previous or {}).get("names", {})
            )
            if skipped and options.strict:
                names = ", ".join(f"{v} ({why})" for v, why in skipped.items())
                msg = (
                    f"%%step {name}: cannot store {names}; nothing was stored. Fix: `del` them at the end of the "
                    "cell, create them in a cell that is not a %%step, or drop --strict to store the rest."
                )
                raise UnpicklableVariableError(msg)
            if skipped:
                listed = "; ".join(f"{v} ({why})" for v, why in skipped.items())
                print(f"%%step {name}: not stored (they cannot be pickled): {listed}")  # noqa: T201
            return {
                "names": entries,
                "skipped": skipped,
                "outputs": store_outputs(client.store, folder, capture.outputs),
                "reads": {var: {"digest": d, "from": origins[var]} for var, d in reads.items()},
                "why": why,
                "source": hashlib.blake2b(code_text.encode(), digest_size=8).hexdigest(),
            }

        def body(ctx: ContextSync) -> dict[str, Any]:
            return ctx.step.run(CELL_STEP, execute, source)

        fn: Function[dict[str, Any]] = Function(client, body, fn_id=fn_id, retries=options.retries, on_change="rerun")
        state, attached = _execute.claim(fn, None, name, Event("nbdurable/cell", {"cell": name}), blocking=True)
        if attached:
            _fail(f"%%step {name}: this cell step is already executing")
        notes = _RetryNotes(state.handle, name, client.clock)
        try:
            manifest = drive_sync(Runner(client.clock, None), _execute.execution(fn, state))
        except RunFailedError as exc:
            cause = exc.__cause__
            if isinstance(cause, Exception):
                raise cause.with_traceback(_cell_traceback(cause.__traceback__)) from None
            raise
        finally:
            notes.close()
        return manifest, state.handle.steps

    def _read_digests(self, shape: CellShape) -> dict[str, str | None]:
        """Content fingerprints of the names a cell reads (those this kernel has)."""
        ns = self.shell.user_ns
        out: dict[str, str | None] = {}
        for var in shape.reads:
            if var not in ns:
                continue
            digest = value_digest(ns[var])
            if digest is None:  # no stable content (a connection, a generator): the cell step that made it
                origin = self.bound_by.get(var)
                kind = f"{type(ns[var]).__module__}.{type(ns[var]).__qualname__}"
                digest = f"made by {origin[0]}:{origin[1]}" if origin else f"unfingerprintable {kind}"
            out[var] = digest
        return out

    def _origin(self, var: str, digest: str | None) -> str:
        found = self.bound_by.get(var)
        if found is not None and found[1] == digest:
            return f"cell step {found[0]}"
        return "a plain cell" if found is None else f"a cell after cell step {found[0]} changed it"

    def _restore(self, client: Client, name: str, manifest: dict[str, Any], info: StepInfo) -> None:
        replay(self.shell, load_outputs(client.store, manifest.get("outputs")))
        entries = manifest.get("names", {})
        lost = restore_names(client.store, entries, self.shell.user_ns, name)
        back = [v for v in entries if v not in lost]
        line = (
            f"%%step {name}: restored {', '.join(back) or 'nothing'} from {when(info.started_at)} "
            f"(the cell took {seconds(info.duration)} then; --refresh to run it again)"
        )
        left = [*lost, *manifest.get("skipped", {})]
        if left:
            line += f"; not brought back: {', '.join(left)} (run `%%step {name} --refresh` to recreate them)"
        print(line)  # noqa: T201

    def _after_execution(
        self, client: Client, name: str, manifest: dict[str, Any], previous: dict[str, Any] | None
    ) -> None:
        if previous is None:
            return
        kept = entry_files(manifest.get("names", {}))
        old = entry_files(previous.get("names", {}))
        if previous.get("outputs"):
            old.add(previous["outputs"]["file"])
        for file in old - kept:
            client.store.data.delete(_records.DataRef(codec="", file=file, size=0))
        print(f"%%step {name}: executed again ({manifest.get('why', 'it changed')})")  # noqa: T201


def _changed(previous: dict[str, Any] | None, source: str, reads: dict[str, str | None]) -> str | None:
    """What differs from a cell step's last stored execution (None: nothing, it restores)."""
    if previous is None:
        return None
    if previous.get("source") != hashlib.blake2b(source.encode(), digest_size=8).hexdigest():
        return "its source changed"
    before = {var: r.get("digest") for var, r in previous.get("reads", {}).items()}
    changed = [var for var, d in reads.items() if before.get(var) != d]
    return f"{', '.join(changed)} changed" if changed else None


def _exec_cell(shell: Any, name: str, source: str) -> None:
    """Execute a cell in the user namespace, as a notebook does.

    Top-level ``await`` is allowed, and the value of a last expression (``df.head()``) is
    displayed, unless the cell ends with ``;``.
    """
    filename = f"<%%step {name}>"
    linecache.cache[filename] = (len(source), None, source.splitlines(keepends=True), filename)
    tree = ast.parse(source, filename)
    last = None
    final = tree.body[-1] if tree.body else None
    if isinstance(final, ast.Expr) and not source.rstrip().endswith(";"):
        tree.body.pop()
        last = ast.Expression(final.value)
    ns = shell.user_ns
    _run_code(compile(tree, filename, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT), ns)
    if last is not None:
        value = _run_code(compile(last, filename, "eval", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT), ns)
        if value is not None:
            data, metadata = shell.display_formatter.format(value)
            shell.display_pub.publish(data=data, metadata=metadata)


def _run_code(code: types.CodeType, ns: dict[str, Any]) -> Any:
    if code.co_flags & inspect.CO_COROUTINE:
        return run_blocking(eval(code, ns))  # noqa: S307 - executing the user's own cell is the point
    return eval(code, ns)  # noqa: S307 - the same: exec-mode code evaluates to None


def describe(client: Client, fn_id: str, name: str) -> list[str]:
    """Lines for ``%nbdurable show`` of a cell step: what it read, from where, and why it last executed."""
    manifest = CellSteps(None).manifest(client, fn_id, name)
    if manifest is None:
        return []
    lines = [f"last executed because: {manifest.get('why', '-')}"]
    for var, read in manifest.get("reads", {}).items():
        lines.append(f"reads {var} from {read.get('from', '-')}")
    stored = ", ".join(manifest.get("names", {})) or "nothing"
    lines.append(f"stores {stored}")
    if manifest.get("skipped"):
        lines.append(f"left out: {', '.join(manifest['skipped'])}")
    return lines
