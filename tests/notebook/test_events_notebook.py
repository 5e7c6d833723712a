"""notebooks/events.ipynb executes top to bottom in a real kernel, twice (the second time replaying)."""

from __future__ import annotations

import os
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOK = Path(__file__).resolve().parents[2] / "notebooks" / "events.ipynb"


def _executed(store: Path) -> nbformat.NotebookNode:
    nb = nbformat.read(NOTEBOOK, as_version=4)
    env_store = os.environ.get("NBDURABLE_STORE")
    os.environ["NBDURABLE_STORE"] = str(store)  # the kernel inherits the environment
    try:
        NotebookClient(
            nb, timeout=60, kernel_name="python3", resources={"metadata": {"path": str(store.parent)}}
        ).execute()
    finally:
        if env_store is None:
            os.environ.pop("NBDURABLE_STORE", None)
        else:
            os.environ["NBDURABLE_STORE"] = env_store
    return nb


def _execute(store: Path) -> list[str]:
    nb = _executed(store)
    return [
        "".join(out.get("text", "") for out in cell.get("outputs", []) if out.get("output_type") == "stream")
        for cell in nb.cells
        if cell.cell_type == "code"
    ]


@pytest.mark.kernel
def test_events_notebook_runs_in_a_kernel(tmp_path: Path) -> None:
    """Approval, sleep, invoke and fan-out cells print the expected results; a second kernel replays them."""
    out = _execute(tmp_path / "store")
    assert "WAITING" in out[1]
    assert "order 7: 120 paid, approved by ada" in out[2]
    assert "no answer within 6 s" in out[4]  # the blocking wait timed out: nobody sent its event
    assert "rested" in out[5]
    assert "mean score 2.5" in out[6]
    assert "['OSLO', 'LIMA', 'PUNE']" in out[7]
    again = _execute(tmp_path / "store")
    assert "COMPLETED" in again[1]  # the approval was replayed from the store, nothing waited
    assert "('approval', 'REPLAYED', 'app/approved')" in again[1]
    assert "order 7: 120 paid, approved by ada" in again[2]
    assert "no answer within 6 s" in again[4]  # the timed-out wait replays at once
    assert "mean score 2.5" in again[6]


@pytest.mark.kernel
def test_events_notebook_shows_the_waiting_runs_view(tmp_path: Path) -> None:
    """The approval flow and the run that waits for a click are displayed as run views (widgets)."""
    nb = _executed(tmp_path / "store")
    views = [
        i
        for i, cell in enumerate(c for c in nb.cells if c.cell_type == "code")
        for out in cell.get("outputs", [])
        if "application/vnd.jupyter.widget-view+json" in out.get("data", {})
    ]
    assert 1 in views  # expense: the run waiting for app/approved
    assert 3 in views  # refund: waits for a click on its send button
