"""The notebooks in JupyterLab 4 and Notebook 7, in a real (headless) chromium, as a user runs them.

Each test runs once per front end. Assertions rest on what survives a redesign of the run
view: ipywidgets' DOM (``.jupyter-widgets``), the function and step ids, status words
("replayed", "completed", "waiting") and the send button's label starting with "send".
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from jupyter_ui import (
    CHROMIUM,
    LOOP_ERRORS,
    WIDGET_ERRORS,
    NotebookPage,
    Server,
    chromium,
    jupyter_server,
    rows,
    widget_view_count,
)
from playwright.sync_api import BrowserContext, expect

pytestmark = [
    pytest.mark.browser,
    pytest.mark.timeout(900),
    pytest.mark.skipif(not CHROMIUM.exists(), reason=f"{CHROMIUM} is absent: `apt-get install -y chromium`"),
]

NOTEBOOKS = Path(__file__).resolve().parent.parent.parent / "notebooks"
QUICKSTART_STEPS = ("extract", "score", "load")
LOOP_RUNS = 5
"""Run Alls of events.ipynb, each in a new kernel on an empty store, each with a click while a cell blocks."""


# The fixtures live here, not in a conftest.py: a second conftest module would clash with
# tests/conftest.py under --doctest-modules (both are the top-level module "conftest").


@pytest.fixture(scope="module", params=["lab", "notebook"], ids=["lab", "notebook7"])
def server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """JupyterLab 4, then Notebook 7, serving copies of notebooks/ with a fresh store."""
    with jupyter_server(request.param, tmp_path_factory.mktemp(request.param), sorted(NOTEBOOKS.glob("*.ipynb"))) as s:
        yield s


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrowserContext]:
    """Debian's chromium with a fresh profile, shared by the module's tests."""
    with chromium(tmp_path_factory.mktemp("chromium-profile")) as context:
        yield context


@pytest.fixture
def notebook(server: Server, browser: BrowserContext) -> Iterator[NotebookPage]:
    """A new tab on ``server`` with no kernel running, an empty store and pristine notebooks; closed afterwards."""
    server.reset()
    page = browser.new_page()
    page.set_default_timeout(60_000)
    try:
        yield NotebookPage(page, server)
    finally:
        page.close()


def assert_views_render(notebook: NotebookPage) -> None:
    """Every widget output the kernel sent is drawn by ipywidgets: no error, no text in its place."""
    saved = notebook.save()
    expected = widget_view_count(saved)
    assert expected > 0, f"{notebook.name}: the kernel displayed no run view at all"
    expect(notebook.widget_outputs()).to_have_count(expected)
    for text in notebook.outputs():
        for error in WIDGET_ERRORS:
            assert error not in text, f"{notebook.name}: a widget failed to render: {text[:500]}"
        assert not re.match(r"\s*(VBox|HBox|HTML|IntProgress)\(", text), (
            f"{notebook.name}: a widget shown as text: {text}"
        )


def assert_no_loop_errors(notebook: NotebookPage, when: str) -> None:
    for text in notebook.outputs():
        for error in LOOP_ERRORS:
            assert error not in text, f"{notebook.name}, {when}: {error!r} in a cell's output:\n{text[:2000]}"


def test_quickstart_views_render_and_a_second_run_all_replays(notebook: NotebookPage) -> None:
    """quickstart.ipynb: every run view is a widget with its steps completed; Run All again shows them replayed."""
    notebook.open("quickstart.ipynb")
    notebook.run_all()
    assert_views_render(notebook)
    views = notebook.run_view("etl")
    expect(views).to_have_count(2)  # the started run, displayed; the blocking run() that replays it
    first = views.first.inner_text()
    for step in QUICKSTART_STEPS:
        assert any("completed" in r.lower() for r in rows(first, step)), f"{step} not completed in:\n{first}"
    assert "COMPLETED" in first

    notebook.run_all()
    assert_views_render(notebook)
    expect(views).to_have_count(2)
    for view in views.all():
        text = view.inner_text()
        for step in QUICKSTART_STEPS:
            assert any("replayed" in r.lower() for r in rows(text, step)), f"{step} not replayed in:\n{text}"
    assert_no_loop_errors(notebook, "Run All twice")


def test_events_send_button_completes_the_waiting_run(notebook: NotebookPage) -> None:
    """events.ipynb: the run started with start() waits with a send button; a click completes it in its view."""
    notebook.open("events.ipynb")
    notebook.run_all()
    assert_views_render(notebook)
    assert_no_loop_errors(notebook, "first Run All")
    refund = notebook.run_view("refund")
    expect(refund).to_have_count(1)
    expect(refund).to_contain_text("WAITING")
    assert any("waiting" in r.lower() for r in rows(refund.inner_text(), "approval")), refund.inner_text()
    button = notebook.send_button(refund, "app/refund.approved")
    expect(button).to_be_enabled()
    # The blocking run's button is there but disabled: its cell kept the kernel busy.
    blocking = notebook.run_view("quick-approval")
    expect(blocking).to_contain_text("COMPLETED")

    button.click()
    expect(refund).to_contain_text("COMPLETED", timeout=30_000)
    expect(notebook.send_button(refund, "app/refund.approved")).to_have_count(0)
    assert any("completed" in r.lower() for r in rows(refund.inner_text(), "approval")), refund.inner_text()
    assert_no_loop_errors(notebook, "after the click")

    notebook.run_all()
    assert_views_render(notebook)
    text = refund.inner_text()
    for step in ("amount", "approval"):
        assert any("replayed" in r.lower() for r in rows(text, step)), f"{step} not replayed in:\n{text}"
    assert_no_loop_errors(notebook, "second Run All")


def test_events_run_all_with_a_click_while_a_cell_blocks_prints_no_loop_error(notebook: NotebookPage) -> None:
    """events.ipynb, Run All in a new kernel, clicking send while run() blocks: no 'cannot enter context', click kept.

    A cell blocking in ``run()`` re-enters the kernel's loop; a click arriving meanwhile was
    dropped with "RuntimeError: cannot enter context ... is already entered" printed in a
    cell's output (5 times in 5 before the fix). Now the click takes effect once the cell ends.
    """
    notebook.open("events.ipynb")
    for attempt in range(1, LOOP_RUNS + 1):
        if attempt > 1:
            notebook.restart_and_clear()
            notebook.server.reset_store()
        baseline = notebook.start_run_all()
        refund = notebook.run_view("refund")
        button = notebook.send_button(refund, "app/refund.approved")
        expect(button).to_be_enabled(timeout=60_000)
        blocking = notebook.run_view("quick-approval")
        expect(blocking).to_contain_text("WAITING", timeout=60_000)  # its cell blocks in run() now
        button.click()
        notebook.wait_run_all(baseline, label=f"Run All {attempt} of {LOOP_RUNS} (baseline {baseline})")
        assert_no_loop_errors(notebook, f"Run All {attempt} of {LOOP_RUNS}")
        expect(refund).to_contain_text("COMPLETED", timeout=30_000)  # the click was not lost
        expect(blocking).to_contain_text("COMPLETED")
