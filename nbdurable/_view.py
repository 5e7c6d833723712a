"""The live run view: stock ipywidgets only, so it renders in JupyterLab, Notebook 7 and VS Code.

The only module that imports ipywidgets, imported only where a widget front end is present
(``_display`` decides). The view is a listener of its ``Run``: the engine publishes state
changes, the view redraws at most every ``min_interval`` seconds and always draws the final
state, and displays itself. A failed run's red bar is never overwritten (tqdm.notebook's guard).
"""

from __future__ import annotations

import html
import threading
from typing import Any

import ipywidgets as widgets

from nbdurable._clock import SYSTEM_CLOCK, Clock
from nbdurable._run import Run
from nbdurable._text import column_widths, countdown, seconds, step_cells, step_line
from nbdurable._types import RunStatus, StepInfo, StepStatus

COLORS = {
    StepStatus.RUNNING: "#1f6feb",
    StepStatus.COMPLETED: "#1a7f37",
    StepStatus.REPLAYED: "#8c959f",
    StepStatus.FAILED: "#cf222e",
    StepStatus.RETRYING: "#bc4c00",
    StepStatus.SLEEPING: "#8250df",
    StepStatus.WAITING: "#8250df",
    StepStatus.INTERRUPTED: "#bc4c00",
}
BAR_STYLES = {
    RunStatus.QUEUED: "",
    RunStatus.RUNNING: "info",
    RunStatus.SLEEPING: "info",
    RunStatus.WAITING: "info",
    RunStatus.COMPLETED: "success",
    RunStatus.FAILED: "danger",
    RunStatus.CANCELLED: "warning",
    RunStatus.INTERRUPTED: "warning",
}
_DONE = (StepStatus.COMPLETED, StepStatus.REPLAYED)


_TABLE = "border-collapse:collapse;font-family:monospace;font-size:12px"

_CELL = "padding:0 8px 0 0;white-space:nowrap;text-align:left"

GROUP_FROM = 50
"""Past this many steps the view groups them: counts per status, every step not done, the last few done."""
LAST_DONE = 10


def visible_steps(steps: list[StepInfo], show_all: bool = False) -> list[StepInfo]:
    """The steps the view draws a row for: all of them, or a group past ``GROUP_FROM``.

    A group keeps every step not done (failed, retrying, running, waiting, interrupted) and
    the last ``LAST_DONE`` steps.
    """
    if show_all or len(steps) <= GROUP_FROM:
        return steps
    tail = len(steps) - LAST_DONE
    return [s for i, s in enumerate(steps) if i >= tail or s.status not in _DONE]


def status_counts(steps: list[StepInfo]) -> str:
    """``9,990 replayed · 3 failed · 1 running``: how many steps are in each status."""
    counts: dict[str, int] = {}
    for step in steps:
        word = "replayed" if step.replayed else step.status.value.lower()
        counts[word] = counts.get(word, 0) + 1
    return " \u00b7 ".join(f"{n:,} {word}" for word, n in sorted(counts.items(), key=lambda kv: -kv[1]))


def _earlier_attempts(step: StepInfo) -> str:
    """The errors of a step's earlier attempts, folded (the latest one is already in its row)."""
    latest_shown = step.status in (StepStatus.FAILED, StepStatus.RETRYING)
    earlier = step.errors[:-1] if latest_shown else step.errors
    if not earlier:
        return ""
    items = "".join(
        f"<div>attempt {i}: {html.escape(f'{e.name}: {e.message}'[:200])}</div>" for i, e in enumerate(earlier, 1)
    )
    noun = "attempt" if len(earlier) == 1 else "attempts"
    fold = "display:inline-block;vertical-align:top;margin-right:8px;cursor:pointer"
    return f"<details style='{fold}'><summary>{len(earlier)} earlier {noun} failed</summary>{items}</details>"


class RunView:
    """A live view of one run: header, progress bar, and a row per step.

    Constructing it attaches it to the run as a listener; ``close()`` detaches it.

    Args:
        run: the run to show.
        clock: time source for elapsed times, countdowns and throttling (tests inject one;
            with an injected clock no background redraw thread is started: call ``flush()``).
        min_interval: the least time between two redraws, seconds (about 10 per second).

    Example:
        >>> @client.create_function(fn_id="viewed")
        ... def viewed(ctx: nbdurable.ContextSync) -> int:
        ...     return ctx.step.run("a", lambda: 1)
        >>> run = viewed.start()
        >>> _ = run.wait(10)
        >>> print(RunView(run).text())  # doctest: +ELLIPSIS
        viewed · ... · COMPLETED · ...
        [####################] 1/1 steps (success)
          ✔ a  completed  1/5  ...  1
    """

    def __init__(self, run: Run[Any], *, clock: Clock | None = None, min_interval: float = 0.1) -> None:
        self.run = run
        self.clock = clock or SYSTEM_CLOCK
        self.min_interval = min_interval
        self.draws = 0
        self.closed = False
        self._auto = clock is None
        self._dirty = True
        self._failed = False
        self._last_draw: float | None = None
        self._lock = threading.RLock()
        self._ticker: threading.Thread | None = None
        self._stop = threading.Event()
        self.header = widgets.HTML()
        self.bar = widgets.IntProgress(min=0, max=1, value=0, bar_style="", layout=widgets.Layout(width="40%"))
        self.bar_label = widgets.HTML()
        self.rows = widgets.HTML()
        """The step rows: one HTML widget (thousands of steps must not mean thousands of widgets)."""
        self.buttons = widgets.HBox()
        """A "send" button per step waiting for an event."""
        self.show_all = widgets.ToggleButton(
            value=False, description="show all steps", layout=widgets.Layout(display="none", width="auto")
        )
        """Past ``GROUP_FROM`` steps: draw a row for every step."""
        self.show_all.observe(lambda _change: self.redraw(), names="value")
        self._row_cache: dict[str, tuple[Any, str]] = {}
        self._buttons: dict[str, widgets.Button] = {}
        self._shown: list[StepInfo] = []
        self._widget = widgets.VBox(
            [self.header, widgets.HBox([self.bar, self.bar_label]), self.rows, self.show_all, self.buttons]
        )
        run.add_listener(self._on_event)
        self.redraw()

    @property
    def widget(self) -> widgets.VBox:
        """The ipywidgets container to display."""
        return self._widget

    # -- listening ---------------------------------------------------------------------------

    def _on_event(self, kind: str, _run: Run[Any], _step: StepInfo | None) -> None:
        self._dirty = True
        if kind == "run_finished":
            self.redraw()
            return
        now = self.clock.monotonic()
        if self._last_draw is None or now - self._last_draw >= self.min_interval:
            self.redraw()
        if self._auto:
            self._start_ticker()

    def flush(self) -> None:
        """Draw pending changes now if the last draw is at least ``min_interval`` old.

        Countdowns and the elapsed time move on their own, so an active run is always redrawn.
        """
        now = self.clock.monotonic()
        active = self.run.status.active or any(s.deadline is not None for s in self.run.steps)
        if (self._dirty or active) and (self._last_draw is None or now - self._last_draw >= self.min_interval):
            self.redraw()

    def _start_ticker(self) -> None:
        if self._ticker is not None or self.closed:
            return

        def tick() -> None:
            while not self._stop.wait(max(self.min_interval, 0.05) * 2):
                if self.run.done and not self._dirty:
                    break
                self.flush()

        self._ticker = threading.Thread(target=tick, name=f"nbdurable-view-{self.run.id}", daemon=True)
        self._ticker.start()

    def close(self) -> None:
        """Detach from the run (the widget keeps its last drawing)."""
        self.closed = True
        self._stop.set()
        self.run.remove_listener(self._on_event)

    # -- drawing -----------------------------------------------------------------------------

    def redraw(self) -> None:
        """Draw the run's current state into the widgets."""
        with self._lock:
            self._dirty = False
            self._last_draw = self.clock.monotonic()
            self.draws += 1
            run = self.run
            now = self.clock.now()
            steps = list(run.steps)
            self.header.value = self._header_html(run, now)
            done = sum(1 for s in steps if s.status in _DONE)
            total = max(len(steps), 1)
            if run.status is RunStatus.COMPLETED:
                done = total
            self.bar.max = total
            self.bar.value = min(done, total)
            style = BAR_STYLES.get(run.status, "")
            if not self._failed:  # once red, always red
                self.bar.bar_style = style
                self._failed = style == "danger"
            self.bar_label.value = f"&nbsp;{done:,}/{len(steps):,} steps"
            grouped = len(steps) > GROUP_FROM
            shown = visible_steps(steps, self.show_all.value)
            self._shown = shown
            hidden = len(steps) - len(shown)
            parts = [self._row_html(step, now) for step in shown]
            if hidden:
                summary = f"{status_counts(steps)} \u00b7 showing {len(shown):,} of {len(steps):,} steps"
                parts.insert(0, f"<tr><td colspan='6' style='color:#57606a'>{html.escape(summary)}</td></tr>")
            self.rows.value = f"<table style='{_TABLE}'>{''.join(parts)}</table>" if parts else ""
            if grouped:
                self.show_all.layout.display = "flex"
                self.show_all.description = "group steps" if self.show_all.value else f"show all {len(steps):,} steps"
            self._draw_buttons(steps)

    def _draw_buttons(self, steps: list[StepInfo]) -> None:
        waiting = {s.key: s for s in steps if s.status is StepStatus.WAITING and s.event is not None}
        if set(waiting) == set(self._buttons):
            return
        for key in [k for k in self._buttons if k not in waiting]:
            self._buttons.pop(key).close()
        for key, step in waiting.items():
            if key not in self._buttons:
                button = widgets.Button(
                    description=f"send {step.event}",
                    tooltip=f"send the event {step.event} with this run's data",
                    button_style="primary",
                    icon="paper-plane",
                    layout=widgets.Layout(width="auto"),  # the whole event name, never cut
                )
                button.on_click(lambda _b, step=step: self.send(step))
                if self.run.blocking:  # the kernel is busy in this very cell: a click could not arrive
                    button.disabled = True
                    button.tooltip = "the cell is running this: start it with fn.start(...) to send from here"
                self._buttons[key] = button
        self.buttons.children = tuple(self._buttons.values())

    def send(self, step: StepInfo) -> list[str]:
        """Send the event a WAITING step awaits, with the triggering event's data (the "send" button)."""
        from nbdurable._events import Event

        if step.event is None:
            msg = f"step {step.key!r} waits for no event; nothing to send"
            raise ValueError(msg)
        client = self.run.client
        send_sync = getattr(client, "send_sync", None)
        if send_sync is None:
            msg = f"run {self.run.id!r} has no client that can send events (Client.send_sync is missing)"
            raise RuntimeError(msg)
        ids: list[str] = send_sync(Event(step.event, dict(self.run.event.data)))
        return ids

    def _header_html(self, run: Run[Any], now: float) -> str:
        elapsed = run.elapsed if run.ended_at is not None or run.started_at is None else now - run.started_at
        color = {"COMPLETED": "#1a7f37", "FAILED": "#cf222e"}.get(run.status.value, "#57606a")
        note = f" &middot; <i>{html.escape(run.note)}</i>" if run.note else ""
        error = ""
        if run.error is not None:
            text = html.escape(f"{run.error.name}: {run.error.message}")
            error = f"<br><span style='color:#cf222e'>{text}</span>"
        return (
            f"<b>{html.escape(run.function_id)}</b> &middot; <code>{html.escape(run.id)}</code> &middot; "
            f"<b style='color:{color}'>{run.status.value}</b> &middot; {seconds(elapsed)}{note}{error}"
        )

    def _row_html(self, step: StepInfo, now: float) -> str:
        """A step's row; rebuilt only when the step changed (or shows a countdown)."""
        signature = (
            step.status,
            step.attempts,
            step.duration,
            step.stale,
            step.note,
            step.error,
            step.has_output,
            len(step.errors),
        )
        cached = self._row_cache.get(step.key)
        if cached is not None and cached[0] == signature and not countdown(step, now):
            return cached[1]
        color = COLORS.get(step.status, "#57606a")
        style = f"color:{color}"
        if step.replayed:
            style += ";opacity:0.6;font-style:italic"
        texts = [html.escape(cell) for cell in step_cells(step, now, earlier=False)]
        texts[-1] = _earlier_attempts(step) + texts[-1]
        cells = "".join(f"<td style='{_CELL}'>{text}</td>" for text in texts)
        row = f"<tr style='{style}'>{cells}</tr>"
        self._row_cache[step.key] = (signature, row)
        return row

    # -- text equivalent ---------------------------------------------------------------------

    def text(self) -> str:
        """Draw the run's current state and return the widget's text equivalent (for docs and tests)."""
        self.redraw()
        run = self.run
        now = self.clock.now()
        steps = list(run.steps)
        done = self.bar.value
        width = 20
        filled = round(width * done / max(self.bar.max, 1))
        elapsed = run.elapsed if run.ended_at is not None or run.started_at is None else now - run.started_at
        lines = [f"{run.function_id} \u00b7 {run.id} \u00b7 {run.status.value} \u00b7 {seconds(elapsed)}"]
        if run.note:
            lines[0] += f" \u00b7 {run.note}"
        lines.append(
            f"[{'#' * filled}{'-' * (width - filled)}] {done:,}/{len(steps):,} steps ({self.bar.bar_style or '-'})"
        )
        hidden = len(steps) - len(self._shown)
        if hidden:
            lines.append(f"  {status_counts(steps)} \u00b7 showing {len(self._shown):,} of {len(steps):,} steps")
        widths = column_widths(self._shown, now)
        lines += [
            "  " + step_line(s, now, widths) + ("  [send]" if s.key in self._buttons else "") for s in self._shown
        ]
        if run.error is not None:
            lines.append(f"  error: {run.error.name}: {run.error.message}")
        return "\n".join(lines)


def display_run_view(run: Run[Any], *, close_when_done: bool = False) -> RunView:
    """Build a view of ``run`` and display it in the notebook.

    Args:
        run: the run.
        close_when_done: detach the view once the run's execution ends (views shown by a
            blocking ``run()`` cover that execution only).
    """
    from IPython.display import display

    view = RunView(run)
    if close_when_done:

        def closer(kind: str, _run: Run[Any], _step: StepInfo | None) -> None:
            if kind == "run_finished":
                view.close()
                run.remove_listener(closer)

        run.add_listener(closer)
    display(view.widget)  # type: ignore[no-untyped-call]
    return view
