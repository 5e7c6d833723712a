"""Real Jupyter kernels: SIGKILL and interrupt mid-step, %%step across kernels, the widget view, notebooks."""

from __future__ import annotations

import os
import re
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nbclient
import nbformat
import pytest
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import KernelManager

from nbdurable import _index
from nbdurable.__main__ import main
from nbdurable._store import Store
from tests.waiting import eventually

pytestmark = pytest.mark.kernel
NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"
WIDGET = "application/vnd.jupyter.widget-view+json"


class Kernel:
    """A real IPython kernel with a store of our choosing; ``run`` executes a cell and returns its outputs."""

    def __init__(self, env: dict[str, str], *, kernel_name: str = "python3", ksm: KernelSpecManager | None = None):
        extra = {"kernel_spec_manager": ksm} if ksm is not None else {}
        self.km = KernelManager(kernel_name=kernel_name, **extra)
        self.km.start_kernel(env={**os.environ, **env})
        self.kc = self.km.client()
        self.kc.start_channels()
        self.kc.wait_for_ready(timeout=60)

    def run(self, code: str, timeout: float = 60) -> tuple[str, list[dict[str, Any]]]:
        """Execute a cell; return its status ('ok' / 'error') and its output messages' contents."""
        outputs: list[dict[str, Any]] = []

        def hook(msg: dict[str, Any]) -> None:
            if msg["msg_type"] in ("stream", "display_data", "execute_result", "error"):
                outputs.append({"type": msg["msg_type"], **msg["content"]})

        reply = self.kc.execute_interactive(code, output_hook=hook, timeout=timeout)
        return reply["content"]["status"], outputs

    def text(self, code: str) -> str:
        """Execute a cell that must succeed; return everything it printed."""
        status, outputs = self.run(code)
        assert status == "ok", outputs
        return "".join(o.get("text", "") or o.get("data", {}).get("text/plain", "") for o in outputs)

    def start(self, code: str) -> str:
        """Execute a cell without waiting for it."""
        return str(self.kc.execute(code))

    def reply(self, msg_id: str, timeout: float = 30) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            msg = self.kc.get_shell_msg(timeout=timeout)
            if msg["parent_header"].get("msg_id") == msg_id:
                return dict(msg["content"])
        msg = f"no reply to {msg_id}"
        raise TimeoutError(msg)

    def sigkill(self) -> None:
        os.kill(self.km.provisioner.pid, signal.SIGKILL)  # type: ignore[union-attr]
        self.close()

    def close(self) -> None:
        self.kc.stop_channels()
        self.km.shutdown_kernel(now=True)


@pytest.fixture
def kernels(tmp_path: Path) -> Iterator[list[Kernel]]:
    """Start kernels on demand with one store in tmp_path; all shut down afterwards."""
    started: list[Kernel] = []
    yield started
    for k in started:
        if k.km.is_alive():
            k.close()


def new_kernel(kernels: list[Kernel], tmp_path: Path, **env: str) -> Kernel:
    k = Kernel({"NBDURABLE_STORE": str(tmp_path / "store"), **env})
    kernels.append(k)
    return k


def wait_for_line(path: Path, line: str, timeout: float = 30) -> None:
    eventually(lambda: path.exists() and line in path.read_text().splitlines(), timeout, f"{line!r} in {path}")


def _wait_for_step_in_flight(store: Path, key: str, timeout: float = 30) -> None:

    def in_flight() -> bool:
        return any(e.record.current_step == key for e in _index.runs(Store.open(store)))

    try:
        eventually(in_flight, timeout, f"step {key!r} recorded in flight in {store}")
    finally:
        Store.forget(store)


def pipeline_code(tmp_path: Path, retries: int = 2) -> str:
    """A pipeline whose step 'b' blocks while the gate file exists; every execution appends to a log."""
    return f"""
import pathlib, time
import nbdurable
log, gate = pathlib.Path({str(tmp_path / "log")!r}), pathlib.Path({str(tmp_path / "gate")!r})
client = nbdurable.Client("kernels")

def work(name):
    with log.open("a") as f:
        f.write(name + "\\n")
    while name == "b" and gate.exists():
        time.sleep(0.02)
    return name.upper()

@client.create_function(fn_id="pipe", retries={retries})
def pipe(ctx):
    return "".join(ctx.step.run(s, work, s) for s in "abc")
"""


def test_sigkill_mid_step_then_a_new_kernel_resumes(kernels, tmp_path) -> None:
    """Kernel killed in step b: a new kernel replays a, executes b again (noting it), then c; output right."""
    log, gate = tmp_path / "log", tmp_path / "gate"
    gate.touch()
    first = new_kernel(kernels, tmp_path, NBDURABLE_VIEW="text")
    first.text("%load_ext nbdurable\n" + pipeline_code(tmp_path))
    first.start("pipe.run()")
    wait_for_line(log, "b")
    _wait_for_step_in_flight(tmp_path / "store", "b")  # the heartbeat records it once it has run 0.25 s
    first.sigkill()
    gate.unlink()

    second = new_kernel(kernels, tmp_path, NBDURABLE_VIEW="text")
    notice = second.text("%load_ext nbdurable")
    assert notice.startswith("nbdurable: 1 interrupted run in the store (pipe/")
    second.text(pipeline_code(tmp_path))
    status, outputs = second.run("pipe.run()")
    assert status == "ok"
    result = [o["data"]["text/plain"] for o in outputs if o["type"] == "execute_result"]
    assert result == ["'ABC'"]
    lines = "".join(o.get("text", "") for o in outputs if o["type"] == "stream")
    assert "\u21bb 1 step replayed" in lines  # a, summarized
    assert "previous attempt never finished" in lines
    assert log.read_text().split() == ["a", "b", "b", "c"]


def test_interrupt_mid_step_leaves_the_run_interrupted_and_rerun_completes_with_a_widget(kernels, tmp_path) -> None:
    """The stop button in step b: INTERRUPTED, no failure stored, no retry used; re-running completes it.

    The same kernel then shows that a blocking run() displays the widget view.
    """
    log, gate = tmp_path / "log", tmp_path / "gate"
    gate.touch()
    k = new_kernel(kernels, tmp_path)
    k.text("%load_ext nbdurable\n" + pipeline_code(tmp_path, retries=0))
    msg_id = k.start("pipe.run()")
    wait_for_line(log, "b")
    k.km.interrupt_kernel()
    reply = k.reply(msg_id)
    assert (reply["status"], reply["ename"]) == ("error", "KeyboardInterrupt")
    state = k.text(
        "r = client.runs('pipe')[0]\n"
        "print(r.status.value, [(s.key, s.status.value, s.attempts) for s in client.get_run(r.id).steps])"
    )
    assert state.strip() == "INTERRUPTED [('a', 'COMPLETED', 1), ('b', 'INTERRUPTED', 0)]"
    gate.unlink()
    status, outputs = k.run("pipe.run()")
    assert status == "ok"
    assert any(WIDGET in o.get("data", {}) for o in outputs if o["type"] == "display_data")
    assert [o["data"]["text/plain"] for o in outputs if o["type"] == "execute_result"] == ["'ABC'"]
    steps = k.text("print([(s.key, s.status.value, s.attempts) for s in client.get_run(r.id).steps])")
    assert steps.strip() == "[('a', 'COMPLETED', 1), ('b', 'COMPLETED', 1), ('c', 'COMPLETED', 1)]"
    assert log.read_text().split() == ["a", "b", "b", "c"]


def test_cell_steps_restore_in_a_new_kernel_and_execute_again_when_edited(kernels, tmp_path) -> None:
    """%%step cells: a new kernel restores their names without executing them; an edit re-executes the chain."""
    log = tmp_path / "log"
    B = "import asyncio\nawait asyncio.sleep(0)  # top-level await, in the kernel's running loop\ny = x * 2"

    def cell(name: str, body: str) -> str:
        return f"%%step {name}\nwith open({str(log)!r}, 'a') as f:\n    f.write({name!r} + '\\n')\ndel f\n{body}"

    first = new_kernel(kernels, tmp_path)
    first.text("%load_ext nbdurable")
    first.text(cell("a", "x = 21"))
    first.text(cell("b", B))
    first.close()

    second = new_kernel(kernels, tmp_path)
    second.text("%load_ext nbdurable")
    assert second.text(cell("a", "x = 21")).startswith("%%step a: restored x from ")
    assert second.text(cell("b", B)).startswith("%%step b: restored asyncio, y from ")
    assert second.text("print(x, y)") == "21 42\n"
    assert log.read_text().split() == ["a", "b"]
    second.text(cell("a", "x = 1"))
    second.text(cell("b", B))
    assert second.text("print(x, y)") == "1 2\n"
    assert log.read_text().split() == ["a", "b", "a", "b"]


@pytest.mark.parametrize("name", ["resume_after_restart", "cell_steps"])
def test_notebook_runs_clean(name, tmp_path, monkeypatch) -> None:
    """The example notebook executes top to bottom in a real kernel without an unexpected error."""
    monkeypatch.setenv("NBDURABLE_STORE", str(tmp_path / "store"))
    nb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    nbclient.NotebookClient(nb, timeout=120, kernel_name="python3").execute()
    errors = [o for c in nb.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert [e["ename"] for e in errors] == (["KeyboardInterrupt"] if name == "resume_after_restart" else [])


def test_demo_executes_the_quickstart_twice_and_the_second_pass_replays(capsys) -> None:
    """`make demo`: quickstart.ipynb in two kernels on one store; pass 1 executes (with retries), pass 2 replays."""
    assert main(["demo"]) == 0
    out = capsys.readouterr().out
    first, second = out.split("--- pass 2")
    assert re.search(r"\u2714 score\s+completed\s+3/4", first)
    assert "handler calls: {'extract': 1, 'score': 3, 'load': 1}" in first
    assert re.search(r"\u21bb score\s+replayed\s+3/4", second)
    assert "handler calls: {'extract': 0, 'score': 0, 'load': 0}" in second
    assert "(2 run views built)" in second


def test_kernelspec_starts_a_kernel_with_the_extension_loaded(tmp_path, capsys) -> None:
    """`python -m nbdurable kernel install --prefix P` gives a kernel where %nbdurable works at once."""
    assert main(["kernel", "install", "--prefix", str(tmp_path)]) == 0
    assert "installed kernelspec 'nbdurable'" in capsys.readouterr().out
    ksm = KernelSpecManager(kernel_dirs=[str(tmp_path / "share" / "jupyter" / "kernels")])
    k = Kernel({"NBDURABLE_STORE": str(tmp_path / "store")}, kernel_name="nbdurable", ksm=ksm)
    try:
        assert "%nbdurable runs" in k.text("%nbdurable help")
    finally:
        k.close()
