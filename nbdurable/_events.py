"""Events and triggers: ``Event``, ``TriggerEvent``, ``TriggerCron``, ``Cancel``, ``Concurrency``."""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import time
import uuid
from typing import Any


def _now_ms() -> int:
    return int(time.time() * 1000)


def _new_id() -> str:
    return uuid.uuid4().hex


def canonical_json(data: Any, *, what: str) -> str:
    """Canonical JSON text of event data; a clear ``TypeError`` when it is not JSON."""
    try:
        return json.dumps(data, sort_keys=True, separators=(",", ":"), allow_nan=False, ensure_ascii=False)
    except (TypeError, ValueError) as exc:
        msg = (
            f"{what} must be JSON data (dict of str, int, float, bool, None, lists and dicts); "
            f"got {data!r:.80} ({exc}). Fix: convert the value (e.g. str(x), x.isoformat(), "
            "model.model_dump(mode='json')) before passing it."
        )
        raise TypeError(msg) from None


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
        expression: an optional CEL expression over ``event`` that must be true.
    """

    event: str
    expression: str | None = None


@dataclasses.dataclass(frozen=True)
class TriggerCron:
    """Start the function on a cron schedule while the process lives.

    Args:
        cron: a cron expression, e.g. ``"*/5 * * * *"``.
    """

    cron: str


@dataclasses.dataclass(frozen=True)
class Cancel:
    """Cancel a running run when a matching event arrives.

    Args:
        event: the event name.
        if_exp: CEL over ``event`` (the triggering event) and ``async`` (the cancel event).
        timeout: only within this long after the run started.
    """

    event: str
    if_exp: str | None = None
    timeout: int | _dt.timedelta | None = None


@dataclasses.dataclass(frozen=True)
class Concurrency:
    """Limit how many runs of the function execute at once (per ``key`` value when given).

    Args:
        limit: the maximum number of concurrent runs.
        key: an optional CEL expression over ``event`` grouping runs.
    """

    limit: int
    key: str | None = None
