"""Real read-only and full file systems for tests: tmpfs mounts (needs root, as tests and CI run here)."""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from nbdurable._process import STATE
from nbdurable._store import Store


@contextlib.contextmanager
def tmpfs(path: Path, options: str) -> Iterator[Path]:
    """A tmpfs mounted at ``path`` (needs root, as tests and CI run here); skips where mounting is refused.

    Running as root, a chmod'ed directory stays writable, so read-only and full disks are
    made for real: a read-only mount, a 1 MB file system.
    """
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip()}); the injected-error tests cover this")
    try:
        yield path
    finally:
        for opened in list(STATE.open_stores):
            if opened.startswith(str(path)):
                Store.forget(opened)
        subprocess.run(["umount", "-l", str(path)], check=False)


def remount(path: Path, options: str) -> None:
    """Remount a tmpfs made by ``tmpfs`` (``ro``, ``rw``, ``size=...``)."""
    subprocess.run(["mount", "-o", f"remount,{options}", str(path)], check=True, capture_output=True)
