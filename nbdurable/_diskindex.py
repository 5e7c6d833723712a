"""diskcache's database, part two: the run index, nbdurable's own tables beside diskcache's ``Cache`` table.

Like ``_diskcompat`` (which reads and writes the values), this module knows diskcache's
internals: its ``Cache`` table's columns, its connection and its ``Disk``. Nothing else in
nbdurable does; ``_index`` builds listings on these functions.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from diskcache.core import MODE_RAW

from nbdurable._diskcompat import SEP, TOP, Unreadable

if TYPE_CHECKING:
    import diskcache

# --- the run index: nbdurable's own tables in the store's database ----------------------------
#
# ``NbdurableRuns`` holds one row per run record (its key in ``Cache``), with what listings
# sort and filter on and per-run counters of its stored steps. Step rows of ``Cache`` carry a
# tag: the length of their run's step prefix times 8 plus a status code, so triggers on
# ``Cache`` find the run's row and keep its counters in the same statement that writes,
# replaces or deletes a step, whatever code path (or process) does it. Run rows are tagged
# ``RUN_TAG``; their index row is written by the store in the transaction that writes them.
# A run or step row written without a tag (by an nbdurable from before the index, or any
# other writer) is noted in ``NbdurablePending`` and indexed by the next reader.

INDEX_VERSION = 1
RUN_TAG = 0
STEP_CODES = {"COMPLETED": 1, "FAILED": 2, "SLEEPING": 3, "WAITING": 4}
"""Status codes in step tags; 0 is a step record that cannot be read (counted in bytes only)."""
_RUNS = f"key >= 'r{SEP}' AND key < 'r\x20'"
_STEPS = f"key >= 's{SEP}' AND key < 's\x20'"


def step_tag(key: str, status: str | None) -> int | None:
    """The tag of a step row: where its run's key ends in it, and its status (None: not a step key)."""
    try:
        end = key.index(SEP, key.index(SEP, key.index(SEP, 2) + 1) + 1) + 1
    except ValueError:
        return None
    return (end << 3) | STEP_CODES.get(status or "", 0)


def _delta(sign: str, row: str) -> str:
    return (
        f"UPDATE NbdurableRuns SET"
        f" completed = completed {sign} ({row}.tag & 7 = 1), failed = failed {sign} ({row}.tag & 7 = 2),"
        f" sleeping = sleeping {sign} ({row}.tag & 7 = 3), waiting = waiting {sign} ({row}.tag & 7 = 4),"
        f" step_bytes = step_bytes {sign} (length({row}.key) + ifnull(length({row}.value), 0) + {row}.size)"
        f" WHERE {row}.tag >= 8 AND key = 'r' || substr({row}.key, 2, ({row}.tag >> 3) - 2)"
    )


def _foreign(row: str) -> str:
    return f"{row}.tag IS NULL AND ({_RUNS.replace('key', row + '.key')} OR {_STEPS.replace('key', row + '.key')})"


_TABLES = (
    "CREATE TABLE IF NOT EXISTS NbdurableMeta (key TEXT PRIMARY KEY, value) WITHOUT ROWID",
    (
        "CREATE TABLE IF NOT EXISTS NbdurableRuns ("
        " key TEXT PRIMARY KEY, app TEXT NOT NULL, function_id TEXT NOT NULL, run_id TEXT NOT NULL,"
        " status TEXT NOT NULL, open INTEGER NOT NULL, created_at REAL NOT NULL, updated_at REAL NOT NULL,"
        " run_bytes INTEGER NOT NULL DEFAULT 0, step_bytes INTEGER NOT NULL DEFAULT 0,"
        " completed INTEGER NOT NULL DEFAULT 0, failed INTEGER NOT NULL DEFAULT 0,"
        " sleeping INTEGER NOT NULL DEFAULT 0, waiting INTEGER NOT NULL DEFAULT 0) WITHOUT ROWID"
    ),
    "CREATE INDEX IF NOT EXISTS NbdurableRuns_app ON NbdurableRuns (app, updated_at)",
    "CREATE INDEX IF NOT EXISTS NbdurableRuns_function ON NbdurableRuns (app, function_id, updated_at)",
    "CREATE INDEX IF NOT EXISTS NbdurableRuns_status ON NbdurableRuns (app, status, updated_at)",
    "CREATE INDEX IF NOT EXISTS NbdurableRuns_function_status ON NbdurableRuns (app, function_id, status, updated_at)",
    "CREATE INDEX IF NOT EXISTS NbdurableRuns_run_id ON NbdurableRuns (run_id)",
    "CREATE INDEX IF NOT EXISTS NbdurableRuns_open ON NbdurableRuns (updated_at) WHERE open = 1",
    "CREATE TABLE IF NOT EXISTS NbdurablePending (key TEXT PRIMARY KEY) WITHOUT ROWID",
)
_TRIGGERS = (
    (
        "CREATE TRIGGER IF NOT EXISTS Nbdurable_step_insert AFTER INSERT ON Cache WHEN NEW.tag >= 8"
        f" BEGIN {_delta('+', 'NEW')}; END"
    ),
    (
        "CREATE TRIGGER IF NOT EXISTS Nbdurable_step_update AFTER UPDATE ON Cache WHEN OLD.tag >= 8 OR NEW.tag >= 8"
        f" BEGIN {_delta('-', 'OLD')}; {_delta('+', 'NEW')}; END"
    ),
    (
        "CREATE TRIGGER IF NOT EXISTS Nbdurable_step_delete AFTER DELETE ON Cache WHEN OLD.tag >= 8"
        f" BEGIN {_delta('-', 'OLD')}; END"
    ),
    (
        "CREATE TRIGGER IF NOT EXISTS Nbdurable_run_delete AFTER DELETE ON Cache"
        f" WHEN {_RUNS.replace('key', 'OLD.key')} BEGIN DELETE FROM NbdurableRuns WHERE key = OLD.key; END"
    ),
    (
        f"CREATE TRIGGER IF NOT EXISTS Nbdurable_foreign_insert AFTER INSERT ON Cache WHEN {_foreign('NEW')}"
        " BEGIN INSERT OR IGNORE INTO NbdurablePending VALUES (NEW.key); END"
    ),
    (
        f"CREATE TRIGGER IF NOT EXISTS Nbdurable_foreign_update AFTER UPDATE ON Cache WHEN {_foreign('NEW')}"
        " BEGIN INSERT OR IGNORE INTO NbdurablePending VALUES (NEW.key); END"
    ),
)


def index_version(cache: diskcache.Cache) -> int:
    """The version of the run index in the store's database (0: none yet)."""
    try:
        rows = cache._sql("SELECT value FROM NbdurableMeta WHERE key = 'index'").fetchall()
    except sqlite3.OperationalError:  # no such table: a store from before the index
        return 0
    return int(rows[0][0]) if rows and isinstance(rows[0][0], int) else 0


def create_index_tables(cache: diskcache.Cache) -> None:
    """Create the index tables (empty); call inside a transaction, then fill them, then add the triggers."""
    for statement in _TABLES:
        cache._sql(statement)
    cache._sql("DELETE FROM NbdurableRuns")
    cache._sql("DELETE FROM NbdurablePending")


def finish_index(cache: diskcache.Cache) -> None:
    """Add the triggers that keep the index current and record its version (same transaction)."""
    for statement in _TRIGGERS:
        cache._sql(statement)
    cache._sql("INSERT OR REPLACE INTO NbdurableMeta VALUES ('index', ?)", (INDEX_VERSION,))


def rows_to_index(cache: diskcache.Cache, runs: bool) -> list[tuple[int, str, Any]]:
    """``(rowid, key, header)`` of every run row (or step row): the bytes before the first newline.

    What an upgrade reads to build the index: the header only, also of a value in a file of
    its own (read through :class:`SafeDisk`'s rules, so an unreadable one is :class:`Unreadable`).
    """
    where = _RUNS if runs else _STEPS
    rows = cache._sql(f"SELECT rowid, key, mode, filename, value FROM Cache WHERE {where} AND raw = 1").fetchall()
    return [(rowid, key, head(cache, mode, filename, value)) for rowid, key, mode, filename, value in rows]


def head(cache: diskcache.Cache, mode: int, filename: Any, value: Any) -> Any:
    """The header of a stored value (bytes before its first newline), or :class:`Unreadable`."""
    if mode == MODE_RAW:
        if not isinstance(value, bytes):
            return Unreadable(f"a {type(value).__name__} where nbdurable stores bytes")
        cut = value.find(b"\n")
        return value if cut < 0 else value[:cut]
    got = cache._disk.fetch(mode, filename, value, read=True)
    if isinstance(got, Unreadable):
        return got
    with got:
        return got.readline(1 << 20).rstrip(b"\n")


def set_tags(cache: diskcache.Cache, tags: Sequence[tuple[int | None, int]]) -> None:
    """Tag rows: ``(tag, rowid)`` pairs."""
    cache._con.executemany("UPDATE Cache SET tag = ? WHERE rowid = ?", tags)


_ROW_BYTES = "SELECT length(key) + ifnull(length(value), 0) + size FROM Cache WHERE key = ? AND raw = 1"


def index_run(cache: diskcache.Cache, key: str, fields: tuple[str, str, str, str, bool, float, float]) -> None:
    """Write the index row of a run record (inside the transaction that writes the record).

    ``fields``: app, function id, run id, stored status, whether it is open (not finished),
    created and updated times. A new row counts the run's step rows already stored (none for a
    new run; some for a run whose record was unreadable, or an index being repaired).
    """
    app, function_id, run_id, status, is_open, created_at, updated_at = fields
    sql = cache._sql
    updated = sql(
        f"UPDATE NbdurableRuns SET status = ?, open = ?, created_at = ?, updated_at = ?, run_bytes = ({_ROW_BYTES})"
        " WHERE key = ?",
        (status, int(is_open), created_at, updated_at, key, key),
    )
    if updated.rowcount:
        return
    prefix = "s" + key[1:] + SEP
    sql(
        "INSERT INTO NbdurableRuns (key, app, function_id, run_id, status, open, created_at, updated_at, run_bytes,"
        " step_bytes, completed, failed, sleeping, waiting)"
        f" SELECT ?, ?, ?, ?, ?, ?, ?, ?, ({_ROW_BYTES}),"
        " ifnull(sum(length(key) + ifnull(length(value), 0) + size), 0),"
        " count(CASE WHEN tag & 7 = 1 THEN 1 END), count(CASE WHEN tag & 7 = 2 THEN 1 END),"
        " count(CASE WHEN tag & 7 = 3 THEN 1 END), count(CASE WHEN tag & 7 = 4 THEN 1 END)"
        " FROM Cache WHERE key >= ? AND key < ? AND raw = 1 AND tag >= 8",
        (key, app, function_id, run_id, status, int(is_open), created_at, updated_at, key, prefix, prefix + TOP),
    )


def unindex_run(cache: diskcache.Cache, key: str) -> None:
    """Drop the index row of a run (its record cannot be read)."""
    cache._sql("DELETE FROM NbdurableRuns WHERE key = ?", (key,))


def pending(cache: diskcache.Cache, limit: int = 1000) -> list[str]:
    """Keys of run and step rows written without a tag since the index last took them in."""
    try:
        rows = cache._sql("SELECT key FROM NbdurablePending LIMIT ?", (limit,)).fetchall()
    except sqlite3.OperationalError:
        return []
    return [row[0] for row in rows]


def take_pending(cache: diskcache.Cache, key: str, tag: int | None) -> None:
    """Tag a pending row (``None``: it is gone) and forget it (inside a transaction)."""
    sql = cache._sql
    if tag is not None:
        sql("UPDATE Cache SET tag = ? WHERE key = ? AND raw = 1 AND tag IS NULL", (tag, key))
    sql("DELETE FROM NbdurablePending WHERE key = ?", (key,))


INDEX_COLUMNS = "i.key, c.mode, c.value, i.completed, i.failed, i.sleeping, i.waiting, i.run_bytes + i.step_bytes"
"""What an index query returns per run: the record's key and inline value, its step counts and bytes."""


def index_query(cache: diskcache.Cache, where: str, params: tuple[Any, ...], order: str) -> sqlite3.Cursor:
    """A cursor over index rows joined with their run records (read it lazily, stop when enough).

    ``where`` and ``order`` are fixed SQL fragments over the index's columns (prefixed ``i.``),
    never user text; values go in ``params``.
    """
    cursor: sqlite3.Cursor = cache._sql(
        f"SELECT {INDEX_COLUMNS} FROM NbdurableRuns i JOIN Cache c ON c.key = i.key AND c.raw = 1"
        f" WHERE {where} ORDER BY {order}",
        params,
    )
    return cursor


def index_totals(cache: diskcache.Cache) -> tuple[int, int]:
    """How many runs the index holds, and the bytes of their records."""
    ((count, size),) = cache._sql(
        "SELECT count(*), ifnull(sum(run_bytes + step_bytes), 0) FROM NbdurableRuns"
    ).fetchall()
    return int(count), int(size)


def value_files_bytes(cache: diskcache.Cache) -> int:
    """Bytes of the values diskcache keeps in files of their own (it counts them as it writes)."""
    rows = cache._sql("SELECT value FROM Settings WHERE key = 'size'").fetchall()
    return int(rows[0][0]) if rows and isinstance(rows[0][0], int) else 0


def head_of(cache: diskcache.Cache, key: str) -> Any:
    """The header of the value under ``key`` (see :func:`head`), or None when there is none."""
    rows = cache._sql("SELECT mode, filename, value FROM Cache WHERE key = ? AND raw = 1", (key,)).fetchall()
    if not rows:
        return None
    mode, filename, value = rows[0]
    return head(cache, mode, filename, value)


def stored_bytes(cache: diskcache.Cache, key: str) -> int:
    """Bytes of the value under ``key``, in the table or in its file (0 when absent)."""
    rows = cache._sql(f"SELECT ({_ROW_BYTES}) - length(?)", (key, key)).fetchall()
    return int(rows[0][0]) if rows and rows[0][0] is not None else 0
