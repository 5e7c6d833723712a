"""A real 2-worker Dask LocalCluster (process workers) for the tests, and the scheduler's count of tasks.

The cluster's scheduler lets no task be rescheduled after its worker died
(``allowed-failures: 0``), so every worker death reaches nbdurable as ``KilledWorker`` and
costs one attempt there, where it is counted and shown. A scheduler plugin counts the task
keys the scheduler was sent, which proves a replay submits nothing.
"""

from __future__ import annotations

import contextlib
import os
import signal
from typing import Any

import dask
import distributed
from distributed.diagnostics.plugin import SchedulerPlugin


class Submitted(SchedulerPlugin):
    """Counts the task keys sent to the scheduler (every submit, map or retry adds to it)."""

    name = "nbdurable-tests-submitted"

    def __init__(self) -> None:
        self.keys = 0

    def update_graph(self, scheduler: Any, *, keys: Any, **kwargs: Any) -> None:
        self.keys += len(keys)


class Cluster:
    """A LocalCluster, a client of it, its executor, and the scheduler's count of tasks submitted."""

    def __init__(self, allowed_failures: int = 0) -> None:
        with dask.config.set({"distributed.scheduler.allowed-failures": allowed_failures}):
            self.cluster = distributed.LocalCluster(
                n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0"
            )
        self.counter = Submitted()
        self.cluster.scheduler.add_plugin(self.counter)
        self.client = distributed.Client(self.cluster)
        self.executor = self.client.get_executor()

    @property
    def submitted(self) -> int:
        return self.counter.keys

    def worker_pids(self) -> set[int]:
        """Process ids of the live workers, as the cluster reports them."""
        return set(self.client.run(os.getpid).values())

    def kill_worker(self, pid: int) -> None:
        """SIGKILL a worker process, by a pid the cluster reported as one of its workers."""
        assert pid in self.worker_pids(), f"{pid} is not a worker of this cluster"
        os.kill(pid, signal.SIGKILL)

    def close(self) -> None:
        # After its scheduler went away (a test may close it) the client cannot say goodbye: don't wait long.
        with contextlib.suppress(TimeoutError, OSError):
            self.client.close(timeout=5)
        with contextlib.suppress(TimeoutError, OSError):
            self.cluster.close(timeout=10)
