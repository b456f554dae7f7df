# -*- test-case-name: txgearmand.test.test_store -*-
"""
A job store in PostgreSQL, through psycopg 3 (the C{postgresql} extra:
C{pip install 'txgearmand[postgresql]'}), from a thread of its own with
group commit.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool
from zope.interface import implementer

from txgearmand import _log
from txgearmand.interfaces import IJobStore, StoredJob
from txgearmand.store._batch import Batch, BatchWriter

__all__ = ["PostgreSQLStore", "check_postgresql"]

log = _log.logger("txgearmand.store.postgresql")

_COLUMNS = "id, handle, function, uniq, payload, priority, when_to_run, reducer"
_SCHEMA = """
CREATE TABLE IF NOT EXISTS {table} (
    id BIGINT PRIMARY KEY,
    handle BYTEA NOT NULL,
    function BYTEA NOT NULL,
    uniq BYTEA NOT NULL,
    payload BYTEA NOT NULL,
    priority SMALLINT NOT NULL,
    when_to_run DOUBLE PRECISION,
    reducer BYTEA NOT NULL
)
"""


def _psycopg() -> Any:
    try:
        import psycopg
    except ImportError as e:
        raise RuntimeError(
            "the PostgreSQL job store needs psycopg 3: pip install 'txgearmand[postgresql]'"
        ) from e
    return psycopg


def _connect(conninfo: str, table: str) -> Any:
    psycopg = _psycopg()
    conn = psycopg.connect(conninfo, autocommit=True, connect_timeout=10)
    conn.execute(_SCHEMA.format(table=table))
    return conn


def check_postgresql(conninfo: str, table: str = "txgearmand_jobs") -> None:
    """
    Connect, create the table if needed, and disconnect, synchronously: for
    a clear error at start-up, before the reactor runs.
    """
    _connect(conninfo, table).close()


@implementer(IJobStore)
class PostgreSQLStore:
    """
    An L{IJobStore} in a PostgreSQL table (default C{txgearmand_jobs}).

    One connection, used from one thread owned by the store; each batch of
    writes is one transaction (new jobs with C{COPY}).  A lost connection
    is opened again for the next batch.
    """

    def __init__(self, reactor: Any, conninfo: str, table: str = "txgearmand_jobs") -> None:
        if not table.replace("_", "").isalnum():
            raise ValueError(f"not a table name: {table!r}")
        self._reactor = reactor
        self.conninfo = conninfo
        self.table = table
        self._pool = ThreadPool(1, 1, name="txgearmand-postgresql")
        self._conn: Any = None
        self._writer = BatchWriter(reactor, self._commit)

    def _run(self, f: Any, *args: Any) -> Deferred[Any]:
        return deferToThreadPool(self._reactor, self._pool, f, *args)

    def open(self) -> Deferred[None]:
        self._pool.start()

        def connect() -> None:
            self._conn = _connect(self.conninfo, self.table)

        def failed(failure: Any) -> Any:
            self._pool.stop()
            return failure

        return self._run(connect).addErrback(failed)

    def _connection(self) -> Any:
        if self._conn is None or self._conn.closed:
            log.info("Connecting to PostgreSQL again")
            self._conn = _connect(self.conninfo, self.table)
        return self._conn

    def load(self) -> Deferred[list[StoredJob]]:
        def select() -> list[StoredJob]:
            rows = (
                self._connection()
                .execute(f"SELECT {_COLUMNS} FROM {self.table} ORDER BY id")
                .fetchall()
            )
            return [StoredJob(*row) for row in rows]

        return self._run(select)

    def add(self, job: StoredJob) -> Deferred[None]:
        return self._writer.add(job)

    def remove(self, job_id: int) -> Deferred[None]:
        return self._writer.remove(job_id)

    def add_many(self, jobs: Sequence[StoredJob]) -> Deferred[None]:
        return self._writer.add_many(jobs)

    def remove_many(self, job_ids: Sequence[int]) -> Deferred[None]:
        return self._writer.remove_many(job_ids)

    def _commit(self, batch: Batch) -> Deferred[None]:
        return self._run(self._write, batch)

    def _write(self, batch: Batch) -> None:
        try:
            self._write_once(batch)
        except _psycopg().OperationalError:
            # The connection may have died since the last batch: once more.
            if self._conn is not None and not self._conn.closed:
                raise
            self._write_once(batch)

    def _write_once(self, batch: Batch) -> None:
        adds, removes = batch
        conn = self._connection()
        with conn.transaction():
            cur = conn.cursor()
            if adds:
                with cur.copy(f"COPY {self.table} ({_COLUMNS}) FROM STDIN") as copy:
                    for job in adds:
                        copy.write_row(job)
            if removes:
                cur.execute(f"DELETE FROM {self.table} WHERE id = ANY(%s)", (removes,))

    def close(self) -> Deferred[None]:
        def shut(_: object) -> Deferred[None]:
            def close_conn() -> None:
                if self._conn is not None:
                    self._conn.close()
                    self._conn = None

            return self._run(close_conn)

        d = self._writer.drain().addBoth(shut)
        return d.addBoth(self._stop_pool)

    def _stop_pool(self, result: object) -> object:
        if self._pool.started:
            self._pool.stop()
        return result
