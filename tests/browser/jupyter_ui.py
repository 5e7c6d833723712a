"""JupyterLab 4 and Notebook 7 served on 127.0.0.1, driven by playwright in Debian's chromium.

Used by the browser tests and by ``make screenshots``. Nothing here downloads a browser:
playwright launches ``/usr/bin/chromium`` (Debian's package) through ``executable_path``.
Every wait is on a condition with a deadline; every server and browser started here is
stopped on the way out, also when a test fails.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from playwright.sync_api import BrowserContext, Locator, Page

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = (
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)
FRONT_ENDS = ("lab", "notebook")
WIDGET_ERRORS = ("Error displaying widget", "Failed to load model class", "Model not found")
LOOP_ERRORS = ("cannot enter context", "Exception in callback", "Task was destroyed but it is pending")
_SERVER_MODULE = {"lab": "jupyterlab", "notebook": "notebook"}
_USER_SETTINGS = {
    # Every cell stays in the page, so assertions see every output.
    "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none"},
    # No news or update prompt over the notebook (the machine may have no network at all).
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {"fetchNews": "false", "checkForUpdates": False},
}


@dataclass
class Server:
    """A running Jupyter server: its front end kind, address, token and directories."""

    kind: str
    url: str
    token: str
    root: Path
    store: Path
    log: Path
    sources: tuple[Path, ...]
    """The notebooks served: ``root`` holds copies of them."""

    def notebook_url(self, name: str) -> str:
        """The address that opens notebook ``name`` (a file in ``root``) in this front end."""
        if self.kind == "lab":
            return f"{self.url}/lab/tree/{name}?reset&token={self.token}"  # reset: only this notebook open
        return f"{self.url}/notebooks/{name}?token={self.token}"

    def api(self, method: str, path: str) -> Any:
        """Call the server's REST API; return the decoded JSON (None when empty)."""
        request = urllib.request.Request(
            f"{self.url}{path}", method=method, headers={"Authorization": f"token {self.token}"}
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            body = response.read()
        return json.loads(body) if body else None

    def reset(self) -> None:
        """Shut down every session and kernel, empty the store, copy the notebooks again (no saved outputs)."""
        for session in self.api("GET", "/api/sessions"):
            self.api("DELETE", f"/api/sessions/{session['id']}")
        for kernel in self.api("GET", "/api/kernels"):
            self.api("DELETE", f"/api/kernels/{kernel['id']}")
        self.reset_store()
        for nb in self.sources:
            shutil.copy(nb, self.root / nb.name)

    def reset_store(self) -> None:
        """Delete the nbdurable store (call it while no kernel has it open: after a restart, before any cell)."""
        shutil.rmtree(self.store, ignore_errors=True)

    def log_tail(self, lines: int = 40) -> str:
        """The end of the server's log, for failure messages."""
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _deadline_loop(timeout: float, what: str) -> Iterator[None]:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        yield
        time.sleep(0.1)
    msg = f"{what}: not within {timeout} s"
    raise TimeoutError(msg)


@contextmanager
def jupyter_server(kind: str, workdir: Path, notebooks: Iterable[Path]) -> Iterator[Server]:
    """Serve copies of ``notebooks`` with JupyterLab (``lab``) or Notebook 7 (``notebook``).

    The server listens on 127.0.0.1 at a free port with a random token. Its root, its
    nbdurable store (``NBDURABLE_STORE``), its settings, workspaces, runtime, config and
    IPython directories are all under ``workdir``, so nothing of the user's is read or
    written. On the way out the server is asked to shut down (it stops its kernels), then
    terminated, then killed, whichever is needed.
    """
    if kind not in _SERVER_MODULE:
        msg = f"kind must be one of {FRONT_ENDS}, got {kind!r}"
        raise ValueError(msg)
    root, store, home = workdir / "root", workdir / "store", workdir / "home"
    root.mkdir(parents=True)
    sources = tuple(notebooks)
    for nb in sources:
        shutil.copy(nb, root / nb.name)
    settings = home / "lab-settings"
    for name, value in _USER_SETTINGS.items():
        (settings / name).parent.mkdir(parents=True, exist_ok=True)
        (settings / name).write_text(json.dumps(value))
    env = {
        **os.environ,
        "NBDURABLE_STORE": str(store),
        "JUPYTERLAB_SETTINGS_DIR": str(settings),
        "JUPYTERLAB_WORKSPACES_DIR": str(home / "workspaces"),
        "JUPYTER_CONFIG_DIR": str(home / "config"),
        "JUPYTER_DATA_DIR": str(home / "data"),
        "JUPYTER_RUNTIME_DIR": str(home / "runtime"),
        "IPYTHONDIR": str(home / "ipython"),
    }
    env.pop("NBDURABLE_VIEW", None)  # the view must be the widget, whatever the caller's shell says
    token = secrets.token_hex(16)
    port = free_port()
    cmd = [
        sys.executable,
        "-m",
        _SERVER_MODULE[kind],
        "--no-browser",
        "--ip=127.0.0.1",
        f"--port={port}",
        "--port-retries=0",
        f"--ServerApp.token={token}",
        f"--ServerApp.root_dir={root}",
        "--LabApp.extension_manager=readonly",  # never asks a package index for extensions (both load Lab)
    ]
    if kind == "lab":
        cmd.append("--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate")
    if os.geteuid() == 0:
        cmd.append("--allow-root")  # CI and the dev machines run as root
    log = workdir / f"{kind}-server.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=root)
    server = Server(kind, f"http://127.0.0.1:{port}", token, root, store, log, sources)
    try:
        for _ in _deadline_loop(120, f"{kind} server to answer on {server.url}"):
            if proc.poll() is not None:
                msg = f"the {kind} server exited with {proc.returncode}:\n{server.log_tail()}"
                raise RuntimeError(msg)
            try:
                server.api("GET", "/api/status")
                break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                continue
        yield server
    finally:
        _stop(proc, server)


def _stop(proc: subprocess.Popen[bytes], server: Server) -> None:
    """Shut the server down (it stops its kernels); terminate, then kill, the process if it lingers."""
    if proc.poll() is None:
        try:
            server.api("POST", "/api/shutdown")
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)


@contextmanager
def chromium(user_data_dir: Path) -> Iterator[BrowserContext]:
    """Debian's chromium, headless, with a fresh profile in ``user_data_dir``; closed on the way out."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(user_data_dir),
            executable_path=str(CHROMIUM),
            headless=True,
            args=list(CHROMIUM_ARGS),
            viewport={"width": 1280, "height": 1000},
        )
        try:
            yield context
        finally:
            context.close()


_PROMPTS = "[...document.querySelectorAll('.jp-CodeCell .jp-InputArea-prompt')].map(e => e.textContent.trim())"
_DONE = f"""(baseline) => {{
  const prompts = {_PROMPTS};
  if (!prompts.length || prompts.some(t => t.includes('*'))) return false;
  return prompts.some(t => {{ const m = /^\\[(\\d+)\\]:$/.exec(t); return m && +m[1] > baseline; }});
}}"""
_IDLE = """() => {
  const s = document.querySelector('.jp-Notebook-ExecutionIndicator');
  return s !== null && s.getAttribute('data-status') === 'idle';
}"""


class NotebookPage:
    """One notebook open in a browser tab of JupyterLab or Notebook 7, driven as a user would.

    Args:
        page: the playwright page (tab).
        server: the server the notebook lives on.
    """

    def __init__(self, page: Page, server: Server) -> None:
        self.page = page
        self.server = server
        self.name = ""
        self.console: list[str] = []
        """The page's console errors and warnings, shown in failure messages."""
        page.on(
            "console", lambda m: self.console.append(f"{m.type}: {m.text}") if m.type in ("error", "warning") else None
        )

    def open(self, name: str, *, timeout: float = 120) -> NotebookPage:
        """Open notebook ``name`` and wait until its cells are drawn and its kernel is idle."""
        self.name = name
        self.page.goto(self.server.notebook_url(name))
        self.page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=timeout * 1000)
        self.wait_idle(timeout)
        self.page.locator(".jp-Notebook .jp-Cell").first.click()  # as a user would: the notebook is now current
        return self

    def wait_idle(self, timeout: float = 120) -> None:
        """Wait until the notebook's kernel says it is idle."""
        self.page.wait_for_function(_IDLE, timeout=timeout * 1000)

    def menu(self, top: str, item: str, timeout: float = 30) -> None:
        """Click a menu of the menu bar, then one of its items (names as shown), once the item is enabled.

        An item's state is set when its menu opens (Run All is disabled until the notebook is
        the current document), so the menu is opened again until the item can be clicked.
        """
        entry = self.page.get_by_role("menuitem", name=item, exact=True)
        for _ in _deadline_loop(timeout, f"menu {top} > {item} to be enabled"):
            self.page.get_by_role("menuitem", name=top, exact=True).click()
            if "lm-mod-disabled" not in (entry.get_attribute("class") or ""):
                entry.click()
                return
            self.page.keyboard.press("Escape")

    def prompts(self) -> list[str]:
        """The code cells' prompts, ``[3]:``, ``[*]:`` or ``[ ]:``."""
        return list(self.page.evaluate(f"() => {_PROMPTS}"))

    def start_run_all(self) -> int:
        """Click Run > Run All Cells; return the highest execution count shown before."""
        counts = [int(m.group(1)) for p in self.prompts() if (m := re.fullmatch(r"\[(\d+)\]:", p))]
        self.menu("Run", "Run All Cells")
        return max(counts, default=0)

    def wait_run_all(self, baseline: int, timeout: float = 180, label: str = "Run All") -> None:
        """Wait until every cell ran after ``baseline``; fail, showing the page, when one did not."""
        from playwright.sync_api import TimeoutError as PlaywrightTimeout

        try:
            self.page.wait_for_function(_DONE, arg=baseline, timeout=timeout * 1000)
        except PlaywrightTimeout:
            raise AssertionError(self.describe(f"{label} of {self.name} did not end within {timeout} s")) from None
        prompts = self.prompts()
        ran = [int(m.group(1)) > baseline if (m := re.fullmatch(r"\[(\d+)\]:", p)) else False for p in prompts]
        if not all(ran):
            raise AssertionError(self.describe(f"{label} of {self.name} stopped before its end"))

    def describe(self, what: str) -> str:
        """``what``, then the prompts, every output and the server's log: a failure message that shows the page."""
        shot = self.server.root.parent / f"failure-{self.name}-{time.monotonic_ns()}.png"
        self.page.screenshot(path=str(shot), full_page=True)
        outputs = "\n---\n".join(self.outputs())
        return (
            f"{what}\nprompts: {self.prompts()}\noutputs:\n{outputs}\n"
            f"screenshot: {shot}\nconsole:\n"
            + "\n".join(self.console[-30:])
            + f"\nserver log:\n{self.server.log_tail()}"
        )

    def run_all(self, timeout: float = 180) -> None:
        """Run All, and wait until every cell has run (an error in a cell fails here, loudly)."""
        self.wait_run_all(self.start_run_all(), timeout)

    def restart_and_clear(self, timeout: float = 120) -> None:
        """Kernel > Restart Kernel and Clear Outputs of All Cells, confirmed; wait for the new kernel."""
        self.menu("Kernel", "Restart Kernel and Clear Outputs of All Cells…")
        self.page.locator(".jp-Dialog .jp-mod-accept").click()
        self.page.wait_for_function(f"() => {_PROMPTS}.every(t => !/\\d/.test(t))", timeout=timeout * 1000)
        self.wait_idle(timeout)

    def save(self, timeout: float = 30) -> dict[str, Any]:
        """Save the notebook (Ctrl+S) and return it as stored on the server, outputs included."""
        before = self.server.api("GET", f"/api/contents/{self.name}?content=0")["last_modified"]
        self.page.keyboard.press("Control+s")
        for _ in _deadline_loop(timeout, f"{self.name} to be saved"):
            try:
                model = self.server.api("GET", f"/api/contents/{self.name}")
            except urllib.error.HTTPError as exc:
                if exc.code == 400:  # "Unreadable Notebook": read while the server was writing it
                    continue
                raise
            if model["last_modified"] != before:
                return dict(model["content"])
        raise AssertionError  # unreachable: the loop raises on its deadline

    def outputs(self) -> list[str]:
        """The text of every output, in order."""
        return list(
            self.page.evaluate("() => [...document.querySelectorAll('.jp-OutputArea-output')].map(e => e.innerText)")
        )

    def widget_outputs(self) -> Locator:
        """Outputs drawn by the ipywidgets renderer (a widget's DOM inside)."""
        return self.page.locator(".jp-OutputArea-output").filter(has=self.page.locator(".jupyter-widgets"))

    def run_view(self, function_id: str) -> Locator:
        """The run view(s) of ``function_id``: widget outputs whose text starts with the function's id."""
        return self.widget_outputs().filter(has_text=re.compile(rf"^\s*{re.escape(function_id)}\b"))

    def send_button(self, view: Locator, event: str) -> Locator:
        """A run view's button that sends ``event`` (its label starts with "send")."""
        return view.locator("button").filter(has_text=re.compile(rf"^\s*send\b.*{re.escape(event)}"))


def widget_view_count(nb: dict[str, Any]) -> int:
    """How many outputs of a saved notebook are widget views (what the kernel displayed as a widget)."""
    return sum(
        "application/vnd.jupyter.widget-view+json" in out.get("data", {})
        for cell in nb["cells"]
        for out in cell.get("outputs", [])
    )


def rows(text: str, step: str) -> list[str]:
    """The lines of a run view's text that are about step ``step`` (whole word)."""
    return [line for line in text.splitlines() if re.search(rf"(?<![\w-]){re.escape(step)}(?![\w-])", line)]
