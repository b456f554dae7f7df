"""
Random operations on a server whose queues spill (seeded, repeatable):
background and foreground submissions with and without unique ids on two
functions and three priorities, grabs and results, failures and lost
workers, cancels, status lookups that make whole jobs of records, clients
leaving, store commits and fetches that fail; the counts are checked after
every step, and at the end every job ran once in its queue's order and
nothing is left in memory or in the store.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

from twisted.internet.defer import Deferred, fail
from twisted.trial.unittest import SynchronousTestCase

from txgearmand import spill
from txgearmand.interfaces import StoredJob
from txgearmand.records import JobState, Spilled
from txgearmand.server import JobServer
from txgearmand.test.test_spill import SpillStore, SpillTestMixin
from txgearmand.wire import PacketType as P

_PRIORITY = {P.SUBMIT_JOB_HIGH_BG: 0, P.SUBMIT_JOB_BG: 1, P.SUBMIT_JOB_LOW_BG: 2}


class FlakyStore(SpillStore):
    """
    A L{SpillStore} whose commits fail when the test says so.
    """

    fail_add = False

    def add_many(self, jobs: Sequence[StoredJob]) -> Deferred[None]:
        if self.fail_add:
            return fail(OSError("disk full"))
        return super().add_many(jobs)


def check_counts(test: SynchronousTestCase, server: JobServer) -> None:
    """
    C{ready} is the live jobs in each deque; C{queued} covers them and the
    live records of the tail.
    """
    for fq in server.registry:
        for p in range(3):
            live = sum(1 for job in fq.queues[p] if job.state is JobState.QUEUED)
            test.assertEqual(fq.ready[p], live, (fq.name, p))
            tail = fq.tails[p] if fq.tails else ()
            waiting = sum(1 for entry in tail if entry.state != Spilled.GONE)
            test.assertGreaterEqual(fq.queued[p] - fq.ready[p], waiting, (fq.name, p))


class RandomTests(SpillTestMixin, SynchronousTestCase):
    """
    Seeded random runs, in two modes.
    """

    def run_seed(self, seed: int, rough: bool) -> None:
        rnd = random.Random(seed)
        store = self.store = FlakyStore()
        store.manual = True
        options: dict[str, Any] = {"spill_after": rnd.choice([1, 2, 3, 4])}
        # Tails compacted often, or as in production.
        self.patch(spill, "COMPACT_AFTER", rnd.choice([0, 1, 256]))
        if rough:
            options.update(retry_failed=1, retry_backoff="0.5,0.5", failed_keep=0)
        self.start(**options)
        server = self.server
        submitter, status, admin = self.connect(), self.connect(), self.connect()
        worker = self.connect().can_do(b"f", b"g")
        foreground: list[Any] = []
        background: set[bytes] = set()
        cancelled: set[bytes] = set()
        again: set[bytes] = set()
        handed: list[bytes] = []
        order: dict[bytes, tuple[bytes, int, int]] = {}
        for step in range(rnd.randint(20, 150)):
            op = rnd.random()
            function = rnd.choice([b"f", b"g"])
            unique = rnd.choice([b"", b"", b"u%d" % rnd.randint(0, 15)])
            if op < 0.4:
                ptype = rnd.choice(list(_PRIORITY))
                store.fail_add = rnd.random() < 0.05
                submitter.send(ptype, function, unique, b"payload %d" % step)
                store.fail_add = False
                for ptype_got, args in submitter.packets():
                    if ptype_got == P.JOB_CREATED:
                        background.add(args[0])
                        order.setdefault(args[0], (function, _PRIORITY[ptype], step))
            elif op < 0.5:
                client = self.connect()
                client.send(P.SUBMIT_JOB, function, unique, b"fg %d" % step)
                foreground.append(client)
                for ptype_got, args in client.packets():
                    if ptype_got == P.JOB_CREATED:
                        order.setdefault(args[0], (function, 1, step))
            elif op < 0.7:
                packet = worker.grab()
                if packet[0] == P.JOB_ASSIGN_UNIQ:
                    handle = packet[1][0]
                    handed.append(handle)
                    if rough and rnd.random() < 0.2:
                        again.add(handle)
                        worker.send(P.WORK_FAIL, handle)
                    else:
                        worker.send(P.WORK_COMPLETE, handle, b"")
            elif op < 0.72 and rough:
                packet = worker.grab()
                if packet[0] == P.JOB_ASSIGN_UNIQ:
                    again.add(packet[1][0])
                worker.disconnect()
                worker = self.connect().can_do(b"f", b"g")
            elif op < 0.75 and background:
                handle = rnd.choice(sorted(background))
                if admin.admin(b"cancel job " + handle) == b"OK\r\n":
                    cancelled.add(handle)
            elif op < 0.8:
                status.send(P.GET_STATUS_UNIQUE, b"u%d" % rnd.randint(0, 15))
                status.packets()
            elif op < 0.83 and foreground:
                foreground.pop(rnd.randrange(len(foreground))).disconnect()
            elif op < 0.95:
                store.fail_fetch = rough and rnd.random() < 0.3
                store.answer()
            self.clock.advance(0)
            check_counts(self, server)
        store.fail_fetch = False
        self.flushLoggedErrors()
        for _ in range(2000):
            store.answer()
            self.clock.advance(1)
            packet = worker.grab()
            if packet[0] == P.JOB_ASSIGN_UNIQ:
                handed.append(packet[1][0])
                worker.send(P.WORK_COMPLETE, packet[1][0], b"")
            elif not store.fetches and not any(fq.waiting() for fq in server.registry):
                break
        check_counts(self, server)
        once = [h for h in handed if h not in again]
        self.assertEqual(len(once), len(set(once)), "a job was handed out twice")
        last: dict[tuple[bytes, int], int] = {}
        for handle in once:
            function, priority, step = order[handle]
            self.assertGreater(step, last.get((function, priority), -1), "out of order")
            last[(function, priority)] = step
        self.assertEqual(background - set(handed) - cancelled, set(), "background jobs lost")
        self.assertEqual(len(server.table), 0)
        self.assertEqual(server.table.held_bytes, 0)
        self.assertEqual(store.jobs, {})
        server.stopService()

    def test_plain(self) -> None:
        """
        Submissions, grabs, cancels, lookups, clients leaving.
        """
        for seed in range(60):
            with self.subTest(seed=seed):
                self.run_seed(seed, rough=False)

    def test_rough(self) -> None:
        """
        As well: failed attempts retried, workers lost with a job, fetches
        failing.
        """
        for seed in range(60):
            with self.subTest(seed=seed):
                self.run_seed(seed, rough=True)
