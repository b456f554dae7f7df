"""
Tests for the job stores: one contract every backend runs (memory, SQLite
in a temporary directory, PostgreSQL on a real server), and the group
commit writer.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from twisted.internet import reactor as _reactor
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.task import Clock
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase
from zope.interface.verify import verifyObject

from txgearmand.interfaces import IJobStore, StoredJob
from txgearmand.store import MemoryStore, _pgdriver, check_store_url, sqlite, store_from_url
from txgearmand.store._batch import Batch, BatchWriter
from txgearmand.store.postgresql import PostgreSQLStore
from txgearmand.store.sqlite import SQLiteStore
from txgearmand.test import _postgres

reactor: Any = _reactor


def job(i: int, **kwargs: Any) -> StoredJob:
    """
    A stored job numbered C{i}.
    """
    values: dict[str, Any] = {
        "id": i,
        "handle": b"H:test:%d" % i,
        "function": b"f",
        "unique": b"",
        "payload": b"payload %d" % i,
        "priority": 1,
        "when": None,
        "reducer": b"",
    }
    values.update(kwargs)
    return StoredJob(**values)


class _JobStoreContractMixin:
    """
    What every L{IJobStore} does.  Subclasses give L{make_store} (a new,
    empty store) and L{reopen} (the same storage, opened afresh).
    """

    timeout = 60

    def make_store(self) -> IJobStore:
        raise NotImplementedError

    def reopen(self, store: IJobStore) -> IJobStore:
        raise NotImplementedError

    async def opened(self) -> IJobStore:
        assert isinstance(self, TestCase)
        store = self.make_store()
        await store.open()
        self.addCleanup(store.close)
        return store

    async def test_interface(self) -> None:
        """
        The store provides L{IJobStore}.
        """
        assert isinstance(self, TestCase)
        store = await self.opened()
        self.assertTrue(verifyObject(IJobStore, store))

    async def test_empty(self) -> None:
        """
        A new store holds nothing.
        """
        assert isinstance(self, TestCase)
        store = await self.opened()
        self.assertEqual(await store.load(), [])

    async def test_add_load_in_order(self) -> None:
        """
        What is added is loaded back whole, in id order, whatever order it
        was added in.
        """
        assert isinstance(self, TestCase)
        store = await self.opened()
        jobs = [
            job(3, priority=0, unique=b"u3"),
            job(1, payload=b"\0binary\xff\0", reducer=b"r"),
            job(2, when=1234567890.5, priority=2, function=b"g"),
        ]
        await gatherResults([store.add_many([j]) for j in jobs])
        self.assertEqual(await store.load(), sorted(jobs))

    async def test_remove(self) -> None:
        """
        A removed job is not loaded; removing an unknown id is harmless.
        """
        assert isinstance(self, TestCase)
        store = await self.opened()
        await gatherResults([store.add_many([job(i)]) for i in range(1, 6)])
        await gatherResults(
            [store.remove_many([2]), store.remove_many([4]), store.remove_many([99])]
        )
        self.assertEqual([j.id for j in await store.load()], [1, 3, 5])

    async def test_many_at_once(self) -> None:
        """
        C{add_many} and C{remove_many} do what many C{add} and C{remove}
        calls do, with one Deferred.
        """
        assert isinstance(self, TestCase)
        store = await self.opened()
        await store.add_many([job(i) for i in range(1, 11)])
        await store.remove_many([2, 3, 99])
        self.assertEqual([j.id for j in await store.load()], [1, 4, 5, 6, 7, 8, 9, 10])

    async def test_add_and_remove_together(self) -> None:
        """
        A job added and removed before either is committed is not there.
        """
        assert isinstance(self, TestCase)
        store = await self.opened()
        added = store.add_many([job(1)])
        removed = store.remove_many([1])
        other = store.add_many([job(2)])
        await gatherResults([added, removed, other])
        self.assertEqual([j.id for j in await store.load()], [2])

    async def test_no_overwrite_on_unique(self) -> None:
        """
        Jobs of one function with the same unique - empty, C{-} with
        different payloads, or any - never overwrite each other (unlike C
        gearmand's stores, gearmand#80 and #157).
        """
        assert isinstance(self, TestCase)
        store = await self.opened()
        jobs = [
            job(1, unique=b""),
            job(2, unique=b""),
            job(3, unique=b"-", payload=b"a"),
            job(4, unique=b"-", payload=b"b"),
            job(5, unique=b"same"),
            job(6, unique=b"same"),
        ]
        await gatherResults([store.add_many([j]) for j in jobs])
        self.assertEqual(await store.load(), jobs)

    async def test_many(self) -> None:
        """
        Thousands of writes in one go are all kept.
        """
        assert isinstance(self, TestCase)
        store = await self.opened()
        await gatherResults([store.add_many([job(i)]) for i in range(1, 5001)])
        await gatherResults([store.remove_many([i]) for i in range(1, 5001, 2)])
        loaded = await store.load()
        self.assertEqual([j.id for j in loaded], list(range(2, 5001, 2)))

    async def test_survives_reopen(self) -> None:
        """
        What was committed is there when the storage is opened again.
        """
        assert isinstance(self, TestCase)
        store = self.make_store()
        await store.open()
        await gatherResults([store.add_many([job(i)]) for i in (1, 2, 3)])
        await store.remove_many([2])
        await store.close()
        again = self.reopen(store)
        await again.open()
        self.addCleanup(again.close)
        self.assertEqual([j.id for j in await again.load()], [1, 3])

    async def test_close_commits_pending(self) -> None:
        """
        Closing commits writes not yet committed.
        """
        assert isinstance(self, TestCase)
        store = self.make_store()
        await store.open()
        pending = store.add_many([job(7)])
        await store.close()
        await pending
        again = self.reopen(store)
        await again.open()
        self.addCleanup(again.close)
        self.assertEqual([j.id for j in await again.load()], [7])

    async def test_stored_again(self) -> None:
        """
        A job updated under its id, with attempts and a next run time (it
        failed and waits to be tried again), replaces the stored one, in
        its place in id order, across a reopen; its attempts are loaded
        back.  An update of a job that is not stored writes nothing.
        """
        assert isinstance(self, TestCase)
        store = self.make_store()
        await store.open()
        await store.add_many([job(1), job(2), job(3)])
        await store.update_many([job(2, attempts=1, when=1234.5)])
        await gatherResults(
            [store.update_many([job(2, attempts=2, when=2345.5), job(5)]), store.add_many([job(4)])]
        )
        self.assertEqual(
            await store.load(), [job(1), job(2, attempts=2, when=2345.5), job(3), job(4)]
        )
        await store.close()
        again = self.reopen(store)
        await again.open()
        self.addCleanup(again.close)
        self.assertEqual((await again.load())[1], job(2, attempts=2, when=2345.5))

    async def test_stored_again_then_removed(self) -> None:
        """
        A job stored again and removed right after is gone.
        """
        assert isinstance(self, TestCase)
        store = await self.opened()
        await store.add_many([job(1), job(2)])
        await gatherResults(
            [store.update_many([job(1, attempts=1, when=5.0)]), store.remove_many([1])]
        )
        self.assertEqual(await store.load(), [job(2)])


class MemoryStoreTests(_JobStoreContractMixin, TestCase):
    """
    L{MemoryStore}.
    """

    def make_store(self) -> IJobStore:
        return MemoryStore()

    def reopen(self, store: IJobStore) -> IJobStore:
        return store


class SQLiteStoreTests(_JobStoreContractMixin, TestCase):
    """
    L{SQLiteStore}, in a file in a temporary directory.
    """

    def make_store(self) -> IJobStore:
        path = Path(self.mktemp())
        path.mkdir(parents=True)
        return SQLiteStore(reactor, str(path / "jobs.sqlite"))

    def reopen(self, store: IJobStore) -> IJobStore:
        assert isinstance(store, SQLiteStore)
        return SQLiteStore(reactor, store.path)

    async def test_wal(self) -> None:
        """
        The database is in WAL mode.
        """
        import sqlite3

        store = await self.opened()
        assert isinstance(store, SQLiteStore)
        mode = sqlite3.connect(store.path).execute("PRAGMA journal_mode").fetchone()[0]
        self.assertEqual(mode, "wal")

    async def test_new_jobs_fast_path(self) -> None:
        """
        New jobs (the fast path: seven columns bound, the rest defaults,
        statements of a power of two rows; on CPython the blobs bound as
        one and cut apart by SQLite) are written whole, empty and binary
        blobs too, in chunks and padded, and a row they replace loses its
        old fields; so are new jobs with jobs of other shapes in one batch.
        """
        self.patch(sqlite, "_NEW_ROWS", 4)
        store = await self.opened()
        await store.add_many([job(1, attempts=2, when=5.5, failed_at=7.0, reason="x")])
        new = [
            job(i, unique=b"u%d" % i, priority=i % 3, reducer=b"r" * (i % 2)) for i in range(1, 11)
        ]
        new.append(job(11, handle=b"\x00", function=b"\xff\x00", payload=b"", reducer=b"\x00\xfe"))
        others = [
            job(20, when=1234.5),
            job(21, attempts=1, first_failed=3.25),
            job(22, failed_at=9.5, reason="exception: \u00e9"),
        ]
        await store.add_many(new[:7])
        self.assertEqual(await store.load(), new[:7])
        await store.add_many([*new[7:9], *others, *new[9:]])
        self.assertEqual(await store.load(), [*new, *others])

    def test_new_rows_values(self) -> None:
        """
        The values of a chunk of new jobs are padded with copies of its
        last row to a power of two rows.  On CPython a row's blobs are one
        bytearray (sqlite3 binds it without its adaptation lookup) and the
        offsets where the first four end; on PyPy the blobs are bound as
        they are.
        """
        jobs = [job(i) for i in (1, 2, 3)]
        values = sqlite._new_rows_values(jobs)
        rows = [tuple(values[k : k + 7]) for k in range(0, len(values), 7)]
        self.assertEqual(len(rows), 4)
        self.assertEqual(rows[3], rows[2])
        self.assertEqual(len(sqlite._new_rows_values(jobs[:2])), 14)
        if sys.implementation.name == "cpython":
            self.assertEqual(rows[0], (1, 1, b"H:test:1fpayload 1", 8, 9, 9, 18))
            self.assertIs(type(rows[0][2]), bytearray)
        else:
            self.assertEqual(rows[0], (1, 1, b"H:test:1", b"f", b"", b"payload 1", b""))

    async def test_open_fails_clearly(self) -> None:
        """
        A database that cannot be opened fails C{open}.
        """
        import sqlite3

        store = SQLiteStore(reactor, "/nonexistent/directory/jobs.sqlite")
        with self.assertRaises(sqlite3.OperationalError):
            await store.open()


class PostgreSQLStoreTests(_postgres.DriverMixin, _JobStoreContractMixin, TestCase):
    """
    L{PostgreSQLStore}, on a real PostgreSQL server (skipped, saying why,
    only when none can be started), through psycopg 3.
    """

    def setUp(self) -> None:
        self.use_driver()
        try:
            self.url = _postgres.fresh_database()
        except _postgres.Unavailable as e:
            raise SkipTest(str(e)) from None

    def make_store(self) -> IJobStore:
        return PostgreSQLStore(reactor, self.url)

    def reopen(self, store: IJobStore) -> IJobStore:
        return PostgreSQLStore(reactor, self.url)

    async def test_open_fails_clearly(self) -> None:
        """
        A server that cannot be reached fails C{open}.
        """
        store = PostgreSQLStore(reactor, "postgresql://nobody@127.0.0.1:1/none")
        with self.assertRaises(_pgdriver.connection_errors()) as caught:
            await store.open()
        self.assertIn("Connection refused", str(caught.exception))

    async def test_reconnects(self) -> None:
        """
        After its connection is lost, the store connects again for the next
        batch.
        """
        store = await self.opened()
        assert isinstance(store, PostgreSQLStore)
        await store.add_many([job(1)])
        store._conn.close()
        await store.add_many([job(2)])
        self.assertEqual([j.id for j in await store.load()], [1, 2])

    async def test_reconnects_after_server_drops(self) -> None:
        """
        After the server ends the store's connection (the driver finds out
        only when it next uses it), the next batch is written on a new
        one.
        """
        store = await self.opened()
        assert isinstance(store, PostgreSQLStore)
        await store.add_many([job(1)])
        killed = _postgres.query(
            self.url,
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()",
        )
        self.assertEqual(killed, [(True,)])
        await store.add_many([job(2)])
        self.assertEqual([j.id for j in await store.load()], [1, 2])

    async def test_bytes_round_trip(self) -> None:
        """
        Every byte value, empty fields, a node name with COPY's special
        characters, and times survive as they were.
        """
        store = PostgreSQLStore(reactor, self.url, node="a\\tb\tc\nd\re'f")
        await store.open()
        self.addCleanup(store.close)
        jobs = [
            job(1, handle=bytes(range(256)), payload=b"", unique=b"\\N", reducer=b"\xff\x00"),
            job(2, function=b"\\x00\t\n", payload=bytes(range(255, -1, -1)) * 3, when=0.1),
            job(3, when=1e-300, priority=2),
        ]
        await store.add_many(jobs)
        self.assertEqual(await store.load(), jobs)
        self.assertEqual(await store.adopt(), ([], None))


class PG8000StoreTests(PostgreSQLStoreTests):
    """
    L{PostgreSQLStore} through pg8000 (skipped, saying why, where pg8000
    is not installed).
    """

    driver = "pg8000"


class URLTests(SynchronousTestCase):
    """
    Choosing a store by URL.
    """

    def test_kinds(self) -> None:
        """
        C{memory} is no store; C{sqlite:PATH} and C{postgresql://} name
        their backends; anything else is refused.
        """
        self.assertIsNone(store_from_url(reactor, "memory"))
        sqlite = store_from_url(reactor, "sqlite:some/where.db")
        assert isinstance(sqlite, SQLiteStore)
        self.assertEqual(sqlite.path, "some/where.db")
        self.assertIsInstance(store_from_url(reactor, "postgresql://u@h/db"), PostgreSQLStore)
        self.assertIsInstance(store_from_url(reactor, "postgres://u@h/db"), PostgreSQLStore)
        for bad in ("mysql://x", "sqlite:", "", "file.db"):
            self.assertRaises(ValueError, store_from_url, reactor, bad)

    def test_check(self) -> None:
        """
        C{check_store_url} opens an SQLite file and leaves none it made (the
        store makes it, as the user the server runs as); it raises for one
        that cannot be made; early, it makes nothing and skips relative
        paths; a read-only file is refused.
        """
        import sqlite3

        path = Path(self.mktemp())
        path.mkdir(parents=True)
        check_store_url(f"sqlite:{path / 'x.sqlite'}")
        self.assertEqual(list(path.iterdir()), [])
        self.assertRaises(
            sqlite3.OperationalError, check_store_url, "sqlite:/nonexistent/dir/x.sqlite"
        )
        with self.assertRaises(OSError) as caught:
            check_store_url("sqlite:/nonexistent/dir/x.sqlite", early=True)
        self.assertIn("no such directory", str(caught.exception))
        check_store_url("sqlite:relative/nowhere/x.sqlite", early=True)
        check_store_url(f"sqlite:{path / 'x.sqlite'}", early=True)
        self.assertEqual(list(path.iterdir()), [])
        check_store_url("memory")
        if os.getuid() != 0:
            read_only = path / "ro.sqlite"
            sqlite3.connect(str(read_only)).close()
            read_only.chmod(0o444)
            self.assertRaises(sqlite3.OperationalError, check_store_url, f"sqlite:{read_only}")


class BatchWriterTests(SynchronousTestCase):
    """
    Tests for L{BatchWriter}, the group commit.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.batches: list[Batch] = []
        self.commits: list[Deferred[None]] = []
        self.writer = BatchWriter(self.commit)

    def commit(self, batch: Batch) -> Deferred[None]:
        self.batches.append(batch)
        d: Deferred[None] = Deferred()
        self.commits.append(d)
        return d

    def test_write_starts_a_transaction(self) -> None:
        """
        A write starts a transaction at once when none runs (the job server
        gathers a turn's writes into one call), and is acknowledged only
        when it is committed.
        """
        wait = self.writer.add_many([job(i) for i in range(1, 101)])
        self.assertEqual(len(self.batches), 1)
        self.assertEqual(len(self.batches[0][0]), 100)
        self.assertNoResult(wait)
        self.commits[0].callback(None)
        self.successResultOf(wait)

    def test_next_batch_waits_for_commit(self) -> None:
        """
        Writes made while a transaction runs form the next batch, one
        transaction for all of them, started as soon as it commits.
        """
        self.writer.add_many([job(1)])
        second = [self.writer.add_many([job(2)]), self.writer.remove_many([1])]
        third = self.writer.add_many([job(3)])
        self.clock.advance(0)
        self.assertEqual(len(self.batches), 1)
        self.commits[0].callback(None)
        self.assertEqual(self.batches[1], ([job(2), job(3)], [], [1]))
        for w in [*second, third]:
            self.assertNoResult(w)
        self.commits[1].callback(None)
        for w in [*second, third]:
            self.successResultOf(w)

    def test_add_remove_cancel(self) -> None:
        """
        A job added and removed in one batch is never written.
        """
        self.writer.add_many([job(9)])
        added = self.writer.add_many([job(1)])
        removed = self.writer.remove_many([1])
        self.writer.add_many([job(2)])
        self.commits[0].callback(None)
        self.assertEqual(self.batches[1], ([job(2)], [], []))
        self.commits[1].callback(None)
        self.successResultOf(added)
        self.successResultOf(removed)

    def test_stored_again_then_removed(self) -> None:
        """
        A job updated (it was written before) and removed in one batch is
        not written again, and its row is deleted.
        """
        self.writer.add_many([job(9)])
        self.writer.update_many([job(1, attempts=1, when=5.0)])
        self.writer.remove_many([1])
        self.commits[0].callback(None)
        self.assertEqual(self.batches[1], ([], [], [1]))

    def test_added_then_updated(self) -> None:
        """
        A job updated while its add still waits is added once, as updated;
        an update alone is an update.
        """
        self.writer.add_many([job(9)])
        self.writer.add_many([job(1)])
        self.writer.update_many([job(1, attempts=1), job(2, attempts=1)])
        self.commits[0].callback(None)
        self.assertEqual(self.batches[1], ([job(1, attempts=1)], [job(2, attempts=1)], []))

    def test_nothing_left(self) -> None:
        """
        A batch that cancels out entirely needs no transaction.
        """
        self.writer.add_many([job(9)])
        d = self.writer.add_many([job(1)])
        self.writer.remove_many([1])
        self.commits[0].callback(None)
        self.assertEqual(len(self.batches), 1)
        self.successResultOf(d)

    def test_failure(self) -> None:
        """
        A failed transaction fails every write in it; later batches go on.
        """
        first = self.writer.add_many([job(1)])
        later = self.writer.add_many([job(2)])
        self.commits[0].errback(RuntimeError("disk full"))
        self.failureResultOf(first, RuntimeError)
        self.assertEqual(self.batches[1], ([job(2)], [], []))
        self.commits[1].callback(None)
        self.successResultOf(later)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_drain(self) -> None:
        """
        C{drain} fires once everything written so far is committed.
        """
        self.successResultOf(self.writer.drain())
        self.writer.add_many([job(1)])
        drained = self.writer.drain()
        self.assertEqual(len(self.batches), 1)
        self.assertNoResult(drained)
        self.commits[0].callback(None)
        self.successResultOf(drained)
        self.clock.advance(0)
        self.assertEqual(len(self.batches), 1)
