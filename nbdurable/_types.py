"""Plain value types shared by every layer: statuses, sentinels, durations, ``Backoff``, ``StepInfo``."""

from __future__ import annotations

import dataclasses
import datetime as _dt
import enum
import math
import os
import random
from typing import Any, Final, Literal


class RunStatus(str, enum.Enum):
    """Where a run is."""

    QUEUED = "QUEUED"
    RUNNING = "RUNNING"
    SLEEPING = "SLEEPING"
    WAITING = "WAITING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    INTERRUPTED = "INTERRUPTED"

    @property
    def active(self) -> bool:
        """True while an owner is executing the run."""
        return self in _ACTIVE

    @property
    def finished(self) -> bool:
        """True once the run reached an end state (completed, failed or cancelled)."""
        return self in _FINISHED


_ACTIVE = frozenset({RunStatus.RUNNING, RunStatus.SLEEPING, RunStatus.WAITING})
_FINISHED = frozenset({RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.CANCELLED})


class Sentinel(enum.Enum):
    """Named "no value" markers (never ``None``, which can be a real value).

    Each is the only member of its meaning, so ``x is NO_OUTPUT`` narrows types for mypy.
    """

    NO_OUTPUT = "NO_OUTPUT"
    """A run (or step) has no output (yet, or none could be read)."""
    NO_TYPE = "NO_TYPE"
    """A handler has no usable return annotation."""
    UNREADABLE = "UNREADABLE"
    """A stored output that cannot be rebuilt (a warning was emitted; the step executes again)."""
    MISSING = "MISSING"
    """No record under a key."""
    CORRUPT = "CORRUPT"
    """A record exists but cannot be read (a warning was emitted)."""

    def __repr__(self) -> str:
        return self.value


HIDE_FRAMES: Final = os.environ.get("NBDURABLE_DEBUG", "") in ("", "0")
"""nbdurable's own frames are hidden from tracebacks IPython shows (``__tracebackhide__``), so a
failing step points at the user's code; ``NBDURABLE_DEBUG=1`` (or ``%xmode --show``) shows them."""

NO_OUTPUT: Final = Sentinel.NO_OUTPUT
NO_TYPE: Final = Sentinel.NO_TYPE
UNREADABLE: Final = Sentinel.UNREADABLE
MISSING: Final = Sentinel.MISSING
CORRUPT: Final = Sentinel.CORRUPT
NoOutput = Literal[Sentinel.NO_OUTPUT]
Absent = Literal[Sentinel.MISSING, Sentinel.CORRUPT]


def duration_seconds(value: Any, what: str) -> float:
    """Milliseconds (int) or a ``timedelta`` as seconds; a clear error naming ``what`` otherwise.

    Example:
        >>> duration_seconds(1500, "timeout"), duration_seconds(_dt.timedelta(minutes=1), "timeout")
        (1.5, 60.0)
    """
    if isinstance(value, _dt.timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        seconds = value / 1000.0
    else:
        msg = (
            f"{what} must be milliseconds (int) or a datetime.timedelta, got {type(value).__name__} {value!r:.60}. "
            "Fix: e.g. 60_000 or datetime.timedelta(minutes=1)."
        )
        raise TypeError(msg)
    if seconds < 0:
        msg = f"{what} must not be negative, got {value!r}"
        raise ValueError(msg)
    return seconds


def timestamp_of(value: Any, what: str) -> float:
    """A ``datetime`` as epoch seconds (naive means local time, as ``datetime.timestamp``)."""
    if not isinstance(value, _dt.datetime):
        msg = (
            f"{what} must be a datetime.datetime, got {type(value).__name__} {value!r:.60}. "
            "Fix: e.g. datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(hours=1)."
        )
        raise TypeError(msg)
    return value.timestamp()


class StepStatus(str, enum.Enum):
    """Where a step is.

    ``REPLAYED`` appears in views only (the stored status is COMPLETED), as does
    ``INTERRUPTED``: the step in flight when its run was interrupted (it executes again when
    the run resumes).
    """

    RUNNING = "RUNNING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    RETRYING = "RETRYING"
    SLEEPING = "SLEEPING"
    WAITING = "WAITING"
    REPLAYED = "REPLAYED"
    INTERRUPTED = "INTERRUPTED"


@dataclasses.dataclass(frozen=True)
class Backoff:
    """Delay between attempts of a failing step: ``initial * factor**(n-1)``, capped, jittered.

    Args:
        initial: first delay, seconds.
        factor: growth per attempt.
        max: cap, seconds.
        jitter: +/- fraction of randomness.

    Example:
        >>> Backoff(initial=1.0, factor=2.0, jitter=0).delay(3)
        4.0
    """

    initial: float = 1.0
    factor: float = 2.0
    max: float = 300.0
    jitter: float = 0.1

    def __post_init__(self) -> None:
        if self.initial < 0 or self.factor < 1 or self.max < 0 or not 0 <= self.jitter <= 1:
            msg = (
                f"invalid Backoff{dataclasses.astuple(self)}: need initial >= 0, factor >= 1, "
                "max >= 0 and 0 <= jitter <= 1"
            )
            raise ValueError(msg)

    def delay(self, failures: int) -> float:
        """The delay after the ``failures``-th failed attempt (1-based), in seconds."""
        base = min(self.max, self.initial * self.factor ** max(0, failures - 1))
        if self.jitter:
            base *= 1 + random.uniform(-self.jitter, self.jitter)  # noqa: S311 - not crypto
        return max(0.0, base)


@dataclasses.dataclass
class ErrorInfo:
    """An error stored as data: its type name, message and traceback text."""

    name: str
    message: str
    stack: str = ""


@dataclasses.dataclass(slots=True)
class StepInfo:
    """What a view shows of one step.

    Attributes:
        key: the step's key (``id``, or ``id:n`` for the n-th repeat).
        step_id: the id given to ``step.run``.
        kind: ``run``, ``sleep``, ``wait``, ``invoke``, ``send``, ``cell``.
        status: a :class:`StepStatus`; ``REPLAYED`` when it came from the store.
        attempts: attempts made in this execution (stored attempts when replayed).
        max_attempts: the step's budget per execution.
        duration: seconds the step took (of the original execution when replayed).
        output: the step's value (``MISSING`` until there is one).
        stale: its code or arguments changed since it was stored.
        note: one line for views (e.g. "previous attempt never finished").
        deadline: wall time a retry, sleep or wait ends at, for countdowns.
    """

    key: str
    step_id: str
    kind: str = "run"
    status: StepStatus = StepStatus.RUNNING
    attempts: int = 0
    max_attempts: int = 1
    started_at: float | None = None
    duration: float | None = None
    output: Any = None
    has_output: bool = False
    error: ErrorInfo | None = None
    errors: list[ErrorInfo] = dataclasses.field(default_factory=list)
    """The errors of this execution's earlier attempts (the latest is ``error``)."""
    stale: bool = False
    note: str = ""
    deadline: float | None = None
    event: str | None = None

    @property
    def label(self) -> str:
        """The step's key as users read it (ids as written, ``:n`` for repeats)."""
        from nbdurable._keys import label

        return label(self.key)

    @property
    def replayed(self) -> bool:
        """True when the step's value came from the store."""
        return self.status is StepStatus.REPLAYED
