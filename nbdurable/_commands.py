"""``%nbdurable`` commands, without IPython: runs, show, resume, invalidate, clear, store, send, help.

``Commands`` works on the stores the user's clients use (found by the caller, e.g. in the
notebook's namespace) and writes through two callables: ``write`` for lines, ``table`` for
tables (a mime bundle). Mistakes raise ``CommandError``; the magics show it as a usage error.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import html
import json
import os
import shlex
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NoReturn

from nbdurable import _history, _keys, _lease
from nbdurable._client import DEFAULT_STORE, Client, default_client
from nbdurable._events import Event
from nbdurable._function import Function
from nbdurable._process import STATE
from nbdurable._store import Store
from nbdurable._text import COLUMNS, seconds, step_cells
from nbdurable._types import RunStatus
from nbdurable.errors import RunFailedError

CELL_FUNCTION = "%%step"
"""The function id cell steps are stored under (one run per cell step, named by the cell)."""

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

%%step NAME [--retries N] [--refresh] [--strict]
    The cell is a durable step: the names it assigns are stored; running it again
    restores them without executing the cell, also after a kernel restart. Editing the cell
    (or an earlier cell step) executes it again; --refresh forces that.

NBDURABLE_VIEW=off silences the run view; NBDURABLE_VIEW=text never builds widgets."""

if TYPE_CHECKING:
    from nbdurable._records import RunRecord


class CommandError(Exception):
    """A mistake in a command: the message says what and how to fix it."""


def fail(message: str) -> NoReturn:
    """Stop a command with a short message."""
    raise CommandError(message)


def table(headers: list[str], rows: list[list[str]]) -> dict[str, str]:
    """A table as a mime bundle: HTML for notebooks, aligned text for terminals.

    Example:
        >>> print(table(["a", "bb"], [["1", "2"]])["text/plain"])
        a  bb
        1  2
    """
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    head = "".join(f"<th style='text-align:left'>{html.escape(h)}</th>" for h in headers)
    body = "".join(
        "<tr>" + "".join(f"<td style='text-align:left'>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows
    )
    return {"text/plain": "\n".join(lines), "text/html": f"<table><thead><tr>{head}</tr></thead>{body}</table>"}


def when(ts: float | None) -> str:
    """A wall time for people (local time)."""
    if ts is None:
        return "-"
    return _dt.datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S")  # noqa: DTZ006 - local time for people


class _ArgParser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        fail(f"{self.prog}: {message}. See %nbdurable help")


def _parser(prog: str) -> _ArgParser:
    return _ArgParser(prog=prog, add_help=False)


class Commands:
    """The ``%nbdurable`` commands over the stores in use.

    Args:
        clients: the user's clients (called at each command: they change as cells run).
        write: prints one line.
        show_table: displays a table (a mime bundle).
    """

    def __init__(
        self,
        clients: Callable[[], list[Client]],
        write: Callable[[str], None],
        show_table: Callable[[dict[str, str]], None],
    ) -> None:
        self.clients = clients
        self.write = write
        self.show_table = show_table
        self.store_path = os.environ.get("NBDURABLE_STORE", DEFAULT_STORE)

    def __call__(self, line: str) -> None:
        """Run one command line."""
        try:
            words = shlex.split(line)
        except ValueError as exc:
            fail(f"%nbdurable: cannot parse {line!r}: {exc}")
        command, rest = (words[0], words[1:]) if words else ("help", [])
        if command == "send":  # the JSON keeps its quotes: split off the name only
            rest = line.split(None, 2)[1:]
        handler = getattr(self, f"cmd_{command}", None)
        if handler is None:
            fail(f"%nbdurable: unknown command {command!r}. See %nbdurable help")
        handler(rest)

    # -- the stores ------------------------------------------------------------------------------

    def store_paths(self) -> list[str]:
        """The stores in use that exist: the current one, then every client's."""
        paths: list[str] = []
        for path in [self.store_path, *(c.store_path for c in self.clients())]:
            full = os.path.abspath(path)
            if full not in paths and os.path.isdir(full):
                paths.append(full)
        return paths

    def records(self) -> list[tuple[str, RunRecord]]:
        """Every run record in the stores in use, newest first, with its store path."""
        out = [(path, rec) for path in self.store_paths() for rec in Store.open(path).all_runs()]
        out.sort(key=lambda pr: pr[1].updated_at, reverse=True)
        return out

    def client_for(self, path: str, app: str, fn_id: str | None = None) -> Client:
        """A client of the user's on that store and app (with ``fn_id`` if given), else a plain one."""
        candidates = [c for c in self.clients() if c.where == (path, app)]
        for client in candidates:
            if fn_id is None or fn_id in client.functions:
                return client
        return candidates[0] if candidates else Client(app, store=path)

    def find_run(self, ref: str) -> tuple[str, RunRecord]:
        """A run by id, id prefix, or ``FN/RUN`` (when runs of several functions share an id)."""
        records = self.records()
        fn_id, _, run_ref = ref.rpartition("/") if "/" in ref else ("", "", ref)
        if fn_id and not any(r.function_id == fn_id for _, r in records):
            fn_id, run_ref = "", ref  # a run id that itself contains "/"
        mine = [pr for pr in records if not fn_id or pr[1].function_id == fn_id]
        exact = [pr for pr in mine if pr[1].run_id == run_ref]
        found = exact or [pr for pr in mine if pr[1].run_id.startswith(run_ref)]
        if not found:
            fail(f"no run {ref!r} in the store ({', '.join(self.store_paths()) or 'none yet'}); see %nbdurable runs")
        if len({(p, r.app, r.function_id, r.run_id) for p, r in found}) > 1:
            ids = ", ".join(f"{r.function_id}/{r.run_id}" for _, r in found[:5])
            fail(f"{ref!r} matches several runs ({ids}); give more of the id, or FN/RUN")
        return found[0]

    def interrupted_notice(self) -> str:
        """One line naming the interrupted runs in the store and how to resume them ('' if none)."""
        now = time.time()
        hit = [(p, r) for p, r in self.records() if _lease.effective_status(r, now) is RunStatus.INTERRUPTED]
        if not hit:
            return ""
        names = ", ".join(f"{r.function_id}/{r.run_id}" for _, r in hit[:3]) + (" ..." if len(hit) > 3 else "")
        return (
            f"nbdurable: {len(hit)} interrupted run{'s' if len(hit) > 1 else ''} in the store ({names}); "
            "resume with `%nbdurable resume --all` (functions must be defined) or re-run their cells."
        )

    # -- commands --------------------------------------------------------------------------------

    def cmd_help(self, _args: list[str]) -> None:
        """Print the help text."""
        self.write(HELP)

    def cmd_runs(self, args: list[str]) -> None:
        """``runs [FN] [--status S]``."""
        p = _parser("%nbdurable runs")
        p.add_argument("fn", nargs="?")
        p.add_argument("--status")
        ns = p.parse_args(args)
        want = None
        if ns.status is not None:
            try:
                want = RunStatus(ns.status.upper())
            except ValueError:
                fail(f"%nbdurable runs: unknown status {ns.status!r}; one of {', '.join(s.value for s in RunStatus)}")
        now = time.time()
        rows = []
        for _path, rec in self.records():
            status = _lease.effective_status(rec, now)
            if (ns.fn is not None and rec.function_id != ns.fn) or (want is not None and status is not want):
                continue
            took = seconds(rec.ended_at - rec.started_at) if rec.ended_at and rec.started_at else "-"
            rows.append(
                [rec.app, rec.function_id, rec.run_id, status.value, str(len(rec.steps)), took, when(rec.updated_at)]
            )
        if not rows:
            self.write("no runs" + (f" of {ns.fn!r}" if ns.fn else "") + (f" with status {want.value}" if want else ""))
            return
        self.show_table(table(["app", "function", "run", "status", "steps", "took", "updated"], rows))

    def cmd_show(self, args: list[str]) -> None:
        """``show RUN``: a run and its steps."""
        p = _parser("%nbdurable show")
        p.add_argument("run")
        ns = p.parse_args(args)
        path, rec = self.find_run(ns.run)
        client = self.client_for(path, rec.app)
        run = _history.load(client, rec)
        now = client.clock.now()
        lines = run.summary().splitlines()
        self.write(lines[0])
        if run.note:
            self.write(run.note)
        rows = [[*cells[:5], cells[5][:80]] for cells in (step_cells(step, now) for step in run.steps)]
        if rows:
            self.show_table(table(list(COLUMNS), rows))
        if run.error is not None:
            self.write(f"error: {run.error.name}: {run.error.message}")

    def cmd_resume(self, args: list[str]) -> None:
        """``resume [RUN | --all]``: execute runs again (their steps replay)."""
        p = _parser("%nbdurable resume")
        p.add_argument("run", nargs="?")
        p.add_argument("--all", action="store_true")
        ns = p.parse_args(args)
        if ns.all == (ns.run is not None):
            fail("%nbdurable resume: give a run id or --all")
        if ns.all:
            now = time.time()
            targets = [(q, r) for q, r in self.records() if _lease.effective_status(r, now) is RunStatus.INTERRUPTED]
            if not targets:
                self.write("no interrupted runs")
                return
        else:
            targets = [self.find_run(ns.run)]
        for path, rec in targets:
            if rec.function_id == CELL_FUNCTION:
                self.write(f"cell step {rec.run_id!r}: re-run its %%step cell to resume it")
                continue
            client = self.client_for(path, rec.app, rec.function_id)
            fn = client.functions.get(rec.function_id) or _failure_function(client, rec.function_id)
            if fn is None:
                message = (
                    f"function {rec.function_id!r} (app {rec.app!r}) is not defined in this kernel. Fix: run the "
                    "cell that defines it, then resume again."
                )
                if not ns.all:
                    fail(f"%nbdurable resume: {message}")
                self.write(f"{rec.function_id}/{rec.run_id}: skipped; {message}")
                continue
            ev = rec.event
            with contextlib.suppress(RunFailedError):  # the view and `show` tell what failed
                fn.run(run_id=rec.run_id, event=Event(ev.name, ev.data, ev.id, ev.ts))
            after = client.get_run(rec.run_id)
            self.write(f"{rec.function_id}/{rec.run_id}: {after.status.value if after else 'gone'}")

    def cmd_invalidate(self, args: list[str]) -> None:
        """``invalidate FN|RUN [--from STEP]``: forget stored steps so they execute again."""
        p = _parser("%nbdurable invalidate")
        p.add_argument("target")
        p.add_argument("--from", dest="from_step")
        ns = p.parse_args(args)
        matches = [pr for pr in self.records() if pr[1].function_id == ns.target] or [self.find_run(ns.target)]
        total = 0
        for path, rec in matches:
            client = self.client_for(path, rec.app)
            try:
                keys = _history.invalidate(client, rec.function_id, rec.run_id, ns.from_step)
            except KeyError as exc:
                if len(matches) == 1:
                    fail(f"%nbdurable invalidate: {exc.args[0]}")
                continue
            total += len(keys)
            labels = ", ".join(_keys.label(k) for k in keys) or "-"
            self.write(f"{rec.function_id}/{rec.run_id}: forgot {len(keys)} step(s): {labels}")
        if not total and len(matches) > 1:
            self.write("no stored steps matched")

    def cmd_clear(self, args: list[str]) -> None:
        """``clear FN | --all``: delete runs and their steps."""
        p = _parser("%nbdurable clear")
        p.add_argument("fn", nargs="?")
        p.add_argument("--all", action="store_true")
        ns = p.parse_args(args)
        if ns.all == (ns.fn is not None):
            fail("%nbdurable clear: give a function id or --all")
        total = 0
        for path, app in sorted({(path, rec.app) for path, rec in self.records()}):
            try:
                total += _history.clear(self.client_for(path, app), None if ns.all else ns.fn, None)
            except RuntimeError as exc:
                fail(f"%nbdurable clear: {exc}")
        self.write(f"cleared {total} run(s) of {'every function' if ns.all else repr(ns.fn)}")

    def cmd_store(self, args: list[str]) -> None:
        """``store [PATH]``: show the store, or use PATH from now on."""
        p = _parser("%nbdurable store")
        p.add_argument("path", nargs="?")
        ns = p.parse_args(args)
        if ns.path is not None:
            self.store_path = ns.path
            os.environ["NBDURABLE_STORE"] = ns.path
            where = os.path.abspath(ns.path)
            self.write(f"store: {where} (new clients and cell steps use it; existing clients keep theirs)")
            return
        counts: dict[str, int] = {}
        for path, _rec in self.records():
            counts[path] = counts.get(path, 0) + 1
        here = os.path.abspath(self.store_path)
        self.write(f"store: {here} ({counts.get(here, 0)} runs)")
        for path, n in counts.items():
            if path != here:
                self.write(f"also in use: {path} ({n} runs)")

    def cmd_send(self, args: list[str]) -> None:
        """``send NAME [JSON]``: send an event with every client that can hear it."""
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
            fail(f"%nbdurable send: the data must be a JSON object, got {ns.data!r} ({exc})")
        if not isinstance(data, dict):
            fail(f"%nbdurable send: the data must be a JSON object, got {type(data).__name__}")
        # One client per store and app stores the event once; every client's functions must hear it.
        clients = self.clients() or [default_client()]
        event = Event(ns.name, data)
        seen: set[tuple[str, str]] = set()
        for client in clients:
            if client.where in seen:
                client.trigger(event)  # its own functions: the event is stored already
                continue
            seen.add(client.where)
            ids = client.send_sync(event)
            self.write(f"sent {ns.name!r} ({', '.join(ids)}) on {client!r}")


def user_clients(namespace: dict[str, Any]) -> list[Client]:
    """Clients the user has: in the namespace, behind functions there, and the default one."""
    found: list[Client] = []
    for value in list(namespace.values()):
        client = value if isinstance(value, Client) else getattr(value, "client", None)
        if isinstance(value, (Client, Function)) and isinstance(client, Client) and client not in found:
            found.append(client)
    default = STATE.default_client
    if default is not None and default not in found:
        found.append(default)
    return found


def _failure_function(client: Client, fn_id: str) -> Function[Any] | None:
    """The ``on_failure`` function with this id, if a function of the client has it."""
    for fn in client.functions.values():
        if fn.failure_function is not None and fn.failure_function.id == fn_id:
            return fn.failure_function
    return None
