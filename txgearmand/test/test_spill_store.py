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

from txgearmand.interfaces import ISpillStore
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
        Rows to run later and rows of the failed list come whole; every
        other as a record, in id order.
        """
        store = await self.opened()
        rows = [
            job(1),
            job(2, unique=b"u2"),
            job(3, priority=0),
            job(4, when=99.0),
            job(5, function=b"g"),
            job(6, failed_at=5.0, reason="failed"),
        ]
        await store.add_many(rows)
        whole, spilled = await store.load_index()
        self.assertEqual(whole, [rows[3], rows[5]])
        self.assertEqual(
            [tuple(r) for r in spilled],
            [
                (1, b"H:test:1", b"f", b"", 1),
                (2, b"H:test:2", b"f", b"u2", 1),
                (3, b"H:test:3", b"f", b"", 0),
                (5, b"H:test:5", b"g", b"", 1),
            ],
        )

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
