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


def step_line(step: StepInfo) -> str:
    """One line for a step, as printed on each state change outside a widget front end."""
    icon = ICONS.get(step.status, "?")
    parts = [f"{icon} {step.key:<24} {step.status.value:<9}", f"{step.attempts}/{step.max_attempts}"]
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
