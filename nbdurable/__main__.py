"""``python -m nbdurable``: the demo, and installing the kernelspec."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

KERNEL_NAME = "nbdurable"
STEP_TABLE_TAG = "step-table"


def _quickstart() -> Path:
    """The quickstart notebook: in the source tree (``make demo`` runs from a clone)."""
    here = Path(__file__).resolve().parent.parent / "notebooks" / "quickstart.ipynb"
    if not here.exists():
        msg = f"{here} not found: the demo runs from a clone of the nbdurable repository"
        raise SystemExit(msg)
    return here


def _execute(path: Path, store: str, label: str) -> list[str]:
    """Execute a notebook in a new kernel (headless); return the text of its step-table cells."""
    import nbclient
    import nbformat

    nb = nbformat.read(path, as_version=4)  # type: ignore[no-untyped-call]
    env_before = os.environ.get("NBDURABLE_STORE")
    os.environ["NBDURABLE_STORE"] = store  # the kernel inherits it
    started = time.perf_counter()
    try:
        client = nbclient.NotebookClient(
            nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}
        )
        # The kernel's own log (e.g. its transport notice) is not part of the demo; cell errors still raise.
        client.execute(stderr=subprocess.DEVNULL)
    finally:
        if env_before is None:
            os.environ.pop("NBDURABLE_STORE", None)
        else:
            os.environ["NBDURABLE_STORE"] = env_before
    took = time.perf_counter() - started
    texts = []
    widgets = 0
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            data = out.get("data", {})
            widgets += "application/vnd.jupyter.widget-view+json" in data
            if STEP_TABLE_TAG in cell.get("metadata", {}).get("tags", []):
                texts.append(out.get("text", "") or data.get("text/plain", ""))
    print(f"--- {label}: executed {path.name} in a new kernel in {took:.1f}s ({widgets} run views built)")
    return texts


def _demo() -> int:
    store = tempfile.mkdtemp(prefix="nbdurable-demo-")
    nb = _quickstart()
    print(f"store shared by both passes: {store}")
    print(
        "step table: icon, step, status (completed = executed in this pass, replayed = from the store),\n"
        "attempts used/allowed, time of the step's successful attempt, output\n"
    )
    try:
        for label in ("pass 1: first kernel", "pass 2: a new kernel, same store"):
            for text in _execute(nb, store, label):
                print(text.rstrip())
            print()
    finally:
        shutil.rmtree(store, ignore_errors=True)
    print("Pass 2 called no step handler: every step was replayed from the store (\u21bb replayed).")
    return 0


def kernel_spec() -> dict[str, Any]:
    """The kernel.json of an IPython kernel that loads the nbdurable extension at start."""
    return {
        "argv": [
            sys.executable,
            "-m",
            "ipykernel_launcher",
            "-f",
            "{connection_file}",
            "--IPKernelApp.extra_extensions=nbdurable",
        ],
        "display_name": "Python 3 (nbdurable)",
        "language": "python",
        "metadata": {"debugger": True},
    }


def _kernel_install(user: bool, prefix: str | None, name: str) -> int:
    from jupyter_client.kernelspec import KernelSpecManager

    with tempfile.TemporaryDirectory() as tmp:
        Path(tmp, "kernel.json").write_text(json.dumps(kernel_spec(), indent=1))
        where = KernelSpecManager().install_kernel_spec(tmp, name, user=user, prefix=prefix)
    print(f"installed kernelspec {name!r} in {where}: pick 'Python 3 (nbdurable)' in Jupyter")
    return 0


def _trust_store(path: str) -> int:
    from nbdurable._trust import trust_store

    full = os.path.abspath(path)
    if not os.path.isfile(os.path.join(full, "cache.db")):
        print(f"{full} is not an nbdurable store (no cache.db in it)", file=sys.stderr)
        return 1
    if not trust_store(full):
        print(f"cannot mark {full} as trusted: the folder is read-only, or no secret can be kept", file=sys.stderr)
        return 1
    print(f"trusted {full}: its pickled values and cell steps load from now on (until it is moved or copied)")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m nbdurable`` and the ``nbdurable`` command."""
    parser = argparse.ArgumentParser(prog="nbdurable", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("demo", help="execute notebooks/quickstart.ipynb in two kernels and show the replay")
    kernel = sub.add_parser("kernel", help="manage the kernelspec that loads the extension")
    ksub = kernel.add_subparsers(dest="action", required=True)
    install = ksub.add_parser("install", help="install an IPython kernelspec with nbdurable loaded")
    install.add_argument("--user", action="store_true", help="install for the current user")
    install.add_argument("--prefix", help="install under this prefix (e.g. sys.prefix of a venv)")
    install.add_argument("--name", default=KERNEL_NAME, help="the kernelspec name (default: nbdurable)")
    trust = sub.add_parser("trust", help="let pickled values and cell steps load from a store you vouch for")
    trust.add_argument("path", help="the store folder")
    args = parser.parse_args(argv)
    if args.command == "trust":
        return _trust_store(args.path)
    if args.command == "demo":
        return _demo()
    if args.command == "kernel" and args.action == "install":
        return _kernel_install(args.user, args.prefix, args.name)
    return 2


if __name__ == "__main__":
    sys.exit(main())
