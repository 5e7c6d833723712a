"""%%step stores each name on its own: data files by codec, unchanged names kept, large arrays mapped back."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from IPython.core.interactiveshell import InteractiveShell

from nbdurable._cellio import Capture
from tests.shell import real_shell

np = pytest.importorskip("numpy")


@pytest.fixture
def ip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[InteractiveShell]:
    """A real shell whose store is the default ./.nbdurable of a fresh folder; the extension is unloaded after."""
    yield from real_shell(tmp_path, monkeypatch, load=True)


def _files(tmp_path: Path) -> dict[str, int]:
    """Data files of the store: name -> inode (a rewritten file gets a new name)."""
    return {p.name: p.stat().st_ino for p in (tmp_path / "store" / "data").rglob("*") if p.is_file()}


def test_each_name_has_its_own_file_and_an_unchanged_name_is_not_rewritten(ip, tmp_path) -> None:
    """A cell binding an array and a dict: two files; executed again with one name changed, only it is rewritten."""
    ip.user_ns["scale"] = 1
    cell = "import numpy as np\nbig = np.arange(1000.0)\nsmall = {'scale': scale}"
    ip.run_cell_magic("step", "data", cell)
    first = _files(tmp_path)
    assert sorted(Path(n).suffix for n in first) == [".npy", ".pkl"]
    ip.user_ns["scale"] = 2  # `small` changes, `big` does not
    ip.run_cell_magic("step", "data", cell)
    second = _files(tmp_path)
    npy = [n for n in first if n.endswith(".npy")]
    assert npy
    assert all(second.get(n) == first[n] for n in npy)  # the array's file was kept as it was
    assert [n for n in second if n.endswith(".pkl")] != [n for n in first if n.endswith(".pkl")]
    assert len(second) == 2  # the old dict file is gone


def test_a_large_array_restores_memory_mapped(ip) -> None:
    cell = "import numpy as np\nbig = np.ones(500_000)"
    ip.run_cell_magic("step", "big", cell)
    ip.user_ns.pop("big")
    ip.run_cell_magic("step", "big", cell)
    assert isinstance(ip.user_ns["big"], np.memmap)
    assert ip.user_ns["big"].sum() == 500_000


def test_captured_outputs_are_bounded_and_say_so(capsys) -> None:
    """Past the limit, outputs are still shown but not kept, and a note says how much was dropped."""
    with Capture(None, limit=10) as capture:
        print("0123456789" * 3)
    assert "0123456789" * 3 in capsys.readouterr().out
    kept = "".join(o["text"] for o in capture.outputs)
    assert "0123456789" * 3 not in kept
    assert "were shown but not stored" in kept


def test_a_cells_last_expression_is_displayed_and_replayed(ip, capsys) -> None:
    """A cell ending in an expression shows its value, as a notebook cell does, and again when it restores."""
    ip.run_cell_magic("step", "last", "total = 40 + 2\ntotal * 10")
    assert "420" in capsys.readouterr().out
    ip.run_cell_magic("step", "last", "total = 40 + 2\ntotal * 10")
    out = capsys.readouterr().out
    assert "420" in out
    assert "restored total" in out
    ip.run_cell_magic("step", "quiet", "hidden = 1\nhidden * 5;")
    assert "5" not in capsys.readouterr().out


def test_percent_step_names_the_cell_steps_of_every_scope_in_runs_and_clear(ip, capsys) -> None:
    """`%nbdurable runs %%step` lists, and `clear %%step` deletes, the cell steps of every notebook's scope."""
    ip.run_cell_magic("step", "load --scope one", "a = 1")
    ip.run_cell_magic("step", "load --scope two", "b = 2")
    capsys.readouterr()
    ip.run_line_magic("nbdurable", "runs %%step")
    listed = capsys.readouterr().out
    assert "%%step[one]" in listed
    assert "%%step[two]" in listed
    ip.run_line_magic("nbdurable", "clear %%step")
    assert "cleared 2 run(s)" in capsys.readouterr().out
    ip.run_line_magic("nbdurable", "runs %%step")
    assert "no runs" in capsys.readouterr().out
