"""All process-wide state of nbdurable, in one object with a ``reset()`` for tests.

Everything a process shares across clients lives here: the runs executing in it, the
``wait_for_event`` waits in flight, concurrency slots, open stores, the lease identity, the
run hooks (how a run about to execute gets shown), and bounded caches. Modules read and
write it through ``STATE``; nothing else in the package keeps a mutable global.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Hashable
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

if TYPE_CHECKING:
    import asyncio

    from nbdurable._client import Client
    from nbdurable._clock import Signal
    from nbdurable._doorbell import Doorbell
    from nbdurable._events import Waiter
    from nbdurable._lease import Heartbeat
    from nbdurable._records import Owner
    from nbdurable._run import Run, RunState
    from nbdurable._store import Store

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

Where = tuple[str, str]
"""A store and an app: ``(absolute store path, app id)``."""
FlightKey = tuple[str, str, str, str]
"""A run in flight: ``(absolute store path, app id, function id, run id)``."""
SlotKey = tuple[str, int, str]


class BoundedCache(Generic[K, V]):
    """A dict of at most ``size`` entries: past it, the oldest entries are forgotten.

    Reads take no lock (a dict lookup is atomic), because caches sit on the per-step path.
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self.data: dict[K, V] = {}
        """The entries (read it directly on hot paths: ``cache.data.get(key)``)."""
        self._lock = threading.Lock()

    def get(self, key: K) -> V | None:
        """The value under ``key``, or None."""
        return self.data.get(key)

    def put(self, key: K, value: V) -> None:
        """Keep ``value`` under ``key``, forgetting the oldest entries when full."""
        with self._lock:
            self.data[key] = value
            while len(self.data) > self.size:
                del self.data[next(iter(self.data))]

    def clear(self) -> None:
        """Forget everything."""
        with self._lock:
            self.data.clear()

    def __len__(self) -> int:
        return len(self.data)


class Slots:
    """In-process concurrency limits: runs take every slot they need at once, or queue."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._used: dict[SlotKey, int] = {}
        self._queued: dict[SlotKey, list[Signal]] = {}

    def take(self, keys: list[tuple[SlotKey, int]], wake: Signal) -> bool:
        """Take a slot of every key, or none and queue ``wake`` to be set when one frees."""
        with self._lock:
            for key, limit in keys:
                if self._used.get(key, 0) >= limit:
                    self._queued.setdefault(key, []).append(wake)
                    return False
            for key, _ in keys:
                self._used[key] = self._used.get(key, 0) + 1
            return True

    def give_back(self, keys: list[tuple[SlotKey, int]]) -> None:
        """Free the slots a run took and wake the runs queued for them."""
        woken: list[Signal] = []
        with self._lock:
            for key, _ in keys:
                self._used[key] -= 1
                woken += self._queued.pop(key, [])
        for wake in woken:
            wake.set()


class Presenter(Protocol):
    """How runs are shown: set by ``nbdurable/__init__`` so the runtime never imports a view."""

    def show(self, run: Run[Any]) -> None:
        """Show a run a blocking ``run()`` is about to execute (widget, text lines, or nothing)."""

    def bundle(self, run: Run[Any], include: Any, exclude: Any) -> dict[str, Any]:
        """The mime bundle of a displayed ``Run``."""

    def text(self, run: Run[Any]) -> str:
        """A text summary of a run: a header line and a line per step."""


class ProcessState:
    """The one holder of process-wide state. ``STATE`` is its instance."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        """Guards ``in_flight``, ``cron_owners`` and ``default_client``."""
        self.waiters_lock = threading.Lock()
        self.stores_lock = threading.Lock()
        self.doorbells_lock = threading.Lock()
        self.run_hooks: list[Callable[[Run[Any]], None]] = []
        """Called with each run a blocking ``run()`` is about to execute, after the presenter."""
        self.presenter: Presenter | None = None
        self.heartbeat: Heartbeat | None = None
        """The one thread refreshing leases (started by ``_lease`` on first use; kept by ``reset``)."""
        self.close_hooks: list[Callable[[], None]] = []
        """Called by ``reset()`` before forgetting: what holds threads or files (doorbells) closes them."""
        self.reset_hooks: list[Callable[[], None]] = []
        """Called by ``reset()``: registries that live beside their code (the data codecs' user table)."""
        self._fresh()

    def _fresh(self) -> None:
        self.in_flight: dict[FlightKey, RunState[Any]] = {}
        """Runs executing in this process, whichever client started them."""
        self.waiters: dict[Where, list[Waiter]] = {}
        """``wait_for_event`` steps in flight here, resolved by sends from this process."""
        self.slots = Slots()
        self.cron_owners: dict[tuple[str, str, str], Client] = {}
        """The client holding the latest definition of each function (it owns the schedule)."""
        self.default_client: Client | None = None
        self.temporary_loops: weakref.WeakSet[asyncio.AbstractEventLoop] = weakref.WeakSet()
        """Loops made for one blocking call: background runs must not become their tasks."""
        self.held_callbacks: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, list[asyncio.Handle]] = (
            weakref.WeakKeyDictionary()
        )
        """Per loop a blocking call re-entered: callbacks held back until their Context is free (``_loop``)."""
        self.open_stores: dict[str, Store] = {}
        self.doorbells: dict[str, Doorbell] = {}
        """Per store path: the pipe and thread that wake this process's waits when another process sends."""
        self.warned: set[tuple[str, str]] = set()
        """(store path, topic) pairs already warned about, so each warning is said once."""
        self.owner: Owner | None = None
        """This process's lease identity (computed once per pid)."""
        self.active_tokens: set[str] = set()
        """Lease tokens of executions running in this process."""
        self.handler_meta: BoundedCache[tuple[object, ...], Any] = BoundedCache(4096)
        """Codec and fingerprint per handler code object (replays skip recomputing them)."""
        self.annotations: BoundedCache[tuple[object, ...], Any] = BoundedCache(4096)
        """Resolved return annotations per code object."""
        self.code_fingerprints: BoundedCache[object, str] = BoundedCache(4096)
        """Source hashes per code object."""

    def reset(self) -> None:
        """Forget everything (for tests): runs in flight, waits, slots, schedules, stores, caches.

        Cron schedulers of known clients are stopped and open stores closed first. Runs still
        executing keep running, but are no longer found by new calls. The presenter, the run
        hooks and the heartbeat thread are kept: they belong to whoever installed them.
        """
        with self.lock:
            owners = list(self.cron_owners.values())
            if self.default_client is not None:
                owners.append(self.default_client)
        for client in owners:
            client.stop_cron()
        with self.stores_lock:
            stores = list(self.open_stores.values())
            self.open_stores.clear()
        for store in stores:
            store.cache.close()
        for hook in tuple(self.close_hooks):
            hook()
        with self.lock:
            self._fresh()
        for hook in tuple(self.reset_hooks):
            hook()


STATE = ProcessState()
