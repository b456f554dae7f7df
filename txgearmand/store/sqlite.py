# -*- test-case-name: txgearmand.test.test_store -*-
"""
A job store in an SQLite file (the standard library's sqlite3, WAL mode),
written from a thread of its own with group commit.
"""

from __future__ import annotations

import functools
import sqlite3
from typing import Any

from twisted.internet.defer import Deferred
from zope.interface import implementer

from txgearmand.interfaces import IJobStore, StoredJob
from txgearmand.store._batch import Batch, ThreadedStore

__all__ = ["SQLiteStore", "check_sqlite"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS txgearmand_jobs (
    id INTEGER PRIMARY KEY,
    handle BLOB NOT NULL,
    function BLOB NOT NULL,
    uniq BLOB NOT NULL,
    payload BLOB NOT NULL,
    priority INTEGER NOT NULL,
    when_to_run REAL,
    reducer BLOB NOT NULL
)
"""
_INSERT = (
    "INSERT OR REPLACE INTO txgearmand_jobs"
    " (id, handle, function, uniq, payload, priority, when_to_run, reducer)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)
# Bound parameters per statement: 32766 since SQLite 3.32, 999 before.
_MAX_VARIABLES = 32766 if sqlite3.sqlite_version_info >= (3, 32) else 999
_ROWS = min(500, _MAX_VARIABLES // 8)
_IDS = min(2000, _MAX_VARIABLES)


@functools.lru_cache(maxsize=64)
def _insert_rows(n: int) -> str:
    return _INSERT.replace(
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?)", "VALUES " + ",".join(["(?,?,?,?,?,?,?,?)"] * n)
    )


@functools.lru_cache(maxsize=64)
def _delete_ids(n: int) -> str:
    return "DELETE FROM txgearmand_jobs WHERE id IN (" + ",".join("?" * n) + ")"


_SELECT = (
    "SELECT id, handle, function, uniq, payload, priority, when_to_run, reducer"
    " FROM txgearmand_jobs ORDER BY id"
)


def _connect(path: str) -> sqlite3.Connection:
    db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    # Every statement is read to its end: PyPy's sqlite3 otherwise leaves
    # it open, and COMMIT then fails with "SQL statements in progress".
    db.execute("PRAGMA journal_mode=WAL").fetchall()
    # FULL: a committed transaction survives a power cut, not only a crash.
    db.execute("PRAGMA synchronous=FULL").fetchall()
    db.execute(_SCHEMA).fetchall()
    return db


def check_sqlite(path: str) -> None:
    """
    Open (creating if needed) the database, synchronously, and close it:
    for a clear error at start-up, before the reactor runs.
    """
    _connect(path).close()


@implementer(IJobStore)
class SQLiteStore(ThreadedStore):
    """
    An L{IJobStore} in an SQLite database file.

    All database work runs in one thread owned by the store; writes are
    group-committed (see L{BatchWriter}), each batch one transaction.
    """

    def __init__(self, reactor: Any, path: str) -> None:
        super().__init__(reactor, f"txgearmand-sqlite:{path}")
        self.path = path
        self._db: sqlite3.Connection | None = None

    def open(self) -> Deferred[None]:
        def connect() -> None:
            self._db = _connect(self.path)

        return self._open_in_thread(connect)

    def load(self) -> Deferred[list[StoredJob]]:
        def select() -> list[StoredJob]:
            assert self._db is not None
            return [StoredJob(*row) for row in self._db.execute(_SELECT)]

        return self._run(select)

    def _write(self, batch: Batch) -> None:
        db = self._db
        assert db is not None
        adds, removes = batch
        cursor = db.cursor()
        cursor.execute("BEGIN")
        try:
            # Many rows per statement: sqlite3 lets go of the GIL once per
            # statement step, and getting it back while the reactor thread
            # is busy costs a switch interval each time.
            for start in range(0, len(adds), _ROWS):
                chunk = adds[start : start + _ROWS]
                cursor.execute(_insert_rows(len(chunk)), [v for job in chunk for v in job])
            for start in range(0, len(removes), _IDS):
                chunk_ids = removes[start : start + _IDS]
                cursor.execute(_delete_ids(len(chunk_ids)), chunk_ids)
            cursor.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                cursor.execute("ROLLBACK")
            raise
        finally:
            cursor.close()

    def _close_connection(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None
