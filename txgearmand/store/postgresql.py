# -*- test-case-name: txgearmand.test.test_store -*-
"""
A job store in PostgreSQL, through psycopg 3 (the C{postgresql} extra:
C{pip install 'txgearmand[postgresql]'}), from a thread of its own with
group commit.

Opened on a database that holds C gearmand's libpq queue (a table with C's
columns, whatever C{--libpq-table} named it), it imports C's queued jobs
first, once.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from zope.interface import implementer

from txgearmand import _log
from txgearmand.interfaces import IJobStore, StoredJob
from txgearmand.store import _cqueue
from txgearmand.store._batch import Batch, ThreadedStore

__all__ = ["C_TABLE", "PostgreSQLStore", "check_postgresql"]

log = _log.logger("txgearmand.store.postgresql")

_COLUMNS = "id, handle, function, uniq, payload, priority, when_to_run, reducer, attempts"
_SCHEMA = """
CREATE TABLE IF NOT EXISTS {table} (
    id BIGINT PRIMARY KEY,
    handle BYTEA NOT NULL,
    function BYTEA NOT NULL,
    uniq BYTEA NOT NULL,
    payload BYTEA NOT NULL,
    priority SMALLINT NOT NULL,
    when_to_run DOUBLE PRECISION,
    reducer BYTEA NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0
)
"""
# A table from before the retry policy has no attempts column: added.
_ADD_ATTEMPTS = "ALTER TABLE {table} ADD COLUMN IF NOT EXISTS attempts INTEGER NOT NULL DEFAULT 0"
# A job stored again (it failed and waits for its next attempt: only such
# jobs have attempts) replaces its row; new jobs go in with COPY.
_UPSERT = (
    "INSERT INTO {table} (" + _COLUMNS + ") VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)"
    " ON CONFLICT (id) DO UPDATE SET when_to_run = EXCLUDED.when_to_run,"
    " attempts = EXCLUDED.attempts"
)


def _psycopg() -> Any:
    try:
        import psycopg
    except ImportError as e:
        raise RuntimeError(
            "the PostgreSQL job store needs psycopg 3: pip install 'txgearmand[postgresql]'"
        ) from e
    return psycopg


#: C gearmand's libpq queue: its default table (C{--libpq-table}); a table
#: of any name with C's columns is taken for it.
C_TABLE = "queue"

# PostgreSQL keeps names of up to NAMEDATALEN - 1 bytes (63 as built).
_NAME_BYTES = 63

# An advisory lock key held while C's tables are imported, so that two
# servers starting together on one database do not both import them.
_IMPORT_LOCK = 0x7478_6765_6172_0001

# C's tables by their columns: those an unqualified name reaches (on the
# search_path, as C gearmand's own queries), outside the system schemas.
_FIND_C_TABLES = """
SELECT n.nspname, c.relname, array_agg(a.attname::text)
FROM pg_catalog.pg_class c
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
WHERE c.relkind IN ('r', 'p')
  AND n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND pg_catalog.pg_table_is_visible(c.oid)
GROUP BY n.nspname, c.relname
ORDER BY n.nspname, c.relname
"""


def _c_tables(conn: Any) -> list[tuple[str, str, set[str]]]:
    """
    The tables that are C gearmand's queue: (schema, name, columns) each.
    """
    return [
        (schema, name, set(columns))
        for schema, name, columns in conn.execute(_FIND_C_TABLES).fetchall()
        if _cqueue.is_c_queue(name, columns)
    ]


def _connect(conninfo: str, table: str, import_c: bool = True) -> Any:
    psycopg = _psycopg()
    conn = psycopg.connect(conninfo, autocommit=True, connect_timeout=10)
    conn.execute(_SCHEMA.format(table=table))
    conn.execute(_ADD_ATTEMPTS.format(table=table))
    if import_c and _c_tables(conn):
        _import_c_queues(conn, table)
    return conn


def _import_c_queues(conn: Any, table: str) -> int:
    """
    Bring C gearmand's queued jobs (its libpq table, whatever its name)
    into our table, once, in one transaction; C's table is renamed, not
    dropped, so nothing is lost and it is not imported twice.

    @return: how many jobs were imported.
    """
    from psycopg import sql

    imported: list[tuple[str, str, int, str]] = []
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_IMPORT_LOCK,))
        # Looked for again under the lock: another server may have
        # imported them meanwhile.
        found = _c_tables(conn)
        (top,) = conn.execute(f"SELECT COALESCE(MAX(id), 0) FROM {table}").fetchone()
        cursor = conn.cursor()
        for schema, name, columns in found:
            source = sql.Identifier(schema, name)
            when = sql.Identifier("when_to_run") if "when_to_run" in columns else sql.NULL
            # C wrote the unique key and function name as text in the
            # database's encoding: their bytes, unconverted.  C never
            # updates a row, so their physical order is the order C queued
            # them in (and replays them in).
            rows = conn.execute(
                sql.SQL(
                    "SELECT convert_to(unique_key, current_setting('server_encoding')),"
                    " convert_to(function_name, current_setting('server_encoding')),"
                    " priority, data, {when} FROM {source} ORDER BY ctid"
                ).format(when=when, source=source)
            ).fetchall()
            if rows:
                with cursor.copy(f"COPY {table} ({_COLUMNS}) FROM STDIN") as copy:
                    for n, row in enumerate(rows, 1):
                        copy.write_row(_cqueue.stored_job(top + n, b"C:%d" % n, *row))
            top += len(rows)
            taken = {
                r[0]
                for r in conn.execute(
                    "SELECT c.relname FROM pg_catalog.pg_class c"
                    " JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace"
                    " WHERE n.nspname = %s",
                    (schema,),
                )
            }
            kept = _cqueue.kept_name(name, taken, _NAME_BYTES)
            conn.execute(
                sql.SQL("ALTER TABLE {} RENAME TO {}").format(source, sql.Identifier(kept))
            )
            imported.append((schema, name, len(rows), kept))
    for schema, name, n, kept in imported:
        log.info(
            "Imported {n} queued jobs from C gearmand's {schema}.{table} table in PostgreSQL"
            " database {database} (the table is kept as {kept})",
            n=n,
            schema=schema,
            table=name,
            database=conn.info.dbname,
            kept=kept,
        )
    return sum(n for _, _, n, _ in imported)


def check_postgresql(conninfo: str, table: str = "txgearmand_jobs") -> None:
    """
    Connect, create the table if needed (and import C gearmand's queue if
    the database holds it), and disconnect, synchronously: for a clear
    error at start-up, before the reactor runs.
    """
    _connect(conninfo, table).close()


@implementer(IJobStore)
class PostgreSQLStore(ThreadedStore):
    """
    An L{IJobStore} in a PostgreSQL table (default C{txgearmand_jobs}).

    One connection, used from one thread owned by the store; each batch of
    writes is one transaction (new jobs with C{COPY}).  A lost connection
    is opened again for the next batch.  C gearmand's libpq queue tables
    found on opening are imported (see L{check_postgresql}).
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
            # C's tables are imported once, at start, never while serving:
            # their ids would collide with the ones handed out since.
            self._conn = _connect(self.conninfo, self.table, import_c=False)
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
                new = [job for job in adds if not job.attempts]
                if new:
                    with cur.copy(f"COPY {self.table} ({_COLUMNS}) FROM STDIN") as copy:
                        for job in new:
                            copy.write_row(job)
                if len(new) < len(adds):
                    cur.executemany(
                        _UPSERT.format(table=self.table), [job for job in adds if job.attempts]
                    )
            if removes:
                cur.execute(f"DELETE FROM {self.table} WHERE id = ANY(%s)", (removes,))

    def _close_connection(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
