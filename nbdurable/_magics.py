"""The IPython extension: ``%nbdurable``, ``%%step`` and the run view hook.

The only module that imports IPython. All state lives on the ``NbdurableMagics`` instance
that ``load_ipython_extension`` registers with the shell; ``unload_ipython_extension``
finds it in the shell's magics registry and removes exactly what loading added.
"""

from __future__ import annotations

import argparse
import ast
import asyncio
import contextlib
import datetime as _dt
import html
import inspect
import json
import linecache
import os
import pickle
import shlex
import time
import types
from collections.abc import Callable, Iterator
from typing import Any, NoReturn

from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell
from IPython.core.magic import Magics, cell_magic, line_magic, magics_class, no_var_expand

from nbdurable import _client, _lease, _store
from nbdurable._client import Client
from nbdurable._clock import Clock
from nbdurable._events import Event
from nbdurable._function import Function
from nbdurable._records import RunRecord
from nbdurable._run import Run
from nbdurable._step import ContextSync
from nbdurable._text import seconds, show_run
from nbdurable._types import Backoff, RunStatus, StepInfo, StepStatus
from nbdurable.errors import NonRetriableError, OutputUnserializableError, RunFailedError

CELL_FUNCTION = "%%step"
"""The function id cell steps are stored under (one run per cell step, named by the cell)."""
CELL_STEP = "cell"

HELP = """\
%nbdurable runs [FN] [--status S]    runs in the store (newest first)
%nbdurable show RUN                  a run and its steps (RUN: an id or its first characters)
%nbdurable resume [RUN | --all]      execute a run again (or every INTERRUPTED one); steps replay
%nbdurable invalidate FN|RUN [--from STEP]
                                     forget stored steps so they execute again
%nbdurable clear FN | --all          delete a function's runs (or every run in the store)
%nbdurable store [PATH]              show the store, or use PATH from now on
%nbdurable send NAME [JSON]          send an event (starts matching functions, resolves waits)
%nbdurable help                      this text

%%step NAME [--retries N] [--refresh]
    The cell is a durable step: the names it assigns are stored (pickle); running it again
    restores them without executing the cell, also after a kernel restart. Editing the cell
    (or an earlier cell step) executes it again; --refresh forces that.

NBDURABLE_VIEW=off silences the run view; NBDURABLE_VIEW=text never builds widgets."""


def display(obj: Any, *, raw: bool = False) -> None:
    """Display an object (or a raw mime bundle) in the current front end."""
    from IPython.display import display as ipython_display

    ipython_display(obj, raw=raw)  # type: ignore[no-untyped-call]


def _table(headers: list[str], rows: list[list[str]]) -> dict[str, str]:
    """A table as a mime bundle: HTML for notebooks, aligned text for terminals."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    head = "".join(f"<th style='text-align:left'>{html.escape(h)}</th>" for h in headers)
    body = "".join(
        "<tr>" + "".join(f"<td style='text-align:left'>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows
    )
    return {"text/plain": "\n".join(lines), "text/html": f"<table><thead><tr>{head}</tr></thead>{body}</table>"}


def _fail(message: str) -> NoReturn:
    """Stop a magic with a short usage error (no traceback in IPython)."""
    raise UsageError(message)


def _when(ts: float | None) -> str:
    if ts is None:
        return "-"
    return _dt.datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S")  # noqa: DTZ006 - local time for people


class _ArgParser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        _fail(f"{self.prog}: {message}. See %nbdurable help")


def _parser(prog: str) -> _ArgParser:
    return _ArgParser(prog=prog, add_help=False)


# --- which names a cell assigns --------------------------------------------------------------


def _target_names(target: ast.expr) -> Iterator[str]:
    if isinstance(target, ast.Name):
        yield target.id
    elif isinstance(target, (ast.Tuple, ast.List)):
        for elt in target.elts:
            yield from _target_names(elt)
    elif isinstance(target, ast.Starred):
        yield from _target_names(target.value)


def assigned_names(tree: ast.Module) -> tuple[list[str], dict[str, ast.stmt]]:
    """Top-level names a cell binds, in order, and the def/class statements among them.

    Assignments (plain, augmented, annotated with a value), for/with targets, imports and
    defs count; names bound inside function or class bodies do not.
    """
    names: list[str] = []
    defs: dict[str, ast.stmt] = {}

    def add(name: str) -> None:
        if name not in names:
            names.append(name)

    def visit(body: list[ast.stmt]) -> None:
        for node in body:
            if isinstance(node, ast.Assign):
                for target in node.targets:
                    for n in _target_names(target):
                        add(n)
            elif isinstance(node, (ast.AugAssign, ast.AnnAssign)):
                if not isinstance(node, ast.AnnAssign) or node.value is not None:
                    for n in _target_names(node.target):
                        add(n)
            elif isinstance(node, (ast.For, ast.AsyncFor)):
                for n in _target_names(node.target):
                    add(n)
                visit(node.body)
                visit(node.orelse)
            elif isinstance(node, (ast.With, ast.AsyncWith)):
                for item in node.items:
                    if item.optional_vars is not None:
                        for n in _target_names(item.optional_vars):
                            add(n)
                visit(node.body)
            elif isinstance(node, (ast.Import, ast.ImportFrom)):
                for alias in node.names:
                    if alias.name != "*":
                        add(alias.asname or alias.name.split(".")[0])
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
                for sub in ast.walk(node):
                    if isinstance(sub, ast.NamedExpr):
                        add(sub.target.id)

    visit(tree.body)
    return names, defs


class UnpicklableVariableError(NonRetriableError, OutputUnserializableError):
    """A ``%%step`` cell assigned a name whose value pickle cannot store."""


# --- the magics -----------------------------------------------------------------------------


@magics_class
class NbdurableMagics(Magics):
    """``%nbdurable`` and ``%%step``; holds every piece of state the extension adds.

    Args:
        shell: the IPython shell.

    Example:
        >>> %load_ext nbdurable  # doctest: +SKIP
    """

    def __init__(self, shell: InteractiveShell) -> None:
        super().__init__(shell)
        self.hook: Callable[[Run[Any]], None] = show_run
        self.store_path = os.environ.get("NBDURABLE_STORE", _client.DEFAULT_STORE)
        self._cell_clients: dict[str, Client] = {}
        self.cell_order: list[str] = []
        self.clock: Clock | None = None
        """Time source of cell steps' retries (tests inject a fake one)."""
        self.backoff: Backoff | None = None
        """Delays between attempts of failing cell steps (default: ``Backoff()``)."""
        self.nested = False

    # -- load / unload -----------------------------------------------------------------------

    def install(self) -> None:
        """Register the magics and the run view hook; patch the running loop for blocking runs."""
        assert self.shell is not None
        self.shell.register_magics(self)
        if self.hook not in _client.run_hooks:
            _client.run_hooks.append(self.hook)
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        if loop is not None:
            import nest_asyncio

            # Process-wide and idempotent; run_blocking would apply it at the first blocking run anyway.
            nest_asyncio.apply(loop)
            self.nested = True
        notice = self.interrupted_notice()
        if notice:
            print(notice)  # noqa: T201 - the one-line notice on load

    def uninstall(self) -> None:
        """Remove exactly what ``install`` added."""
        assert self.shell is not None
        manager = self.shell.magics_manager
        for kind, names in self.magics.items():
            table = manager.magics[kind]
            for name in names:
                if getattr(table.get(name), "__self__", None) is self:
                    del table[name]
        if manager.registry.get(type(self).__name__) is self:
            del manager.registry[type(self).__name__]
        while self.hook in _client.run_hooks:
            _client.run_hooks.remove(self.hook)
        for client in self._cell_clients.values():
            _store.Store.forget(client.store_path)
        self._cell_clients.clear()

    # -- the store ---------------------------------------------------------------------------

    def _clients(self) -> list[Client]:
        """Clients the user has in this kernel: in the namespace, behind functions, the default one."""
        assert self.shell is not None
        found: list[Client] = []
        for value in list(self.shell.user_ns.values()):
            client = value if isinstance(value, Client) else getattr(value, "client", None)
            if isinstance(value, (Client, Function)) and isinstance(client, Client) and client not in found:
                found.append(client)
        if _client._default_client is not None and _client._default_client not in found:
            found.append(_client._default_client)
        return found

    def _store_paths(self) -> list[str]:
        paths: list[str] = []
        for path in [self.store_path, *(c.store_path for c in self._clients())]:
            full = os.path.abspath(path)
            if full not in paths and os.path.isdir(full):
                paths.append(full)
        return paths

    def _records(self) -> list[tuple[str, RunRecord]]:
        """Every run record in the stores in use, newest first, with its store path."""
        out = []
        for path in self._store_paths():
            store = _store.Store.open(path)
            for key in store.keys(f"r{_store.SEP}"):
                got = store.get_run(key)
                if got is not _store.MISSING and got is not _store.CORRUPT:
                    out.append((path, got[0]))
        out.sort(key=lambda pr: pr[1].updated_at, reverse=True)
        return out

    def _client_for(self, path: str, app: str, fn_id: str | None = None) -> Client:
        """A client of the user's on that store and app (with ``fn_id`` if given), else a plain one."""
        candidates = [c for c in self._clients() if os.path.abspath(c.store_path) == path and c.app_id == app]
        for client in candidates:
            if fn_id is None or fn_id in client.functions:
                return client
        if candidates:
            return candidates[0]
        return Client(app, store=path)

    def _find_run(self, ref: str) -> tuple[str, RunRecord]:
        """A run by id, id prefix, or ``FN/RUN`` (when runs of several functions share an id)."""
        records = self._records()
        fn_id, _, run_ref = ref.rpartition("/") if "/" in ref else ("", "", ref)
        if fn_id and not any(r.function_id == fn_id for _, r in records):
            fn_id, run_ref = "", ref  # a run id that itself contains "/"
        mine = [pr for pr in records if not fn_id or pr[1].function_id == fn_id]
        exact = [pr for pr in mine if pr[1].run_id == run_ref]
        found = exact or [pr for pr in mine if pr[1].run_id.startswith(run_ref)]
        if not found:
            _fail(f"no run {ref!r} in the store ({', '.join(self._store_paths()) or 'none yet'}); see %nbdurable runs")
        if len({(p, r.app, r.function_id, r.run_id) for p, r in found}) > 1:
            ids = ", ".join(f"{r.function_id}/{r.run_id}" for _, r in found[:5])
            _fail(f"{ref!r} matches several runs ({ids}); give more of the id, or FN/RUN")
        return found[0]

    def interrupted_notice(self) -> str:
        """One line naming the interrupted runs in the store and how to resume them ('' if none)."""
        now = time.time()
        hit = [(p, r) for p, r in self._records() if _lease.effective_status(r, now) is RunStatus.INTERRUPTED]
        if not hit:
            return ""
        names = ", ".join(f"{r.function_id}/{r.run_id}" for _, r in hit[:3]) + (" ..." if len(hit) > 3 else "")
        return (
            f"nbdurable: {len(hit)} interrupted run{'s' if len(hit) > 1 else ''} in the store ({names}); "
            "resume with `%nbdurable resume --all` (functions must be defined) or re-run their cells."
        )

    # -- %nbdurable --------------------------------------------------------------------------

    @no_var_expand
    @line_magic
    def nbdurable(self, line: str) -> None:
        """Manage durable runs: ``%nbdurable runs|show|resume|invalidate|clear|store|send|help``."""
        try:
            words = shlex.split(line)
        except ValueError as exc:
            _fail(f"%nbdurable: cannot parse {line!r}: {exc}")
        command, rest = (words[0], words[1:]) if words else ("help", [])
        if command == "send":  # the JSON keeps its quotes: split off the name only
            rest = line.split(None, 2)[1:]
        handler = getattr(self, f"_cmd_{command}", None)
        if handler is None:
            _fail(f"%nbdurable: unknown command {command!r}. See %nbdurable help")
        handler(rest)

    def _cmd_help(self, _args: list[str]) -> None:
        print(HELP)  # noqa: T201

    def _cmd_runs(self, args: list[str]) -> None:
        p = _parser("%nbdurable runs")
        p.add_argument("fn", nargs="?")
        p.add_argument("--status")
        ns = p.parse_args(args)
        want = None
        if ns.status is not None:
            try:
                want = RunStatus(ns.status.upper())
            except ValueError:
                _fail(f"%nbdurable runs: unknown status {ns.status!r}; one of {', '.join(s.value for s in RunStatus)}")
        now = time.time()
        rows = []
        for _path, rec in self._records():
            status = _lease.effective_status(rec, now)
            if (ns.fn is not None and rec.function_id != ns.fn) or (want is not None and status is not want):
                continue
            took = seconds(rec.ended_at - rec.started_at) if rec.ended_at and rec.started_at else "-"
            rows.append(
                [rec.app, rec.function_id, rec.run_id, status.value, str(len(rec.steps)), took, _when(rec.updated_at)]
            )
        if not rows:
            print("no runs" + (f" of {ns.fn!r}" if ns.fn else "") + (f" with status {want.value}" if want else ""))  # noqa: T201
            return
        display(_table(["app", "function", "run", "status", "steps", "took", "updated"], rows), raw=True)

    def _cmd_show(self, args: list[str]) -> None:
        p = _parser("%nbdurable show")
        p.add_argument("run")
        ns = p.parse_args(args)
        path, rec = self._find_run(ns.run)
        run = self._client_for(path, rec.app)._load(rec)
        rows = []
        for step in run.steps:
            detail = f"{step.error.name}: {step.error.message}" if step.error is not None else step.note
            rows.append([step.key, step.status.value, str(step.attempts), seconds(step.duration), detail[:80]])
        print(run.summary().splitlines()[0])  # noqa: T201
        if run.note:
            print(run.note)  # noqa: T201
        if rows:
            display(_table(["step", "status", "attempts", "took", "detail"], rows), raw=True)
        if run.error is not None:
            print(f"error: {run.error.name}: {run.error.message}")  # noqa: T201

    def _cmd_resume(self, args: list[str]) -> None:
        p = _parser("%nbdurable resume")
        p.add_argument("run", nargs="?")
        p.add_argument("--all", action="store_true")
        ns = p.parse_args(args)
        if ns.all == (ns.run is not None):
            _fail("%nbdurable resume: give a run id or --all")
        if ns.all:
            now = time.time()
            targets = [(p_, r) for p_, r in self._records() if _lease.effective_status(r, now) is RunStatus.INTERRUPTED]
            if not targets:
                print("no interrupted runs")  # noqa: T201
                return
        else:
            targets = [self._find_run(ns.run)]
        for path, rec in targets:
            if rec.function_id == CELL_FUNCTION:
                print(f"cell step {rec.run_id!r}: re-run its %%step cell to resume it")  # noqa: T201
                continue
            client = self._client_for(path, rec.app, rec.function_id)
            fn = client.functions.get(rec.function_id) or _failure_function(client, rec.function_id)
            if fn is None:
                message = (
                    f"%nbdurable resume: function {rec.function_id!r} (app {rec.app!r}) is not defined in this "
                    "kernel. Fix: run the cell that defines it, then resume again."
                )
                if not ns.all:
                    _fail(message)
                print(f"{rec.function_id}/{rec.run_id}: skipped; {message.split(': ', 1)[1]}")  # noqa: T201
                continue
            ev = rec.event
            with contextlib.suppress(RunFailedError):  # the view and `show` tell what failed
                fn.run(run_id=rec.run_id, event=Event(ev.name, ev.data, ev.id, ev.ts))
            print(f"{rec.function_id}/{rec.run_id}: {client.get_run(rec.run_id).status.value}")  # type: ignore[union-attr]  # noqa: T201

    def _cmd_invalidate(self, args: list[str]) -> None:
        p = _parser("%nbdurable invalidate")
        p.add_argument("target")
        p.add_argument("--from", dest="from_step")
        ns = p.parse_args(args)
        records = self._records()
        matches = [pr for pr in records if pr[1].function_id == ns.target]
        if not matches:
            matches = [self._find_run(ns.target)]
        total = 0
        for path, rec in matches:
            client = self._client_for(path, rec.app)
            try:
                keys = client._invalidate(rec.function_id, rec.run_id, ns.from_step)
            except KeyError as exc:
                if len(matches) == 1:
                    _fail(f"%nbdurable invalidate: {exc.args[0]}")
                continue
            total += len(keys)
            print(f"{rec.function_id}/{rec.run_id}: forgot {len(keys)} step(s): {', '.join(keys) or '-'}")  # noqa: T201
        if not total and len(matches) > 1:
            print("no stored steps matched")  # noqa: T201

    def _cmd_clear(self, args: list[str]) -> None:
        p = _parser("%nbdurable clear")
        p.add_argument("fn", nargs="?")
        p.add_argument("--all", action="store_true")
        ns = p.parse_args(args)
        if ns.all == (ns.fn is not None):
            _fail("%nbdurable clear: give a function id or --all")
        pairs = {(path, rec.app) for path, rec in self._records()}
        total = 0
        for path, app in sorted(pairs):
            client = self._client_for(path, app)
            try:
                total += client._clear(None if ns.all else ns.fn, None)
            except RuntimeError as exc:
                _fail(f"%nbdurable clear: {exc}")
        what = "every function" if ns.all else repr(ns.fn)
        print(f"cleared {total} run(s) of {what}")  # noqa: T201

    def _cmd_store(self, args: list[str]) -> None:
        p = _parser("%nbdurable store")
        p.add_argument("path", nargs="?")
        ns = p.parse_args(args)
        if ns.path is not None:
            self.store_path = ns.path
            os.environ["NBDURABLE_STORE"] = ns.path
            where = os.path.abspath(ns.path)
            print(f"store: {where} (new clients and cell steps use it; existing clients keep theirs)")  # noqa: T201
            return
        counts: dict[str, int] = {}
        for path, _rec in self._records():
            counts[path] = counts.get(path, 0) + 1
        print(f"store: {os.path.abspath(self.store_path)} ({counts.get(os.path.abspath(self.store_path), 0)} runs)")  # noqa: T201
        for path, n in counts.items():
            if path != os.path.abspath(self.store_path):
                print(f"also in use: {path} ({n} runs)")  # noqa: T201

    def _cmd_send(self, args: list[str]) -> None:
        p = _parser("%nbdurable send")
        p.add_argument("name")
        p.add_argument("data", nargs="?", default="{}")
        ns = p.parse_args(args)
        text = ns.data.strip()
        if len(text) > 1 and text[0] == text[-1] and text[0] in "'\"" and not text.startswith('""'):
            text = text[1:-1]  # JSON quoted as for a shell: '{"a": 1}'
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            _fail(f"%nbdurable send: the data must be a JSON object, got {ns.data!r} ({exc})")
        if not isinstance(data, dict):
            _fail(f"%nbdurable send: the data must be a JSON object, got {type(data).__name__}")
        # One client per store and app stores the event once; every client's functions must hear it.
        clients = self._clients() or [_client.default_client()]
        event = Event(ns.name, data)
        seen: set[tuple[str, str]] = set()
        for client in clients:
            where = (os.path.abspath(client.store_path), client.app_id)
            if where in seen:
                client._trigger(event)  # its own functions: the event is stored already
                continue
            seen.add(where)
            ids = client.send_sync(event)
            print(f"sent {ns.name!r} ({', '.join(ids)}) on {client!r}")  # noqa: T201

    # -- %%step ------------------------------------------------------------------------------

    def cell_client(self) -> Client:
        """The client cell steps are stored with (pickle, the current store)."""
        path = os.path.abspath(self.store_path)
        client = self._cell_clients.get(path)
        if client is None:
            client = self._cell_clients[path] = Client(
                "notebook", store=path, serializer="pickle", clock=self.clock, backoff=self.backoff
            )
        return client

    def _chain(self, client: Client, name: str | None) -> str | None:
        """The identity of a cell step's stored result: its fingerprint and when it was stored."""
        if name is None:
            return None
        got = client.store.get_step(_store.step_prefix(client.app_id, CELL_FUNCTION, name) + CELL_STEP)
        if got is _store.MISSING or got is _store.CORRUPT or got[0].status != "COMPLETED":
            return None
        return f"{got[0].fingerprint}@{got[0].started_at}"

    def _upstream(self, client: Client, name: str) -> str | None:
        """The cell step before this one: as stored when it first ran, else the last one run here.

        The stored link wins so that, after a restart, running cells in another order than the
        first time still restores them instead of executing unchanged cells again.
        """
        got = client.store.get_run(_store.run_key(client.app_id, CELL_FUNCTION, name))
        if got is not _store.MISSING and got is not _store.CORRUPT:
            upstream = got[0].event.data.get("upstream")
            return upstream if isinstance(upstream, str) and upstream != name else None
        earlier = [n for n in self.cell_order if n != name]
        return earlier[-1] if earlier else None

    @cell_magic
    def step(self, line: str, cell: str) -> None:
        """``%%step NAME [--retries N] [--refresh]``: the cell as a durable step."""
        assert self.shell is not None
        p = _parser("%%step")
        p.add_argument("name")
        p.add_argument("--retries", type=int, default=0)
        p.add_argument("--refresh", action="store_true")
        ns = p.parse_args(shlex.split(line))
        name: str = ns.name
        if ns.retries < 0:
            _fail(f"%%step {name}: --retries must be >= 0, got {ns.retries}")
        client = self.cell_client()
        upstream = self._upstream(client, name)
        if name not in self.cell_order:
            self.cell_order.append(name)
        had_result = self._chain(client, name) is not None
        if ns.refresh:
            with contextlib.suppress(KeyError):
                client._invalidate(CELL_FUNCTION, name, None)
        source: str = self.shell.transform_cell(cell)  # type: ignore[no-untyped-call]
        shell = self.shell

        def execute_cell(code_text: str, _upstream: str | None, _upstream_chain: str | None) -> dict[str, Any]:
            return _execute_cell(shell, name, code_text)

        chain = self._chain(client, upstream)

        def body(ctx: ContextSync) -> dict[str, Any]:
            return ctx.step.run(CELL_STEP, execute_cell, source, upstream, chain)

        fn: Function[dict[str, Any]] = Function(
            client, body, fn_id=CELL_FUNCTION, retries=ns.retries, on_change="rerun", serializer="pickle"
        )
        run, attached = fn._claim(None, name, Event("nbdurable/cell", {"cell": name, "upstream": upstream}))
        if attached:
            _fail(f"%%step {name}: this cell step is already executing")
        notes = _RetryNotes(run, name)
        try:
            stored = fn._execute_sync(run)
        except RunFailedError as exc:
            cause = exc.__cause__
            if isinstance(cause, Exception):
                raise cause.with_traceback(_cell_traceback(cause.__traceback__)) from None
            raise
        finally:
            notes.close()
        info = run.steps[0] if run.steps else None
        if info is not None and info.status is StepStatus.REPLAYED:
            names = _restore(shell, name, stored)
            took = seconds(info.duration)
            print(  # noqa: T201
                f"%%step {name}: restored {', '.join(names) or 'nothing'} from {_when(info.started_at)} "
                f"(the cell took {took} then; --refresh to run it again)"
            )
        elif had_result:
            after = self.cell_order[self.cell_order.index(name) + 1 :]
            if after:
                print(f"%%step {name}: executed again; cell steps after it ({', '.join(after)}) will execute again")  # noqa: T201


class _RetryNotes:
    """Prints a line when a cell step fails an attempt and will retry."""

    def __init__(self, run: Run[Any], name: str) -> None:
        self.run = run
        self.name = name
        run.add_listener(self.on_event)

    def on_event(self, kind: str, run: Run[Any], step: StepInfo | None) -> None:
        if kind == "step_retrying" and step is not None and step.error is not None:
            wait = seconds(step.deadline - run.client.clock.now()) if step.deadline and run.client else "-"
            print(  # noqa: T201
                f"%%step {self.name}: attempt {step.attempts}/{step.max_attempts} failed "
                f"({step.error.name}: {step.error.message}); retrying in {wait}"
            )

    def close(self) -> None:
        self.run.remove_listener(self.on_event)


def _execute_cell(shell: InteractiveShell, name: str, source: str) -> dict[str, Any]:
    """Execute a cell in the user namespace; return what it assigned, ready to store."""
    filename = f"<%%step {name}>"
    tree = ast.parse(source, filename)
    names, defs = assigned_names(tree)
    linecache.cache[filename] = (len(source), None, source.splitlines(keepends=True), filename)
    ns = shell.user_ns
    code = compile(tree, filename, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
    if code.co_flags & inspect.CO_COROUTINE:  # the cell awaits at top level, as notebooks allow
        from nbdurable._function import run_blocking

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
            stored[var] = ("source", _definition_source(source, defs[var]))
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


def _definition_source(source: str, node: ast.stmt) -> str:
    """A top-level def or class of a cell, decorators included."""
    decorators = getattr(node, "decorator_list", [])
    start = min([node.lineno, *(d.lineno for d in decorators)])
    return "".join(source.splitlines(keepends=True)[start - 1 : node.end_lineno])


def _failure_function(client: Client, fn_id: str) -> Function[Any] | None:
    """The ``on_failure`` function with this id, if a function of the client has it."""
    for fn in client.functions.values():
        failure = getattr(fn, "failure_function", None)
        if failure is not None and failure.id == fn_id:
            return failure  # type: ignore[no-any-return]
    return None


def _cell_traceback(tb: types.TracebackType | None) -> types.TracebackType | None:
    """The traceback from the cell's own code on (the engine's frames say nothing to the user)."""
    last = tb
    while tb is not None:
        if tb.tb_frame.f_code.co_filename.startswith("<%%step"):
            return tb
        last = tb
        tb = tb.tb_next
    return last


def _restore(shell: InteractiveShell, name: str, stored: dict[str, Any]) -> list[str]:
    """Put a cell step's stored names back into the user namespace, in the order the cell bound them."""
    import importlib

    ns = shell.user_ns
    for var, (how, payload) in stored.items():
        try:
            if how == "module":
                ns[var] = importlib.import_module(payload)
            elif how == "source":
                exec(compile(payload, f"<%%step {name}: {var}>", "exec"), ns)  # noqa: S102 - the user's def
            else:
                ns[var] = pickle.loads(payload)  # noqa: S301 - the user's own store
        except Exception as exc:
            msg = (
                f"%%step {name}: cannot restore {var!r} ({type(exc).__name__}: {exc}). "
                f"Fix: run the cell with `%%step {name} --refresh` to execute it again."
            )
            raise RuntimeError(msg) from exc
    return list(stored)


# --- the extension hooks ----------------------------------------------------------------------


def load_ipython_extension(ipython: InteractiveShell) -> None:
    """``%load_ext nbdurable``: register the magics and the run view; note interrupted runs.

    Loading again first unloads, so every hook exists once.

    Args:
        ipython: the shell.
    """
    unload_ipython_extension(ipython)
    NbdurableMagics(ipython).install()


def unload_ipython_extension(ipython: InteractiveShell) -> None:
    """``%unload_ext nbdurable``: remove exactly what loading added.

    Args:
        ipython: the shell.
    """
    magics = ipython.magics_manager.registry.get(NbdurableMagics.__name__)
    if isinstance(magics, NbdurableMagics):
        magics.uninstall()
