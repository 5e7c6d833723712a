"""Text rendering of runs and steps: summaries and one line per step change."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

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


def seconds(value: float | None) -> str:
    """A short human duration."""
    if value is None:
        return "-"
    if value < 1e-3:
        return f"{value * 1e6:.0f}\u00b5s"
    if value < 1:
        return f"{value * 1e3:.0f}ms"
    if value < 120:
        return f"{value:.1f}s"
    return f"{value / 60:.1f}min"


def step_detail(step: StepInfo) -> str:
    """Output preview or error text of a step."""
    from nbdurable._serde import json_default_preview

    if step.error is not None and step.status in (StepStatus.FAILED, StepStatus.RETRYING):
        return f"{step.error.name}: {step.error.message}"[:100]
    if step.has_output:
        return json_default_preview(step.output)
    return ""


def attempt_number(step: StepInfo) -> int:
    """The attempt a step is at: a step that just started is at its first attempt, not its zeroth."""
    if step.status is StepStatus.RUNNING:
        return max(step.attempts, 1)
    return step.attempts


def step_line(step: StepInfo) -> str:
    """One line for a step, as printed on each state change outside a widget front end."""
    icon = ICONS.get(step.status, "?")
    parts = [f"{icon} {step.label:<24} {step.status.value:<9}", f"{attempt_number(step)}/{step.max_attempts}"]
    parts.append(seconds(step.duration))
    if step.stale:
        parts.append("(stale)")
    if step.note:
        parts.append(f"({step.note})")
    detail = step_detail(step)
    if detail:
        parts.append(detail)
    return "  ".join(parts)


def run_header(run: Run[Any]) -> str:
    """The header line of a run."""
    counts = run.counts()
    tally = ", ".join(f"{n} {k.lower()}" for k, n in sorted(counts.items()))
    return f"{run.function_id} / {run.id}: {run.status.value} in {seconds(run.elapsed)} ({tally or 'no steps'})"


def run_summary(run: Run[Any]) -> str:
    """A header line and one line per step."""
    lines = [run_header(run)]
    lines += ["  " + step_line(s) for s in run.steps]
    if run.error is not None:
        lines.append(f"  error: {run.error.name}: {run.error.message}")
    return "\n".join(lines)


# --- showing runs outside (and at the door of) a widget front end -------------------------

VIEW_ENV = "NBDURABLE_VIEW"
"""``NBDURABLE_VIEW=off`` silences the run view (widget and text); ``text`` forces text."""

_LINE_KINDS = frozenset({"step_started", "step_replayed", "step_completed", "step_retrying", "step_failed"})


def view_mode() -> str:
    """``off``, ``text`` or ``auto`` (widget in a notebook front end, text elsewhere)."""
    import os

    value = os.environ.get(VIEW_ENV, "auto").strip().lower()
    if value in ("off", "0", "false", "no", "none"):
        return "off"
    return "text" if value == "text" else "auto"


def in_widget_frontend() -> bool:
    """True inside a Jupyter kernel (a front end that renders widgets), never importing IPython."""
    import sys

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

    Example:
        >>> view = TextView(run)  # doctest: +SKIP
    """

    def __init__(self, run: Run[Any], write: Any = None) -> None:
        self.run = run
        self._write = write
        run.add_listener(self.on_event)

    def _emit(self, line: str) -> None:
        if self._write is not None:
            self._write(line)
            return
        import sys

        print(line, file=sys.stderr, flush=True)  # noqa: T201 - this is the text view

    def on_event(self, kind: str, run: Run[Any], step: StepInfo | None) -> None:
        """Listener: print the step's new state, or the summary at the end."""
        if kind in _LINE_KINDS and step is not None:
            self._emit(f"[{run.function_id}] {step_line(step)}")
        elif kind == "run_finished":
            self._emit(f"[{run.function_id}] {run_header(run)}")
            if run.error is not None:
                self._emit(f"[{run.function_id}]   error: {run.error.name}: {run.error.message}")
            self.close()
        elif kind.startswith("step_") and step is not None:  # kinds added later (sleep, wait...)
            self._emit(f"[{run.function_id}] {step_line(step)}")

    def close(self) -> None:
        """Stop following the run."""
        self.run.remove_listener(self.on_event)


def show_run(run: Run[Any]) -> None:
    """Show a run about to execute: the widget view in a notebook, text lines elsewhere.

    Honours ``NBDURABLE_VIEW`` (``off`` shows nothing, ``text`` never builds a widget).
    ipywidgets is imported only when a widget front end is present.
    """
    mode = view_mode()
    if mode == "off":
        return
    if mode == "auto" and in_widget_frontend():
        from nbdurable._view import display_run_view

        display_run_view(run, close_when_done=True)
        return
    TextView(run)
