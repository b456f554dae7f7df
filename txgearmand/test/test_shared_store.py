"""
Several servers on one PostgreSQL database: each store (a node) owns the
jobs it accepted, on a real PostgreSQL server (skipped, saying why, when
none can be had).
"""

from __future__ import annotations

from typing import Any

from twisted.internet import reactor
from twisted.trial.unittest import SkipTest, TestCase

from txgearmand.interfaces import StoredJob
from txgearmand.store.postgresql import PostgreSQLStore
from txgearmand.test import _postgres

# The previous schema: one server per table, the key on id alone.
_OLD_SCHEMA = """
CREATE TABLE txgearmand_jobs (
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


def job(n: int, function: bytes = b"f") -> StoredJob:
    return StoredJob(n, b"H:x:%d" % n, function, b"u%d" % n, b"data %d" % n, 1, None, b"")


class _SharedTestsMixin(TestCase):
    """
    A fresh database per test, and stores (nodes) on it that are closed at
    the end.
    """

    def setUp(self) -> None:
        try:
            self.url = _postgres.fresh_database()
        except _postgres.Unavailable as e:
            raise SkipTest(str(e)) from None

    async def node(self, name: str, **kwargs: Any) -> PostgreSQLStore:
        store = PostgreSQLStore(reactor, self.url, node=name, **kwargs)
        await store.open()

        def close() -> object:
            # Not if the test closed it already.
            return store.close() if store._pool.started else None

        self.addCleanup(close)
        return store

    def sql(self, query: str, *args: Any) -> list[tuple[Any, ...]]:
        import psycopg

        with psycopg.connect(self.url, autocommit=True) as conn:
            cursor = conn.execute(query, args or None)
            return cursor.fetchall() if cursor.description else []


class OwnershipTests(_SharedTestsMixin):
    """
    Each node loads, adds and removes only its own jobs.
    """

    async def test_each_loads_its_own(self) -> None:
        """
        Two nodes on one table, with overlapping ids: each loads only the
        jobs it added, and survives the other's restart.
        """
        a = await self.node("a")
        b = await self.node("b")
        await a.add_many([job(1), job(2)])
        await b.add_many([job(1, b"g"), job(2, b"g"), job(3, b"g")])
        self.assertEqual(await a.load(), [job(1), job(2)])
        self.assertEqual(await b.load(), [job(1, b"g"), job(2, b"g"), job(3, b"g")])
        await a.close()
        a2 = await self.node("a")
        self.assertEqual(await a2.load(), [job(1), job(2)])
        self.assertEqual(await b.load(), [job(1, b"g"), job(2, b"g"), job(3, b"g")])

    async def test_removes_only_its_own(self) -> None:
        """
        A node's removals leave another node's jobs of the same ids alone.
        """
        a = await self.node("a")
        b = await self.node("b")
        await a.add_many([job(1), job(2)])
        await b.add_many([job(1, b"g"), job(2, b"g")])
        await a.remove_many([1, 2])
        self.assertEqual(await a.load(), [])
        self.assertEqual(await b.load(), [job(1, b"g"), job(2, b"g")])

    async def test_restart_fences_the_old_epoch(self) -> None:
        """
        A node opened again under the same name takes its rows to its new
        epoch: the earlier instance's removals no longer touch them.
        """
        old = await self.node("a")
        await old.add_many([job(1), job(2)])
        new = await self.node("a")
        self.assertGreater(new.epoch, old.epoch)
        await old.remove_many([1])
        self.assertEqual(await new.load(), [job(1), job(2)])

    async def test_previous_schema(self) -> None:
        """
        A table of the previous, single-server schema opens, and its jobs
        belong to the first node that opens it.
        """
        self.sql(_OLD_SCHEMA)
        for n in (1, 2):
            self.sql("INSERT INTO txgearmand_jobs VALUES (%s, %s, %s, %s, %s, %s, %s, %s)", *job(n))
        a = await self.node("a")
        b = await self.node("b")
        self.assertEqual(await a.load(), [job(1), job(2)])
        self.assertEqual(await b.load(), [])
        await b.add_many([job(1, b"g")])
        await a.remove_many([1])
        self.assertEqual(await a.load(), [job(2)])
        self.assertEqual(await b.load(), [job(1, b"g")])
