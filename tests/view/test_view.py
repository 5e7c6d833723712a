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
from nbdurable._view import MAX_ROWS, RunView
from nbdurable.testing import FakeClock


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
    assert rows[0].startswith("  \u2714 extract  completed  1/4")
    assert "score  completed  2/4" in rows[1]
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
    assert "\u21bb extract  replayed" in view.text()


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
    assert "\u2718 score  failed  2/2" in view.text()
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


def test_long_runs_draw_the_latest_rows_and_every_unfinished_one(clock) -> None:
    """Past MAX_ROWS steps, the view draws the latest ones, earlier unfinished ones, and a count of the rest."""
    state: RunState[Any] = RunState(None, "etl", "r1", nbdurable.Event("x"))
    run = state.handle
    view = RunView(run, clock=clock, min_interval=0)
    state.steps.append(StepInfo(key="early-failure", step_id="early-failure", status=StepStatus.FAILED, attempts=1))
    for i in range(MAX_ROWS + 10):
        state.steps.append(StepInfo(key=f"s{i}", step_id=f"s{i}", status=StepStatus.COMPLETED, attempts=1))
    state.emit("step_completed", state.steps[-1])
    text = view.text().splitlines()
    assert text[2] == "  \u2026 10 earlier steps done"
    assert text[3].startswith("  \u2718 early-failure  failed")
    assert text[4].startswith("  \u2714 s10  completed")
    assert len(text) == 4 + MAX_ROWS
    assert view.rows.value.count("<tr") == MAX_ROWS + 2


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


def test_text_view_prints_a_line_per_step_change_and_a_summary(client, capsys) -> None:
    """Outside a widget front end, run() prints each step state change and a summary line to stderr."""
    etl, _ = _flaky_etl(client, failures=1)
    etl.run()
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("[etl] \u25b6 extract")
    assert any("\u27f3 score" in line and "retrying" in line and "ConnectionError" in line for line in err)
    assert err[-1].startswith("[etl] etl / ")
    assert "COMPLETED" in err[-1]
    assert sum("  running  " in line for line in err) == 3  # extract, score, score again
    assert etl.run() == 9
    assert all("replayed" in line for line in capsys.readouterr().err.splitlines()[:2])


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
    assert "score  completed" in made[1].text()


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
