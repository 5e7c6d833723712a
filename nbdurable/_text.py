"""Runs and steps as text: the one row formatter (the widget, ``show`` and terminals share it).

A step is shown as cells (icon, step, status, attempts, time, detail); ``step_line`` joins
them for text, the widget lays them out as a table, ``%nbdurable show`` as its own table.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from nbdurable._preview import preview
from nbdurable._types import StepInfo, StepStatus

if TYPE_CHECKING:
    from nbdurable._run import Run

ICONS = {
    StepStatus.RUNNING: "\u25b6",
    StepStatus.COMPLETED: "\u2714",
    StepStatus.REPLAYED: "\u21bb",
    StepStatus.FAILED: "\u2718",
    StepStatus.RETRYING: "\u27f3",
    StepStatus.SLEEPING: "\u231b",
    StepStatus.WAITING: "\u2709",
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
    """Output preview or error text of a step."""
    if step.error is not None and step.status in (StepStatus.FAILED, StepStatus.RETRYING):
        return f"{step.error.name}: {step.error.message}"[:100]
    if step.has_output:
        return preview(step.output)
    return ""


def step_cells(step: StepInfo, now: float) -> list[str]:
    """A step's row as cells: icon, step, status, attempts k/n, time, detail (notes, countdown, output)."""
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


class TextView:
    """One line per step state change and a summary line when the run ends.

    Args:
        run: the run to follow (the view attaches as a listener at once).
        write: where lines go (default: ``sys.stderr``).
        now: the clock's ``now`` for countdowns.
    """

    def __init__(
        self, run: Run[Any], write: Callable[[str], None] | None = None, now: Callable[[], float] | None = None
    ) -> None:
        self.run = run
        self._write = write
        self._now = now or _wall
        run.add_listener(self.on_event)

    def _emit(self, line: str) -> None:
        if self._write is not None:
            self._write(line)
            return
        print(line, file=sys.stderr, flush=True)  # noqa: T201 - this is the text view

    def on_event(self, kind: str, run: Run[Any], step: StepInfo | None) -> None:
        """Listener: print the step's new state, or the summary at the end."""
        if kind.startswith("step_") and step is not None:
            self._emit(f"[{run.function_id}] {step_line(step, self._now())}")
        elif kind == "run_finished":
            self._emit(f"[{run.function_id}] {run_header(run)}")
            if run.error is not None:
                self._emit(f"[{run.function_id}]   error: {run.error.name}: {run.error.message}")
            self.close()

    def close(self) -> None:
        """Stop following the run."""
        self.run.remove_listener(self.on_event)


def _wall() -> float:
    import time

    return time.time()
