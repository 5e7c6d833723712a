"""A real IPython shell for tests of the extension: the view off, cleaned up after."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from IPython.core.interactiveshell import InteractiveShell

from nbdurable import _store
from nbdurable._process import STATE


def real_shell(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *, own_store: bool = True, load: bool = False
) -> Iterator[InteractiveShell]:
    """The shell, working in ``tmp_path`` (its store there too, unless ``own_store`` is False:
    then the default ``./.nbdurable``); the extension is unloaded and the stores closed after."""
    if own_store:
        monkeypatch.setenv("NBDURABLE_STORE", str(tmp_path / "store"))
    monkeypatch.setenv("NBDURABLE_VIEW", "off")
    monkeypatch.chdir(tmp_path)
    shell = InteractiveShell.instance()
    hooks = list(STATE.run_hooks)
    if load:
        shell.run_line_magic("load_ext", "nbdurable")
    yield shell
    shell.extension_manager.unload_extension("nbdurable")
    shell.reset(new_session=False)
    for path in list(STATE.open_stores):
        if path.startswith(str(tmp_path)):
            _store.Store.forget(path)
    assert STATE.run_hooks == hooks
