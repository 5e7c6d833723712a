"""The stored records as pydantic models (``extra="forbid"``, schema version ``v``).

Read them through ``_records``: importing pydantic and building these models costs tens of
milliseconds, which ``import nbdurable`` does not pay; the first record read or written does.
"""

from __future__ import annotations

from typing import Any, Literal, TypeVar

import pydantic

from nbdurable._types import RunStatus

SCHEMA_VERSION = 1
KEYS_LEGACY = 1
"""Step keys as first written: a user id ``page:1`` and the second ``page`` shared a key."""
KEYS_ESCAPED = 2
"""Step keys where no user id can equal another step's repeat key (see ``_keys``)."""


class Record(pydantic.BaseModel):
    """Base of every stored record."""

    model_config = pydantic.ConfigDict(extra="forbid")
    v: int = SCHEMA_VERSION


class Owner(Record):
    """The process executing a run.

    ``ticks`` and ``boot`` (Linux) identify the process whatever the wall clock does;
    ``started`` is the wall-clock start time, used where ``/proc`` is absent.
    """

    host: str
    pid: int
    started: float
    token: str
    ticks: int | None = None
    boot: str | None = None


class ErrorRecord(Record):
    """An error stored as data."""

    name: str
    message: str
    stack: str = ""


class DataRef(Record):
    """A value stored in a data file of its own (``file`` relative to the store), by a data codec."""

    codec: str
    file: str
    size: int


class StepRecord(Record):
    """One step's stored state (``data``: its output lives in a data file instead of the payload)."""

    status: Literal["COMPLETED", "FAILED", "SLEEPING", "WAITING"]
    kind: str = "run"
    attempts: int = 1
    started_at: float
    ended_at: float | None = None
    duration: float = 0.0
    serializer: str = "json"
    fingerprint: str | None = None
    error: ErrorRecord | None = None
    wake_at: float | None = None
    meta: dict[str, Any] | None = None
    data: DataRef | None = None


class EventRecord(Record):
    """An event as stored (``received_at``: wall time ``send`` stored it, for sent events)."""

    name: str
    data: dict[str, Any]
    id: str
    ts: int
    received_at: float | None = None


class RunRecord(Record):
    """One run's stored state."""

    app: str
    function_id: str
    run_id: str
    status: RunStatus
    event: EventRecord
    created_at: float
    updated_at: float
    started_at: float | None = None
    ended_at: float | None = None
    executions: int = 0
    owner: Owner | None = None
    heartbeat_at: float | None = None
    steps: list[str] = []
    current_step: str | None = None
    current_since: float | None = None
    error: ErrorRecord | None = None
    failed_step: str | None = None
    output_preview: str | None = None
    has_output: bool = False
    serializer: str = "json"
    keys: int = KEYS_LEGACY
    output_step: str | None = None
    """The key of the step whose stored value is also the run's output (stored once, there)."""
    output_data: DataRef | None = None
    """The data file holding the run's output, when it is a data value no step returned."""


R = TypeVar("R", bound=Record)
