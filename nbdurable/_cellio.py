"""What a ``%%step`` cell prints and displays: recorded while it shows, replayed when the cell restores.

``Capture`` tees ``sys.stdout``/``sys.stderr`` and the shell's display publisher for the
time the cell executes, so the user sees everything live and the cell step keeps a copy
(text streams, and rich display data such as DataFrame HTML and matplotlib PNGs, which
are flushed from the inline backend before the capture ends). The copy is bounded:
past ``LIMIT`` bytes the rest is shown but not kept, and a note says so.
"""

from __future__ import annotations

import json
import sys
from types import TracebackType
from typing import Any, TextIO, cast

LIMIT = 10 * 1024 * 1024
"""Bytes of outputs kept per cell step (text and display data); the rest is shown, not stored."""


class _Tee:
    """A text stream that writes through to ``target`` and records what it wrote."""

    def __init__(self, target: TextIO, name: str, capture: Capture) -> None:
        self._target = target
        self._name = name
        self._capture = capture

    def write(self, text: str) -> int:
        self._capture.add_text(self._name, text)
        return self._target.write(text)

    def __getattr__(self, attr: str) -> Any:
        return getattr(self._target, attr)


class Capture:
    """Records a cell's outputs (as nbformat-like dicts) while they are shown.

    Args:
        shell: the IPython shell (its ``display_pub`` is tee'd); None records text only.
        limit: bytes kept at most.
    """

    def __init__(self, shell: Any, limit: int = LIMIT) -> None:
        self.shell = shell
        self.limit = limit
        self.outputs: list[dict[str, Any]] = []
        self.size = 0
        self.dropped = 0
        self._saved: tuple[Any, Any, Any] | None = None

    def _room(self, size: int) -> bool:
        if self.size + size > self.limit:
            self.dropped += size
            return False
        self.size += size
        return True

    def add_text(self, name: str, text: str) -> None:
        """Record text written to a stream (merged with the stream's previous output)."""
        if not text or not self._room(len(text.encode("utf-8", "replace"))):
            return
        last = self.outputs[-1] if self.outputs else None
        if last is not None and last.get("output_type") == "stream" and last.get("name") == name:
            last["text"] += text
        else:
            self.outputs.append({"output_type": "stream", "name": name, "text": text})

    def add_display(self, data: dict[str, Any], metadata: dict[str, Any] | None) -> None:
        """Record one display (a mime bundle); widgets are left out, they cannot be shown again."""
        kept = {k: v for k, v in data.items() if k != "application/vnd.jupyter.widget-view+json"}
        if not kept:
            return
        try:
            size = len(json.dumps(kept))
        except (TypeError, ValueError):
            return  # not JSON (a raw object in a bundle): shown, not kept
        if self._room(size):
            self.outputs.append({"output_type": "display_data", "data": kept, "metadata": dict(metadata or {})})

    def __enter__(self) -> Capture:  # noqa: PYI034 - a plain class, not meant to be subclassed
        pub = getattr(self.shell, "display_pub", None)
        self._saved = (sys.stdout, sys.stderr, pub.publish if pub is not None else None)
        sys.stdout = cast("TextIO", _Tee(sys.stdout, "stdout", self))
        sys.stderr = cast("TextIO", _Tee(sys.stderr, "stderr", self))
        if pub is not None:
            publish = pub.publish

            def tee(data: dict[str, Any], metadata: dict[str, Any] | None = None, *args: Any, **kwargs: Any) -> Any:
                if not kwargs.get("update"):
                    self.add_display(data, metadata)
                return publish(data, metadata, *args, **kwargs)

            pub.publish = tee
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        try:
            _flush_inline_figures()
        finally:
            assert self._saved is not None
            sys.stdout, sys.stderr, publish = self._saved
            pub = getattr(self.shell, "display_pub", None)
            if pub is not None and publish is not None:
                pub.publish = publish
        if self.dropped:
            note = f"[nbdurable: {self.dropped:,} more bytes of this cell's output were shown but not stored]\n"
            self.outputs.append({"output_type": "stream", "name": "stderr", "text": note})


def _flush_inline_figures() -> None:
    """Show the figures the cell drew now, so they are recorded (the inline backend shows them after the cell)."""
    backend = sys.modules.get("matplotlib_inline.backend_inline")
    matplotlib = sys.modules.get("matplotlib")
    if backend is None or matplotlib is None or "inline" not in str(matplotlib.get_backend()):
        return
    backend.flush_figures()


def replay(shell: Any, outputs: list[dict[str, Any]]) -> None:
    """Show recorded outputs again, in their order."""
    pub = getattr(shell, "display_pub", None)
    for out in outputs:
        if out.get("output_type") == "stream":
            stream = sys.stderr if out.get("name") == "stderr" else sys.stdout
            stream.write(str(out.get("text", "")))
            stream.flush()
        elif out.get("output_type") == "display_data" and pub is not None:
            pub.publish(data=out.get("data", {}), metadata=out.get("metadata", {}))
