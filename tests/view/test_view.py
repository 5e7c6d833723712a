"""The run view without a front end: widget traits, rows, bar style, throttling, text fallback."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

import pytest

import nbdurable
from nbdurable._display import PRESENTER
from nbdurable._process import STATE
from nbdurable._run import Run, RunState
from nbdurable._text import TextView
from nbdurable._types import ErrorInfo, RunStatus, StepInfo, StepStatus
from nbdurable._view import GROUP_FROM, LAST_DONE, RunView
from nbdurable.testing import FakeClock


def _flat(text: str) -> str:
    """Text with runs of spaces made one (columns are padded to line up)."""
    return " ".join(text.split())


@pytest.fixture
def views(clock: FakeClock, monkeypatch: pytest.MonkeyPatch) -> list[RunView]:
    """Every run a blocking run() executes gets a RunView (min_interval 0: every event draws)."""
    made: list[RunView] = []

    def hook(run: Run[Any]) -> None:
        if not made:
            made.append(RunView(run, clock=clock, min_interval=0))

    monkeypatch.setattr(STATE, "run_hooks", [hook])
    return made


def _flaky_etl(client: nbdurable.Client, failures: int, retries: int = 3) -> tuple[nbdurable.Function[Any], list[str]]:
    calls: list[str] = []

    def score() -> int:
        calls.append("score")
        if calls.count("score") <= failures:
            raise ConnectionError("the API timed out")
        return 7

    @client.create_function(fn_id="etl", retries=retries)
    def etl(ctx: nbdurable.ContextSync) -> int:
        rows = ctx.step.run("extract", lambda: calls.append("extract") or [1, 2])
        return ctx.step.run("score", score) + len(rows)

    return etl, calls


def test_completed_run_draws_green_full_bar_and_a_row_per_step(client, views) -> None:
    """After a run completes, the bar is full and green and each step has a row with attempts k/n."""
    etl, _ = _flaky_etl(client, failures=1)
    assert etl.run() == 9
    view = views[0]
    assert view.bar.bar_style == "success"
    assert (view.bar.value, view.bar.max) == (2, 2)
    assert view.rows.value.count("<tr") == 2
    rows = view.text().splitlines()[2:]
    assert _flat(rows[0]).startswith("\u2714 extract completed 1/4")
    assert "score completed 2/4 0µs (1 earlier attempt failed)" in _flat(rows[1])
    assert "COMPLETED" in view.header.value
    assert etl.id in view.header.value


def test_replayed_rows_are_distinct_from_executed_ones(client, views) -> None:
    """A second execution shows its steps as replayed, greyed and italic, with the replay icon."""
    etl, calls = _flaky_etl(client, failures=0)
    etl.run()
    views.clear()
    etl.run()
    view = views[0]
    assert calls == ["extract", "score"]
    first_row = view.rows.value.split("</tr>")[0]
    assert "opacity:0.6" in first_row
    assert "font-style:italic" in first_row
    assert "\u21bb extract replayed" in _flat(view.text())


def test_countdown_while_a_step_waits_to_retry(clock) -> None:
    """A RETRYING step with a deadline shows the time left, and the countdown moves with the clock."""
    state: RunState[Any] = RunState(None, "etl", "r1", nbdurable.Event("x"))
    run = state.handle
    view = RunView(run, clock=clock, min_interval=0.1)
    state.status = RunStatus.RUNNING
    step = StepInfo(key="score", step_id="score", status=StepStatus.RETRYING, attempts=1, max_attempts=3)
    step.error = ErrorInfo("ConnectionError", "the API timed out")
    step.deadline = clock.now() + 4
    state.steps.append(step)
    state.emit("step_retrying", step)
    assert "retry in 4.0s" in view.text()
    assert "ConnectionError: the API timed out" in view.text()
    clock.advance(1.5)
    view.flush()
    assert "retry in 2.5s" in view.rows.value


def test_failed_run_keeps_its_red_bar(client, views) -> None:
    """A failed run's bar turns red, and a later execution drawn into the same view never overwrites it."""
    etl, _ = _flaky_etl(client, failures=10, retries=1)
    with pytest.raises(nbdurable.RunFailedError):
        etl.run()
    view = views[0]
    assert view.bar.bar_style == "danger"
    assert "\u2718 score failed 2/2" in _flat(view.text())
    assert "ConnectionError" in view.header.value
    with pytest.raises(nbdurable.RunFailedError):
        etl.run()  # a later execution, drawn into the same view
    assert view.bar.bar_style == "danger"


def test_stale_step_is_marked(clock) -> None:
    """A replayed step whose code changed is marked stale in its row."""
    state: RunState[Any] = RunState(None, "etl", "r1", nbdurable.Event("x"))
    run = state.handle
    view = RunView(run, clock=clock, min_interval=0)
    step = StepInfo(key="a", step_id="a", status=StepStatus.REPLAYED, attempts=1, stale=True, has_output=True, output=1)
    state.steps.append(step)
    state.emit("step_replayed", step)
    assert "\u26a0 stale" in view.rows.value


def test_redraws_are_throttled_and_the_final_state_is_always_drawn(clock) -> None:
    """Many events within min_interval draw once; run_finished draws at once whatever the throttle says."""
    state: RunState[Any] = RunState(None, "etl", "r1", nbdurable.Event("x"))
    run = state.handle
    view = RunView(run, clock=clock, min_interval=0.1)
    first = view.draws
    state.status = RunStatus.RUNNING
    for i in range(50):
        step = StepInfo(key=f"s{i}", step_id=f"s{i}", status=StepStatus.COMPLETED, attempts=1)
        state.steps.append(step)
        state.emit("step_completed", step)
        clock.advance(0.001)
    assert view.draws == first  # 50 ms after the initial draw: nothing redrawn yet
    assert view.rows.value == ""
    clock.advance(0.1)
    view.flush()
    assert view.draws == first + 1
    assert view.rows.value.count("<tr") == 50
    state.status = RunStatus.COMPLETED
    state.emit("run_finished")
    assert view.draws == first + 2
    assert view.bar.bar_style == "success"


def test_waiting_step_has_a_send_button_that_sends_the_awaited_event(clock) -> None:
    """A WAITING step gets a button; clicking it sends the awaited event with the trigger's data."""
    sent: list[Any] = []

    class Sender:
        def send_sync(self, events: Any) -> list[str]:
            sent.append(events)
            return ["id1"]

    state: RunState[Any] = RunState(None, "approve", "r1", nbdurable.Event("app/start", {"order": 7}))
    run = state.handle
    state.client = Sender()
    view = RunView(run, clock=clock, min_interval=0)
    step = StepInfo(key="wait", step_id="wait", kind="wait", status=StepStatus.WAITING, event="app/approved")
    step.deadline = clock.now() + 60
    state.steps.append(step)
    state.emit("step_waiting", step)
    assert len(view.buttons.children) == 1
    button = view.buttons.children[0]
    assert button.description == "send app/approved"
    assert "times out in 60.0s" in view.text()
    button.click()
    assert [(e.name, e.data) for e in sent] == [("app/approved", {"order": 7})]
    step.status = StepStatus.COMPLETED
    state.emit("step_completed", step)
    assert view.buttons.children == ()


def test_long_runs_are_grouped_with_counts_every_unfinished_step_and_the_last_done(clock) -> None:
    """10,000 steps: a count per status, the failed and running steps, the last few done; a toggle shows all."""
    state: RunState[Any] = RunState(None, "etl", "r1", nbdurable.Event("x"))
    run = state.handle
    view = RunView(run, clock=clock, min_interval=0)
    state.steps.append(StepInfo(key="early-failure", step_id="early-failure", status=StepStatus.FAILED, attempts=1))
    for i in range(10_000):
        state.steps.append(StepInfo(key=f"s{i}", step_id=f"s{i}", status=StepStatus.COMPLETED, attempts=1))
    state.steps.append(StepInfo(key="now", step_id="now", status=StepStatus.RUNNING, attempts=1))
    state.emit("step_started", state.steps[-1])
    text = view.text().splitlines()
    assert text[2] == "  10,000 completed \u00b7 1 failed \u00b7 1 running \u00b7 showing 11 of 10,002 steps"
    assert text[3].startswith("  \u2718 early-failure")
    assert text[4].split()[:3] == ["\u2714", "s9991", "completed"]
    assert text[-1].split()[:3] == ["\u25b6", "now", "running"]
    assert len(text) == 3 + 1 + (LAST_DONE - 1) + 1
    assert view.rows.value.count("<tr") == 1 + 11
    assert view.show_all.layout.display == "flex"
    assert view.show_all.description == "show all 10,002 steps"
    view.show_all.value = True  # a click
    assert view.rows.value.count("<tr") == 10_002
    assert GROUP_FROM == 50


def test_close_detaches_the_view(clock) -> None:
    """After close() the run's events no longer redraw the view."""
    state: RunState[Any] = RunState(None, "etl", "r1", nbdurable.Event("x"))
    run = state.handle
    view = RunView(run, clock=clock, min_interval=0)
    view.close()
    before = view.draws
    state.emit("run_finished")
    assert view.draws == before
    assert state.listeners == []


def test_text_view_off_a_terminal_prints_executed_changes_and_a_summary(client, capsys) -> None:
    """Off a TTY (a log, CI), run() prints each executed step change (not their starts) and a summary line."""
    etl, _ = _flaky_etl(client, failures=1)
    etl.run()
    err = capsys.readouterr().err.splitlines()
    assert [_flat(line).split()[1:4] for line in err[:-1]] == [
        ["\u2714", "extract", "completed"],
        ["\u27f3", "score", "retrying"],
        ["\u2714", "score", "completed"],
    ]
    assert "ConnectionError" in err[1]
    assert err[-1].startswith("[etl] etl / ")
    assert "COMPLETED" in err[-1]


def test_replays_are_summarized_in_one_line(client, capsys) -> None:
    """A run whose steps all replay prints one line for them, not a line per step."""
    calls = []

    @client.create_function(fn_id="many")
    def many(ctx: nbdurable.ContextSync) -> int:
        return sum(ctx.step.run("item", lambda i=i: calls.append(i) or i) for i in range(2000))

    many.run()
    capsys.readouterr()
    assert many.run() == sum(range(2000))
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2
    assert err[0].startswith("[many] \u21bb 2,000 steps replayed in ")
    assert len(calls) == 2000


def test_on_a_terminal_one_progress_line_and_a_line_per_failure(client) -> None:
    """On a TTY: progress redrawn in place, a full line for the retry, the summary at the end."""
    lines: list[str] = []
    shown: list[Any] = []
    etl, _ = _flaky_etl(client, failures=1)
    STATE.run_hooks.append(lambda run: shown.append(TextView(run, write=lines.append, tty=True)))
    try:
        etl.run()
    finally:
        STATE.run_hooks.pop()
    progress = [line for line in lines if " steps" in line and line.startswith("[etl] ") and "/" in line.split()[1]]
    assert progress
    assert progress[0].startswith("[etl] 0/1 steps \u00b7 \u25b6 extract")
    retry = [line for line in lines if "\u27f3 score" in line]
    assert len(retry) == 1
    assert "ConnectionError" in retry[0]
    assert lines[-1].startswith("[etl] etl / ")


def test_view_off_silences_run_output(client, capsys, monkeypatch) -> None:
    """NBDURABLE_VIEW=off: a script's run() prints nothing."""
    monkeypatch.setenv("NBDURABLE_VIEW", "off")
    etl, _ = _flaky_etl(client, failures=0)
    etl.run()
    assert capsys.readouterr() == ("", "")


def test_text_view_follows_one_execution(clock) -> None:
    """A text view detaches when its execution ends, so a later execution is not printed twice."""
    lines: list[str] = []
    state: RunState[Any] = RunState(None, "etl", "r1", nbdurable.Event("x"))
    run = state.handle
    TextView(run, write=lines.append)
    state.emit("run_finished")
    state.emit("run_finished")
    assert len(lines) == 1


def test_show_run_outside_a_kernel_builds_no_widget(clock) -> None:
    """show_run in a plain process attaches a text view, not a RunView."""
    state: RunState[Any] = RunState(None, "etl", "r1", nbdurable.Event("x"))
    run = state.handle
    PRESENTER.show(run)
    assert [type(getattr(fn, "__self__", None)).__name__ for fn in state.listeners] == ["TextView"]


def test_run_displays_as_text_outside_a_notebook(client) -> None:
    """A Run's mime bundle outside a widget front end is its text summary only."""
    etl, _ = _flaky_etl(client, failures=0)
    etl.run()
    run = client.runs("etl")[0]
    bundle = run._repr_mimebundle_()
    assert list(bundle) == ["text/plain"]
    assert bundle["text/plain"].startswith("etl / ")


def test_scripts_never_import_ipython_or_ipywidgets(tmp_path) -> None:
    """A script running a durable function (text view on) imports neither IPython nor ipywidgets."""
    script = tmp_path / "s.py"
    script.write_text(
        "import sys, nbdurable\n"
        f"c = nbdurable.Client('s', store={str(tmp_path / 'store')!r})\n"
        "@c.create_function(fn_id='f')\n"
        "def f(ctx):\n"
        "    return ctx.step.run('a', lambda: 1)\n"
        "assert f.run() == 1\n"
        "print(sorted(m for m in ('IPython', 'ipywidgets', 'ipykernel') if m in sys.modules))\n"
    )
    env = {**os.environ, "NBDURABLE_VIEW": "auto"}
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, check=True)
    assert done.stdout.strip() == "[]"
    assert "[f] \u2714 a" in done.stderr


def test_rerun_after_a_failure_draws_a_fresh_view(client, clock, monkeypatch) -> None:
    """Re-running a failed run (the cell re-run after a fix) gets a view that starts clean and ends green."""
    made: list[RunView] = []
    monkeypatch.setattr(STATE, "run_hooks", [lambda run: made.append(RunView(run, clock=clock, min_interval=0))])
    etl, _ = _flaky_etl(client, failures=1, retries=0)
    with pytest.raises(nbdurable.RunFailedError):
        etl.run()
    assert made[0].bar.bar_style == "danger"
    assert etl.run() == 9
    assert made[1].bar.bar_style == "success"
    assert "score completed" in _flat(made[1].text())


def test_send_button_is_disabled_while_a_cell_blocks_on_the_run(client, clock, monkeypatch) -> None:
    """A blocking run() keeps the kernel busy: its waiting step's button is disabled, saying why; start() enables it."""
    from tests.waiting import waiting_step

    made: list[RunView] = []
    monkeypatch.setattr(STATE, "run_hooks", [lambda run: made.append(RunView(run, clock=clock, min_interval=0))])

    @client.create_function(fn_id="approve")
    def approve(ctx: nbdurable.ContextSync) -> Any:
        return ctx.step.wait_for_event("ok", event="app/ok", timeout=60_000)

    import threading

    blocking = threading.Thread(target=lambda: approve.run({"n": 1}), daemon=True)
    blocking.start()
    waiting_step(_wait_for_view(made), "ok")
    from tests.waiting import eventually

    button = eventually(lambda: made[0].buttons.children)[0]  # drawn by the run's thread
    assert button.disabled
    assert "fn.start" in button.tooltip
    clock.advance(61)
    blocking.join(5)

    background = approve.start({"n": 2})
    waiting_step(background, "ok")
    view = RunView(background, clock=clock, min_interval=0)  # draws at once
    assert not eventually(lambda: view.buttons.children)[0].disabled
    clock.advance(61)
    background.wait(5)


def _wait_for_view(made: list[RunView]) -> Run[Any]:
    from tests.waiting import eventually

    eventually(lambda: made)
    return made[0].run


def test_every_change_goes_to_the_nbdurable_logger_with_structured_fields(client, caplog) -> None:
    """Retries warn, completions inform, replays are DEBUG; each record carries function, run, step, status, attempt."""
    import logging

    etl, _ = _flaky_etl(client, failures=1)
    with caplog.at_level(logging.DEBUG, logger="nbdurable"):
        etl.run()
        etl.run()
    records = [r for r in caplog.records if r.name == "nbdurable"]
    fields = [(r.levelname, r.step_id, r.status, r.attempt) for r in records if r.step_id is not None]
    assert ("WARNING", "score", "RETRYING", 1) in fields
    assert ("INFO", "score", "COMPLETED", 2) in fields
    assert ("DEBUG", "score", "REPLAYED", 2) in fields
    assert {r.function for r in records} == {"etl"}
    assert all(r.run_id == etl.runs()[0].id for r in records)
    assert any(r.event == "run_finished" and r.status == "COMPLETED" for r in records)


def test_a_timed_out_wait_says_so_and_a_resolved_one_names_its_event(client, clock) -> None:
    """A wait that timed out reads 'timed out' (not null); one that got its event shows its name and data."""
    from tests.waiting import waiting_step

    @client.create_function(fn_id="approve")
    def approve(ctx: nbdurable.ContextSync) -> Any:
        return ctx.step.wait_for_event("ok", event="app/ok", timeout=60_000)

    late = approve.start({"n": 1})
    waiting_step(late, "ok")
    clock.advance(61)
    assert late.wait(5) is None
    assert "timed out" in _flat(RunView(late, clock=clock, min_interval=0).text())

    got = approve.start({"n": 2})
    waiting_step(got, "ok")
    client.send_sync(nbdurable.Event("app/ok", {"by": "ada"}))
    got.wait(5)
    assert "app/ok {'by': 'ada'}" in _flat(RunView(got, clock=clock, min_interval=0).text())


def test_earlier_attempts_errors_are_kept_and_folded_in_the_row(client, views) -> None:
    """A step that needed 2 attempts says so, and its row holds the earlier error behind a fold."""
    etl, _ = _flaky_etl(client, failures=1)
    etl.run()
    row = views[0].rows.value.split("</tr>")[1]
    assert "<details" in row
    assert "1 earlier attempt failed" in row
    assert "attempt 1: ConnectionError: the API timed out" in row


def test_the_send_button_shows_the_whole_event_name(client, clock) -> None:
    from tests.waiting import eventually, waiting_step

    @client.create_function(fn_id="approve")
    def approve(ctx: nbdurable.ContextSync) -> Any:
        return ctx.step.wait_for_event("ok", event="app/approved-by-finance", timeout=60_000)

    run = approve.start()
    waiting_step(run, "ok")
    view = RunView(run, clock=clock, min_interval=0)
    button = eventually(lambda: view.buttons.children)[0]
    assert button.description == "send app/approved-by-finance"
    assert button.layout.width == "auto"
    clock.advance(61)
    run.wait(5)
