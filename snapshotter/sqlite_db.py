"""Opening a store's SQLite database safely when several processes start at once.

SQLite's busy handler covers ordinary lock waits, but not every race while a brand-new database
is switched to WAL and given its schema: two processes doing that at the same moment can get
"database is locked" at once, without waiting. So the set-up runs under an exclusive `flock` on
a lock file beside the database; after it, `BEGIN IMMEDIATE` and the busy timeout do the rest.
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
from pathlib import Path

BUSY_TIMEOUT_S = 60.0


def open_db(path: str | Path, schema: str, *, check_same_thread: bool = True) -> sqlite3.Connection:
    """A connection in autocommit mode (transactions are explicit), WAL, schema in place."""
    path = Path(path)
    fd = os.open(f"{path}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        conn = sqlite3.connect(str(path), timeout=BUSY_TIMEOUT_S, isolation_level=None,
                               check_same_thread=check_same_thread)
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA foreign_keys = ON")
            conn.execute("BEGIN IMMEDIATE")
            try:
                for stmt in schema.split(";"):
                    if stmt.strip():
                        conn.execute(stmt)
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
        except BaseException:
            conn.close()
            raise
    finally:
        os.close(fd)        # closing the descriptor drops the flock
    return conn
