"""Step handlers that run in worker processes (Dask workers, process pools): they import nothing of nbdurable.

Each appends its process id to ``LOGDIR/<name>.log`` when it starts, so a test counts how
many times a step executed, and where, from files the workers wrote.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path


def log_pid(logdir: str, name: str) -> int:
    """Append this process's id to ``logdir/name.log``; return how many lines it now has."""
    log = Path(logdir) / f"{name}.log"
    with log.open("a") as f:
        f.write(f"{os.getpid()}\n")
    return len(log.read_text().split())


def record(logdir: str, name: str, value: int) -> int:
    """Log the execution and return ``value``."""
    log_pid(logdir, name)
    return value


def where(logdir: str, name: str) -> int:
    """Log the execution and return the id of the process it ran in."""
    log_pid(logdir, name)
    return os.getpid()


def slow_first(logdir: str, name: str, value: int) -> int:
    """Log the execution; the first one then waits (up to 60 s) for the test to kill its process."""
    if log_pid(logdir, name) == 1:
        time.sleep(60)
    return value


async def async_where(logdir: str, name: str) -> list[object]:
    """An async handler: its process id, and whether an event loop runs it."""
    log_pid(logdir, name)
    await asyncio.sleep(0)
    return [os.getpid(), asyncio.get_running_loop() is not None]


def square(i: int) -> int:
    return i * i


def slow_square(i: int) -> int:
    """A few milliseconds of the cluster's time, then ``i * i``."""
    time.sleep(0.003)
    return i * i
