"""Every notebook in notebooks/ passes Run All twice in one kernel, then again after a restart, on one store."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

pytestmark = pytest.mark.kernel
NOTEBOOKS = sorted((Path(__file__).resolve().parents[2] / "notebooks").glob("*.ipynb"))


def _client(path: Path, cwd: Path) -> NotebookClient:
    nb = nbformat.read(path, as_version=4)
    return NotebookClient(nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(cwd)}})


def _run_all(client: NotebookClient) -> list[str]:
    """Execute every cell in order, as Run All does; a cell's unexpected error raises CellExecutionError."""
    for index, cell in enumerate(client.nb.cells):
        client.execute_cell(cell, index)
    return [
        "".join(out.get("text", "") for out in cell.get("outputs", []) if out.get("output_type") == "stream")
        for cell in client.nb.cells
        if cell.cell_type == "code"
    ]


@pytest.mark.timeout(600)
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_run_all_twice_in_one_kernel_then_after_a_restart(path: Path, tmp_path: Path, monkeypatch) -> None:
    """Run All, Run All again in the same kernel, then Run All in a new kernel: no cell fails, asserts included."""
    assert NOTEBOOKS, "no notebook found"
    monkeypatch.setenv("NBDURABLE_STORE", str(tmp_path / "store"))  # the kernels inherit it
    client = _client(path, tmp_path)
    with client.setup_kernel():
        first = _run_all(client)
        second = _run_all(client)
    restarted = _client(path, tmp_path)
    with restarted.setup_kernel():
        third = _run_all(restarted)
    assert len(first) == len(second) == len(third)
