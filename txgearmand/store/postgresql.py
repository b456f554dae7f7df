# -*- test-case-name: txgearmand.test.test_store,txgearmand.test.test_shared_store -*-
"""
A job store in PostgreSQL, from a thread of its own with group commit,
through psycopg 3 on CPython or pg8000 (pure Python) on PyPy: the
C{postgresql} extra (C{pip install 'txgearmand[postgresql]'}) installs the
one that fits.  The environment variable C{TXGEARMAND_PG_DRIVER=psycopg}
or C{=pg8000} forces one (see L{txgearmand.store._pgdriver}); with pg8000
the connection string's parameters are mapped to pg8000's, and one that
cannot be (a libpq-only feature) stops the start, named.

Opened on a database that holds C gearmand's libpq queue (a table with C's
columns, whatever C{--libpq-table} named it), it imports C's queued jobs
first, once.

B{Several servers, one database.} Any number of servers may share one
database (and one table). Each is a I{node}: a name (C{--node}, by
default the host's name and the first listening address: stable across
restarts of the same server, different for two servers on one host, and
nothing to keep on disk) registered in the table C{<table>_nodes} with
an I{epoch}, bumped each time the node opens the store. Each job row
records its C{owner} node and the owner's epoch; the primary key is
C{(owner, id)}, so that every node numbers its jobs as it always did. A
node loads, adds and removes only its own rows, and its removals name
its epoch too (C{WHERE owner = me AND epoch = my_epoch}): rows adopted
by another node, or reclaimed by a later start of the same node, are out
of its reach. Opening claims the rows of the previous, single-server
schema (and C gearmand's imported jobs), which have no owner: the first
server to open them owns them.

B{Liveness and takeover.} A node proves it is alive with a heartbeat:
its row in C{<table>_nodes} gets the database's C{now()} about every
second (L{PostgreSQLStore.adopt}, called by the server on a timer, run
in the store's thread like every other statement). Chosen over a session
advisory lock held on a connection of its own because:

  - the time to takeover is bounded by C{--takeover-after} alone: a lock
    is released only when PostgreSQL notices the connection is gone,
    which for a host that vanished (no FIN, no RST) takes TCP keepalive's
    minutes, and a stopped or wedged server keeps its lock for ever;
  - a reconnection (PostgreSQL restarted, a network blip) loses a
    session lock, and with it the node's jobs; a heartbeat row survives;
  - it needs no second connection, works through a pooler in
    transaction mode (which breaks session locks), and the row holds the
    epoch used for fencing and shows operators which node beat last;
  - only the database's clock is used, so the servers' clocks may differ.

A live node looks, on the same timer, for nodes whose heartbeat is older
than C{--takeover-after} and that still own jobs, and adopts each one's
jobs in one transaction: it locks the dead node's row (C{FOR UPDATE SKIP
LOCKED}, so that of two nodes adopting at once one skips it, and one that
comes later finds no job left), bumps that node's epoch (its fence), and
moves its rows to itself under new ids (negative, from the sequence
C{<table>_adopted}, so that they never meet an id a node hands out), then
queues them with new handles.

B{Fencing.} A node that was taken over (a pause, a partition) and comes
back finds its heartbeat refused (its epoch is no longer the row's).  It
logs it, starts a new epoch and claims, in one transaction, the rows
still its own (those it wrote after the adoption); the server drops
every other job it held as stored: they run elsewhere.  Its removals of
adopted rows touch nothing (they name it as owner, and its old epoch).

B{A database that goes away.} A write or heartbeat that finds the
connection gone connects again at once; if that fails, the store is
I{down} (logged once): every write and heartbeat fails at once with
L{StoreUnavailable} (the server refuses background jobs with
QUEUE_ERROR) until the next attempt, 0.5 s later, doubling to 30 s, with
jitter. The attempt that connects is logged too. Connections time out
after 5 s and use TCP keep-alive (unless the conninfo says otherwise), so
that a vanished database host fails writes instead of hanging them. A
node that is back takes no dead node's jobs until it has been back for
C{--takeover-after}: after an outage of the database itself, every node
then beats again before any is taken for dead.
"""

from __future__ import annotations

import random
import socket
import time
from collections.abc import Callable, Sequence
from typing import Any

from twisted.internet.defer import Deferred
from zope.interface import implementer

from txgearmand import _log
from txgearmand.interfaces import (
    Adoption,
    ISharedJobStore,
    ISpillStore,
    SpilledRow,
    StoredJob,
    StoreUnavailable,
)
from txgearmand.store import _cqueue, _pgdriver
from txgearmand.store._batch import Batch, ThreadedStore

__all__ = ["C_TABLE", "PostgreSQLStore", "check_postgresql"]

log = _log.logger("txgearmand.store.postgresql")

_COLUMNS = (
    "id, handle, function, uniq, payload, priority, when_to_run, reducer, attempts,"
    " first_failed, failed_at, reason"
)
_OWNED_COLUMNS = _COLUMNS + ", owner, epoch"
_SCHEMA = """
CREATE TABLE IF NOT EXISTS {table} (
    id BIGINT NOT NULL,
    handle BYTEA NOT NULL,
    function BYTEA NOT NULL,
    uniq BYTEA NOT NULL,
    payload BYTEA NOT NULL,
    priority SMALLINT NOT NULL,
    when_to_run DOUBLE PRECISION,
    reducer BYTEA NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    first_failed DOUBLE PRECISION,
    failed_at DOUBLE PRECISION,
    reason TEXT NOT NULL DEFAULT '',
    owner TEXT NOT NULL DEFAULT '',
    epoch BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (owner, id)
);
CREATE TABLE IF NOT EXISTS {table}_nodes (
    name TEXT PRIMARY KEY,
    epoch BIGINT NOT NULL,
    heartbeat TIMESTAMPTZ NOT NULL
);
CREATE SEQUENCE IF NOT EXISTS {table}_adopted
"""
# The previous schema's table (one server, the primary key on id alone):
# owner and epoch are added, and the key becomes (owner, id).
_MIGRATE = """
ALTER TABLE {table}
    ADD COLUMN owner TEXT NOT NULL DEFAULT '',
    ADD COLUMN epoch BIGINT NOT NULL DEFAULT 0,
    DROP CONSTRAINT {pkey},
    ADD PRIMARY KEY (owner, id)
"""
# Columns a table from an older txgearmand lacks, added under the schema
# lock: attempts (the retry policy), then the failed list's.
_ADDED_COLUMNS = (
    ("attempts", "attempts INTEGER NOT NULL DEFAULT 0"),
    ("first_failed", "first_failed DOUBLE PRECISION"),
    ("failed_at", "failed_at DOUBLE PRECISION"),
    ("reason", "reason TEXT NOT NULL DEFAULT ''"),
)
# A stored job written again (it failed and waits for its next attempt,
# landed in the failed list, or was run again from it): never inserted, and
# fenced like a removal, so that a job another node adopted (its row moved
# to that node) or that was never committed does not come back.
_UPDATE = (
    "UPDATE {table} SET handle = %s, priority = %s, when_to_run = %s, attempts = %s,"
    " first_failed = %s, failed_at = %s, reason = %s"
    " WHERE owner = %s AND epoch = %s AND id = %s"
)

# An advisory lock key held while the tables are created or changed, so
# that servers starting together do not trip over each other.
_SCHEMA_LOCK = 0x7478_6765_6172_0002


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


def _c_tables(conn: _pgdriver.Connection) -> list[tuple[str, str, set[str]]]:
    """
    The tables that are C gearmand's queue: (schema, name, columns) each.
    """
    return [
        (schema, name, set(columns))
        for schema, name, columns in conn.execute(_FIND_C_TABLES).fetchall()
        if _cqueue.is_c_queue(name, columns)
    ]


# Connection options, where the conninfo does not set them: a connection
# attempt gives up after 5 s, and a database host that vanishes (no FIN, no
# RST) is found out by TCP within about 20 s, so that a write fails instead
# of hanging for the kernel's minutes.
_CONNECTION_DEFAULTS = {
    "connect_timeout": "5",
    "keepalives": "1",
    "keepalives_idle": "5",
    "keepalives_interval": "2",
    "keepalives_count": "3",
    "tcp_user_timeout": "15000",
}


def _connect(conninfo: str, table: str, import_c: bool = True) -> Any:
    given = _pgdriver.parse_conninfo(conninfo)
    options = {k: v for k, v in _CONNECTION_DEFAULTS.items() if k not in given}
    timeout = float(options.pop("connect_timeout", 10))
    conn = _pgdriver.connect(conninfo, connect_timeout=timeout, **options)
    _create_or_migrate(conn, table)
    if import_c and _c_tables(conn):
        _import_c_queues(conn, table)
    return conn


def _columns(conn: _pgdriver.Connection, table: str) -> set[str]:
    return {
        name
        for (name,) in conn.execute(
            "SELECT attname::text FROM pg_catalog.pg_attribute"
            " WHERE attrelid = to_regclass(%s) AND attnum > 0 AND NOT attisdropped",
            (table,),
        )
    }


def _create_or_migrate(conn: _pgdriver.Connection, table: str) -> None:
    """
    Create the tables, or bring a table of the previous (single-server)
    schema to this one; its rows keep no owner until a node claims them.
    """
    columns = _columns(conn, table)
    needed = {"owner", *(name for name, _ in _ADDED_COLUMNS)}
    if (
        needed <= columns
        and conn.execute("SELECT to_regclass(%s)", (table + "_nodes",)).fetchone()[0]
    ):
        return
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
        columns = _columns(conn, table)
        for name, definition in _ADDED_COLUMNS:
            if columns and name not in columns:
                conn.execute(f"ALTER TABLE {table} ADD COLUMN {definition}")
        if columns and "owner" not in columns:
            (pkey,) = conn.execute(
                "SELECT conname::text FROM pg_catalog.pg_constraint"
                " WHERE conrelid = to_regclass(%s) AND contype = 'p'",
                (table,),
            ).fetchone()
            conn.execute(_MIGRATE.format(table=table, pkey='"' + pkey.replace('"', '""') + '"'))
            log.info(
                "The job table {table} can now be shared by several servers"
                " (it has owner and epoch columns)",
                table=table,
            )
        conn.execute(_SCHEMA.format(table=table))


def _register(conn: _pgdriver.Connection, table: str, node: str) -> int:
    """
    Start this node's new epoch, and claim its rows (and those no node
    owns) for it, in one transaction.

    @return: the epoch.
    """
    with conn.transaction():
        (epoch,) = conn.execute(
            f"INSERT INTO {table}_nodes (name, epoch, heartbeat)"
            f" VALUES (%s, nextval('{table}_adopted'), now())"
            f" ON CONFLICT (name) DO UPDATE"
            f" SET epoch = {table}_nodes.epoch + 1, heartbeat = now()"
            " RETURNING epoch",
            (node,),
        ).fetchone()
        conn.execute(
            f"UPDATE {table} SET owner = %s, epoch = %s WHERE owner = %s OR owner = ''",
            (node, epoch, node),
        )
    return int(epoch)


def _import_c_queues(conn: _pgdriver.Connection, table: str) -> int:
    """
    Bring C gearmand's queued jobs (its libpq table, whatever its name)
    into our table, once, in one transaction; C's table is renamed, not
    dropped, so nothing is lost and it is not imported twice.

    @return: how many jobs were imported.
    """
    imported: list[tuple[str, str, int, str]] = []
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_IMPORT_LOCK,))
        # Looked for again under the lock: another server may have
        # imported them meanwhile.
        found = _c_tables(conn)
        (top,) = conn.execute(f"SELECT COALESCE(MAX(id), 0) FROM {table}").fetchone()
        for schema, name, columns in found:
            source = _pgdriver.quote_identifier(schema, name)
            when = _pgdriver.quote_identifier("when_to_run") if "when_to_run" in columns else "NULL"
            # C wrote the unique key and function name as text in the
            # database's encoding: their bytes, unconverted.  C never
            # updates a row, so their physical order is the order C queued
            # them in (and replays them in).
            rows = conn.execute(
                "SELECT convert_to(unique_key, current_setting('server_encoding')),"
                " convert_to(function_name, current_setting('server_encoding')),"
                f" priority, data, {when} FROM {source} ORDER BY ctid"
            ).fetchall()
            if rows:
                conn.copy_rows(
                    table,
                    _COLUMNS,
                    (
                        _cqueue.stored_job(top + n, b"C:%d" % n, *row)
                        for n, row in enumerate(rows, 1)
                    ),
                )
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
            conn.execute(f"ALTER TABLE {source} RENAME TO {_pgdriver.quote_identifier(kept)}")
            imported.append((schema, name, len(rows), kept))
    for schema, name, n, kept in imported:
        log.info(
            "Imported {n} queued jobs from C gearmand's {schema}.{table} table in PostgreSQL"
            " database {database} (the table is kept as {kept})",
            n=n,
            schema=schema,
            table=name,
            database=conn.database,
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


@implementer(ISharedJobStore, ISpillStore)
class PostgreSQLStore(ThreadedStore):
    """
    An L{IJobStore} in a PostgreSQL table (default C{txgearmand_jobs}).

    One connection (psycopg or pg8000: see L{_pgdriver}), used from one
    thread owned by the store; each batch of writes is one transaction
    (new jobs with C{COPY}).  A lost connection
    is opened again for the next batch.  C gearmand's libpq queue tables
    found on opening are imported (see L{check_postgresql}).
    """

    def __init__(
        self,
        reactor: Any,
        conninfo: str,
        table: str = "txgearmand_jobs",
        node: str | None = None,
        takeover_after: float = 10.0,
    ) -> None:
        """
        @param node: this server's node name (default: the host's name).
        @param takeover_after: a node whose heartbeat is this many seconds
            old is dead, and its jobs are adopted.
        """
        if not table.replace("_", "").isalnum():
            raise ValueError(f"not a table name: {table!r}")
        super().__init__(reactor, "txgearmand-postgresql")
        self.conninfo = conninfo
        self.table = table
        self.node = node if node else socket.gethostname()
        #: This node's epoch, from L{open} on.
        self.epoch = 0
        self.takeover_after = float(takeover_after)
        #: Seconds between heartbeats (and looks for dead nodes).
        self.poll_interval = min(1.0, takeover_after / 3)
        self._conn: Any = None
        # Reconnection with back-off (touched only in the store's thread):
        # when the database went away (or None), when to try next, the
        # current back-off, and when the connection came back.
        self._monotonic: Callable[[], float] = time.monotonic
        self._down_since: float | None = None
        self._down_error = ""
        self._retry_at = 0.0
        self._backoff = 0.0
        self._down_logged = 0.0
        self._back_at: float | None = None
        self._twin_logged = -60.0
        self._prune_at = 0.0

    def open(self) -> Deferred[None]:
        def connect() -> None:
            self._conn = _connect(self.conninfo, self.table)
            self.epoch = _register(self._conn, self.table, self.node)
            log.info(
                "Node {node} (epoch {epoch}) on the job table {table}",
                node=self.node,
                epoch=self.epoch,
                table=self.table,
            )

        return self._open_in_thread(connect)

    #: The first wait before connecting again after a failed attempt, and
    #: the longest; each failure doubles it (with jitter, so that servers
    #: sharing the database do not all come back in one instant).
    first_backoff = 0.5
    max_backoff = 30.0

    @property
    def down(self) -> bool:
        """
        Whether the database is unreachable: writes are refused at once
        (L{StoreUnavailable}) until an attempt to connect again succeeds.
        """
        return self._down_since is not None

    def _connection(self) -> Any:
        if self._conn is not None and not self._conn.closed:
            return self._conn
        now = self._monotonic()
        if self._down_since is not None and now < self._retry_at:
            # Refused at once: no write waits for a database known down.
            raise StoreUnavailable(
                f"PostgreSQL is unreachable ({self._down_error}); next attempt in"
                f" {self._retry_at - now:.1f} s"
            )
        self._conn = None
        try:
            # C's tables are imported once, at start, never while serving:
            # their ids would collide with the ones handed out since.
            conn = _connect(self.conninfo, self.table, import_c=False)
        except Exception as e:
            self._connect_failed(now, e)
            raise StoreUnavailable(f"PostgreSQL is unreachable ({self._down_error})") from e
        self._conn = conn
        self._back_at = now
        if self._down_since is not None:
            log.info(
                "Connected to the PostgreSQL job store again, after {seconds:.1f} s without it;"
                " background jobs are taken again",
                seconds=now - self._down_since,
            )
            self._down_since = None
        else:
            log.info("Connected to the PostgreSQL job store again")
        return conn

    def _connect_failed(self, now: float, error: BaseException) -> None:
        self._down_error = " ".join(str(error).split()) or type(error).__name__
        if self._down_since is None:
            self._down_since = now
            self._down_logged = now
            self._backoff = self.first_backoff
            log.warn(
                "The PostgreSQL job store is unreachable: {error}; background jobs are refused"
                " (QUEUE_ERROR) until it is back; trying again with back-off (up to {cap} s)",
                error=self._down_error,
                cap=self.max_backoff,
            )
        else:
            self._backoff = min(self._backoff * 2, self.max_backoff)
            if now - self._down_logged >= 60:
                self._down_logged = now
                log.warn(
                    "The PostgreSQL job store is still unreachable, for {seconds:.0f} s: {error}",
                    seconds=now - self._down_since,
                    error=self._down_error,
                )
        self._retry_at = now + self._backoff * random.uniform(0.5, 1.0)

    def _settled(self) -> bool:
        """
        Whether this node may take dead nodes' jobs: not until it has been
        connected again for C{takeover_after} seconds, so that after an
        outage of the database itself every node can beat again before
        any is taken for dead.
        """
        back = self._back_at
        return back is None or self._monotonic() - back >= self.takeover_after

    def load(self) -> Deferred[list[StoredJob]]:
        def select() -> list[StoredJob]:
            rows = (
                self._connection()
                .execute(
                    f"SELECT {_COLUMNS} FROM {self.table} WHERE owner = %s AND epoch = %s"
                    " ORDER BY id",
                    (self.node, self.epoch),
                )
                .fetchall()
            )
            self._beat(self._conn)
            return [StoredJob(*row) for row in rows]

        return self._run(select)

    def load_whole(self) -> Deferred[list[StoredJob]]:
        def select() -> list[StoredJob]:
            conn = self._connection()
            owned = (self.node, self.epoch)
            whole = conn.execute(
                f"SELECT {_COLUMNS} FROM {self.table} WHERE owner = %s AND epoch = %s"
                " AND (when_to_run IS NOT NULL OR failed_at IS NOT NULL OR uniq = '\\x2d'::bytea)"
                " ORDER BY id",
                owned,
            ).fetchall()
            self._beat(conn)
            return [StoredJob(*row) for row in whole]

        return self._run(select)

    def load_index(self, after: int, limit: int) -> Deferred[list[SpilledRow]]:
        def select() -> list[SpilledRow]:
            conn = self._connection()
            rows = conn.execute(
                f"SELECT id, handle, function, uniq, priority FROM {self.table}"
                " WHERE owner = %s AND epoch = %s AND id > %s AND when_to_run IS NULL"
                " AND failed_at IS NULL AND uniq <> '\\x2d'::bytea ORDER BY id LIMIT %s",
                (self.node, self.epoch, after, limit),
            ).fetchall()
            self._beat(conn)
            # The rows as the driver gives them (tuples, or pg8000's lists):
            # a million are unpacked once each at replay.
            return rows  # type: ignore[no-any-return]

        return self._run(select)

    def _beat(self, conn: Any) -> None:
        # Loading many jobs takes a while: a heartbeat after it, so that
        # this node is not taken for dead before its first one.
        conn.execute(
            f"UPDATE {self.table}_nodes SET heartbeat = now() WHERE name = %s AND epoch = %s",
            (self.node, self.epoch),
        )

    def fetch(self, job_ids: Sequence[int]) -> Deferred[list[StoredJob]]:
        ids = list(job_ids)

        def select() -> list[StoredJob]:
            # Only this node's rows at its epoch: a row another node adopted
            # is not fetched (the job is dropped here; it runs there).
            rows = (
                self._connection()
                .execute(
                    f"SELECT {_COLUMNS} FROM {self.table}"
                    " WHERE owner = %s AND epoch = %s AND id = ANY(%s)",
                    (self.node, self.epoch, ids),
                )
                .fetchall()
            )
            return [StoredJob(*row) for row in rows]

        return self._run(select)

    def adopt(self, take: bool = True) -> Deferred[Adoption]:
        return self._run(self._adopt, take)

    def _adopt(self, take: bool = True) -> Adoption:
        conn = self._connection()
        table = self.table
        kept: list[int] | None = None
        beat = conn.execute(
            f"UPDATE {table}_nodes SET heartbeat = now() WHERE name = %s AND epoch = %s",
            (self.node, self.epoch),
        )
        if beat.rowcount != 1:
            kept = self._taken_over(conn)
        if not take or not self._settled():
            return Adoption([], kept)
        dead = conn.execute(
            f"SELECT n.name FROM {table}_nodes n"
            " WHERE n.name <> %s AND n.heartbeat < now() - make_interval(secs => %s)"
            f" AND EXISTS (SELECT 1 FROM {table} j WHERE j.owner = n.name)"
            " ORDER BY n.heartbeat",
            (self.node, self.takeover_after),
        ).fetchall()
        adopted: list[StoredJob] = []
        for (name,) in dead:
            adopted.extend(self._adopt_node(conn, name))
        now = self._monotonic()
        if now >= self._prune_at:
            self._prune_at = now + 600
            # Nodes gone for a week with no job left (container names,
            # say).  A name that comes back starts from a fresh epoch (from
            # the sequence): none it held before is used again.
            conn.execute(
                f"DELETE FROM {table}_nodes n WHERE n.heartbeat < now() - interval '7 days'"
                f" AND NOT EXISTS (SELECT 1 FROM {table} j WHERE j.owner = n.name)"
            )
        return Adoption(adopted, kept)

    def _taken_over(self, conn: _pgdriver.Connection) -> list[int]:
        """
        This node's heartbeat was refused: another node adopted its jobs
        (or the node was started again elsewhere).  Start a new epoch, and
        keep the rows still this node's (written after the adoption).
        """
        table = self.table
        old = self.epoch
        with conn.transaction():
            # Adopters leave a dead node's heartbeat as it was: a fresh one
            # is another server beating under this node's name.
            twin = conn.execute(
                f"SELECT heartbeat > now() - make_interval(secs => %s) FROM {table}_nodes"
                " WHERE name = %s",
                (self.takeover_after, self.node),
            ).fetchone()
            (epoch,) = conn.execute(
                f"INSERT INTO {table}_nodes (name, epoch, heartbeat)"
                f" VALUES (%s, nextval('{table}_adopted'), now())"
                f" ON CONFLICT (name) DO UPDATE"
                f" SET epoch = {table}_nodes.epoch + 1, heartbeat = now()"
                " RETURNING epoch",
                (self.node,),
            ).fetchone()
            kept = [
                job_id
                for (job_id,) in conn.execute(
                    f"UPDATE {table} SET epoch = %s WHERE owner = %s AND epoch = %s RETURNING id",
                    (epoch, self.node, old),
                )
            ]
        self.epoch = int(epoch)
        if twin is not None and twin[0]:
            # Every heartbeat, while both run: said once a minute.
            now = self._monotonic()
            if now - self._twin_logged >= 60:
                self._twin_logged = now
                log.error(
                    "Another server is running as node {node}: each server needs its own"
                    " --node. Each takes the other's place in turn, and jobs may run twice",
                    node=self.node,
                )
            return kept
        # The server says it once, with what it dropped (a warning).
        log.info(
            "Node {node} was taken over while it seemed dead (epoch {old}); it goes on"
            " as epoch {epoch} with the {n} stored jobs still its own",
            node=self.node,
            old=old,
            epoch=self.epoch,
            n=len(kept),
        )
        return kept

    def _adopt_node(self, conn: _pgdriver.Connection, name: str) -> list[StoredJob]:
        """
        Adopt a dead node's jobs in one transaction: its row locked (a
        node adopting it at the same time skips it), its epoch bumped
        (fenced), its jobs moved to this node under new ids.
        """
        table = self.table
        with conn.transaction():
            row = conn.execute(
                f"SELECT epoch FROM {table}_nodes WHERE name = %s"
                " AND heartbeat < now() - make_interval(secs => %s)"
                " FOR UPDATE SKIP LOCKED",
                (name, self.takeover_after),
            ).fetchone()
            if row is None:
                return []
            conn.execute(f"UPDATE {table}_nodes SET epoch = epoch + 1 WHERE name = %s", (name,))
            old_ids = [
                job_id
                for (job_id,) in conn.execute(
                    f"SELECT id FROM {table} WHERE owner = %s ORDER BY id FOR UPDATE", (name,)
                )
            ]
            if not old_ids:
                return []
            # New ids in the old order: negative, from a sequence no node
            # numbers its own jobs from.
            taken = sorted(
                n
                for (n,) in conn.execute(
                    f"SELECT nextval('{table}_adopted') FROM generate_series(1, %s)",
                    (len(old_ids),),
                )
            )
            new_ids = [-n for n in reversed(taken)]
            rows = conn.execute(
                f"UPDATE {table} j SET owner = %s, epoch = %s, id = m.new"
                " FROM unnest(%s::bigint[], %s::bigint[]) AS m(old, new)"
                f" WHERE j.owner = %s AND j.id = m.old"
                f" RETURNING {', '.join('j.' + c for c in _COLUMNS.split(', '))}",
                (self.node, self.epoch, old_ids, new_ids, name),
            ).fetchall()
        jobs = sorted((StoredJob(*row) for row in rows), key=lambda job: job.id)
        log.info(
            "Node {node} adopted {n} stored jobs of node {dead}, dead (no heartbeat for"
            " {seconds} s)",
            node=self.node,
            n=len(jobs),
            dead=name,
            seconds=self.takeover_after,
        )
        return jobs

    def _write(self, batch: Batch) -> None:
        try:
            self._write_once(batch)
        except _pgdriver.connection_errors():
            # The connection may have died since the last batch: once more
            # (on a new connection, which fails at once if the database is
            # gone).
            if self._conn is not None and not self._conn.closed:
                raise
            self._write_once(batch)

    def _write_once(self, batch: Batch) -> None:
        adds, updates, removes = batch
        conn = self._connection()
        node = self.node
        epoch = self.epoch
        with conn.transaction():
            if adds:
                conn.copy_rows(self.table, _OWNED_COLUMNS, ((*job, node, epoch) for job in adds))
            if updates:
                update = _UPDATE.format(table=self.table)
                for job in updates:
                    conn.execute(
                        update,
                        (
                            job.handle,
                            job.priority,
                            job.when,
                            job.attempts,
                            job.first_failed,
                            job.failed_at,
                            job.reason,
                            node,
                            epoch,
                            job.id,
                        ),
                    )
            if removes:
                # Fenced: rows another node adopted (or a later start of
                # this node reclaimed) are not this node's to remove.
                conn.execute(
                    f"DELETE FROM {self.table} WHERE owner = %s AND epoch = %s AND id = ANY(%s)",
                    (node, epoch, removes),
                )

    def _close_connection(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
