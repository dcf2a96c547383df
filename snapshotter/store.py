"""SQLite metadata for the snapshot store, and the kind/parent rules of containerd's snapshotter.

The rules live here, inside the transaction that reads what they depend on and writes the
result, so that every Snapshotter built on this store inherits them and no check can race a
write: a key or name is taken once; a new snapshot stands on nothing or on a committed one; only
an active snapshot is committed; a committed one has no mounts of its own; a snapshot with a
child stays. Each refusal is containerd's error (snapshotter.errors) and writes nothing. The
directories of the snapshots are the implementation's (snapshots.py), not this module's.

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

from snapshotter.api import Info, Kind
from snapshotter.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
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
    kind: Kind
    parent_id: int | None
    parent_key: str
    labels: dict[str, str] = field(default_factory=dict)
    created: int = 0
    updated: int = 0
    size: int | None = None
    inodes: int | None = None

    def info(self) -> Info:
        """The record as the Snapshotter interface reports it (stat, walk)."""
        return Info(self.kind, self.key, self.parent_key, dict(self.labels),
                    from_micros(self.created), from_micros(self.updated))


def _row(t: tuple) -> Row:
    return Row(t[0], t[1], Kind(t[2]), t[3], t[4], json.loads(t[5]), t[6], t[7], t[8], t[9])


class Tx:
    """What may be done inside a transaction (see MetaStore.read / MetaStore.write): reads, and
    the snapshotter's writes, each checking its rules first."""

    def __init__(self, conn: sqlite3.Connection):
        self._c = conn

    # -- reads ----------------------------------------------------------------------------------

    def get(self, key: str) -> Row | None:
        r = self._c.execute(f"{_SELECT} WHERE s.key = ?", (key,)).fetchone()
        return _row(r) if r else None

    def get_id(self, sid: int) -> Row | None:
        r = self._c.execute(f"{_SELECT} WHERE s.id = ?", (sid,)).fetchone()
        return _row(r) if r else None

    def need(self, key: str) -> Row:
        """The snapshot KEY (a key or a committed name); NotFound when there is none."""
        row = self.get(key)
        if row is None:
            raise NotFound(f"snapshot {key!r} does not exist")
        return row

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

    def mount_chain(self, key: str) -> list[Row]:
        """Snapshot KEY and its parents, nearest first: what its mounts present. A committed
        snapshot has no mounts of its own (FailedPrecondition): prepare or view it instead."""
        row = self.need(key)
        if row.kind is Kind.COMMITTED:
            raise FailedPrecondition(f"snapshot {key!r} is committed: mount an active snapshot"
                                     " or a view of it")
        return self.chain(row.id)

    def check_commit(self, name: str, key: str) -> Row:
        """The rules of committing KEY as NAME, without writing: NAME is free (AlreadyExists),
        KEY exists (NotFound) and is active (FailedPrecondition). Returns KEY's row."""
        if self.get(name) is not None:
            raise AlreadyExists(f"snapshot {name!r} already exists")
        row = self.need(key)
        if row.kind is not Kind.ACTIVE:
            raise FailedPrecondition(f"snapshot {key!r} is {row.kind.value}: only an active"
                                     " snapshot can be committed")
        return row

    def _parent_id(self, parent: str) -> int | None:
        """A new snapshot stands on nothing ("") or on an existing committed snapshot."""
        if not parent:
            return None
        prow = self.get(parent)
        if prow is None:
            raise NotFound(f"parent snapshot {parent!r} does not exist")
        if prow.kind is not Kind.COMMITTED:
            raise InvalidArgument(f"parent {parent!r} is not a committed snapshot")
        return prow.id

    # -- writes, each after its rules ---------------------------------------------------------

    def create(self, key: str, kind: Kind, parent: str, labels: dict[str, str], ts: int) -> Row:
        """A new active snapshot or view KEY on PARENT. AlreadyExists when KEY is taken, NotFound
        for a missing parent, InvalidArgument for a parent that is not committed."""
        if kind is Kind.COMMITTED:
            raise InvalidArgument("only an active snapshot or a view is created: commit one")
        if self.get(key) is not None:
            raise AlreadyExists(f"snapshot {key!r} already exists")
        self._insert(key, kind, self._parent_id(parent), labels, ts)
        return self.need(key)

    def commit(self, name: str, key: str, labels: dict[str, str], ts: int, size: int,
               inodes: int, *, expect_id: int | None = None) -> Row:
        """Active snapshot KEY becomes committed snapshot NAME (same id, same parent), with its
        measured SIZE and INODES; check_commit's rules. EXPECT_ID: the row check_commit returned
        in an earlier transaction, refused (FailedPrecondition) if KEY is another one now."""
        row = self.check_commit(name, key)
        if expect_id is not None and row.id != expect_id:
            raise FailedPrecondition(f"snapshot {key!r} changed during commit")
        self._commit_active(row.id, name, labels, ts, size, inodes)
        return self.need(name)

    def create_committed(self, name: str, parent: str, labels: dict[str, str], ts: int,
                         size: int, inodes: int) -> Row:
        """A committed snapshot NAME on PARENT at once (its contents made elsewhere, e.g. a copy
        of another layer); the rules of create."""
        if self.get(name) is not None:
            raise AlreadyExists(f"snapshot {name!r} already exists")
        sid = self._insert(name, Kind.ACTIVE, self._parent_id(parent), labels, ts)
        self._commit_active(sid, name, labels, ts, size, inodes)
        return self.need(name)

    def set_labels(self, sid: int, labels: dict[str, str], ts: int) -> None:
        self._c.execute("UPDATE snapshots SET labels = ?, updated = ? WHERE id = ?",
                        (json.dumps(labels, sort_keys=True), ts, sid))

    def remove(self, key: str) -> Row:
        """Forget snapshot KEY of any kind; returns its row. NotFound when there is none,
        FailedPrecondition while a snapshot stands on it."""
        row = self.need(key)
        if self.has_children(row.id):
            raise FailedPrecondition(f"cannot remove snapshot {key!r} with child")
        self._c.execute("DELETE FROM snapshots WHERE id = ?", (row.id,))
        return row

    def _insert(self, key: str, kind: Kind, parent_id: int | None, labels: dict[str, str],
                ts: int) -> int:
        cur = self._c.execute(
            "INSERT INTO snapshots (key, kind, parent, labels, created, updated)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (key, kind.value, parent_id, json.dumps(labels, sort_keys=True), ts, ts))
        assert cur.lastrowid is not None      # set by every INSERT
        return cur.lastrowid

    def _commit_active(self, sid: int, name: str, labels: dict[str, str], ts: int,
                       size: int, inodes: int) -> None:
        self._c.execute(
            "UPDATE snapshots SET key = ?, kind = 'committed', labels = ?, created = ?,"
            " updated = ?, size = ?, inodes = ? WHERE id = ?",
            (name, json.dumps(labels, sort_keys=True), ts, ts, size, inodes, sid))


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
