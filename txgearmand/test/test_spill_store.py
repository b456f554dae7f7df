"""
What a store that gives payloads back (L{ISpillStore}) does: the SQLite
store's L{load_index} and L{fetch}.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from twisted.internet import reactor as _reactor
from twisted.trial.unittest import TestCase
from zope.interface.verify import verifyObject

from txgearmand.interfaces import ISpillStore, SpilledRow
from txgearmand.store.sqlite import SQLiteStore
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
        The first C{keep} queued rows of each function and priority come
        whole; the others as L{SpilledRow}s, in id order; rows to run later
        and rows of the failed list are always whole.
        """
        store = await self.opened()
        rows = [
            job(1),
            job(2, unique=b"u2"),
            job(3, priority=0),
            job(4, when=99.0),
            job(5),
            job(6, function=b"g"),
            job(7, failed_at=5.0, reason="failed"),
            job(8, unique=b"u8"),
            job(9, priority=0),
            job(10, function=b"g"),
        ]
        await store.add_many(rows)
        whole, spilled = await store.load_index(2)
        self.assertEqual([r.id for r in whole], [1, 2, 3, 4, 6, 7, 9, 10])
        self.assertEqual(whole[0], rows[0])
        self.assertEqual(
            spilled,
            [
                SpilledRow(5, b"H:test:5", b"f", b"", 1),
                SpilledRow(8, b"H:test:8", b"f", b"u8", 1),
            ],
        )

    async def test_load_index_keep_none(self) -> None:
        """
        With C{keep} 0 every queued row is a record.
        """
        store = await self.opened()
        await store.add_many([job(i) for i in range(1, 4)])
        whole, spilled = await store.load_index(0)
        self.assertEqual(whole, [])
        self.assertEqual([r.id for r in spilled], [1, 2, 3])

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
