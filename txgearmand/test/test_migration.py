"""
Coming from C gearmand: its queue, written by Debian's real C gearmand
(libsqlite3 in a file, libpq in a PostgreSQL database, under C's default
table name or one the operator chose), is imported by C{--queue}, and a
real worker drains every imported job.
"""

from __future__ import annotations

import shutil
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

from twisted.logger import ILogObserver, formatEvent, globalLogPublisher
from twisted.trial.unittest import SkipTest, SynchronousTestCase

from txgearmand import wire
from txgearmand.store._cqueue import kept_name
from txgearmand.store.postgresql import check_postgresql
from txgearmand.store.sqlite import NotAQueueFile, check_sqlite
from txgearmand.store.sqlite import _connect as _sqlite_connect
from txgearmand.test import _postgres, _process
from txgearmand.wire import PacketType as P

#: The background jobs given to C gearmand, with no worker connected:
#: gearman's options for each, and its payload.
JOBS = [
    (["-f", "resize", "-u", "u1"], "payload one"),
    (["-f", "resize"], "payload two"),
    (["-I", "-f", "resize"], "high one"),
    (["-L", "-f", "resize"], "low one"),
    (["-f", "other"], "other one"),
]

#: How long after it is given to C the epoch job may run, in seconds.
LATER = 5

#: C gearmand's own CREATE TABLE for its libpq queue (GEARMAN_UNIQUE_SIZE
#: 64), for tests of tables the real C gearmand cannot make.
C_PG_COLUMNS = (
    "unique_key VARCHAR(64), function_name VARCHAR(255), priority INTEGER, data BYTEA,"
    " when_to_run INTEGER, UNIQUE (unique_key, function_name)"
)
#: The same for its libsqlite3 queue.
C_SQLITE_COLUMNS = (
    "unique_key TEXT, function_name TEXT, priority INTEGER, data BLOB,"
    " when_to_run INTEGER, PRIMARY KEY (unique_key, function_name)"
)


def _gearman() -> str:
    path = shutil.which("gearman")
    if path is None:
        raise SkipTest("the gearman command is not installed (apt-get install gearman-tools)")
    return path


def _postgresql() -> str:
    try:
        return _postgres.fresh_database()
    except _postgres.Unavailable as e:
        raise SkipTest(str(e)) from None


_query = _postgres.query


class _CaptureCase(SynchronousTestCase):
    """
    Tests that look at the log events sent while they run.
    """

    def capture(self) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = []
        observer = cast(ILogObserver, events.append)
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)
        return events

    @staticmethod
    def imports(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """
        The events that say C's jobs were imported.
        """
        return [e for e in events if formatEvent(e).startswith("Imported ")]


class _CGearmandCase(_CaptureCase):
    """
    The real C gearmand writes its queue; our server imports it and a
    real worker drains it.
    """

    def c_queue(self, workdir: Path, *queue: str) -> int:
        """
        Start C gearmand with a persistent queue, give it L{JOBS} and one
        epoch job (function C{later}, no unique id) with no worker
        connected, and stop it.

        @param queue: its queue options (C{-q TYPE ...}).
        @return: the time the epoch job may run at.
        """
        gearman = _gearman()
        server = _process.c_gearmand(workdir, *queue)
        if server is None:
            raise SkipTest("C gearmand is not installed (apt-get install gearman-job-server)")
        self.addCleanup(server.kill)
        try:
            server.start()
        except RuntimeError as e:
            raise SkipTest(f"C gearmand has no {queue[1]} queue here: {e}") from None
        port = str(server.port)
        for options, payload in JOBS:
            _process.run([gearman, "-h", "127.0.0.1", "-p", port, "-b", *options, "--", payload])
        epoch = int(time.time()) + LATER
        submit = wire.encode_request(P.SUBMIT_JOB_EPOCH, b"later", b"", b"%d" % epoch, b"later one")
        ((created, _),) = _process.request(server.port, submit, 1)
        assert created == P.JOB_CREATED
        server.stop()
        return epoch

    def ours(self, workdir: Path, url: str, log: str) -> _process.Server:
        """
        Our server on C's store, started, with its log in C{workdir/log}.
        """
        server = _process.twistd_gearmand(workdir, f"--queue={url}")
        server.log_path = workdir / log
        server.argv = [a.replace("twistd.log", log) for a in server.argv]
        self.addCleanup(server.kill)
        return server.start()

    def work(self, workdir: Path, port: int, function: str, count: int) -> list[str]:
        """
        Run the real gearman worker for C{count} jobs of C{function}; the
        payloads it got, in the order it got them.
        """
        done = workdir / f"done-{function}.txt"
        worker = [_gearman(), "-h", "127.0.0.1", "-p", str(port), "-w", "-c", str(count)]
        # The worker runs the command with each job's payload on stdin.
        command = ["sh", "-c", f"cat >> {done}; echo >> {done}"]
        _process.run([*worker, "-f", function, "--", *command], timeout=30)
        return done.read_text().splitlines()

    def import_and_drain(
        self, workdir: Path, url: str, epoch: int, stored_when: Callable[[], float]
    ) -> None:
        """
        Our server, started on C's store, imports its six jobs once (and
        says so), and real workers get every one with its payload, the
        C{resize} jobs in the order of their priorities, the epoch job not
        before its time; a restart imports nothing again.

        @param stored_when: reads the epoch job's time from our table.
        """
        server = self.ours(workdir, url, "twistd.log")
        self.assertEqual(
            server.log().count("Imported 6 queued jobs from C gearmand"), 1, server.log()
        )
        status = _process.admin(server.port, b"status")
        for line in (b"resize\t4\t0\t0\n", b"other\t1\t0\t0\n", b"later\t1\t0\t0\n"):
            self.assertIn(line, status)
        self.assertEqual(stored_when(), float(epoch))
        # One worker takes the four in turn: high, the normal ones in the
        # order C queued them, low.
        self.assertEqual(
            self.work(workdir, server.port, "resize", 4),
            ["high one", "payload one", "payload two", "low one"],
        )
        self.assertEqual(self.work(workdir, server.port, "other", 1), ["other one"])
        self.assertEqual(self.work(workdir, server.port, "later", 1), ["later one"])
        self.assertGreaterEqual(time.time(), epoch)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            lines = _process.admin(server.port, b"status").splitlines()[:-1]
            if all(line.split(b"\t")[1:3] == [b"0", b"0"] for line in lines):
                break
            time.sleep(0.1)
        server.stop()
        again = self.ours(workdir, url, "again.log")
        self.assertNotIn("Imported", again.log())
        self.assertEqual(_process.admin(again.port, b"status"), b".\n")


class CQueueTests(_CGearmandCase):
    """
    C gearmand's libsqlite3 queue brought over.
    """

    def sqlite_queue(self, *options: str) -> tuple[Path, Path, int]:
        """
        A queue file written by the real C gearmand.

        @return: the work directory, the file, the epoch job's time.
        """
        workdir = Path(self.mktemp()).resolve()
        workdir.mkdir(parents=True)
        db = workdir / "c-queue.db"
        epoch = self.c_queue(workdir, "-q", "libsqlite3", f"--libsqlite3-db={db}", *options)
        return workdir, db, epoch

    def stored_when(self, db: Path) -> Callable[[], float]:
        def read() -> float:
            with sqlite3.connect(str(db)) as conn:
                return float(
                    conn.execute(
                        "SELECT when_to_run FROM txgearmand_jobs WHERE function = ?", (b"later",)
                    ).fetchone()[0]
                )

        return read

    def count(self, db: Path, table: str) -> int:
        with sqlite3.connect(str(db)) as conn:
            return int(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])

    def test_import_and_drain(self) -> None:
        """
        C's C{gearman_queue} table is imported, drained by real workers, and
        kept (renamed, with every row) so that a restart imports nothing.
        """
        workdir, db, epoch = self.sqlite_queue()
        self.assertEqual(self.count(db, "gearman_queue"), 6)
        self.import_and_drain(workdir, f"sqlite:{db}", epoch, self.stored_when(db))
        self.assertEqual(self.count(db, "gearman_queue_imported_by_txgearmand"), 6)

    def test_custom_table(self) -> None:
        """
        A table named with C's C{--libsqlite3-table} is recognised by its
        columns, imported and drained the same.
        """
        workdir, db, epoch = self.sqlite_queue("--libsqlite3-table=custom_name")
        self.assertEqual(self.count(db, "custom_name"), 6)
        self.import_and_drain(workdir, f"sqlite:{db}", epoch, self.stored_when(db))
        self.assertEqual(self.count(db, "custom_name_imported_by_txgearmand"), 6)

    def test_not_a_queue(self) -> None:
        """
        An SQLite file with neither our jobs nor C's queue is refused,
        saying what it has.
        """
        path = Path(self.mktemp())
        sqlite3.connect(str(path)).execute("CREATE TABLE photos (id INTEGER)").connection.commit()
        with self.assertRaises(NotAQueueFile) as raised:
            check_sqlite(str(path))
        self.assertIn("photos", str(raised.exception))

    def test_not_c_columns(self) -> None:
        """
        A C{gearman_queue} table without C's columns is not C's queue: alone
        in a file, it is refused too.
        """
        path = Path(self.mktemp())
        sqlite3.connect(str(path)).execute("CREATE TABLE gearman_queue (x)").connection.commit()
        with self.assertRaises(NotAQueueFile):
            check_sqlite(str(path))

    def test_not_c_left_alone(self) -> None:
        """
        Next to our jobs, a table with C's name but other columns, or C's
        columns and one more, is neither imported nor renamed.
        """
        path = Path(self.mktemp())
        _sqlite_connect(str(path)).close()
        with sqlite3.connect(str(path)) as db:
            db.execute("CREATE TABLE gearman_queue (unique_key, function_name, data)")
            db.execute(f"CREATE TABLE jobs ({C_SQLITE_COLUMNS.replace('PRIMARY', 'id, PRIMARY')})")
            db.execute("INSERT INTO gearman_queue VALUES ('u', 'f', 'd')")
            db.execute("INSERT INTO jobs VALUES ('u', 'f', 1, 'd', 0, 7)")
        events = self.capture()
        check_sqlite(str(path))
        self.assertEqual(self.imports(events), [])
        self.assertEqual(self.count(path, "gearman_queue"), 1)
        self.assertEqual(self.count(path, "jobs"), 1)
        self.assertEqual(self.count(path, "txgearmand_jobs"), 0)

    def test_older_columns_and_taken_name(self) -> None:
        """
        A C table without C{when_to_run} is imported (its jobs run now);
        when its kept name is taken, by an earlier import, it is kept under
        the next free one.  The import is logged as a structured event.
        """
        path = Path(self.mktemp())
        columns = C_SQLITE_COLUMNS.replace(" when_to_run INTEGER,", "")
        with sqlite3.connect(str(path)) as db:
            db.execute(f"CREATE TABLE gearman_queue_imported_by_txgearmand ({C_SQLITE_COLUMNS})")
            db.execute(f"CREATE TABLE gearman_queue ({columns})")
            db.execute("INSERT INTO gearman_queue VALUES ('u', 'f', 2, x'00ff')")
        events = self.capture()
        check_sqlite(str(path))
        (event,) = self.imports(events)
        self.assertEqual(
            (event["n"], event["table"], event["kept"], event["path"]),
            (1, "gearman_queue", "gearman_queue_2_imported_by_txgearmand", str(path)),
        )
        with sqlite3.connect(str(path)) as db:
            self.assertEqual(
                db.execute(
                    "SELECT handle, function, uniq, payload, priority, when_to_run"
                    " FROM txgearmand_jobs"
                ).fetchall(),
                [(b"C:1", b"f", b"u", b"\x00\xff", 2, None)],
            )


class CPostgreSQLQueueTests(_postgres.DriverMixin, _CGearmandCase):
    """
    C gearmand's libpq queue, found in a PostgreSQL store, brought over
    (through psycopg 3).
    """

    def setUp(self) -> None:
        self.use_driver()
        self.url = _postgresql()

    def pg_queue(self, *options: str) -> tuple[Path, int]:
        """
        C gearmand's libpq queue, written by the real C gearmand in a fresh
        database.

        @return: the work directory, the epoch job's time.
        """
        workdir = Path(self.mktemp()).resolve()
        workdir.mkdir(parents=True)
        epoch = self.c_queue(workdir, "-q", "Postgres", f"--libpq-conninfo={self.url}", *options)
        return workdir, epoch

    def stored_when(self) -> float:
        ((when,),) = _query(
            self.url, "SELECT when_to_run FROM txgearmand_jobs WHERE function = %s", b"later"
        )
        return float(when)

    def count(self, table: str) -> int:
        return int(_query(self.url, f"SELECT count(*) FROM {table}")[0][0])

    def test_import_and_drain(self) -> None:
        """
        C's C{queue} table is imported, drained by real workers, and kept
        (renamed, with every row) so that a restart imports nothing.
        """
        workdir, epoch = self.pg_queue()
        self.assertEqual(self.count("queue"), 6)
        self.import_and_drain(workdir, self.url, epoch, self.stored_when)
        self.assertEqual(self.count("queue_imported_by_txgearmand"), 6)

    def test_custom_table(self) -> None:
        """
        A table named with C's C{--libpq-table} is recognised by its
        columns, imported and drained the same.
        """
        workdir, epoch = self.pg_queue("--libpq-table=custom_queue")
        self.assertEqual(self.count("custom_queue"), 6)
        self.import_and_drain(workdir, self.url, epoch, self.stored_when)
        self.assertEqual(self.count("custom_queue_imported_by_txgearmand"), 6)

    def test_not_c_left_alone(self) -> None:
        """
        A table with C's name but other columns, or C's columns and one
        more, is neither imported nor renamed.
        """
        _query(self.url, "CREATE TABLE queue (unique_key TEXT, function_name TEXT, data BYTEA)")
        _query(self.url, f"CREATE TABLE jobs (id INTEGER, {C_PG_COLUMNS})")
        _query(self.url, "INSERT INTO queue VALUES ('u', 'f', 'd')")
        _query(self.url, "INSERT INTO jobs VALUES (1, 'u', 'f', 1, 'd', 0)")
        events = self.capture()
        check_postgresql(self.url)
        self.assertEqual(self.imports(events), [])
        self.assertEqual((self.count("queue"), self.count("jobs")), (1, 1))
        self.assertEqual(self.count("txgearmand_jobs"), 0)

    def test_older_columns_and_taken_name(self) -> None:
        """
        A C table without C{when_to_run} is imported (its jobs run now),
        its bytes as they are; when its kept name is taken, by an earlier
        import, it is kept under the next free one.  The import is logged
        as a structured event.
        """
        _query(self.url, f"CREATE TABLE queue_imported_by_txgearmand ({C_PG_COLUMNS})")
        _query(
            self.url, f"CREATE TABLE queue ({C_PG_COLUMNS.replace(' when_to_run INTEGER,', '')})"
        )
        _query(self.url, "INSERT INTO queue VALUES ('', 'f\u00e9', 0, '\\x00ff')")
        events = self.capture()
        check_postgresql(self.url)
        (event,) = self.imports(events)
        self.assertEqual(
            (event["n"], event["schema"], event["table"], event["kept"]),
            (1, "public", "queue", "queue_2_imported_by_txgearmand"),
        )
        self.assertEqual(
            [
                tuple(bytes(v) if isinstance(v, (bytes, memoryview)) else v for v in row)
                for row in _query(
                    self.url,
                    "SELECT handle, function, uniq, payload, priority, when_to_run"
                    " FROM txgearmand_jobs",
                )
            ],
            [(b"C:1", "f\u00e9".encode(), b"", b"\x00\xff", 0, None)],
        )


class PG8000CPostgreSQLQueueTests(CPostgreSQLQueueTests):
    """
    L{CPostgreSQLQueueTests} through pg8000.
    """

    driver = "pg8000"


class KeptNameTests(SynchronousTestCase):
    """
    The name an imported C table is kept under.
    """

    def test_names(self) -> None:
        """
        C{NAME_imported_by_txgearmand}, numbered when taken, and cut to the
        database's limit in bytes without splitting a character.
        """
        self.assertEqual(kept_name("queue", set()), "queue_imported_by_txgearmand")
        self.assertEqual(
            kept_name("queue", {"queue_imported_by_txgearmand"}),
            "queue_2_imported_by_txgearmand",
        )
        long = "q" * 39 + "\u00e9" * 10
        kept = kept_name(long, set(), 63)
        self.assertEqual(kept, "q" * 39 + "_imported_by_txgearmand")
        self.assertLessEqual(len(kept.encode()), 63)
