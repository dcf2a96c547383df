"""SQLite metadata for the snapshot store: rows only, no directories and no semantics.

Several `pyunion` processes may open the same root at once, so every write runs inside
`BEGIN IMMEDIATE` (one writer at a time, others wait up to the busy timeout) and reads run inside
a transaction of their own so they see one consistent state. Times are stored as integer
microseconds since the epoch so that a value read back compares equal to the one written.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from snapshotter.errors import FailedPrecondition
from snapshotter.sqlite_db import open_db

SCHEMA = """
CREATE TABLE IF NOT EXISTS snapshots (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,
    key     TEXT NOT NULL UNIQUE,
    kind    TEXT NOT NULL CHECK (kind IN ('view', 'active', 'committed')),
    parent  INTEGER REFERENCES snapshots(id),
    labels  TEXT NOT NULL DEFAULT '{}',
    created INTEGER NOT NULL,
    updated INTEGER NOT NULL,
    size    INTEGER,
    inodes  INTEGER
);
CREATE INDEX IF NOT EXISTS snapshots_parent ON snapshots(parent);
"""

_COLUMNS = """s.id, s.key, s.kind, s.parent, COALESCE(p.key, ''), s.labels, s.created, s.updated,
              s.size, s.inodes"""
_SELECT = f"SELECT {_COLUMNS} FROM snapshots s LEFT JOIN snapshots p ON p.id = s.parent"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def to_micros(t: datetime) -> int:
    """Exact integer microseconds (no float rounding); naive times are taken as UTC."""
    aware = t if t.tzinfo else t.replace(tzinfo=UTC)
    return (aware - _EPOCH) // timedelta(microseconds=1)


def from_micros(us: int) -> datetime:
    return _EPOCH + timedelta(microseconds=us)


def now_micros() -> int:
    return to_micros(datetime.now(UTC))


@dataclass
class Row:
    """One snapshot record; `parent_key` is the parent's current key ('' for none)."""
    id: int
    key: str
    kind: str
    parent_id: int | None
    parent_key: str
    labels: dict[str, str] = field(default_factory=dict)
    created: int = 0
    updated: int = 0
    size: int | None = None
    inodes: int | None = None


def _row(t: tuple) -> Row:
    return Row(t[0], t[1], t[2], t[3], t[4], json.loads(t[5]), t[6], t[7], t[8], t[9])


class Tx:
    """Queries available inside a transaction (see MetaStore.read / MetaStore.write)."""

    def __init__(self, conn: sqlite3.Connection):
        self._c = conn

    def get(self, key: str) -> Row | None:
        r = self._c.execute(f"{_SELECT} WHERE s.key = ?", (key,)).fetchone()
        return _row(r) if r else None

    def get_id(self, sid: int) -> Row | None:
        r = self._c.execute(f"{_SELECT} WHERE s.id = ?", (sid,)).fetchone()
        return _row(r) if r else None

    def all(self) -> list[Row]:
        return [_row(r) for r in self._c.execute(f"{_SELECT} ORDER BY s.id")]

    def ids(self) -> set[int]:
        return {r[0] for r in self._c.execute("SELECT id FROM snapshots")}

    def chain(self, sid: int) -> list[Row]:
        """The snapshot `sid` and all its ancestors, nearest first."""
        rows = []
        cur: int | None = sid
        while cur is not None:
            row = self.get_id(cur)
            if row is None:
                raise RuntimeError(f"metadata corrupt: snapshot id {cur} is missing")
            rows.append(row)
            cur = row.parent_id
        return rows

    def has_children(self, sid: int) -> bool:
        return self._c.execute("SELECT 1 FROM snapshots WHERE parent = ? LIMIT 1",
                               (sid,)).fetchone() is not None

    def insert(self, key: str, kind: str, parent_id: int | None, labels: dict[str, str],
               ts: int) -> int:
        cur = self._c.execute(
            "INSERT INTO snapshots (key, kind, parent, labels, created, updated)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (key, kind, parent_id, json.dumps(labels, sort_keys=True), ts, ts))
        assert cur.lastrowid is not None      # set by every INSERT
        return cur.lastrowid

    def commit_active(self, sid: int, name: str, labels: dict[str, str], ts: int,
                      size: int, inodes: int) -> None:
        self._c.execute(
            "UPDATE snapshots SET key = ?, kind = 'committed', labels = ?, created = ?,"
            " updated = ?, size = ?, inodes = ? WHERE id = ?",
            (name, json.dumps(labels, sort_keys=True), ts, ts, size, inodes, sid))

    def set_labels(self, sid: int, labels: dict[str, str], ts: int) -> None:
        self._c.execute("UPDATE snapshots SET labels = ?, updated = ? WHERE id = ?",
                        (json.dumps(labels, sort_keys=True), ts, sid))

    def delete(self, sid: int) -> None:
        self._c.execute("DELETE FROM snapshots WHERE id = ?", (sid,))


class MetaStore:
    """The metadata database of one store root."""

    def __init__(self, path: str | Path):
        self._lock = threading.RLock()
        self._conn: sqlite3.Connection | None = open_db(path, SCHEMA, check_same_thread=False)

    @property
    def closed(self) -> bool:
        return self._conn is None

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def _live(self) -> sqlite3.Connection:
        if self._conn is None:
            raise FailedPrecondition("snapshot store is closed")
        return self._conn

    @contextlib.contextmanager
    def _tx(self, begin: str) -> Iterator[Tx]:
        with self._lock:
            conn = self._live()
            conn.execute(begin)
            try:
                yield Tx(conn)
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            try:
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise

    def write(self) -> contextlib.AbstractContextManager[Tx]:
        """Exclusive writer transaction: taken before reading what the write depends on."""
        return self._tx("BEGIN IMMEDIATE")

    def read(self) -> contextlib.AbstractContextManager[Tx]:
        return self._tx("BEGIN")
