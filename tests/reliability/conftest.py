"""Prints the figures the reliability suites counted, at the end of the session."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from typing import Any

import pytest

from tests.reliability.workload import FIGURES


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not FIGURES:
        return
    terminalreporter.section("nbdurable reliability figures")
    for suite, counters in FIGURES.items():
        terminalreporter.write_line(f"{suite}:")
        for name, value in counters.items():
            terminalreporter.write_line(f"  {name}: {value}")


_MAIN = sys.modules["__main__"]


@pytest.fixture(autouse=True, scope="module")
def _real_main_module() -> Iterator[None]:
    """Worker processes start from ``__main__``; an IPython shell of an earlier test may have replaced it."""
    current = sys.modules["__main__"]
    sys.modules["__main__"] = _MAIN
    try:
        yield
    finally:
        sys.modules["__main__"] = current
