"""What the store keeps: pydantic records with ``extra="forbid"`` and a schema version ``v``.

The models live in ``_models`` and are built on first use: ``_records.RunRecord`` imports
pydantic and builds them the first time any record is needed, so ``import nbdurable``
never pays for it (about half of its time otherwise). After that first access the names
are plain attributes of this module. Import this module, not its names
(``from nbdurable import _records``), so that importing a module that uses records stays free.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from nbdurable._models import (
        KEYS_ESCAPED,
        KEYS_LEGACY,
        SCHEMA_VERSION,
        DataRef,
        ErrorRecord,
        EventRecord,
        Owner,
        R,
        Record,
        RunRecord,
        StepRecord,
    )

__all__ = [
    "KEYS_ESCAPED",
    "KEYS_LEGACY",
    "SCHEMA_VERSION",
    "DataRef",
    "ErrorRecord",
    "EventRecord",
    "Owner",
    "R",
    "Record",
    "RunRecord",
    "StepRecord",
]

NAMES = frozenset(__all__)


def __getattr__(name: str) -> Any:
    """Build the record models on first use and keep them (and the schema constants) as attributes here."""
    if name not in NAMES:
        msg = f"module {__name__!r} has no attribute {name!r}"
        raise AttributeError(msg)
    from nbdurable import _models

    here = globals()
    for known in NAMES:
        here[known] = getattr(_models, known)
    return here[name]
