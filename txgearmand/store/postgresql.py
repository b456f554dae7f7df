# -*- test-case-name: txgearmand.test.test_store -*-
"""
A job store in PostgreSQL, through psycopg 3 (the C{postgresql} extra:
C{pip install 'txgearmand[postgresql]'}), from a thread of its own with
group commit.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from zope.interface import implementer

from txgearmand import _log
from txgearmand.interfaces import IJobStore, StoredJob
from txgearmand.store._batch import Batch, ThreadedStore

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
class PostgreSQLStore(ThreadedStore):
    """
    An L{IJobStore} in a PostgreSQL table (default C{txgearmand_jobs}).

    One connection, used from one thread owned by the store; each batch of
    writes is one transaction (new jobs with C{COPY}).  A lost connection
    is opened again for the next batch.
    """

    def __init__(self, reactor: Any, conninfo: str, table: str = "txgearmand_jobs") -> None:
        if not table.replace("_", "").isalnum():
            raise ValueError(f"not a table name: {table!r}")
        super().__init__(reactor, "txgearmand-postgresql")
        self.conninfo = conninfo
        self.table = table
        self._conn: Any = None

    def open(self) -> Deferred[None]:
        def connect() -> None:
            self._conn = _connect(self.conninfo, self.table)

        return self._open_in_thread(connect)

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

    def _close_connection(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
