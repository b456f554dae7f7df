"""
What a store that gives payloads back (L{ISpillStore}) does: the SQLite
stores' L{load_whole}, L{load_index} and L{fetch}.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from twisted.internet import reactor as _reactor
from twisted.trial.unittest import TestCase
from zope.interface.verify import verifyObject

from txgearmand.interfaces import ISpillStore
from txgearmand.store.sqlite import SQLiteStore
from txgearmand.test.test_shared_store import _SharedTestsMixin
from txgearmand.test.test_store import job

reactor: Any = _reactor


class SQLiteSpillTests(TestCase):
    """
    L{SQLiteStore} as an L{ISpillStore}.
    """

    timeout = 60

    async def opened(self) -> SQLiteStore:
        path = Path(self.mktemp())
        path.mkdir(parents=True)
        store = SQLiteStore(reactor, str(path / "jobs.sqlite"))
        await store.open()
        self.addCleanup(store.close)
        return store

    async def test_interface(self) -> None:
        """
        The SQLite store provides L{ISpillStore}.
        """
        store = await self.opened()
        self.assertTrue(verifyObject(ISpillStore, store))

    async def test_load_index(self) -> None:
        """
        Rows to run later, rows of the failed list and rows with the unique
        C{-} come whole; every other as a record, in id order, a chunk at a
        time.
        """
        store = await self.opened()
        rows = [
            job(1),
            job(2, unique=b"u2"),
            job(3, priority=0),
            job(4, when=99.0),
            job(5, function=b"g"),
            job(6, failed_at=5.0, reason="failed"),
            job(7, unique=b"-"),
        ]
        await store.add_many(rows)
        self.assertEqual(await store.load_whole(), [rows[3], rows[5], rows[6]])
        self.assertEqual(
            [tuple(r) for r in await store.load_index(0, 100)],
            [
                (1, b"H:test:1", b"f", b"", 1),
                (2, b"H:test:2", b"f", b"u2", 1),
                (3, b"H:test:3", b"f", b"", 0),
                (5, b"H:test:5", b"g", b"", 1),
            ],
        )
        self.assertEqual([r[0] for r in await store.load_index(0, 2)], [1, 2])
        self.assertEqual([r[0] for r in await store.load_index(2, 2)], [3, 5])
        self.assertEqual(await store.load_index(5, 2), [])

    async def test_fetch(self) -> None:
        """
        C{fetch} gives the rows asked for that exist, whole; more ids than
        one statement binds are fine.
        """
        store = await self.opened()
        rows = [job(i, payload=b"p%d" % i) for i in range(1, 5001)]
        await store.add_many(rows)
        await store.remove_many([2])
        found = await store.fetch([4, 2, 1, 9999, *range(10, 4001)])
        self.assertEqual(sorted(found), sorted([rows[0], rows[3], *rows[9:4000]]))


class PostgreSQLSpillTests(_SharedTestsMixin):
    """
    L{PostgreSQLStore} as an L{ISpillStore}: each node indexes and fetches
    only its own rows, at its epoch (through psycopg 3; a pg8000 twin
    follows).
    """

    async def test_interface(self) -> None:
        """
        The PostgreSQL store provides L{ISpillStore}.
        """
        store = await self.node("a")
        self.assertTrue(verifyObject(ISpillStore, store))

    async def test_own_rows(self) -> None:
        """
        C{load_index} gives this node's queued rows as records, a chunk at
        a time, and C{load_whole} its later and failed rows; C{fetch} gives
        only its own rows.
        """
        a = await self.node("a")
        b = await self.node("b")
        rows = [job(1), job(2, unique=b"u2", priority=0), job(3, when=99.0), job(5, unique=b"-")]
        await a.add_many(rows)
        await b.add_many([job(1, function=b"g"), job(4, function=b"g")])
        self.assertEqual(await a.load_whole(), [rows[2], rows[3]])
        self.assertEqual(
            [tuple(r) for r in await a.load_index(0, 100)],
            [(1, b"H:test:1", b"f", b"", 1), (2, b"H:test:2", b"f", b"u2", 0)],
        )
        self.assertEqual([r[0] for r in await a.load_index(1, 1)], [2])
        self.assertEqual(await a.load_index(2, 1), [])
        self.assertEqual(sorted(await a.fetch([1, 2, 4])), rows[:2])
        self.assertEqual(await b.fetch([1, 2, 4]), [job(1, function=b"g"), job(4, function=b"g")])

    async def test_fetch_fenced(self) -> None:
        """
        A row adopted by another node (or reclaimed by a later start of this
        one) is no longer fetched under the old epoch.
        """
        a = await self.node("a")
        await a.add_many([job(1)])
        again = await self.node("a")
        self.assertEqual(await again.fetch([1]), [job(1)])
        self.assertEqual(await a.fetch([1]), [])


class PG8000PostgreSQLSpillTests(PostgreSQLSpillTests):
    """
    The same through pg8000.
    """

    driver = "pg8000"
