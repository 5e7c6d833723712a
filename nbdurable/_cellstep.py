"""``%%step``: a notebook cell as a durable step. AST analysis, storing and restoring names.

A cell step is a run of the function ``%%step`` named by the cell, with one step: executing
the cell. Its output is what the cell bound at top level, ready to store (pickled values,
the source of ``def``/``class`` statements, module names); replaying it puts them back in
the user's namespace. No IPython import: the shell is passed in.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import importlib
import inspect
import linecache
import os
import pickle
import shlex
import types
from collections.abc import Iterator
from typing import Any, NoReturn

from nbdurable import _execute, _history, _store
from nbdurable._actions import Runner, drive_sync
from nbdurable._client import Client
from nbdurable._clock import Clock
from nbdurable._commands import CELL_FUNCTION, CommandError, when
from nbdurable._events import Event
from nbdurable._function import Function
from nbdurable._loop import run_blocking
from nbdurable._run import Run
from nbdurable._step import ContextSync
from nbdurable._text import seconds
from nbdurable._types import CORRUPT, MISSING, Backoff, StepInfo, StepStatus
from nbdurable.errors import NonRetriableError, OutputUnserializableError, RunFailedError

CELL_STEP = "cell"


class UnpicklableVariableError(NonRetriableError, OutputUnserializableError):
    """A ``%%step`` cell assigned a name whose value pickle cannot store."""


def _fail(message: str) -> NoReturn:
    raise CommandError(message)


class _ArgParser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        _fail(f"{self.prog}: {message}. See %nbdurable help")


# --- which names a cell binds -------------------------------------------------------------------


def _target_names(target: ast.expr) -> Iterator[str]:
    if isinstance(target, ast.Name):
        yield target.id
    elif isinstance(target, (ast.Tuple, ast.List)):
        for elt in target.elts:
            yield from _target_names(elt)
    elif isinstance(target, ast.Starred):
        yield from _target_names(target.value)


def assigned_names(tree: ast.Module) -> tuple[list[str], dict[str, ast.stmt]]:
    r"""Top-level names a cell binds, in order, and the def/class statements among them.

    Assignments (plain, augmented, annotated with a value), for/with targets, imports and
    defs count; names bound inside function or class bodies do not.

    Example:
        >>> assigned_names(ast.parse("import os\nx, y = 1, 2\ndef f(): z = 3"))[0]
        ['os', 'x', 'y', 'f']
    """
    names: list[str] = []
    defs: dict[str, ast.stmt] = {}

    def add(*found: str) -> None:
        names.extend(n for n in found if n not in names)

    def visit(body: list[ast.stmt]) -> None:
        for node in body:
            if isinstance(node, ast.Assign):
                for target in node.targets:
                    add(*_target_names(target))
            elif isinstance(node, (ast.AugAssign, ast.AnnAssign)):
                if not isinstance(node, ast.AnnAssign) or node.value is not None:
                    add(*_target_names(node.target))
            elif isinstance(node, (ast.For, ast.AsyncFor)):
                add(*_target_names(node.target))
                visit(node.body)
                visit(node.orelse)
            elif isinstance(node, (ast.With, ast.AsyncWith)):
                for item in node.items:
                    if item.optional_vars is not None:
                        add(*_target_names(item.optional_vars))
                visit(node.body)
            elif isinstance(node, (ast.Import, ast.ImportFrom)):
                add(*(alias.asname or alias.name.split(".")[0] for alias in node.names if alias.name != "*"))
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                add(node.name)
                defs[node.name] = node
            elif isinstance(node, (ast.If, ast.While)):
                visit(node.body)
                visit(node.orelse)
            elif isinstance(node, ast.Try):
                visit(node.body)
                for handler in node.handlers:
                    if handler.name:
                        add(handler.name)
                    visit(handler.body)
                visit(node.orelse)
                visit(node.finalbody)
            elif isinstance(node, ast.Expr):
                add(*(sub.target.id for sub in ast.walk(node) if isinstance(sub, ast.NamedExpr)))

    visit(tree.body)
    return names, defs


# --- executing and restoring ------------------------------------------------------------------


def execute_cell(shell: Any, name: str, source: str) -> dict[str, Any]:
    """Execute a cell in the user namespace; return what it bound, ready to store."""
    filename = f"<%%step {name}>"
    tree = ast.parse(source, filename)
    names, defs = assigned_names(tree)
    linecache.cache[filename] = (len(source), None, source.splitlines(keepends=True), filename)
    ns = shell.user_ns
    code = compile(tree, filename, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
    if code.co_flags & inspect.CO_COROUTINE:  # the cell awaits at top level, as notebooks allow
        run_blocking(eval(code, ns))  # noqa: S307 - executing the user's own cell is the point
    else:
        exec(code, ns)  # noqa: S102 - executing the user's own cell is the point
    user_module = getattr(shell.user_module, "__name__", "__main__")
    stored: dict[str, Any] = {}
    for var in names:
        if var not in ns:
            continue
        value = ns[var]
        if isinstance(value, types.ModuleType):
            stored[var] = ("module", value.__name__)
        elif var in defs and getattr(value, "__module__", None) == user_module:
            stored[var] = ("source", definition_source(source, defs[var]))
        else:
            try:
                stored[var] = ("pickle", pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL))
            except Exception as exc:  # noqa: BLE001 - pickling raises many types
                kind = f"{type(value).__module__}.{type(value).__qualname__}"
                msg = (
                    f"%%step {name}: variable {var!r} of type {kind} cannot be pickled ({exc}); nothing was stored. "
                    f"Fix: `del {var}` at the end of the cell, or create it in a cell that is not a %%step."
                )
                raise UnpicklableVariableError(msg) from None
    return stored


def definition_source(source: str, node: ast.stmt) -> str:
    """A top-level def or class of a cell, decorators included."""
    decorators = getattr(node, "decorator_list", [])
    start = min([node.lineno, *(d.lineno for d in decorators)])
    return "".join(source.splitlines(keepends=True)[start - 1 : node.end_lineno])


def restore(shell: Any, name: str, stored: dict[str, Any]) -> list[str]:
    """Put a cell step's stored names back into the user namespace, in the order the cell bound them."""
    ns = shell.user_ns
    for var, (how, payload) in stored.items():
        try:
            if how == "module":
                ns[var] = importlib.import_module(payload)
            elif how == "source":
                exec(compile(payload, f"<%%step {name}: {var}>", "exec"), ns)  # noqa: S102 - the user's def
            else:
                ns[var] = pickle.loads(payload)  # noqa: S301 - only from a store this user created (_trust)
        except Exception as exc:
            msg = (
                f"%%step {name}: cannot restore {var!r} ({type(exc).__name__}: {exc}). "
                f"Fix: run the cell with `%%step {name} --refresh` to execute it again."
            )
            raise RuntimeError(msg) from exc
    return list(stored)


def cell_traceback(tb: types.TracebackType | None) -> types.TracebackType | None:
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


# --- the cell step ---------------------------------------------------------------------------------


class CellSteps:
    """The ``%%step`` cells of one kernel: their client per store and the order they ran in.

    Args:
        shell: the IPython shell (its ``user_ns``, ``user_module`` and ``transform_cell``).
    """

    def __init__(self, shell: Any) -> None:
        self.shell = shell
        self.clients: dict[str, Client] = {}
        self.order: list[str] = []
        self.clock: Clock | None = None
        """Time source of cell steps' retries (tests inject a fake one)."""
        self.backoff: Backoff | None = None
        """Delays between attempts of failing cell steps (default: ``Backoff()``)."""

    def client(self, store_path: str) -> Client:
        """The client cell steps are stored with (pickle, the current store)."""
        path = os.path.abspath(store_path)
        client = self.clients.get(path)
        if client is None:
            client = self.clients[path] = Client(
                "notebook", store=path, serializer="pickle", clock=self.clock, backoff=self.backoff
            )
        return client

    def close(self) -> None:
        """Close the stores cell steps opened."""
        for client in self.clients.values():
            _store.Store.forget(client.store_path)
        self.clients.clear()

    def _chain(self, client: Client, name: str | None) -> str | None:
        """The identity of a cell step's stored result: its fingerprint and when it was stored."""
        if name is None:
            return None
        got = client.store.get_step(_store.step_prefix(client.app_id, CELL_FUNCTION, name) + CELL_STEP)
        if got is MISSING or got is CORRUPT or got[0].status != "COMPLETED":
            return None
        return f"{got[0].fingerprint}@{got[0].started_at}"

    def _upstream(self, client: Client, name: str) -> str | None:
        """The cell step before this one: as stored when it first ran, else the last one run here.

        The stored link wins so that, after a restart, running cells in another order than the
        first time still restores them instead of executing unchanged cells again.
        """
        got = client.store.get_run(_store.run_key(client.app_id, CELL_FUNCTION, name))
        if got is not MISSING and got is not CORRUPT:
            upstream = got[0].event.data.get("upstream")
            return upstream if isinstance(upstream, str) and upstream != name else None
        earlier = [n for n in self.order if n != name]
        return earlier[-1] if earlier else None

    def run(self, line: str, cell: str, store_path: str) -> None:
        """``%%step NAME [--retries N] [--refresh]``: execute or restore the cell."""
        p = _ArgParser(prog="%%step", add_help=False)
        p.add_argument("name")
        p.add_argument("--retries", type=int, default=0)
        p.add_argument("--refresh", action="store_true")
        ns = p.parse_args(shlex.split(line))
        name: str = ns.name
        if ns.retries < 0:
            _fail(f"%%step {name}: --retries must be >= 0, got {ns.retries}")
        client = self.client(store_path)
        upstream = self._upstream(client, name)
        if name not in self.order:
            self.order.append(name)
        had_result = self._chain(client, name) is not None
        if ns.refresh:
            with contextlib.suppress(KeyError):
                _history.invalidate(client, CELL_FUNCTION, name, None)
        source: str = self.shell.transform_cell(cell)
        shell = self.shell

        def execute(code_text: str, _upstream: str | None, _upstream_chain: str | None) -> dict[str, Any]:
            return execute_cell(shell, name, code_text)

        chain = self._chain(client, upstream)

        def body(ctx: ContextSync) -> dict[str, Any]:
            return ctx.step.run(CELL_STEP, execute, source, upstream, chain)

        fn: Function[dict[str, Any]] = Function(
            client, body, fn_id=CELL_FUNCTION, retries=ns.retries, on_change="rerun", serializer="pickle"
        )
        event = Event("nbdurable/cell", {"cell": name, "upstream": upstream})
        state, attached = _execute.claim(fn, None, name, event, blocking=True)
        if attached:
            _fail(f"%%step {name}: this cell step is already executing")
        notes = _RetryNotes(state.handle, name, client.clock)
        try:
            stored = drive_sync(Runner(client.clock, None), _execute.execution(fn, state))
        except RunFailedError as exc:
            cause = exc.__cause__
            if isinstance(cause, Exception):
                raise cause.with_traceback(cell_traceback(cause.__traceback__)) from None
            raise
        finally:
            notes.close()
        steps = state.handle.steps
        info = steps[0] if steps else None
        if info is not None and info.status is StepStatus.REPLAYED:
            names = restore(shell, name, stored)
            print(  # noqa: T201
                f"%%step {name}: restored {', '.join(names) or 'nothing'} from {when(info.started_at)} "
                f"(the cell took {seconds(info.duration)} then; --refresh to run it again)"
            )
        elif had_result:
            after = self.order[self.order.index(name) + 1 :]
            if after:
                print(f"%%step {name}: executed again; cell steps after it ({', '.join(after)}) will execute again")  # noqa: T201
