"""Reading a store's run index straight from SQLite, to check it against its records (tests only)."""

from __future__ import annotations

import json
import os
import sqlite3
from typing import Any

SEP = "\x1f"
STATUSES = ("COMPLETED", "FAILED", "SLEEPING", "WAITING")


def _connect(path: str) -> sqlite3.Connection:
    return sqlite3.connect(os.path.join(path, "cache.db"), timeout=30)


def _header(con: sqlite3.Connection, path: str, mode: int, filename: str | None, value: Any) -> dict[str, Any] | None:
    if mode == 1 and isinstance(value, bytes):
        head = value.split(b"\n", 1)[0]
    elif mode == 2 and filename:
        with open(os.path.join(path, filename), "rb") as f:
            head = f.readline().rstrip(b"\n")
    else:
        return None
    try:
        got = json.loads(head)
    except ValueError:
        return None
    return got if isinstance(got, dict) else None


def expected(path: str) -> dict[str, dict[str, Any]]:
    """Per readable run record: what its index row must say, recomputed from the records themselves."""
    con = _connect(path)
    try:
        rows = con.execute("SELECT key, mode, filename, value FROM Cache WHERE raw = 1 ORDER BY key").fetchall()
        out: dict[str, dict[str, Any]] = {}
        steps: dict[str, dict[str, int]] = {}
        for key, mode, filename, value in rows:
            if not isinstance(key, str) or key[:2] not in (f"r{SEP}", f"s{SEP}"):
                continue
            head = _header(con, path, mode, filename, value)
            if key.startswith("r"):
                if head is not None and "status" in head:
                    out[key] = {"status": head["status"], "updated_at": head["updated_at"]}
                continue
            run = "r" + SEP.join(key[1:].split(SEP)[:4])
            counts = steps.setdefault(run, dict.fromkeys(STATUSES, 0))
            status = head.get("status") if head else None
            if status in counts:
                counts[status] += 1
        for key, row in out.items():
            row.update(steps.get(key, dict.fromkeys(STATUSES, 0)))
        return out
    finally:
        con.close()


def index(path: str) -> dict[str, dict[str, Any]]:
    """The index rows as stored."""
    con = _connect(path)
    try:
        rows = con.execute(
            "SELECT key, status, updated_at, completed, failed, sleeping, waiting FROM NbdurableRuns"
        ).fetchall()
    finally:
        con.close()
    return {
        key: {
            "status": status,
            "updated_at": updated,
            "COMPLETED": completed,
            "FAILED": failed,
            "SLEEPING": sleeping,
            "WAITING": waiting,
        }
        for key, status, updated, completed, failed, sleeping, waiting in rows
    }


def assert_index_matches(path: str) -> int:
    """The index holds exactly one row per readable run record, saying what the records say; returns the runs.

    Rows written without a tag (pending) are taken in by readers first, so they are allowed
    to be missing from the index only while noted as pending.
    """
    con = _connect(path)
    try:
        pending = {row[0] for row in con.execute("SELECT key FROM NbdurablePending")}
    finally:
        con.close()
    want = expected(path)
    have = index(path)
    for key in set(want) | set(have):
        if key in pending:
            continue
        assert key in have, f"run {key!r} has no index row"
        assert key in want, f"index row {key!r} has no readable run record"
        assert have[key] == want[key], f"index row of {key!r}: {have[key]} != records {want[key]}"
    return len(want)


def make_legacy(path: str) -> None:
    """Turn a store into the format from before the run index: no index tables or triggers, no tags."""
    con = _connect(path)
    try:
        names = con.execute("SELECT type, name FROM sqlite_master WHERE name LIKE 'Nbdurable%'").fetchall()
        for kind, name in names:
            if kind in ("table", "trigger"):
                con.execute(f"DROP {kind.upper()} IF EXISTS {name}")
        con.execute("UPDATE Cache SET tag = NULL")
        con.commit()
    finally:
        con.close()
