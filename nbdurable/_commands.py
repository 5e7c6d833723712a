"""``%nbdurable`` commands, without IPython: runs, show, resume, invalidate, clear, store, send, help.

``Commands`` works on the stores the user's clients use (found by the caller, e.g. in the
notebook's namespace) and writes through two callables: ``write`` for lines, ``table`` for
tables (a mime bundle). Mistakes raise ``CommandError``; the magics show it as a usage error.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import heapq
import json
import os
import shlex
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, NoReturn

from nbdurable import _history, _index, _keys, _lease, _store
from nbdurable._cellstep import CELL_FUNCTION, describe
from nbdurable._client import DEFAULT_STORE, Client, default_client
from nbdurable._events import Event
from nbdurable._function import Function
from nbdurable._preview import size_text
from nbdurable._process import STATE
from nbdurable._store import Store
from nbdurable._text import COLUMNS, seconds, step_cells, step_summary, table, when
from nbdurable._types import RunStatus
from nbdurable.errors import RunFailedError

RUNS_SHOWN = 50
"""How many runs ``%nbdurable runs`` shows unless told (``--limit N``)."""

HELP = """\
%nbdurable runs [FN] [--status S] [--limit N]
                                     runs in the store, newest first (the first 50 unless --limit)
%nbdurable show RUN                  a run and its steps, with sizes on disk (RUN: an id or its first characters)
%nbdurable resume [RUN | --all]      execute a run again (or every INTERRUPTED one); steps replay
%nbdurable invalidate FN|RUN [--from STEP]
                                     forget stored steps so they execute again
%nbdurable clear FN | --all [--older-than AGE]
                                     delete runs with their steps and data (only those not updated for
                                     AGE, e.g. 7d, 12h, 30m, when given); runs executing are never touched
%nbdurable store [PATH]              the store and its size on disk, or use PATH from now on
%nbdurable send NAME [JSON]          send an event (starts matching functions, resolves waits)
%nbdurable help                      this text

%%step NAME [--retries N] [--refresh] [--strict] [--scope S]
    The cell is a durable step: the names it binds are stored, each on its own, with what it
    printed and displayed; running it again restores them (and shows its outputs again)
    without executing the cell, also after a kernel restart. It executes again when its
    source or the content of a name it reads changed; --refresh forces that. A name that
    cannot be stored is left out with a warning (--strict: an error).

NBDURABLE_VIEW=off silences the run view; NBDURABLE_VIEW=text never builds widgets."""

if TYPE_CHECKING:
    from nbdurable._records import RunRecord


class CommandError(Exception):
    """A mistake in a command: the message says what and how to fix it."""


def fail(message: str) -> NoReturn:
    """Stop a command with a short message."""
    raise CommandError(message)


_AGE_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_age(text: str) -> float:
    """``7d``, ``12h``, ``30m``, ``90s`` or ``2w`` as seconds; a usage error otherwise.

    Example:
        >>> parse_age("7d"), parse_age("1.5h")
        (604800.0, 5400.0)
    """
    unit = _AGE_UNITS.get(text[-1:].lower())
    try:
        value = float(text[:-1]) if unit else float("nan")
    except ValueError:
        value = float("nan")
    if unit is None or not value >= 0:
        fail(f"--older-than: give an age such as 7d, 12h, 30m or 90s, got {text!r}")
    return value * unit


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

    def stores(self) -> list[tuple[str, Store]]:
        """The stores in use that exist, opened."""
        return [(path, Store.open(path)) for path in self.store_paths()]

    def entries(
        self, fn_id: str | None = None, *, statuses: tuple[str, ...] | None = None, open_only: bool = False
    ) -> Iterator[tuple[str, _index.RunEntry]]:
        """Runs of every store in use, newest first (read lazily: stop when you have enough)."""
        streams = [
            (
                (path, e)
                for e in _index.runs(
                    store, None, fn_id, statuses=statuses, open_only=open_only, scoped=fn_id == CELL_FUNCTION
                )
            )
            for path, store in self.stores()
        ]
        return heapq.merge(*streams, key=lambda pe: pe[1].record.updated_at, reverse=True)

    def interrupted(self) -> list[tuple[str, RunRecord]]:
        """The INTERRUPTED runs of the stores in use (read from the index of runs not finished)."""
        now = time.time()
        return [
            (path, e.record)
            for path, e in self.entries(open_only=True)
            if _lease.effective_status(e.record, now) is RunStatus.INTERRUPTED
        ]

    def client_for(self, path: str, app: str, fn_id: str | None = None) -> Client:
        """A client of the user's on that store and app (with ``fn_id`` if given), else a plain one."""
        candidates = [c for c in self.clients() if c.where == (path, app)]
        for client in candidates:
            if fn_id is None or fn_id in client.functions:
                return client
        return candidates[0] if candidates else Client(app, store=path)

    def find_run(self, ref: str) -> tuple[str, RunRecord]:
        """A run by id, id prefix, or ``FN/RUN`` (when runs of several functions share an id)."""
        stores = self.stores()
        fn_id, _, run_ref = ref.rpartition("/") if "/" in ref else ("", "", ref)
        found: list[tuple[str, _index.RunEntry]] = []
        for guess_fn, guess_ref in ([(fn_id, run_ref)] if fn_id else []) + [("", ref)]:
            for exact in (True, False):
                found = [
                    (path, e)
                    for path, store in stores
                    for e in _index.find(
                        store,
                        guess_ref,
                        function_id=guess_fn or None,
                        prefix=not exact,
                        limit=6,
                        scoped=guess_fn == CELL_FUNCTION,
                    )
                ]
                if found:
                    break
            if found:
                break  # FN/RUN matched; else the whole text is a run id that itself contains "/"
        if not found:
            fail(f"no run {ref!r} in the store ({', '.join(self.store_paths()) or 'none yet'}); see %nbdurable runs")
        if len({(p, e.record.app, e.record.function_id, e.record.run_id) for p, e in found}) > 1:
            ids = ", ".join(f"{e.record.function_id}/{e.record.run_id}" for _, e in found[:5])
            fail(f"{ref!r} matches several runs ({ids}); give more of the id, or FN/RUN")
        return found[0][0], found[0][1].record

    def interrupted_notice(self) -> str:
        """One line naming the interrupted runs in the store and how to resume them ('' if none)."""
        hit = self.interrupted()
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
        """``runs [FN] [--status S] [--limit N]``: the newest runs, with their steps and size on disk."""
        p = _parser("%nbdurable runs")
        p.add_argument("fn", nargs="?")
        p.add_argument("--status")
        p.add_argument("--limit", type=int, default=RUNS_SHOWN)
        ns = p.parse_args(args)
        want = None
        if ns.status is not None:
            try:
                want = RunStatus(ns.status.upper())
            except ValueError:
                fail(f"%nbdurable runs: unknown status {ns.status!r}; one of {', '.join(s.value for s in RunStatus)}")
        if ns.limit < 1:
            fail(f"%nbdurable runs: --limit must be at least 1, got {ns.limit}")
        now = time.time()
        rows: list[list[str]] = []
        more = False
        for path, entry in self.entries(ns.fn, statuses=_history.stored_statuses(want)):
            rec = entry.record
            status = _lease.effective_status(rec, now)
            if want is not None and status is not want:
                continue
            if len(rows) == ns.limit:
                more = True
                break
            took = seconds(rec.ended_at - rec.started_at) if rec.ended_at and rec.started_at else "-"
            size = entry.record_bytes + Store.open(path).data.run_bytes(rec.app, rec.function_id, rec.run_id)
            cells = [rec.app, rec.function_id, rec.run_id, status.value, step_summary(entry)]
            rows.append([*cells, took, when(rec.updated_at), size_text(size)])
        if not rows:
            self.write("no runs" + (f" of {ns.fn!r}" if ns.fn else "") + (f" with status {want.value}" if want else ""))
            return
        self.show_table(table(["app", "function", "run", "status", "steps", "took", "updated", "size"], rows))
        if more:
            self.write(f"the newest {ns.limit} runs shown; --limit N to see more")

    def cmd_show(self, args: list[str]) -> None:
        """``show RUN``: a run and its steps, with their sizes on disk."""
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
        sizes = _history.step_sizes(client, rec)
        rows = [
            [*cells[:5], cells[5][:80], size_text(sum(sizes[step.key])) if step.key in sizes else "-"]
            for step, cells in ((step, step_cells(step, now)) for step in run.steps)
        ]
        if rows:
            self.show_table(table([*COLUMNS, "size"], rows))
        if run.error is not None:
            self.write(f"error: {run.error.name}: {run.error.message}")
        store = Store.open(path)
        records = sum(record for record, _ in sizes.values())
        run_record = store.value_bytes(_store.run_key(rec.app, rec.function_id, rec.run_id))
        data = store.data.run_bytes(rec.app, rec.function_id, rec.run_id)
        self.write(
            f"on disk: {size_text(records + run_record + data)} (records {size_text(records + run_record)}, "
            f"data files {size_text(data)})"
        )
        if rec.function_id.startswith(CELL_FUNCTION):
            for line in describe(client, rec.function_id, rec.run_id):
                self.write(line)

    def cmd_resume(self, args: list[str]) -> None:
        """``resume [RUN | --all]``: execute runs again (their steps replay)."""
        p = _parser("%nbdurable resume")
        p.add_argument("run", nargs="?")
        p.add_argument("--all", action="store_true")
        ns = p.parse_args(args)
        if ns.all == (ns.run is not None):
            fail("%nbdurable resume: give a run id or --all")
        if ns.all:
            targets = self.interrupted()
            if not targets:
                self.write("no interrupted runs")
                return
        else:
            targets = [self.find_run(ns.run)]
        for path, rec in targets:
            if rec.function_id.startswith(CELL_FUNCTION):
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
        matches = [(path, e.record) for path, e in self.entries(ns.target)] or [self.find_run(ns.target)]
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
        """``clear FN | --all [--older-than AGE]``: delete runs with their steps and data files."""
        p = _parser("%nbdurable clear")
        p.add_argument("fn", nargs="?")
        p.add_argument("--all", action="store_true")
        p.add_argument("--older-than", dest="older_than")
        ns = p.parse_args(args)
        if ns.all == (ns.fn is not None):
            fail("%nbdurable clear: give a function id or --all (with --older-than AGE to keep recent runs)")
        older = None if ns.older_than is None else _dt.timedelta(seconds=parse_age(ns.older_than))
        total = 0
        for path, store in self.stores():
            scoped = ns.fn == CELL_FUNCTION  # `%%step`: the cell steps of every notebook
            found = _index.runs(store, None, None if ns.all else ns.fn, scoped=scoped)
            for app, fn_id in sorted({(e.record.app, e.record.function_id if scoped else ns.fn) for e in found}):
                try:
                    total += _history.clear(self.client_for(path, app), fn_id, older_than=older)
                except RuntimeError as exc:
                    fail(f"%nbdurable clear: {exc}")
        which = "every function" if ns.all else repr(ns.fn)
        age = f" not updated for {ns.older_than}" if ns.older_than else ""
        self.write(f"cleared {total} run(s) of {which}{age}")

    def cmd_store(self, args: list[str]) -> None:
        """``store [PATH]``: show the store and its size on disk, or use PATH from now on."""
        p = _parser("%nbdurable store")
        p.add_argument("path", nargs="?")
        ns = p.parse_args(args)
        if ns.path is not None:
            self.store_path = ns.path
            os.environ["NBDURABLE_STORE"] = ns.path
            where = os.path.abspath(ns.path)
            self.write(f"store: {where} (new clients and cell steps use it; existing clients keep theirs)")
            return
        here = os.path.abspath(self.store_path)
        stores = self.stores()
        if not any(path == here for path, _ in stores):
            self.write(f"store: {here} (0 runs)")
        for path, store in stores:
            runs, _ = _index.totals(store)
            use = store.disk_usage()
            detail = ", ".join(f"{what} {size_text(n)}" for what, n in use.items() if what != "total")
            mode = ", read-only" if store.read_only else ""
            label = "store" if path == here else "also in use"
            self.write(f"{label}: {path} ({runs} runs, {size_text(use['total'])} on disk: {detail}{mode})")

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
