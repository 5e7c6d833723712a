"""%%step in real kernels: resources, lambdas, dataflow invalidation, replayed outputs, restarts, scopes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.notebook.test_kernel import Kernel, new_kernel

pytestmark = pytest.mark.kernel


def _setup(k: Kernel, log: Path) -> None:
    """The notebook's first, plain cell: the extension and a counter of cell executions (a file)."""
    k.text(
        "%load_ext nbdurable\n"
        f"LOG = {str(log)!r}\n"
        "def hit(name):\n"
        "    with open(LOG, 'a') as f:\n"
        "        f.write(name + '\\n')\n"
    )


def _hits(log: Path) -> list[str]:
    return log.read_text().split() if log.exists() else []


def _step(k: Kernel, name: str, body: str) -> str:
    return k.text(f"%%step {name}\n{body}")


def test_files_and_lambdas_store_and_a_connection_is_left_out_with_a_warning(kernels, tmp_path) -> None:
    """A `with open()` target is not stored nor mentioned; a connection is left out with one line; the rest restores."""
    log, data = tmp_path / "log", tmp_path / "rows.txt"
    data.write_text("a,1\nb,2\n")
    cell = (
        f"with open({str(data)!r}) as f:\n"
        "    rows = [line.split(',') for line in f.read().splitlines()]\n"
        "key = lambda r: int(r[1])\n"
        "import sqlite3\n"
        "conn = sqlite3.connect(':memory:')\n"
        "hit('files')"
    )
    first = new_kernel(kernels, tmp_path)
    _setup(first, log)
    out = _step(first, "files", cell)
    assert "not stored" in out
    assert "conn (sqlite3.Connection" in out
    assert "'f'" not in out
    assert " f " not in out
    first.close()

    second = new_kernel(kernels, tmp_path)
    _setup(second, log)
    out = _step(second, "files", cell)
    assert "restored rows, key" in out
    assert "not brought back: conn" in out
    assert "--refresh" in out
    assert second.text("print(sorted(rows, key=key), 'f' in dir())").strip() == "[['a', '1'], ['b', '2']] False"
    assert _hits(log) == ["files"]


def test_editing_a_cell_reexecutes_only_the_cells_that_read_what_it_changed(kernels, tmp_path) -> None:
    """A binds x and w; B reads x, C reads w, D reads neither. Changing x re-executes A and B only."""
    log = tmp_path / "log"
    k = new_kernel(kernels, tmp_path)
    _setup(k, log)
    k.text("base = 10")
    a1, a2 = "hit('A'); x = base * 2; w = 5", "hit('A'); x = base * 3; w = 5"
    b, c, d = "hit('B'); y = x + 1", "hit('C'); z = w * 3", "hit('D'); q = 42"
    for name, body in (("A", a1), ("B", b), ("C", c), ("D", d)):
        _step(k, name, body)
    for name, body in (("A", a1), ("B", b), ("C", c), ("D", d)):
        assert "restored" in _step(k, name, body)
    assert _hits(log) == ["A", "B", "C", "D"]

    assert "executed again (its source changed)" in _step(k, "A", a2)
    assert "executed again (x changed)" in _step(k, "B", b)
    assert "restored" in _step(k, "C", c)
    assert "restored" in _step(k, "D", d)
    assert _hits(log) == ["A", "B", "C", "D", "A", "B"]
    assert k.text("print(y, z, q)").strip() == "31 15 42"


def test_an_upstream_rerun_with_identical_values_reexecutes_nothing_downstream(kernels, tmp_path) -> None:
    log = tmp_path / "log"
    k = new_kernel(kernels, tmp_path)
    _setup(k, log)
    _step(k, "A", "hit('A'); x = 1")
    _step(k, "B", "hit('B'); y = x + 1")
    _step(k, "A --refresh", "hit('A'); x = 1")
    assert "restored" in _step(k, "B", "hit('B'); y = x + 1")
    assert _hits(log) == ["A", "B", "A"]


def test_a_plain_cell_changing_a_value_a_cell_step_reads_invalidates_it(kernels, tmp_path) -> None:
    log = tmp_path / "log"
    k = new_kernel(kernels, tmp_path)
    _setup(k, log)
    k.text("threshold = 0.5")
    cell = "hit('score'); passed = [v for v in (0.2, 0.7, 0.9) if v > threshold]"
    _step(k, "score", cell)
    assert "restored" in _step(k, "score", cell)
    k.text("threshold = 0.8")
    assert "executed again (threshold changed)" in _step(k, "score", cell)
    assert k.text("print(passed)").strip() == "[0.9]"
    assert _hits(log) == ["score", "score"]


def _outputs_of(k: Kernel, code: str) -> list[dict[str, Any]]:
    status, outputs = k.run(code)
    assert status == "ok", outputs
    return outputs


def test_a_restored_cell_shows_its_printed_text_and_its_plot_again_after_a_restart(kernels, tmp_path) -> None:
    """stdout and a matplotlib PNG come back, in order, followed by the one 'restored' line."""
    log = tmp_path / "log"
    cell = (
        "%%step plot\n"
        "import matplotlib.pyplot as plt\n"
        "hit('plot')\n"
        "print('mean is', 4.5)\n"
        "fig = plt.figure()\n"
        "plt.plot([1, 2, 3], [4, 5, 6])\n"
        "plt.show()\n"
        "result = 4.5"
    )
    first = new_kernel(kernels, tmp_path)
    _setup(first, log)
    live = _outputs_of(first, cell)
    assert any(o["type"] == "display_data" and "image/png" in o["data"] for o in live)
    first.close()

    second = new_kernel(kernels, tmp_path)
    _setup(second, log)
    again = _outputs_of(second, cell)
    streams = "".join(o.get("text", "") for o in again if o["type"] == "stream")
    assert "mean is 4.5" in streams
    assert streams.rstrip().splitlines()[-1].startswith("%%step plot: restored")
    images = [o for o in again if o["type"] == "display_data" and "image/png" in o["data"]]
    assert len(images) == 1
    assert _hits(log) == ["plot"]


def test_out_of_order_after_a_restart_a_reader_brings_back_what_it_reads(kernels, tmp_path) -> None:
    """After a restart, running B (reads x) before A restores B and the x it reads; A then restores too."""
    log = tmp_path / "log"
    first = new_kernel(kernels, tmp_path)
    _setup(first, log)
    _step(first, "A", "hit('A'); x = 41")
    _step(first, "B", "hit('B'); y = x + 1")
    first.close()

    second = new_kernel(kernels, tmp_path)
    _setup(second, log)
    out = _step(second, "B", "hit('B'); y = x + 1")
    assert "restored x (which it reads)" in out
    assert "%%step B: restored y" in out
    assert "restored" in _step(second, "A", "hit('A'); x = 41")
    assert second.text("print(x, y)").strip() == "41 42"
    assert _hits(log) == ["A", "B"]


def test_two_notebooks_sharing_a_store_keep_their_cell_steps_apart(kernels, tmp_path) -> None:
    """Cell steps are scoped by notebook: two notebooks' 'load' cells never replace each other."""
    log = tmp_path / "log"
    one = new_kernel(kernels, tmp_path, JPY_SESSION_NAME=str(tmp_path / "one.ipynb"))
    two = new_kernel(kernels, tmp_path, JPY_SESSION_NAME=str(tmp_path / "two.ipynb"))
    _setup(one, log)
    _setup(two, log)
    _step(one, "load", "hit('one'); v = 1")
    _step(two, "load", "hit('two'); v = 2")
    assert "restored" in _step(one, "load", "hit('one'); v = 1")
    assert "restored" in _step(two, "load", "hit('two'); v = 2")
    assert (one.text("print(v)").strip(), two.text("print(v)").strip()) == ("1", "2")
    assert _hits(log) == ["one", "two"]
    out = one.text("%nbdurable runs")
    assert "%%step[" in out


def test_show_lists_what_a_cell_step_read_and_why_it_executed(kernels, tmp_path) -> None:
    log = tmp_path / "log"
    k = new_kernel(kernels, tmp_path)
    _setup(k, log)
    _step(k, "A", "hit('A'); x = 1")
    _step(k, "B", "hit('B'); y = x + 1")
    _step(k, "A", "hit('A'); x = 2")
    _step(k, "B", "hit('B'); y = x + 1")
    out = k.text("%nbdurable show %%step/B")
    assert "last executed because: x changed" in out
    assert "reads x from cell step A" in out
    assert "stores y" in out


def test_a_large_array_bound_by_a_cell_step_restores_memory_mapped_in_a_new_kernel(kernels, tmp_path) -> None:
    """A 64 MB array a cell step bound comes back in a new kernel, memory-mapped, without running the cell."""
    log = tmp_path / "log"
    cell = "%%step big\nimport numpy as np\nhit('big')\nbig = np.arange(8_000_000, dtype=np.float64)"
    first = new_kernel(kernels, tmp_path)
    _setup(first, log)
    first.text(cell)
    assert first.text("print(big.nbytes, float(big.sum()))") == f"64000000 {float(sum(range(8_000_000)))}\n"
    first.close()

    second = new_kernel(kernels, tmp_path)
    _setup(second, log)
    assert second.text(cell).startswith("%%step big: restored np, big from ")
    check = "print(type(big).__name__, big.dtype, big.shape, float(big.sum()), big.flags.writeable)"
    assert second.text(check) == f"memmap float64 (8000000,) {float(sum(range(8_000_000)))} True\n"
    assert _hits(log) == ["big"]
