# -*- test-case-name: txgearmand.test.test_store -*-
"""
A job store in an SQLite file (the standard library's sqlite3, WAL mode),
written from a thread of its own with group commit.

Opened on C gearmand's libsqlite3 queue file (a table with C's columns,
whatever C{--libsqlite3-table} named it), it imports C's queued jobs first,
once.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sqlite3
import sys
from collections.abc import Sequence
from operator import itemgetter
from typing import Any

from twisted.internet.defer import Deferred
from zope.interface import implementer

from txgearmand import _log
from txgearmand.interfaces import ISpillStore, SpilledRow, StoredJob
from txgearmand.store import _cqueue
from txgearmand.store._batch import Batch, ThreadedStore

__all__ = ["C_TABLE", "NotAQueueFile", "SQLiteStore", "check_sqlite"]

_LOG = _log.logger("txgearmand.store.sqlite")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS txgearmand_jobs (
    id INTEGER PRIMARY KEY,
    handle BLOB NOT NULL,
    function BLOB NOT NULL,
    uniq BLOB NOT NULL,
    payload BLOB NOT NULL,
    priority INTEGER NOT NULL,
    when_to_run REAL,
    reducer BLOB NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    first_failed REAL,
    failed_at REAL,
    reason TEXT NOT NULL DEFAULT ''
)
"""
# Columns a file from an older txgearmand lacks, added at open: attempts
# (the retry policy), then the failed list's.
_ADDED_COLUMNS = (
    ("attempts", "attempts INTEGER NOT NULL DEFAULT 0"),
    ("first_failed", "first_failed REAL"),
    ("failed_at", "failed_at REAL"),
    ("reason", "reason TEXT NOT NULL DEFAULT ''"),
)
_COLUMNS = (
    "id, handle, function, uniq, payload, priority, when_to_run, reducer, attempts,"
    " first_failed, failed_at, reason"
)
_N_COLUMNS = _COLUMNS.count(",") + 1
_ROW = "(" + ",".join("?" * _N_COLUMNS) + ")"
_INSERT = "INSERT OR REPLACE INTO txgearmand_jobs (" + _COLUMNS + ") VALUES " + _ROW
# A stored job written again (it failed and waits for its next attempt,
# landed in the failed list, or was run again from it): never inserted.
_UPDATE = (
    "UPDATE txgearmand_jobs SET handle = ?, priority = ?, when_to_run = ?, attempts = ?,"
    " first_failed = ?, failed_at = ?, reason = ? WHERE id = ?"
)
# Bound parameters per statement: 32766 since SQLite 3.32, 999 before.
_MAX_VARIABLES = 32766 if sqlite3.sqlite_version_info >= (3, 32) else 999
_ROWS = min(500, _MAX_VARIABLES // _N_COLUMNS)
_IDS = min(2000, _MAX_VARIABLES)


@functools.lru_cache(maxsize=64)
def _insert_rows(n: int) -> str:
    return _INSERT.replace("VALUES " + _ROW, "VALUES " + ",".join([_ROW] * n))


# A new job's row as most are (never failed, no run time): seven values
# bound, the other columns left to their defaults.  See _write_new.
_NEW_COLUMNS = "id, priority, handle, function, uniq, payload, reducer"
_NEW_N = _NEW_COLUMNS.count(",") + 1
_NEW_ROW = "(" + ",".join("?" * _NEW_N) + ")"
# What the defaults stand for: when, attempts, first_failed, failed_at, reason.
_NEW_TAIL = itemgetter(6, 8, 9, 10, 11)
_DEFAULT_TAIL = (None, 0, None, None, "")
# Rows per statement: the largest power of two that fits (4096).
_NEW_ROWS = 1 << ((_MAX_VARIABLES // _NEW_N).bit_length() - 1)
# CPython's sqlite3 binds a bytes value through its adaptation protocol (a
# failed attribute lookup: 0.8 us, the GIL held, on the 2-core test
# machine), a bytearray directly (0.2 us) and an int quicker still (0.05
# us).  So there a new job's five blobs are bound as one bytearray and the
# offsets where they end, and SQLite cuts them apart: 1.6 us a job to
# build and bind instead of 2.7 with a bytearray each (and 7.4 with all
# twelve columns).  PyPy binds bytes as cheaply as a bytearray, and
# builds the rows quicker without joining: it binds the seven values.
_JOIN_BLOBS = sys.implementation.name == "cpython"


@functools.lru_cache(maxsize=16)
def _insert_new_rows(n: int) -> str:
    if _JOIN_BLOBS:
        return (
            "INSERT OR REPLACE INTO txgearmand_jobs ("
            + _NEW_COLUMNS
            + ") SELECT column1, column2, substr(column3, 1, column4),"
            " substr(column3, column4 + 1, column5 - column4),"
            " substr(column3, column5 + 1, column6 - column5),"
            " substr(column3, column6 + 1, column7 - column6), substr(column3, column7 + 1)"
            " FROM (VALUES " + ",".join([_NEW_ROW] * n) + ")"
        )
    return (
        "INSERT OR REPLACE INTO txgearmand_jobs ("
        + _NEW_COLUMNS
        + ") VALUES "
        + ",".join([_NEW_ROW] * n)
    )


def _is_new(job: StoredJob) -> bool:
    """
    Whether a job's row is written with the new-job statement: its fields
    beyond the seven it binds are the columns' defaults.
    """
    return bool(_NEW_TAIL(job) == _DEFAULT_TAIL)


def _new_rows_values(chunk: Sequence[StoredJob]) -> list[Any]:
    """
    The values of L{_insert_new_rows} for C{chunk}, row after row, padded
    with copies of its last row up to a power of two rows: on CPython,
    the id, the priority, the five blobs joined in a bytearray and the
    offsets where the first four end; on PyPy, the seven values.

    This runs in the writer thread with the GIL held, time the reactor
    thread waits.  The padding keeps the statements prepared to at most
    13 sizes (a copy of a row only writes it again, as INSERT OR REPLACE).
    """
    n = len(chunk)
    size = 1 << (n - 1).bit_length()
    if size != n:
        chunk = [*chunk, *[chunk[-1]] * (size - n)]
    if _JOIN_BLOBS:
        join = bytearray().join
        values: list[Any] = []
        for job in chunk:
            handle_end = len(job.handle)
            function_end = handle_end + len(job.function)
            unique_end = function_end + len(job.unique)
            payload_end = unique_end + len(job.payload)
            values += (
                job.id,
                job.priority,
                join((job.handle, job.function, job.unique, job.payload, job.reducer)),
                handle_end,
                function_end,
                unique_end,
                payload_end,
            )
        return values
    return [
        v
        for job in chunk
        for v in (
            job.id,
            job.priority,
            job.handle,
            job.function,
            job.unique,
            job.payload,
            job.reducer,
        )
    ]


@functools.lru_cache(maxsize=64)
def _delete_ids(n: int) -> str:
    return "DELETE FROM txgearmand_jobs WHERE id IN (" + ",".join("?" * n) + ")"


_SELECT = "SELECT " + _COLUMNS + " FROM txgearmand_jobs ORDER BY id"
# What replay needs to queue a job whose payload stays in the store, in id
# order; and the ids of the rows that must be whole (they run later, are
# in the failed list, or coalesce on their payload).
# (Jobs with the unique "-", x'2d', coalesce on their payload: whole.)
_SELECT_INDEX = (
    "SELECT id, handle, function, uniq, priority FROM txgearmand_jobs"
    " WHERE id > ? AND when_to_run IS NULL AND failed_at IS NULL AND uniq != x'2d'"
    " ORDER BY id LIMIT ?"
)
_SELECT_WHOLE_IDS = (
    "SELECT id FROM txgearmand_jobs"
    " WHERE when_to_run IS NOT NULL OR failed_at IS NOT NULL OR uniq = x'2d'"
)


@functools.lru_cache(maxsize=64)
def _select_ids(n: int) -> str:
    return "SELECT " + _COLUMNS + " FROM txgearmand_jobs WHERE id IN (" + ",".join("?" * n) + ")"


#: C gearmand's libsqlite3 queue: its default table (C{--libsqlite3-table});
#: a table of any name with C's columns is taken for it.
C_TABLE = "gearman_queue"


class NotAQueueFile(ValueError):
    """
    The SQLite file holds neither txgearmand's jobs nor C gearmand's queue.
    """


def _tables(db: sqlite3.Connection) -> set[str]:
    return {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _c_tables(db: sqlite3.Connection) -> list[str]:
    """
    The tables that are C gearmand's queue (by their columns), by name.
    """
    return [
        name
        for name in sorted(_tables(db))
        if _cqueue.is_c_queue(
            name, [r[1] for r in db.execute(f"PRAGMA table_info({_quote(name)})").fetchall()]
        )
    ]


def _connect(path: str) -> sqlite3.Connection:
    db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    # Every statement is read to its end: PyPy's sqlite3 otherwise leaves
    # it open, and COMMIT then fails with "SQL statements in progress".
    tables = _tables(db)
    if tables and "txgearmand_jobs" not in tables and not _c_tables(db):
        db.close()
        raise NotAQueueFile(
            f"{path} is an SQLite file with neither txgearmand's jobs nor a C gearmand"
            f" queue table (columns {', '.join(sorted(_cqueue.C_COLUMNS))});"
            f" it has: {', '.join(sorted(tables))}"
        )
    db.execute("PRAGMA journal_mode=WAL").fetchall()
    # FULL: a committed transaction survives a power cut, not only a crash.
    db.execute("PRAGMA synchronous=FULL").fetchall()
    db.execute(_SCHEMA).fetchall()
    _add_columns(db)
    if _c_tables(db):
        _import_c_queues(db, path)
    return db


def _add_columns(db: sqlite3.Connection) -> None:
    """
    Give a table from an older txgearmand the columns it lacks: C{attempts}
    (the retry policy) and the failed list's C{first_failed},
    C{failed_at} and C{reason}.
    """
    columns = {r[1] for r in db.execute("PRAGMA table_info(txgearmand_jobs)").fetchall()}
    added = []
    for name, definition in _ADDED_COLUMNS:
        if name in columns:
            continue
        try:
            db.execute("ALTER TABLE txgearmand_jobs ADD COLUMN " + definition).fetchall()
        except sqlite3.OperationalError as e:
            # Another process opening the same file may have added it.
            if "duplicate column" not in str(e):
                raise
        else:
            added.append(name)
    if added:
        _LOG.info(
            "Added the {columns} columns to the job table of an older txgearmand",
            columns=", ".join(added),
        )


def _import_c_queues(db: sqlite3.Connection, path: str) -> int:
    """
    Bring C gearmand's queued jobs (its libsqlite3 table, whatever its
    name) into ours, once, in one transaction; C's table is renamed, not
    dropped, so nothing is lost and it is not imported twice.

    @return: how many jobs were imported.
    """
    imported: list[tuple[str, int, str]] = []
    cursor = db.cursor()
    cursor.execute("BEGIN IMMEDIATE")
    try:
        # Looked for again under the write lock: another process may have
        # imported them meanwhile.
        (top,) = cursor.execute("SELECT COALESCE(MAX(id), 0) FROM txgearmand_jobs").fetchone()
        for table in _c_tables(db):
            columns = {r[1].lower() for r in db.execute(f"PRAGMA table_info({_quote(table)})")}
            when = "when_to_run" if "when_to_run" in columns else "NULL"
            rows = cursor.execute(
                f"SELECT rowid, unique_key, function_name, priority, data, {when}"
                f" FROM {_quote(table)} ORDER BY rowid"
            ).fetchall()
            for n, (rowid, *row) in enumerate(rows, top + 1):
                cursor.execute(_INSERT, _cqueue.stored_job(n, b"C:%d" % rowid, *row))
            top += len(rows)
            taken = {r[0] for r in cursor.execute("SELECT name FROM sqlite_master")}
            kept = _cqueue.kept_name(table, taken)
            cursor.execute(f"ALTER TABLE {_quote(table)} RENAME TO {_quote(kept)}")
            imported.append((table, len(rows), kept))
        cursor.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            cursor.execute("ROLLBACK")
        raise
    finally:
        cursor.close()
    for table, n, kept in imported:
        _LOG.info(
            "Imported {n} queued jobs from C gearmand's {table} table in {path}"
            " (the table is kept as {kept})",
            n=n,
            table=table,
            path=path,
            kept=kept,
        )
    return sum(n for _, n, _ in imported)


def check_sqlite(path: str, create: bool = True) -> None:
    """
    Open the database (importing C gearmand's queue if the file holds it),
    check that it can be written, and close it, synchronously: for a clear
    error at start-up, before the reactor runs.  A file this check had to
    create is removed again, so that the store makes it when it opens, as
    the user and with the umask the server runs with (twistd's C{--uid},
    C{--umask}).

    @param create: if false, a missing file is not made: only its
        directory is checked.
    @raise NotAQueueFile: if the file holds other tables but neither ours
        nor C's.
    @raise OSError: if a missing file's directory cannot be written.
    """
    existed = os.path.exists(path)
    if not existed and not create:
        folder = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(folder):
            raise OSError(f"no such directory: {folder}")
        if not os.access(folder, os.W_OK | os.X_OK):
            raise OSError(f"cannot write in {folder}")
        return
    db = _connect(path)
    try:
        _check_writable(db)
    finally:
        db.close()
    if not existed:
        for made in (path, path + "-wal", path + "-shm"):
            with contextlib.suppress(FileNotFoundError):
                os.remove(made)


def _check_writable(db: sqlite3.Connection) -> None:
    """
    Take the write lock and let it go: a read-only file fails here, not at
    the first job.
    """
    db.execute("BEGIN IMMEDIATE").fetchall()
    db.execute("ROLLBACK").fetchall()


@implementer(ISpillStore)
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
            db = _connect(self.path)
            try:
                _check_writable(db)
            except BaseException:
                db.close()
                raise
            self._db = db

        return self._open_in_thread(connect)

    def load(self) -> Deferred[list[StoredJob]]:
        def select() -> list[StoredJob]:
            assert self._db is not None
            return [StoredJob(*row) for row in self._db.execute(_SELECT)]

        return self._run(select)

    def load_whole(self) -> Deferred[list[StoredJob]]:
        def select() -> list[StoredJob]:
            db = self._db
            assert db is not None
            whole = self._select(db, [r[0] for r in db.execute(_SELECT_WHOLE_IDS)])
            whole.sort()
            return whole

        return self._run(select)

    def load_index(self, after: int, limit: int) -> Deferred[list[SpilledRow]]:
        def select() -> list[SpilledRow]:
            assert self._db is not None
            # Fast path: the rows come as sqlite3's own tuples, with no
            # Python code per row (a million rows in about a second).
            return self._db.execute(_SELECT_INDEX, (after, limit)).fetchall()

        return self._run(select)

    def fetch(self, job_ids: Sequence[int]) -> Deferred[list[StoredJob]]:
        ids = list(job_ids)

        def select() -> list[StoredJob]:
            assert self._db is not None
            return self._select(self._db, ids)

        return self._run(select)

    @staticmethod
    def _select(db: sqlite3.Connection, ids: list[int]) -> list[StoredJob]:
        out: list[StoredJob] = []
        for start in range(0, len(ids), _IDS):
            chunk = ids[start : start + _IDS]
            out.extend(StoredJob(*row) for row in db.execute(_select_ids(len(chunk)), chunk))
        return out

    def _write(self, batch: Batch) -> None:
        db = self._db
        assert db is not None
        adds, updates, removes = batch
        cursor = db.cursor()
        # One release of the GIL (execute("BEGIN") lets it go four times,
        # and each time the reactor thread is busy, getting it back waits
        # up to a switch interval, 5 ms).
        db.executescript("BEGIN")
        try:
            if all(map(_DEFAULT_TAIL.__eq__, map(_NEW_TAIL, adds))):
                # Fast path, the new jobs of a busy server: see _write_new.
                _write_new(cursor, adds)
            else:
                _write_new(cursor, [job for job in adds if _is_new(job)])
                others = [job for job in adds if not _is_new(job)]
                for start in range(0, len(others), _ROWS):
                    chunk = others[start : start + _ROWS]
                    cursor.execute(_insert_rows(len(chunk)), [v for job in chunk for v in job])
            if updates:
                cursor.executemany(_UPDATE, [(*_changed(job), job.id) for job in updates])
            for start in range(0, len(removes), _IDS):
                chunk_ids = removes[start : start + _IDS]
                cursor.execute(_delete_ids(len(chunk_ids)), chunk_ids)
            # One release of the GIL, as BEGIN.
            db.commit()
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


def _write_new(cursor: sqlite3.Cursor, jobs: Sequence[StoredJob]) -> None:
    """
    Insert new jobs (L{_is_new}), L{_NEW_ROWS} rows per statement.

    On CPython this is the writer's cost that matters: binding values holds
    the GIL (on the 2-core test machine, 7.4 us a job with all twelve
    columns and bytes, 2 us like this), and the reactor thread waits for
    it meanwhile; each statement
    also lets the GIL go four times, and getting it back from a busy
    reactor thread waits up to a switch interval (5 ms) each time, so the
    fewer statements the better.  Inserting, the rest of the time, runs
    without the GIL.
    """
    for start in range(0, len(jobs), _NEW_ROWS):
        chunk = jobs[start : start + _NEW_ROWS]
        values = _new_rows_values(chunk)
        cursor.execute(_insert_new_rows(len(values) // _NEW_N), values)


def _changed(job: StoredJob) -> tuple[object, ...]:
    """
    What an update writes of a stored job, in L{_UPDATE}'s order.
    """
    return (
        job.handle,
        job.priority,
        job.when,
        job.attempts,
        job.first_failed,
        job.failed_at,
        job.reason,
    )
