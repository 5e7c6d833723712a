"""Runs and steps as text: the one row formatter (the widget, ``show`` and terminals share it).

A step is shown as cells (icon, step, status, attempts, time, detail); ``step_line`` joins
them for text, the widget lays them out as a table, ``%nbdurable show`` as its own table.
"""

from __future__ import annotations

import datetime as _dt
import html
import os
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from nbdurable._preview import preview
from nbdurable._types import StepInfo, StepStatus

if TYPE_CHECKING:
    from nbdurable._index import RunEntry
    from nbdurable._run import Run

ICONS = {
    StepStatus.RUNNING: "\u25b6",
    StepStatus.COMPLETED: "\u2714",
    StepStatus.REPLAYED: "\u21bb",
    StepStatus.FAILED: "\u2718",
    StepStatus.RETRYING: "\u27f3",
    StepStatus.SLEEPING: "\u231b",
    StepStatus.WAITING: "\u2709",
    StepStatus.INTERRUPTED: "\u23f8",
}
COLUMNS = ("", "step", "status", "attempts", "took", "detail")
_COUNTDOWN = {StepStatus.RETRYING: "retry in", StepStatus.SLEEPING: "wakes in", StepStatus.WAITING: "times out in"}


def seconds(value: float | None) -> str:
    """A short human duration.

    Example:
        >>> seconds(0.0004), seconds(0.25), seconds(3), seconds(600)
        ('400µs', '250ms', '3.0s', '10.0min')
    """
    if value is None:
        return "-"
    if value < 1e-3:
        return f"{value * 1e6:.0f}\u00b5s"
    if value < 1:
        return f"{value * 1e3:.0f}ms"
    if value < 120:
        return f"{value:.1f}s"
    return f"{value / 60:.1f}min"


def attempt_number(step: StepInfo) -> int:
    """The attempt a step is at: a step that just started is at its first attempt, not its zeroth."""
    if step.status is StepStatus.RUNNING:
        return max(step.attempts, 1)
    return step.attempts


def countdown(step: StepInfo, now: float) -> str:
    """``retry in 2.0s`` while a step waits to retry (or sleeps, or waits for an event)."""
    label = _COUNTDOWN.get(step.status)
    if label is None or step.deadline is None:
        return ""
    return f"{label} {seconds(max(0.0, step.deadline - now))}"


def step_detail(step: StepInfo) -> str:
    """Output preview or error text of a step (a wait shows the event it got, or that it timed out)."""
    if step.error is not None and step.status in (StepStatus.FAILED, StepStatus.RETRYING):
        return f"{step.error.name}: {step.error.message}"[:100]
    if step.has_output and step.kind == "wait":
        event = step.output
        if event is None:
            return "timed out"
        return f"{getattr(event, 'name', '?')} {preview(getattr(event, 'data', None), 60)}"
    if step.has_output:
        return preview(step.output)
    return ""


def step_cells(step: StepInfo, now: float, *, earlier: bool = True) -> list[str]:
    """A step's row as cells: icon, step, status, attempts k/n, time, detail (notes, countdown, output).

    ``earlier=False`` leaves out the count of earlier failed attempts (the widget folds them instead).
    """
    status = "replayed" if step.replayed else step.status.value.lower()
    took = seconds(step.duration) if step.status is not StepStatus.RUNNING else "..."
    notes = []
    if step.stale:
        notes.append("\u26a0 stale")
    wait = countdown(step, now)
    if wait:
        notes.append(wait)
    if step.note:
        notes.append(f"({step.note})")
    failed_before = len(step.errors) - (1 if step.status in (StepStatus.FAILED, StepStatus.RETRYING) else 0)
    if earlier and failed_before > 0 and step.status is not StepStatus.REPLAYED:
        notes.append(f"({failed_before} earlier attempt{'s' if failed_before > 1 else ''} failed)")
    detail = step_detail(step)
    if detail:
        notes.append(detail)
    icon = ICONS.get(step.status, "?")
    return [icon, step.label, status, f"{attempt_number(step)}/{step.max_attempts}", took, "  ".join(notes)]


def step_line(step: StepInfo, now: float, widths: list[int] | None = None) -> str:
    """A step's row as one line of text (its columns padded to ``widths`` when given)."""
    cells = step_cells(step, now)
    if widths is not None:
        cells = [cell.ljust(width) for cell, width in zip(cells, widths, strict=False)] + cells[len(widths) :]
    icon, *rest = cells
    return "  ".join([f"{icon} {rest[0]}", *(cell for cell in rest[1:] if cell.strip())]).rstrip()


def column_widths(steps: list[StepInfo], now: float) -> list[int]:
    """The width of each column but the last, so rows of these steps line up."""
    widths = [0] * (len(COLUMNS) - 1)
    for step in steps:
        for i, cell in enumerate(step_cells(step, now)[:-1]):
            widths[i] = max(widths[i], len(cell))
    return widths


def run_header(run: Run[Any]) -> str:
    """The header line of a run."""
    counts = run.counts()
    tally = ", ".join(f"{n} {k.lower()}" for k, n in sorted(counts.items()))
    return f"{run.function_id} / {run.id}: {run.status.value} in {seconds(run.elapsed)} ({tally or 'no steps'})"


def run_summary(run: Run[Any], now: float) -> str:
    """A header line and one line per step."""
    lines = [run_header(run)]
    steps = run.steps
    widths = column_widths(steps, now)
    lines += ["  " + step_line(s, now, widths) for s in steps]
    if run.error is not None:
        lines.append(f"  error: {run.error.name}: {run.error.message}")
    return "\n".join(lines)


# --- outside a widget front end ---------------------------------------------------------------

VIEW_ENV = "NBDURABLE_VIEW"
"""``NBDURABLE_VIEW=off`` silences the run view (widget and text); ``text`` forces text."""


def view_mode() -> str:
    """``off``, ``text`` or ``auto`` (widget in a notebook front end, text elsewhere)."""
    value = os.environ.get(VIEW_ENV, "auto").strip().lower()
    if value in ("off", "0", "false", "no", "none"):
        return "off"
    return "text" if value == "text" else "auto"


def in_widget_frontend() -> bool:
    """True inside a Jupyter kernel (a front end that renders widgets), never importing IPython."""
    ipython = sys.modules.get("IPython")
    if ipython is None or "ipykernel" not in sys.modules:
        return False
    shell = ipython.get_ipython()
    return shell is not None and getattr(shell, "kernel", None) is not None


_QUIET_KINDS = frozenset({"step_started"})
"""Outside a terminal, a step starting is not worth a line: its completion or failure says it."""


class TextView:
    """The run view outside a widget front end: quiet, useful lines.

    On a terminal (a TTY), one live progress line (steps done / known, the step executing,
    the time elapsed) plus a line per failure or retry. Elsewhere (a log file, CI), a line per
    executed step change. Replayed steps are summarized in one line either way
    (``2,000 steps replayed in 40ms``), and the run ends with one summary line.

    Args:
        run: the run to follow (the view attaches as a listener at once).
        write: where lines go (default: ``sys.stderr``); a custom ``write`` is never a TTY.
        now: the clock's ``now`` for countdowns and elapsed times.
        tty: force the terminal behaviour on or off (default: whether stderr is a TTY).
    """

    def __init__(
        self,
        run: Run[Any],
        write: Callable[[str], None] | None = None,
        now: Callable[[], float] | None = None,
        *,
        tty: bool | None = None,
    ) -> None:
        self.run = run
        self._write = write
        self._now = now or _wall
        self.tty = (write is None and sys.stderr.isatty()) if tty is None else tty
        self._replayed = 0
        self._replay_since: float | None = None
        self._progress = ""
        self._drawn_at = 0.0
        run.add_listener(self.on_event)

    def _emit(self, line: str) -> None:
        self._clear_progress()
        if self._write is not None:
            self._write(line)
            return
        print(line, file=sys.stderr, flush=True)  # noqa: T201 - this is the text view

    def _clear_progress(self) -> None:
        if self._progress and self._write is None:
            sys.stderr.write("\r" + " " * len(self._progress) + "\r")
        self._progress = ""

    def _draw_progress(self, run: Run[Any], step: StepInfo | None) -> None:
        now = self._now()
        if now - self._drawn_at < 0.1 and step is not None and step.status is not StepStatus.RUNNING:
            return  # about 10 redraws a second at most
        steps = run.steps
        done = sum(1 for s in steps if s.status in (StepStatus.COMPLETED, StepStatus.REPLAYED))
        current = (
            f" \u00b7 {ICONS[StepStatus.RUNNING]} {step.label}" if step and step.status is StepStatus.RUNNING else ""
        )
        elapsed = None if run.started_at is None else now - run.started_at
        line = f"[{run.function_id}] {done:,}/{len(steps):,} steps{current} \u00b7 {seconds(elapsed)}"
        if self._write is not None:
            self._write(line)
        else:
            padding = " " * max(0, len(self._progress) - len(line))
            sys.stderr.write("\r" + line + padding)
            sys.stderr.flush()
        self._progress = line
        self._drawn_at = now

    def _flush_replays(self, run: Run[Any]) -> None:
        if self._replayed:
            took = self._now() - (self._replay_since or self._now())
            noun = "step" if self._replayed == 1 else "steps"
            icon = ICONS[StepStatus.REPLAYED]
            self._emit(f"[{run.function_id}] {icon} {self._replayed:,} {noun} replayed in {seconds(took)}")
            self._replayed = 0

    def on_event(self, kind: str, run: Run[Any], step: StepInfo | None) -> None:
        """Listener: count replays, draw progress or print the step's new state, summarize at the end."""
        if kind == "step_replayed":
            if not self._replayed:
                self._replay_since = self._now()
            self._replayed += 1
            return
        if kind == "run_finished":
            self._flush_replays(run)
            self._emit(f"[{run.function_id}] {run_header(run)}")
            if run.error is not None:
                self._emit(f"[{run.function_id}]   error: {run.error.name}: {run.error.message}")
            self.close()
            return
        if not kind.startswith("step_") or step is None:
            return
        self._flush_replays(run)
        loud = step.status in (StepStatus.FAILED, StepStatus.RETRYING, StepStatus.INTERRUPTED)
        if self.tty and not loud:
            self._draw_progress(run, step)
        elif not self.tty and kind in _QUIET_KINDS:
            return
        else:
            self._emit(f"[{run.function_id}] {step_line(step, self._now())}")

    def close(self) -> None:
        """Stop following the run (the progress line is cleared)."""
        self._clear_progress()
        self.run.remove_listener(self.on_event)


def _wall() -> float:
    import time

    return time.time()


# --- tables of %nbdurable ---------------------------------------------------------------------


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


def step_summary(entry: RunEntry) -> str:
    """A run's stored steps as a listing shows them: how many, and those not completed.

    Example:
        >>> from nbdurable._index import RunEntry
        >>> step_summary(RunEntry(record=None, completed=2, failed=1))  # type: ignore[arg-type]
        '3 (1 failed)'
    """
    others = [f"{n} {status.lower()}" for status, n in entry.counts().items() if status != "COMPLETED"]
    return f"{entry.steps}" + (f" ({', '.join(others)})" if others else "")
