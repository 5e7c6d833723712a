"""notebooks/dask.ipynb executes top to bottom in a real kernel, on a LocalCluster it starts and closes."""

from __future__ import annotations

import re
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOK = Path(__file__).resolve().parents[2] / "notebooks" / "dask.ipynb"


@pytest.mark.kernel
def test_the_dask_notebook_fans_out_survives_a_killed_worker_and_replays(tmp_path: Path, monkeypatch) -> None:
    """The fan-out runs 200 tasks, the killed step takes two attempts, the replay runs none; no cell errs."""
    monkeypatch.setenv("NBDURABLE_STORE", str(tmp_path / "store"))  # the kernel inherits the environment
    monkeypatch.setenv("NBDURABLE_VIEW", "off")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = [
        "".join(out.get("text", "") for out in cell.get("outputs", []) if out.get("output_type") == "stream")
        for cell in nb.cells
        if cell.cell_type == "code"
    ]
    errors = [o for c in nb.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert errors == []
    assert "workers: 2" in outputs[0]
    assert "mean score 1.485; 200 tasks ran on the cluster" in outputs[1]
    assert re.search(r"trained in process \d+\ntrain: completed, 2 attempts", outputs[2])
    assert "mean score 1.485; 0 tasks ran on the cluster" in outputs[3]
