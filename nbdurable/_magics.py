"""The IPython extension: a thin layer of magics over ``_commands`` and ``_cellstep``.

The only module that imports IPython's magics machinery. ``load_ipython_extension``
registers one ``NbdurableMagics`` (holding every piece of state the extension adds);
``unload_ipython_extension`` finds it in the shell's registry and removes exactly that.
"""

from __future__ import annotations

from typing import Any

from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell
from IPython.core.magic import Magics, cell_magic, line_magic, magics_class, no_var_expand
from IPython.display import display

from nbdurable._cellstep import CellSteps, CellStepUsageError
from nbdurable._commands import CommandError, Commands, user_clients
from nbdurable._loop import patch_loop, running_loop


@magics_class
class NbdurableMagics(Magics):
    """``%nbdurable`` and ``%%step``.

    Args:
        shell: the IPython shell.
    """

    def __init__(self, shell: InteractiveShell) -> None:
        super().__init__(shell)
        self.commands = Commands(lambda: user_clients(shell.user_ns), print, self._show_table)
        self.cells = CellSteps(shell)

    @staticmethod
    def _show_table(bundle: dict[str, str]) -> None:
        display(bundle, raw=True)  # type: ignore[no-untyped-call]

    def install(self) -> None:
        """Register the magics; patch the running loop for blocking runs; note interrupted runs."""
        assert self.shell is not None
        self.shell.register_magics(self)
        loop = running_loop()
        if loop is not None:
            patch_loop(loop)  # run_blocking would do it at the first blocking run anyway
        notice = self.commands.interrupted_notice()
        if notice:
            print(notice)  # noqa: T201 - the one-line notice on load

    def uninstall(self) -> None:
        """Remove exactly what ``install`` added."""
        assert self.shell is not None
        manager = self.shell.magics_manager
        for kind, names in self.magics.items():
            table = manager.magics[kind]
            for name in names:
                if getattr(table.get(name), "__self__", None) is self:
                    del table[name]
        if manager.registry.get(type(self).__name__) is self:
            del manager.registry[type(self).__name__]
        self.cells.close()

    @no_var_expand
    @line_magic
    def nbdurable(self, line: str) -> None:
        """Manage durable runs: ``%nbdurable runs|show|resume|invalidate|clear|store|send|help``."""
        try:
            self.commands(line)
        except CommandError as exc:
            raise UsageError(str(exc)) from None

    @cell_magic
    def step(self, line: str, cell: str) -> None:
        """``%%step NAME [--retries N] [--refresh]``: the cell as a durable step."""
        try:
            self.cells.run(line, cell, self.commands.store_path)
        except CellStepUsageError as exc:
            raise UsageError(str(exc)) from None


def load_ipython_extension(ipython: Any) -> None:
    """``%load_ext nbdurable``: register the magics; note interrupted runs.

    Loading again first unloads, so every hook exists once.
    """
    unload_ipython_extension(ipython)
    NbdurableMagics(ipython).install()


def unload_ipython_extension(ipython: Any) -> None:
    """``%unload_ext nbdurable``: remove exactly what loading added."""
    magics = ipython.magics_manager.registry.get(NbdurableMagics.__name__)
    if isinstance(magics, NbdurableMagics):
        magics.uninstall()
