"""The run index: runs listed, found and counted in time proportional to what is returned.

One row per run in a table of the store's own database (see ``_diskcompat``), written in
the same transaction as the run record, with per-run step counters kept by triggers in the
same statement as each step record. A SIGKILL therefore never leaves a record without its
index row or a counter out of step: SQLite commits both or neither.

A store from before the index is upgraded in place the first time a writing process opens
it: in one transaction the step rows are tagged with their status, every readable run
record gets its index row (its counters summed from its tagged steps), and the triggers
are added. Rows written later by a process running an older nbdurable carry no tag; the
triggers note them and the next reader takes them in. A store that cannot be written and
has no usable index (an archived store from before the index) is read by scanning, as
before: slower, never wrong.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import json
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from nbdurable import _diskindex, _records
from nbdurable._diskcompat import SEP, Unreadable
from nbdurable._types import CORRUPT, MISSING, RunStatus

if TYPE_CHECKING:
    from nbdurable._records import RunRecord
    from nbdurable._store import Store

_TOP = "\U0010ffff"
_OPEN = tuple(s.value for s in RunStatus if not s.finished)


@dataclasses.dataclass(frozen=True)
class RunEntry:
    """A run record as a listing gives it: with its stored steps counted by status, and its bytes.

    ``record_bytes`` counts the keys and values of the run's records (run and steps); data
    files are counted apart (``Store.data_bytes``).
    """

    record: RunRecord
    completed: int = 0
    failed: int = 0
    sleeping: int = 0
    waiting: int = 0
    record_bytes: int = 0

    @property
    def steps(self) -> int:
        """How many steps are stored (any status)."""
        return self.completed + self.failed + self.sleeping + self.waiting

    def counts(self) -> dict[str, int]:
        """The stored steps per status, statuses with none left out (as ``show`` lists them)."""
        pairs = (
            ("COMPLETED", self.completed),
            ("FAILED", self.failed),
            ("SLEEPING", self.sleeping),
            ("WAITING", self.waiting),
        )
        return {status: n for status, n in pairs if n}


# --- keeping the index ------------------------------------------------------------------------


def prepare(store: Store) -> bool:
    """Whether the store has a usable index, upgrading a store from before it when it can be written."""
    version = _diskindex.index_version(store.cache)
    if version == _diskindex.INDEX_VERSION:
        return True
    if version > _diskindex.INDEX_VERSION or store.read_only:
        return False  # a newer nbdurable's index (never guessed at), or nothing may be written
    build(store)
    return True


def build(store: Store) -> None:
    """Index every run of a store from before the index, in place, in one transaction."""
    cache = store.cache
    with store.write_transaction():
        if _diskindex.index_version(cache) == _diskindex.INDEX_VERSION:
            return  # another process upgraded it meanwhile
        _diskindex.create_index_tables(cache)
        tags = [
            (_diskindex.step_tag(key, _status(head)), rowid)
            for rowid, key, head in _diskindex.rows_to_index(cache, runs=False)
        ]
        _diskindex.set_tags(cache, tags)
        run_tags = []
        for rowid, key, head in _diskindex.rows_to_index(cache, runs=True):
            if _index_run(store, key, head):
                run_tags.append((_diskindex.RUN_TAG, rowid))
        _diskindex.set_tags(cache, run_tags)
        _diskindex.finish_index(cache)


def _status(head: Any) -> str | None:
    """A step record's status from its header (None if it cannot be read)."""
    if isinstance(head, Unreadable):
        return None
    try:
        status = json.loads(head).get("status")
    except (ValueError, TypeError, AttributeError):
        return None
    return status if isinstance(status, str) else None


def _index_run(store: Store, key: str, head: Any) -> bool:
    """Write the index row of the run record whose header is ``head``; False (and no row) if unreadable."""
    rec = _run_record(head)
    if rec is None:
        reason = head.reason if isinstance(head, Unreadable) else "not a run record this nbdurable reads"
        store.warn_unreadable(key, reason)
        _diskindex.unindex_run(store.cache, key)
        return False
    index_record(store, key, rec)
    return True


def _run_record(head: Any) -> RunRecord | None:
    if isinstance(head, Unreadable):
        return None
    with contextlib.suppress(ValueError, TypeError):
        rec = _records.RunRecord.model_validate_json(head)
        if rec.v <= _records.SCHEMA_VERSION:
            return rec
    return None


def index_record(store: Store, key: str, rec: RunRecord) -> None:
    """Write a run's index row from its record (inside the transaction writing the record)."""
    _, app, function_id, run_id = key.split(SEP, 3)
    fields = (app, function_id, run_id, rec.status.value, not rec.status.finished, rec.created_at, rec.updated_at)
    _diskindex.index_run(store.cache, key, fields)


def ready(store: Store) -> bool:
    """Whether index queries give the truth now: take in rows written without a tag first.

    False for a store without a usable index, or one whose untagged rows cannot be taken in
    because nothing may be written: readers then scan.
    """
    if not store.indexed:
        return False
    keys = _diskindex.pending(store.cache, 1)
    if not keys:
        return True
    if store.read_only:
        return False
    with store.write_transaction():
        while keys := _diskindex.pending(store.cache):
            for key in keys:
                _take_in(store, key)
    return True


def _take_in(store: Store, key: str) -> None:
    cache = store.cache
    found = _diskindex.head_of(cache, key)
    if key.startswith(f"r{SEP}"):
        if found is None:
            _diskindex.take_pending(cache, key, None)
            return
        _index_run(store, key, found)
        _diskindex.take_pending(cache, key, _diskindex.RUN_TAG)
        return
    tag = None if found is None else _diskindex.step_tag(key, _status(found))
    _diskindex.take_pending(cache, key, tag)


# --- reading it -------------------------------------------------------------------------------


def _entries(store: Store, cursor: Any) -> Iterator[RunEntry]:
    for key, mode, value, completed, failed, sleeping, waiting, size in cursor:
        raw = bytes(value) if mode == 1 and isinstance(value, bytes) else None
        got = store.decode(key, raw if raw is not None else store.read(key), _records.RunRecord)
        if got is not MISSING and got is not CORRUPT:
            yield RunEntry(got[0], completed, failed, sleeping, waiting, size)


def runs(
    store: Store,
    app: str | None = None,
    function_id: str | None = None,
    *,
    statuses: tuple[str, ...] | None = None,
    open_only: bool = False,
    before: float | None = None,
    scoped: bool = False,
) -> Iterator[RunEntry]:
    """Runs newest first (by last update), of an app and function, with a stored status among ``statuses``.

    ``before``: only runs last updated before this time, oldest first. ``scoped``: the
    function's scoped ids too (``f"{function_id}[scope]"``, as cell steps have). Lazy: stop
    reading when you have enough, and only that much is read.
    """
    if not ready(store):
        found = _scan(store, app, function_id, statuses, open_only=open_only, scoped=scoped)
        if before is None:
            yield from found
        else:
            yield from sorted((e for e in found if e.record.updated_at < before), key=lambda e: e.record.updated_at)
        return
    where: list[str] = ["1"]
    params: list[Any] = []
    if app is not None:
        where.append("i.app = ?")
        params.append(app)
    if function_id is not None:
        _function_clause(where, params, function_id, scoped=scoped)
    if statuses is not None:
        where.append(f"i.status IN ({', '.join('?' * len(statuses))})")
        params += statuses
    if open_only:
        where.append("i.open = 1")
    if before is not None:
        where.append("i.updated_at < ?")
        params.append(before)
    order = "i.updated_at DESC" if before is None else "i.updated_at"
    with store.guard("read"):
        cursor = _diskindex.index_query(store.cache, " AND ".join(where), tuple(params), order)
        yield from _entries(store, cursor)


def find(
    store: Store,
    run_ref: str,
    *,
    app: str | None = None,
    function_id: str | None = None,
    prefix: bool = False,
    limit: int | None = None,
    scoped: bool = False,
) -> list[RunEntry]:
    """Runs whose id is ``run_ref`` (or starts with it), of any app and function unless given.

    In run id order, then key order; at most ``limit`` of them. ``scoped`` as for ``runs``.
    """
    if not ready(store):
        found = (
            e
            for e in _scan(store, app, function_id, None, open_only=False, scoped=scoped)
            if e.record.run_id == run_ref or (prefix and e.record.run_id.startswith(run_ref))
        )
        return sorted(found, key=lambda e: (e.record.run_id, e.record.function_id))[:limit]
    where = ["i.run_id >= ?", "i.run_id < ?"] if prefix else ["i.run_id = ?"]
    params: list[Any] = [run_ref, run_ref + _TOP] if prefix else [run_ref]
    if app is not None:
        where.append("i.app = ?")
        params.append(app)
    if function_id is not None:
        _function_clause(where, params, function_id, scoped=scoped)
    with store.guard("read"):
        cursor = _diskindex.index_query(store.cache, " AND ".join(where), tuple(params), "i.run_id, i.key")
        return list(itertools.islice(_entries(store, cursor), limit))


def same_function(stored: str, asked: str, *, scoped: bool = False) -> bool:
    """Whether a run's function id is the one asked for (or, ``scoped``, one of its scoped ids)."""
    return stored == asked or (scoped and stored.startswith(f"{asked}[") and stored.endswith("]"))


def _function_clause(where: list[str], params: list[Any], function_id: str, *, scoped: bool) -> None:
    if scoped:
        where.append("(i.function_id = ? OR (i.function_id >= ? AND i.function_id < ?))")
        params += [function_id, f"{function_id}[", f"{function_id}[{_TOP}"]
    else:
        where.append("i.function_id = ?")
        params.append(function_id)


def totals(store: Store) -> tuple[int, int]:
    """How many runs the store holds and the bytes of their records."""
    if not ready(store):
        found = list(_scan(store, None, None, None, open_only=False))
        return len(found), sum(e.record_bytes for e in found)
    with store.guard("read"):
        return _diskindex.index_totals(store.cache)


# --- without an index -------------------------------------------------------------------------


def _scan(
    store: Store,
    app: str | None,
    function_id: str | None,
    statuses: tuple[str, ...] | None,
    *,
    open_only: bool,
    scoped: bool = False,
) -> Iterator[RunEntry]:
    """What ``runs`` gives, read by scanning every run record (a read-only store from before the index)."""
    prefix = f"r{SEP}" + (f"{app}{SEP}" if app is not None else "")
    if app is not None and function_id is not None and not scoped:
        prefix += f"{function_id}{SEP}"
    found = []
    for key, raw in store.rows(prefix, prefix):
        got = store.decode(key, raw if raw is not None else store.read(key), _records.RunRecord)
        if got is MISSING or got is CORRUPT:
            continue
        rec = got[0]
        if function_id is not None and not same_function(rec.function_id, function_id, scoped=scoped):
            continue
        if statuses is not None and rec.status.value not in statuses:
            continue
        if open_only and rec.status.finished:
            continue
        found.append((key, rec, len(key) + len(raw) if raw is not None else 0))
    found.sort(key=lambda item: item[1].updated_at, reverse=True)
    for key, rec, size in found:
        counts = {"COMPLETED": 0, "FAILED": 0, "SLEEPING": 0, "WAITING": 0}
        steps_bytes = 0
        steps = "s" + key[1:] + SEP
        for step_key, step_raw in store.rows(steps, steps):
            head = step_raw.split(b"\n", 1)[0] if step_raw is not None else _diskindex.head_of(store.cache, step_key)
            status = _status(head)
            if status in counts:
                counts[status] += 1
            steps_bytes += len(step_key) + (len(step_raw) if step_raw is not None else 0)
        yield RunEntry(
            rec, counts["COMPLETED"], counts["FAILED"], counts["SLEEPING"], counts["WAITING"], size + steps_bytes
        )


OPEN_STATUSES = _OPEN
"""Stored statuses of runs not finished (running, sleeping, waiting, queued, interrupted)."""
