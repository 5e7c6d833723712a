"""The cron scheduler: starts ``TriggerCron`` functions on schedule while the process lives."""

from __future__ import annotations

import asyncio
import datetime as _dt
import logging
import threading
from typing import TYPE_CHECKING, Any

from nbdurable._clock import Signal
from nbdurable._events import Event, TriggerCron
from nbdurable._loop import is_home_loop, running_loop

if TYPE_CHECKING:
    from nbdurable._client import Client
    from nbdurable._function import Function

log = logging.getLogger("nbdurable")
CRON_EVENT = "inngest/scheduled.timer"


def cron_run_id(at: float) -> str:
    """A cron run's id: its scheduled time, e.g. ``2026-01-02T03:04:00Z``."""
    return _dt.datetime.fromtimestamp(at, tz=_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def next_fire(cron: str, after: float) -> float:
    """The first time strictly after ``after`` (epoch seconds, UTC) that ``cron`` names."""
    from croniter import croniter

    start = _dt.datetime.fromtimestamp(after, tz=_dt.timezone.utc)
    nxt: _dt.datetime = croniter(cron, start).get_next(_dt.datetime)
    return nxt.timestamp()


class CronScheduler:
    """One daemon thread per client; sleeps on the client's clock until the next fire time.

    A schedule missed while the process was busy or suspended fires once (its latest due
    time), not once per missed tick.
    """

    def __init__(self, client: Client) -> None:
        self.client = client
        self._lock = threading.Lock()
        self._next: dict[tuple[str, str], float] = {}
        self._wake = Signal()
        self._stopped = True
        self._thread: threading.Thread | None = None
        self._home: asyncio.AbstractEventLoop | None = None

    @property
    def running(self) -> bool:
        """True while the scheduler thread runs."""
        return self._thread is not None and self._thread.is_alive() and not self._stopped

    def start(self) -> None:
        """Start the thread (no-op if it runs); schedules count from now.

        Started on a long-lived event loop (a Jupyter kernel's), async functions' runs
        become tasks on that loop, like those started from a cell.
        """
        loop = running_loop()
        with self._lock:
            self._home = loop if is_home_loop(loop) else None
            if self.running:
                return
            self._stopped = False
            self._next.clear()
            self._refresh_locked()
            self._thread = threading.Thread(target=self._loop, name=f"nbdurable-cron-{self.client.app_id}", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """Stop the thread; runs already started continue."""
        with self._lock:
            self._stopped = True
            wake = self._wake
            thread = self._thread
            self._thread = None
        wake.set()
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5)

    def scheduled(self) -> set[tuple[str, str]]:
        """The (function id, cron expression) pairs this scheduler fires now."""
        with self._lock:
            return set(self._next)

    def refresh(self) -> None:
        """Pick up functions registered since the last look (their schedules count from now)."""
        with self._lock:
            self._refresh_locked()
            wake = self._wake
        wake.set()

    def _refresh_locked(self) -> None:
        now = self.client.clock.now()
        live = set()
        for fn in list(self.client.functions.values()):
            if not self.client.owns_schedule(fn.id):
                continue  # defined again on another client since: that one schedules it
            for trigger in fn.triggers:
                if isinstance(trigger, TriggerCron):
                    key = (fn.id, trigger.cron)
                    live.add(key)
                    if key not in self._next:
                        self._next[key] = next_fire(trigger.cron, now)
        for key in set(self._next) - live:
            del self._next[key]

    def _loop(self) -> None:
        clock = self.client.clock
        while True:
            with self._lock:
                if self._stopped:
                    return
                self._wake = wake = Signal()
                self._refresh_locked()
                now = clock.now()
                due = []
                for (fn_id, cron), at in self._next.items():
                    if at <= now:
                        latest = at
                        while (following := next_fire(cron, latest)) <= now:
                            latest = following
                        due.append((fn_id, cron, latest))
                for fn_id, cron, latest in due:
                    self._next[(fn_id, cron)] = next_fire(cron, latest)
                soonest = min(self._next.values(), default=None)
            for fn_id, cron, latest in due:
                self._fire(fn_id, cron, latest)
            if not due:
                clock.wait(wake, None if soonest is None else soonest - now)

    def _fire(self, fn_id: str, cron: str, at: float) -> None:
        fn: Function[Any] | None = self.client.functions.get(fn_id)
        if fn is None:
            return
        event = Event(CRON_EVENT, {"cron": cron}, ts=int(at * 1000))

        def start() -> None:
            try:
                fn.start(event=event, run_id=cron_run_id(at))
            except Exception:
                log.exception("nbdurable: cron start of %s failed", fn_id)

        loop = self._home
        if fn.is_async and loop is not None and loop.is_running():
            loop.call_soon_threadsafe(start)
        else:
            start()
