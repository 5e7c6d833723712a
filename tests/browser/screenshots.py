"""``make screenshots``: PNGs of the run view's states, taken in JupyterLab by Debian's chromium.

Writes ``run-view-{running,retrying,completed,replayed,failed,waiting}.png`` into the
directory given (default ``docs/img``). A small purpose-made notebook puts one run in each
state and holds it there (a step blocked on a gate, a retry delay of five minutes, a wait for
an event nobody sends); each picture is cropped to that run's view.

Usage: ``python tests/browser/screenshots.py [OUT_DIR]``
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import nbformat
from jupyter_ui import CHROMIUM, NotebookPage, chromium, jupyter_server
from playwright.sync_api import expect

REPO = Path(__file__).resolve().parent.parent.parent

CELLS = [
    """\
import threading

import nbdurable
from nbdurable import Backoff

client = nbdurable.Client(app_id="screenshots", backoff=Backoff(initial=0.05, jitter=0))
live = nbdurable.Client(app_id="screenshots-live")
patient = nbdurable.Client(app_id="screenshots-patient", backoff=Backoff(initial=300, jitter=0))
gate = threading.Event()  # holds `score` running until set
calls = {"score": 0}


def extract(day: str) -> list[int]:
    return list(range(10))


def square(rows: list[int]) -> list[int]:
    return [r * r for r in rows]""",
    # running: `extract` done, `score` in flight (a sync function started in the background)
    """\
@live.create_function(fn_id="etl", retries=3)
def etl_live(ctx: nbdurable.ContextSync) -> int:
    rows = ctx.step.run("extract", extract, ctx.event.data["day"])
    scores = ctx.step.run("score", lambda: gate.wait() and square(rows))
    return ctx.step.run("load", sum, scores)


running = etl_live.start({"day": "2026-11-26"})
running""",
    # retrying: `score` failed and waits five minutes before its next attempt
    """\
def unreachable(rows: list[int]) -> list[int]:
    raise ConnectionError("the scoring API timed out")


@patient.create_function(fn_id="etl", retries=3)
def etl_patient(ctx: nbdurable.ContextSync) -> int:
    rows = ctx.step.run("extract", extract, ctx.event.data["day"])
    scores = ctx.step.run("score", unreachable, rows)
    return ctx.step.run("load", sum, scores)


retrying = etl_patient.start({"day": "2026-11-26"})
retrying""",
    # completed: the quickstart's pipeline, `score` passing at its third attempt
    """\
def flaky_score(rows: list[int]) -> list[int]:
    calls["score"] += 1
    if calls["score"] < 3:
        raise ConnectionError("the scoring API timed out")
    return square(rows)


@client.create_function(fn_id="etl", retries=3)
def etl(ctx: nbdurable.ContextSync) -> int:
    rows = ctx.step.run("extract", extract, ctx.event.data["day"])
    scores = ctx.step.run("score", flaky_score, rows)
    return ctx.step.run("load", sum, scores)


etl.run({"day": "2026-11-26"})""",
    # replayed: the same run again, every step from the store
    """etl.run({"day": "2026-11-26"})""",
    # failed: the second step fails on its last attempt; the bar turns red
    """\
@client.create_function(fn_id="report", retries=1)
def report(ctx: nbdurable.ContextSync) -> float:
    rows = ctx.step.run("query", lambda: [1, 2])
    return ctx.step.run("render", lambda: sum(rows) / 0)


failing = report.start({"week": 48})
failing""",
    # waiting: a run waits for an event; its send button sends it with the run's data
    """\
import datetime


@client.create_function(fn_id="approve-order")
async def approve_order(ctx: nbdurable.Context) -> str:
    price = await ctx.step.run("price", lambda: 42)
    approval = await ctx.step.wait_for_event(
        "approval",
        event="app/approved",
        if_exp="event.data.order == async.data.order",
        timeout=datetime.timedelta(hours=1),
    )
    return f"order {ctx.event.data['order']}: {price} approved" if approval else "no answer"


waiting = approve_order.start({"order": 7})
waiting""",
]

STATES = {
    # picture: (function id, which of its views in the page, texts the view shows once in that state)
    "running": ("etl", 0, ("RUNNING", "running")),
    "retrying": ("etl", 1, ("retrying", "retry in")),
    "completed": ("etl", 2, ("COMPLETED",)),
    "replayed": ("etl", 3, ("COMPLETED", "replayed")),
    "failed": ("report", 0, ("FAILED", "ZeroDivisionError")),
    "waiting": ("approve-order", 0, ("WAITING", "waiting")),
}


def write_notebook(path: Path) -> None:
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(source) for source in CELLS]
    nb.metadata["kernelspec"] = {"display_name": "Python 3", "language": "python", "name": "python3"}
    nbformat.write(nb, path)


def take(out: Path) -> list[Path]:
    """Run the notebook in JupyterLab and save one cropped PNG per state; return their paths."""
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="nbdurable-screenshots-") as tmp:
        work = Path(tmp)
        source = work / "run_view_states.ipynb"
        write_notebook(source)
        with jupyter_server("lab", work / "server", [source]) as server, chromium(work / "profile") as browser:
            page = browser.new_page()
            page.set_default_timeout(60_000)
            notebook = NotebookPage(page, server).open(source.name)
            notebook.run_all()
            written = []
            for state, (function_id, index, texts) in STATES.items():
                view = notebook.run_view(function_id).nth(index)
                for text in texts:
                    expect(view).to_contain_text(text, timeout=60_000)
                if state == "waiting":
                    expect(notebook.send_button(view, "app/approved")).to_be_enabled()
                view.scroll_into_view_if_needed()
                path = out / f"run-view-{state}.png"
                view.screenshot(path=str(path))
                written.append(path)
            return written


def main(argv: list[str]) -> int:
    if not CHROMIUM.exists():
        print(f"{CHROMIUM} is absent: apt-get install -y chromium", file=sys.stderr)
        return 1
    out = Path(argv[1]) if len(argv) > 1 else REPO / "docs" / "img"
    for path in take(out):
        print(path.relative_to(REPO) if path.is_relative_to(REPO) else path)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
