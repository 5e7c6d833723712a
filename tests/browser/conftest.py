"""Fixtures of the browser tests: a Jupyter server per front end, Debian's chromium, a notebook tab."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from jupyter_ui import NotebookPage, Server, chromium, jupyter_server
from playwright.sync_api import BrowserContext

NOTEBOOKS = Path(__file__).resolve().parent.parent.parent / "notebooks"


@pytest.fixture(scope="module", params=["lab", "notebook"], ids=["lab", "notebook7"])
def server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """JupyterLab 4, then Notebook 7, serving copies of notebooks/ with a fresh store."""
    with jupyter_server(request.param, tmp_path_factory.mktemp(request.param), sorted(NOTEBOOKS.glob("*.ipynb"))) as s:
        yield s


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrowserContext]:
    """Debian's chromium with a fresh profile, shared by a module's tests."""
    with chromium(tmp_path_factory.mktemp("chromium-profile")) as context:
        yield context


@pytest.fixture
def notebook(server: Server, browser: BrowserContext) -> Iterator[NotebookPage]:
    """A new tab on ``server`` with no kernel running and an empty store; the test opens a notebook in it."""
    server.reset()
    page = browser.new_page()
    page.set_default_timeout(60_000)
    try:
        yield NotebookPage(page, server)
    finally:
        page.close()
