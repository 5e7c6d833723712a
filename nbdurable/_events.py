"""Events and triggers: ``Event``, ``TriggerEvent``, ``TriggerCron``, ``Cancel``, ``Concurrency``.

Also the in-process registry of ``wait_for_event`` waiters that ``Client.send`` resolves.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import functools
import json
import re
import time
import uuid
from typing import TYPE_CHECKING, Any

from nbdurable import _doorbell, _records
from nbdurable._diskcompat import SEP
from nbdurable._process import STATE, Where
from nbdurable._serde import non_str_keys
from nbdurable._types import CORRUPT, MISSING, duration_seconds

if TYPE_CHECKING:
    from nbdurable._clock import Signal
    from nbdurable._records import EventRecord
    from nbdurable._store import Store


def _now_ms() -> int:
    return int(time.time() * 1000)


def _new_id() -> str:
    return uuid.uuid4().hex


def canonical_json(data: Any, *, what: str) -> str:
    """Canonical JSON text of event data; a clear ``TypeError`` when it is not JSON."""
    bad_keys = non_str_keys(data)  # json would turn them into str: the run would see other data
    try:
        text = json.dumps(data, sort_keys=True, separators=(",", ":"), allow_nan=False, ensure_ascii=False)
    except (TypeError, ValueError) as exc:
        problem = str(exc)
    else:
        try:
            text.encode()
        except UnicodeEncodeError as exc:
            problem = f"it holds an unpaired surrogate {exc.object[exc.start : exc.end]!r}"
        else:
            if not bad_keys:
                return text
            problem = f"keys must be str, got {bad_keys[0]!r}"
    msg = (
        f"{what} must be JSON data (dict of str, int, float, bool, None, lists and dicts); "
        f"got {data!r:.80} ({problem}). Fix: convert the value (e.g. str(x), x.isoformat(), "
        "model.model_dump(mode='json')) before passing it."
    )
    raise TypeError(msg)


@dataclasses.dataclass
class Event:
    """An event: what triggers runs and what ``wait_for_event`` waits for.

    Args:
        name: the event name, e.g. ``"app/user.signup"``.
        data: JSON data.
        id: a unique id (generated when empty).
        ts: milliseconds since the epoch (now when 0).

    Example:
        >>> Event("app/hello", {"x": 1}).data["x"]
        1
    """

    name: str
    data: dict[str, Any] = dataclasses.field(default_factory=dict)
    id: str = ""
    ts: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            msg = f"Event name must be a non-empty str, got {self.name!r}"
            raise ValueError(msg)
        if self.data is None:
            self.data = {}
        if not isinstance(self.data, dict):
            msg = f"Event {self.name!r}: data must be a dict, got {type(self.data).__name__} {self.data!r:.80}"
            raise TypeError(msg)
        canonical_json(self.data, what=f"Event {self.name!r} data")
        if not self.id:
            self.id = _new_id()
        if not self.ts:
            self.ts = _now_ms()

    def to_dict(self) -> dict[str, Any]:
        """The event as a JSON-ready dict."""
        return {"name": self.name, "data": self.data, "id": self.id, "ts": self.ts}


@dataclasses.dataclass(frozen=True)
class TriggerEvent:
    """Start the function when an event named ``event`` is sent (``*`` wildcards allowed).

    Args:
        event: the event name or pattern.
        expression: an optional CEL expression over ``event`` that must be true
            (compiled here: a typo is a ``ValueError`` at once).

    Example:
        >>> TriggerEvent("shop/*", expression="event.data.total > 100").matches(
        ...     Event("shop/order", {"total": 250})
        ... )
        True
    """

    event: str
    expression: str | None = None

    def __post_init__(self) -> None:
        _check_name(self.event, "TriggerEvent event")
        _check_cel(self.expression, f"TriggerEvent({self.event!r}) expression")

    def matches(self, event: Event) -> bool:
        """Whether ``event`` starts a run: the name matches and the expression is true."""
        if not name_matches(self.event, event.name):
            return False
        return self.expression is None or _truthy(self.expression, event=event.to_dict())


@dataclasses.dataclass(frozen=True)
class TriggerCron:
    """Start the function on a cron schedule while the process lives.

    The client's scheduler (``Client.start_cron()``, started by itself when such a
    function is created) starts a run at each scheduled time (UTC); the run's id is that
    time, e.g. ``2026-01-02T03:05:00Z``.

    Args:
        cron: a cron expression, e.g. ``"*/5 * * * *"`` (checked here).

    Example:
        >>> TriggerCron("0 9 * * 1-5").cron
        '0 9 * * 1-5'
    """

    cron: str

    def __post_init__(self) -> None:
        from croniter import croniter

        if not isinstance(self.cron, str) or not croniter.is_valid(self.cron):
            msg = f"TriggerCron: invalid cron expression {self.cron!r}. Fix: e.g. '*/5 * * * *' (every 5 minutes)."
            raise ValueError(msg)


@dataclasses.dataclass(frozen=True)
class Cancel:
    """Cancel a running run when a matching event arrives.

    The run stops between steps (a sleep or a wait ends at once) with status CANCELLED.
    Events sent in this process cancel at once; events sent by another process are seen
    when the run next looks in the store (while it waits for an event, or when an
    interrupted run resumes).

    Args:
        event: the event name.
        if_exp: CEL over ``event`` (the triggering event) and ``async`` (the cancel event).
        timeout: only within this long after the run was created (ms or ``timedelta``).

    Example:
        >>> Cancel(event="app/order.cancelled", if_exp="event.data.order == async.data.order").event
        'app/order.cancelled'
    """

    event: str
    if_exp: str | None = None
    timeout: int | _dt.timedelta | None = None

    def __post_init__(self) -> None:
        _check_name(self.event, "Cancel event")
        _check_cel(self.if_exp, f"Cancel({self.event!r}) if_exp")
        if self.timeout is not None:
            duration_seconds(self.timeout, f"Cancel({self.event!r}) timeout")

    def matches(self, trigger: Event, candidate: Event, run_age: float) -> bool:
        """Whether ``candidate`` cancels a run triggered by ``trigger`` that started ``run_age`` s ago."""
        if candidate.name != self.event:
            return False
        if self.timeout is not None and run_age > duration_seconds(self.timeout, "timeout"):
            return False
        return self.if_exp is None or _truthy(self.if_exp, event=trigger.to_dict(), async_=candidate.to_dict())


@dataclasses.dataclass(frozen=True)
class Concurrency:
    """Limit how many runs of the function execute at once (per ``key`` value when given).

    Runs over the limit wait QUEUED (without blocking the kernel) until a slot frees. The
    limit holds among the runs of this process.

    Args:
        limit: the maximum number of concurrent runs.
        key: an optional CEL expression over ``event`` grouping runs.

    Example:
        >>> Concurrency(limit=2, key="event.data.user").group(Event("x", {"user": "ada"}))
        '"ada"'
    """

    limit: int
    key: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.limit, bool) or not isinstance(self.limit, int) or self.limit < 1:
            msg = f"Concurrency limit must be an int >= 1, got {self.limit!r}"
            raise ValueError(msg)
        _check_cel(self.key, "Concurrency key")

    def group(self, event: Event) -> str:
        """The concurrency group of a run: the key's value for its event ("" without a key)."""
        if self.key is None:
            return ""
        from nbdurable._cel import evaluate

        return json.dumps(evaluate(self.key, event=event.to_dict()), sort_keys=True, default=str)


# --- matching -------------------------------------------------------------------------------


def _check_name(name: Any, what: str) -> None:
    if not isinstance(name, str) or not name:
        msg = f"{what} must be a non-empty str, got {name!r}"
        raise ValueError(msg)


def _check_cel(expr: Any, what: str) -> None:
    """Compile a CEL expression now, so a typo fails where it is written, not when events arrive."""
    if expr is None:
        return
    from nbdurable._cel import compile_cel

    try:
        compile_cel(expr)
    except ValueError as exc:
        msg = f"{what}: {exc}"
        raise ValueError(msg) from None


def _truthy(expr: str, **variables: dict[str, Any]) -> bool:
    from nbdurable._cel import evaluate

    return evaluate(expr, **variables) is True


@functools.lru_cache(maxsize=256)
def _pattern(pattern: str) -> re.Pattern[str]:
    return re.compile(".*".join(re.escape(part) for part in pattern.split("*")))


def name_matches(pattern: str, name: str) -> bool:
    """Whether an event name matches a trigger pattern (``*`` matches any characters).

    Example:
        >>> name_matches("app/*", "app/user.signup"), name_matches("app/a", "app/b")
        (True, False)
    """
    if "*" not in pattern:
        return pattern == name
    return _pattern(pattern).fullmatch(name) is not None


def as_events(events: Any, what: str) -> list[Event]:
    """An ``Event`` or a list of them, checked; a clear ``TypeError`` otherwise."""
    items = events if isinstance(events, list | tuple) else [events]
    for item in items:
        if not isinstance(item, Event):
            msg = (
                f"{what} takes an nbdurable.Event or a list of them, got {type(item).__name__} {item!r:.60}. "
                "Fix: e.g. nbdurable.Event(name='app/approved', data={'id': 1})."
            )
            raise TypeError(msg)
    return list(items)


# --- waiters --------------------------------------------------------------------------------


class Waiter:
    """A ``wait_for_event`` in flight in this process, resolved by ``Client.send``."""

    __slots__ = ("after", "event", "if_exp", "name", "signal", "trigger")

    def __init__(self, name: str, if_exp: str | None, trigger: dict[str, Any], after: int, signal: Signal) -> None:
        self.name = name
        self.if_exp = if_exp
        self.trigger = trigger
        self.after = after
        self.signal = signal
        self.event: Event | None = None

    def matches(self, candidate: Event) -> bool:
        """Whether ``candidate`` is the awaited event."""
        if candidate.name != self.name:
            return False
        return self.if_exp is None or _truthy(self.if_exp, event=self.trigger, async_=candidate.to_dict())


def add_waiter(where: Where, waiter: Waiter) -> None:
    """Register a wait so events sent in this process resolve it."""
    with STATE.waiters_lock:
        STATE.waiters.setdefault(where, []).append(waiter)


def remove_waiter(where: Where, waiter: Waiter) -> None:
    """Unregister a wait that ended."""
    with STATE.waiters_lock:
        group = STATE.waiters.get(where, [])
        if waiter in group:
            group.remove(waiter)


def resolve_waiters(where: Where, seq: int, event: Event) -> int:
    """Hand ``event`` (sequence number ``seq``) to every matching wait that began before it."""
    with STATE.waiters_lock:
        group = list(STATE.waiters.get(where, []))
    woken = 0
    for waiter in group:
        if waiter.event is None and waiter.after < seq and waiter.matches(event):
            with STATE.waiters_lock:  # two senders racing: the first match wins
                if waiter.event is not None:
                    continue
                waiter.event = event
            waiter.signal.set()
            woken += 1
    return woken


# --- the store's event log ------------------------------------------------------------------


def event_key(app: str, seq: int, event_id: str) -> str:
    """Key of a stored event, sorted by its store-wide sequence number (the order sent)."""
    return f"e{SEP}{app}{SEP}{seq:016d}{SEP}{event_id}"


SEQ_KEY = f"q{SEP}events"


def last_seq(store: Store) -> int:
    """The sequence number of the latest event sent to ``store`` (0 before any)."""
    value = store.read(SEQ_KEY)
    return value if type(value) is int else 0


def append_event(store: Store, app: str, record: EventRecord) -> int:
    """Store a sent event under the next sequence number, and return that number.

    Both happen in one transaction, so sequence numbers become visible in order: a reader
    that saw event N+1 can never find event N appearing later (other processes' waits
    read "every event after the last one I saw"). Once committed, the waits of other
    processes are woken to read it (``_doorbell``).
    """
    with store.write_transaction():
        try:
            seq = int(store.cache.incr(SEQ_KEY, 1, default=0))
        except TypeError:  # not a number (written by other code): start the count again above it
            store.cache.set(SEQ_KEY, 1)
            seq = 1
        store.put(event_key(app, seq, record.id), record)
    _doorbell.ring(store.path)
    return seq


def events_after(store: Store, app: str, seq: int) -> list[tuple[int, EventRecord]]:
    """Every readable event of ``app`` sent after sequence number ``seq``, in order."""
    prefix = f"e{SEP}{app}{SEP}"
    out = []
    for key, raw in store.rows(event_key(app, seq + 1, ""), prefix):
        got = store.decode(key, raw if raw is not None else store.read(key), _records.EventRecord)
        if got is not MISSING and got is not CORRUPT:
            with contextlib.suppress(ValueError, IndexError):
                out.append((int(key.split(SEP)[2]), got[0]))
    return out
