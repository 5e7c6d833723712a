"""Prints the figures the reliability suites counted, at the end of the session."""

from __future__ import annotations

from typing import Any

from tests.reliability.workload import FIGURES


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not FIGURES:
        return
    terminalreporter.section("nbdurable reliability figures")
    for suite, counters in FIGURES.items():
        terminalreporter.write_line(f"{suite}:")
        for name, value in counters.items():
            terminalreporter.write_line(f"  {name}: {value}")
