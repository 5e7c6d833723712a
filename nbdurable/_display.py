"""How runs are shown: the widget in a notebook front end, text lines elsewhere, nothing when off.

``nbdurable/__init__`` installs :data:`PRESENTER` in the process state, so the runtime
shows runs without importing any view; ipywidgets is imported only where a widget front
end is present (``NBDURABLE_VIEW`` may turn the view off, or force text).
"""

from __future__ import annotations

import time
from typing import Any

from nbdurable._run import Run
from nbdurable._text import TextView, in_widget_frontend, run_summary, view_mode


class Presenter:
    """The default presenter (see ``_process.Presenter``)."""

    def show(self, run: Run[Any]) -> None:
        """Show a run about to execute: the widget view in a notebook, text lines elsewhere."""
        mode = view_mode()
        if mode == "off":
            return
        if mode == "auto" and in_widget_frontend():
            from nbdurable._view import display_run_view

            display_run_view(run, close_when_done=True)
            return
        now = run.client.clock.now if run.client is not None else time.time
        TextView(run, now=now)

    def bundle(self, run: Run[Any], include: Any, exclude: Any) -> dict[str, Any]:
        """A displayed ``Run``: the widget view in a notebook front end, its text summary elsewhere."""
        text = self.text(run)
        if not in_widget_frontend():
            return {"text/plain": text}
        from nbdurable._view import RunView

        view = RunView(run)
        if run.done:
            view.close()
        bundle: dict[str, Any] = view.widget._repr_mimebundle_(include=include, exclude=exclude) or {}
        return {**bundle, "text/plain": text}

    def text(self, run: Run[Any]) -> str:
        """A header line and one line per step."""
        now = run.client.clock.now() if run.client is not None else time.time()
        return run_summary(run, now)


PRESENTER = Presenter()
