"""
Queues bigger than memory (L{txgearmand.spill}): queued background jobs
beyond the first few of their function and priority keep only a record in
memory, and come back from the store ahead of the workers.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SkipTest, SynchronousTestCase
from zope.interface import implementer

from txgearmand.interfaces import Adoption, ISpillStore, SpilledRow, StoredJob
from txgearmand.job import JOB_OVERHEAD, SPILLED_COST
from txgearmand.records import Spilled
from txgearmand.server import JobServer
from txgearmand.spill import spillable
from txgearmand.store import MemoryStore
from txgearmand.test.helpers import FakeConnection, capture_logs
from txgearmand.test.test_durability import DurabilityTestMixin
from txgearmand.wire import PacketType as P


@implementer(ISpillStore)
class SpillStore(MemoryStore):
    """
    A memory store that gives payloads back; its fetches answer at once,
    or (C{manual}) when the test says so.
    """

    def __init__(self) -> None:
        super().__init__()
        self.manual = False
        self.fetches: list[tuple[list[int], Deferred[list[StoredJob]]]] = []
        self.fail_fetch = False
        self.indexed = 0
        #: Chunks of the index asked for and not given yet (C{manual_index}).
        self.manual_index = False
        self.index_asked: list[tuple[int, int, Deferred[list[SpilledRow]]]] = []
        self.closed = 0

    def _whole(self, job: StoredJob) -> bool:
        return job.when is not None or job.failed_at is not None or job.unique == b"-"

    def load_whole(self) -> Deferred[list[StoredJob]]:
        return succeed([self.jobs[k] for k in sorted(self.jobs) if self._whole(self.jobs[k])])

    def load_index(self, after: int, limit: int) -> Deferred[list[SpilledRow]]:
        if self.manual_index:
            d: Deferred[list[SpilledRow]] = Deferred()
            self.index_asked.append((after, limit, d))
            return d
        return self._index_rows(after, limit)

    def answer_index(self) -> None:
        """
        Give the first chunk asked for (C{manual_index}).
        """
        after, limit, d = self.index_asked.pop(0)
        rows: list[list[SpilledRow]] = []
        self._index_rows(after, limit).addCallback(rows.append)
        d.callback(rows[0])

    def close(self) -> Deferred[None]:
        self.closed += 1
        return super().close()

    def _index_rows(self, after: int, limit: int) -> Deferred[list[SpilledRow]]:
        self.indexed += 1
        rows: list[SpilledRow] = []
        for job in (self.jobs[k] for k in sorted(self.jobs) if k > after):
            if len(rows) == limit:
                break
            if not self._whole(job):
                rows.append((job.id, job.handle, job.function, job.unique, job.priority))
        return succeed(rows)

    def fetch(self, job_ids: Sequence[int]) -> Deferred[list[StoredJob]]:
        if self.fail_fetch:
            return fail(OSError("disk on fire"))
        found = [self.jobs[i] for i in job_ids if i in self.jobs]
        if not self.manual:
            return succeed(found)
        d: Deferred[list[StoredJob]] = Deferred()
        self.fetches.append((list(job_ids), d))
        return d

    def answer(self) -> None:
        """
        Answer the fetches that wait, with what the store has now.
        """
        fetches, self.fetches = self.fetches, []
        for ids, d in fetches:
            d.callback([self.jobs[i] for i in ids if i in self.jobs])


class SpillTestMixin(DurabilityTestMixin):
    store: SpillStore

    def setUp(self) -> None:
        self.store = SpillStore()

    def submit_many(
        self, n: int, function: bytes = b"f", ptype: int = P.SUBMIT_JOB_BG, tag: bytes = b"u"
    ) -> list[bytes]:
        client = self.connect()
        for i in range(n):
            client.send(ptype, function, tag + b"%d" % i, b"payload %d" % i)
        return [p[1][0] for p in client.packets()]

    def drain(self, worker: object, n: int) -> list[tuple[bytes, ...]]:
        out = []
        for _ in range(n):
            packet = worker.grab()  # type: ignore[attr-defined]
            self.assertEqual(packet[0], P.JOB_ASSIGN_UNIQ)  # type: ignore[attr-defined]
            out.append(packet[1])
            worker.send(P.WORK_COMPLETE, packet[1][0], b"")  # type: ignore[attr-defined]
        return out


class SpillTests(SpillTestMixin, SynchronousTestCase):
    """
    Jobs spill once their queue is long, and come back in order.
    """

    def test_spilled_beyond_keep(self) -> None:
        """
        Once committed, the jobs beyond the first C{spill_after} of a queue
        keep only a record in memory; the counts still count them all.
        """
        self.start(spill_after=3)
        handles = self.submit_many(10)
        self.assertEqual(len(handles), 10)
        table = self.server.table
        self.assertEqual(sorted(table.spilled), sorted(handles[3:]))
        self.assertEqual(sorted(table.by_handle), sorted(handles[:3]))
        self.assertEqual(len(table), 10)
        fq = self.server.registry.get(b"f")
        assert fq is not None
        self.assertEqual(fq.queued, [0, 10, 0])
        self.assertEqual(fq.ready, [0, 3, 0])
        admin = self.connect()
        self.assertEqual(admin.admin(b"status"), b"f\t10\t0\t0\n.\n")
        shown = admin.admin(b"show jobs").splitlines()
        self.assertEqual(sorted(line.split(b"\t")[0] for line in shown[:-1]), sorted(handles))

    def test_memory_counted(self) -> None:
        """
        A spilled job counts L{SPILLED_COST} against the memory budget, not
        its payload and a whole job's overhead.
        """
        self.start(spill_after=2)
        self.submit_many(5)
        whole = sum(len(b"payload %d" % i) + JOB_OVERHEAD for i in range(2))
        self.assertEqual(self.server.table.held_bytes, whole + 3 * SPILLED_COST)

    def test_drain_in_order(self) -> None:
        """
        A worker gets every job, in submission order, with its payload and
        unique id; nothing is left in memory or in the store.
        """
        self.start(spill_after=3)
        handles = self.submit_many(20)
        worker = self.connect().can_do(b"f")
        got = self.drain(worker, 20)
        self.assertEqual(
            got, [(h, b"f", b"u%d" % i, b"payload %d" % i) for i, h in enumerate(handles)]
        )
        self.assertEqual(worker.grab(), (P.NO_JOB, ()))
        self.assertEqual(len(self.server.table), 0)
        self.assertEqual(self.store.jobs, {})
        self.assertEqual(self.server.table.held_bytes, 0)

    def test_workers_wait_for_fetch(self) -> None:
        """
        While the next jobs are being fetched a grab finds none; the
        sleeping worker is woken when they are back.
        """
        self.store.manual = True
        self.start(spill_after=4)
        handles = self.submit_many(12)
        worker = self.connect().can_do(b"f")
        got = self.drain(worker, 2)
        # Under half of 4 ready: the next ones are asked for.
        self.assertEqual(len(self.store.fetches), 1)
        got += self.drain(worker, 2)
        self.assertEqual(worker.grab(), (P.NO_JOB, ()))
        worker.send(P.PRE_SLEEP)
        self.assertEqual(worker.packets(), [])
        self.store.answer()
        self.clock.advance(0)
        self.assertEqual(worker.packets(), [(P.NOOP, ())])
        while len(got) < 12:
            if self.store.fetches:
                self.store.answer()
                self.clock.advance(0)
            packet = worker.grab()
            if packet[0] == P.NO_JOB:
                continue
            got.append(packet[1])
            worker.send(P.WORK_COMPLETE, packet[1][0], b"")
        self.assertEqual([g[0] for g in got], handles)

    def test_no_wake_for_tail(self) -> None:
        """
        A job submitted to the spilled tail does not wake a sleeping worker
        (a grab would not find it); the fetch coming back does.
        """
        self.store.manual = True
        self.start(spill_after=2)
        self.submit_many(4)
        worker = self.connect().can_do(b"f")
        self.drain(worker, 2)
        self.assertEqual(worker.grab(), (P.NO_JOB, ()))
        worker.send(P.PRE_SLEEP)
        self.submit_many(1, tag=b"more")
        self.assertEqual(worker.packets(), [])
        self.store.answer()
        self.clock.advance(0)
        self.assertEqual(worker.packets(), [(P.NOOP, ())])

    def test_pushed_during_fetch_keeps_order(self) -> None:
        """
        Jobs submitted while a fetch runs queue behind the fetched ones.
        """
        self.store.manual = True
        self.start(spill_after=2)
        handles = self.submit_many(5)
        worker = self.connect().can_do(b"f")
        got = self.drain(worker, 1)
        self.assertEqual(len(self.store.fetches), 1)
        handles += self.submit_many(2, tag=b"later")
        self.store.answer()
        self.clock.advance(0)
        self.store.manual = False
        got += self.drain(worker, 6)
        self.assertEqual([g[0] for g in got], handles)

    def test_priorities(self) -> None:
        """
        Each priority spills on its own, and high still goes first.
        """
        self.start(spill_after=2)
        low = self.submit_many(4, ptype=P.SUBMIT_JOB_LOW_BG, tag=b"l")
        high = self.submit_many(4, ptype=P.SUBMIT_JOB_HIGH_BG, tag=b"h")
        normal = self.submit_many(4, tag=b"n")
        self.assertEqual(len(self.server.table.spilled), 6)
        worker = self.connect().can_do(b"f")
        got = [g[0] for g in self.drain(worker, 12)]
        self.assertEqual(got, high + normal + low)

    def test_foreground_behind_spilled(self) -> None:
        """
        A foreground job queued behind spilled jobs waits its turn, whole,
        and its client gets its result.
        """
        self.start(spill_after=2)
        background = self.submit_many(4)
        client = self.connect()
        client.send(P.SUBMIT_JOB, b"f", b"", b"fg")
        ((_, (fg,)),) = client.packets()
        self.assertIn(fg, self.server.table.by_handle)
        worker = self.connect().can_do(b"f")
        got = self.drain(worker, 5)
        self.assertEqual([g[0] for g in got], [*background, fg])
        self.assertEqual(got[-1][3], b"fg")
        self.assertEqual(client.packets(), [(P.WORK_COMPLETE, (fg, b""))])

    def test_not_spilled_until_committed(self) -> None:
        """
        A job waits whole in the tail until its write is committed.
        """
        self.store.manual = True
        from txgearmand.test.test_durability import ManualStore

        class Both(SpillStore, ManualStore):
            def __init__(self) -> None:
                SpillStore.__init__(self)
                ManualStore.__init__(self)

        self.store = Both()
        self.start(spill_after=1)
        client = self.connect()
        client.send(P.SUBMIT_JOB_BG, b"f", b"", b"one")
        client.send(P.SUBMIT_JOB_BG, b"f", b"", b"two")
        self.assertEqual(self.server.table.spilled, {})
        self.commit()
        self.assertEqual(len(self.server.table.spilled), 1)

    def test_get_status(self) -> None:
        """
        GET_STATUS knows a spilled job: queued, not running.
        """
        self.start(spill_after=1)
        handles = self.submit_many(3)
        client = self.connect()
        client.send(P.GET_STATUS, handles[2])
        self.assertEqual(client.packets(), [(P.STATUS_RES, (handles[2], b"1", b"0", b"0", b"0"))])
        client.send(P.GET_STATUS_UNIQUE, b"u1")
        self.assertEqual(
            client.packets(), [(P.STATUS_RES_UNIQUE, (b"u1", b"1", b"0", b"0", b"0", b"0"))]
        )

    def test_background_duplicate(self) -> None:
        """
        A background submission with a spilled job's unique id joins it:
        same handle, nothing stored again, run once.
        """
        self.start(spill_after=1)
        handles = self.submit_many(3)
        client = self.connect()
        client.send(P.SUBMIT_JOB_BG, b"f", b"u2", b"other payload")
        self.assertEqual(client.packets(), [(P.JOB_CREATED, (handles[2],))])
        self.assertEqual(len(self.store.jobs), 3)
        worker = self.connect().can_do(b"f")
        got = self.drain(worker, 3)
        self.assertEqual(got[2], (handles[2], b"f", b"u2", b"payload 2"))
        self.assertEqual(worker.grab(), (P.NO_JOB, ()))

    def test_foreground_joins_spilled(self) -> None:
        """
        A foreground submission with a spilled job's unique id waits on it
        and gets its result; the worker gets the stored payload.
        """
        self.store.manual = True
        self.start(spill_after=2)
        handles = self.submit_many(6)
        client = self.connect()
        client.send(P.SUBMIT_JOB, b"f", b"u4", b"ignored")
        self.assertEqual(client.packets(), [(P.JOB_CREATED, (handles[4],))])
        self.assertIn(handles[4], self.server.table.by_handle)
        self.assertNotIn(handles[4], self.server.table.spilled)
        self.store.manual = False
        self.store.answer()
        worker = self.connect().can_do(b"f")
        got = self.drain(worker, 6)
        self.assertEqual(got[4], (handles[4], b"f", b"u4", b"payload 4"))
        self.assertEqual(client.packets(), [(P.WORK_COMPLETE, (handles[4], b""))])
        self.assertEqual(self.server.table.held_bytes, 0)

    def test_cancel(self) -> None:
        """
        A spilled job cancelled by the admin is never handed out, and its
        row goes.
        """
        self.start(spill_after=1)
        handles = self.submit_many(4)
        admin = self.connect()
        self.assertEqual(admin.admin(b"cancel job " + handles[2]), b"OK\r\n")
        self.assertNotIn(3, self.store.jobs)
        fq = self.server.registry.get(b"f")
        assert fq is not None
        self.assertEqual(fq.queued[1], 3)
        worker = self.connect().can_do(b"f")
        got = self.drain(worker, 3)
        self.assertEqual([g[0] for g in got], [handles[0], handles[1], handles[3]])
        self.assertEqual(worker.grab(), (P.NO_JOB, ()))
        self.assertEqual(self.store.jobs, {})

    def test_cancel_while_fetched(self) -> None:
        """
        A job cancelled while its payload is on its way is skipped.
        """
        self.store.manual = True
        self.start(spill_after=2)
        handles = self.submit_many(5)
        worker = self.connect().can_do(b"f")
        got = self.drain(worker, 1)
        ((ids, _),) = self.store.fetches
        self.assertEqual(ids, [3])
        admin = self.connect()
        self.assertEqual(admin.admin(b"cancel job " + handles[2]), b"OK\r\n")
        self.store.manual = False
        self.store.answer()
        got += self.drain(worker, 3)
        self.assertEqual([g[0] for g in got], [handles[0], handles[1], handles[3], handles[4]])
        self.assertEqual(worker.grab(), (P.NO_JOB, ()))
        self.assertEqual(len(self.server.table), 0)

    def test_fetch_fails(self) -> None:
        """
        A fetch that fails is logged once and tried again a second later;
        nothing is lost.
        """
        logs = capture_logs(self)
        self.start(spill_after=2)
        handles = self.submit_many(6)
        self.store.fail_fetch = True
        worker = self.connect().can_do(b"f")
        got = self.drain(worker, 2)
        self.assertEqual(worker.grab(), (P.NO_JOB, ()))
        worker.send(P.PRE_SLEEP)
        self.clock.advance(1)
        self.clock.advance(1)
        failures = [e for e in logs if "failed; trying again" in e.get("log_format", "")]
        self.assertEqual(len(failures), 1)
        self.flushLoggedErrors(OSError)
        self.store.fail_fetch = False
        self.clock.advance(1)
        self.assertEqual(worker.packets(), [(P.NOOP, ())])
        got += self.drain(worker, 4)
        self.assertEqual([g[0] for g in got], handles)

    def test_ready_ended_without_grab(self) -> None:
        """
        When the ready jobs end without a grab (their clients left, or an
        admin cancelled them), the spilled ones behind them come forward
        and a sleeping worker is woken.
        """
        self.start(spill_after=2)
        clients = [self.connect() for _ in range(2)]
        for i, client in enumerate(clients):
            client.send(P.SUBMIT_JOB, b"f", b"fg%d" % i, b"x")
        handles = self.submit_many(3)
        fq = self.server.registry.get(b"f")
        assert fq is not None
        self.assertEqual((fq.queued[1], fq.ready[1]), (5, 2))
        worker = self.connect().can_do(b"f")
        worker.send(P.PRE_SLEEP)
        self.assertEqual(worker.packets(), [(P.NOOP, ())])
        worker.send(P.PRE_SLEEP)
        for client in clients:
            client.disconnect()
        self.clock.advance(0)
        self.assertEqual(fq.ready[1], 2)
        self.assertEqual(worker.packets(), [(P.NOOP, ())])
        got = self.drain(worker, 3)
        self.assertEqual([g[0] for g in got], handles)

    def test_cancelled_ready(self) -> None:
        """
        Cancelling every ready job brings the spilled ones forward.
        """
        self.start(spill_after=2)
        handles = self.submit_many(4)
        admin = self.connect()
        for handle in handles[:2]:
            self.assertEqual(admin.admin(b"cancel job " + handle), b"OK\r\n")
        worker = self.connect().can_do(b"f")
        self.assertEqual([g[0] for g in self.drain(worker, 2)], handles[2:])

    def test_row_gone_foreground_joined(self) -> None:
        """
        A foreground client that joined a spilled job whose row is gone at
        its fetch gets WORK_FAIL.
        """
        self.store.manual = True
        self.start(spill_after=2)
        handles = self.submit_many(6)
        client = self.connect()
        client.send(P.SUBMIT_JOB, b"f", b"u4", b"x")
        self.assertEqual(client.packets(), [(P.JOB_CREATED, (handles[4],))])
        del self.store.jobs[5]
        self.store.manual = False
        self.store.answer()
        self.flushLoggedErrors()
        worker = self.connect().can_do(b"f")
        got = self.drain(worker, 5)
        self.assertNotIn(handles[4], [g[0] for g in got])
        self.assertEqual(client.packets(), [(P.WORK_FAIL, (handles[4],))])
        self.assertEqual(len(self.server.table), 0)

    def test_stopped_during_fetch(self) -> None:
        """
        A fetch that fails because the server stopped is not an error, and
        is not tried again.
        """
        logs = capture_logs(self)
        self.store.manual = True
        self.start(spill_after=2)
        self.submit_many(5)
        self.drain(self.connect().can_do(b"f"), 1)
        ((_, d),) = self.store.fetches
        self.server.stopService()
        d.errback(OSError("closed"))
        self.assertEqual([e for e in logs if e.get("log_failure")], [])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_row_gone(self) -> None:
        """
        A spilled job whose row vanished from the store is dropped with a
        warning; the counts stay right.
        """
        logs = capture_logs(self)
        self.start(spill_after=1)
        handles = self.submit_many(3)
        del self.store.jobs[2]
        worker = self.connect().can_do(b"f")
        got = self.drain(worker, 2)
        self.assertEqual([g[0] for g in got], [handles[0], handles[2]])
        self.assertEqual(worker.grab(), (P.NO_JOB, ()))
        self.assertTrue(any("no longer in the store" in e.get("log_format", "") for e in logs))
        self.assertEqual(len(self.server.table), 0)
        self.assertEqual(self.server.table.held_bytes, 0)
        self.assertIsNone(self.server.registry.get(b"f").queued[1] or None)  # type: ignore[union-attr]

    def test_row_gone_ends_drain(self) -> None:
        """
        A graceful shutdown whose last jobs are spilled ones whose rows are
        gone ends when they are dropped.
        """
        self.start(spill_after=1)
        handles = self.submit_many(3)
        del self.store.jobs[2], self.store.jobs[3]
        worker = self.connect().can_do(b"f")
        stopped = self.server.shutdown(graceful=True)
        self.store.manual = True
        got = worker.grab()[1]
        self.assertEqual(got[0], handles[0])
        worker.send(P.WORK_COMPLETE, got[0], b"")
        # The fetches of the other two (one at a time) find neither row.
        self.store.answer()
        self.assertNoResult(stopped)
        self.store.answer()
        self.successResultOf(stopped)
        self.assertEqual(len(self.server.table), 0)
        self.assertEqual(self.server.jobs_ended, 3)

    def test_tail_compacted(self) -> None:
        """
        Foreground jobs queued behind spilled ones whose clients leave do
        not grow the tail while nothing is read from it: it is compacted
        once ended jobs are most of it.
        """
        from txgearmand.spill import COMPACT_AFTER

        self.start(spill_after=2)
        self.submit_many(5)
        fq = self.server.registry.get(b"f")
        assert fq is not None and fq.tails is not None
        for i in range(COMPACT_AFTER * 3):
            client = self.connect()
            client.send(P.SUBMIT_JOB, b"f", b"", b"fg %d" % i)
            client.disconnect()
            self.assertLessEqual(len(fq.tails[1]), 3 + 2 * COMPACT_AFTER + 1)
        self.assertEqual(fq.queued, [0, 5, 0])
        worker = self.connect().can_do(b"f")
        self.drain(worker, 5)
        self.assertEqual(worker.grab(), (P.NO_JOB, ()))
        self.assertEqual(len(self.server.table), 0)

    def test_off(self) -> None:
        """
        With C{spill_after} 0 nothing spills.
        """
        self.start(spill_after=0)
        self.submit_many(50)
        self.assertEqual(self.server.table.spilled, {})

    def test_spillable(self) -> None:
        """
        Only a committed background job nobody waits on, on its first
        attempt, due now and not coalesced on its payload, may spill.
        """
        self.start(spill_after=100)
        self.submit_many(1)
        (job,) = self.server.jobs()
        self.assertTrue(spillable(job))
        for field, value in [
            ("retries", 1),
            ("attempts", 1),
            ("first_failed", 1.0),
            ("when", 5.0),
            ("unique", b"-"),
            ("store_id", None),
            ("commit_waiters", []),
            ("require_listener", True),
        ]:
            saved = getattr(job, field)
            setattr(job, field, value)
            self.assertFalse(spillable(job), field)
            setattr(job, field, saved)
        self.assertTrue(spillable(job))


class SpillReplayTests(SpillTestMixin, SynchronousTestCase):
    """
    A restart on a long stored queue loads records, not payloads, beyond
    the first few of each queue.
    """

    def fill(self, n: int = 10) -> list[bytes]:
        self.start(spill_after=0)
        handles = self.submit_many(n)
        self.submit_many(2, function=b"g")
        self.server.stopService()
        return handles

    def test_replay(self) -> None:
        """
        Replayed, the jobs beyond the first C{spill_after} of a queue are
        records; they drain in order under their handles.
        """
        handles = self.fill()
        self.start(spill_after=3)
        self.assertEqual(self.store.indexed, 1)
        # Every queued job came as a record; the first 3 were fetched back.
        self.assertEqual(sorted(self.server.table.spilled), sorted(handles[3:]))
        self.assertEqual(self.server.registry.get(b"g").ready, [0, 2, 0])  # type: ignore[union-attr]
        worker = self.connect().can_do(b"f")
        got = self.drain(worker, 10)
        self.assertEqual(
            got, [(h, b"f", b"u%d" % i, b"payload %d" % i) for i, h in enumerate(handles)]
        )
        self.assertEqual(worker.grab(), (P.NO_JOB, ()))

    def test_replay_in_chunks(self) -> None:
        """
        The records are read a chunk at a time (the last one empty when
        the one before was full), queued in order, and the server serves
        only once all are: they coalesce, drain in order, and new jobs get
        new ids and handles.
        """
        import gc

        from txgearmand import replay

        handles = self.fill()
        self.patch(replay, "INDEX_CHUNK", 3)
        self.start(spill_after=2)
        self.assertEqual(self.store.indexed, 5)
        self.successResultOf(self.server.when_ready())
        self.assertTrue(gc.isenabled())
        self.assertEqual(self.server.registry.get(b"f").queued, [0, 10, 0])  # type: ignore[union-attr]
        client = self.connect()
        client.send(P.SUBMIT_JOB_BG, b"f", b"u9", b"again")
        client.send(P.SUBMIT_JOB_BG, b"f", b"new", b"x")
        (first, second) = client.packets()
        self.assertEqual(first, (P.JOB_CREATED, (handles[9],)))
        self.assertNotIn(second[1][0], handles)
        self.assertEqual(len(self.store.jobs), 13)
        worker = self.connect().can_do(b"f")
        got = self.drain(worker, 11)
        self.assertEqual([g[0] for g in got], [*handles, second[1][0]])

    def test_replay_chunk_fails(self) -> None:
        """
        A chunk the store fails to give fails the start, as a failed load
        does, and the cyclic collector is on again.
        """
        import gc

        from twisted.internet.defer import fail

        from txgearmand import replay

        self.fill()
        self.patch(replay, "INDEX_CHUNK", 3)
        calls = []

        def failing(after: int, limit: int) -> Deferred[list[SpilledRow]]:
            calls.append(after)
            if after:
                return fail(OSError("disk on fire"))
            return SpillStore.load_index(self.store, after, limit)

        self.patch(self.store, "load_index", failing)
        logs = capture_logs(self)
        self.start(spill_after=2)
        self.assertFalse(self.server.durability.ready)
        self.assertFalse(self.server.accepting)
        self.assertEqual(calls, [0, 3])
        self.assertTrue(gc.isenabled())
        self.assertTrue(any("failed to open or load" in e.get("log_format", "") for e in logs))
        self.flushLoggedErrors(OSError)

    def test_stop_during_chunked_replay(self) -> None:
        """
        Stopped while the records are read, the server reads no more,
        never serves, fetches nothing, and closes the store once the chunk
        being read has come.
        """
        from txgearmand import replay

        self.fill()
        self.patch(replay, "INDEX_CHUNK", 3)
        self.store.manual_index = True
        self.start(spill_after=2)
        self.store.answer_index()
        self.assertFalse(self.server.durability.ready)
        closed = self.store.closed
        stopped = self.server.stopService()
        self.assertNoResult(stopped)
        self.store.answer_index()
        self.successResultOf(stopped)
        self.assertEqual(self.store.index_asked, [])
        self.assertEqual(self.store.closed, closed + 1)
        self.assertFalse(self.server.durability.ready)
        self.assertEqual(self.server.durability.spill.fetches, 0)  # type: ignore[union-attr]

    def test_due_during_replay_queued_behind(self) -> None:
        """
        A scheduled job that comes due while the records are read is
        queued behind every replayed job.
        """
        from txgearmand import replay

        self.start(spill_after=0)
        client = self.connect()
        for i in range(6):
            client.send(P.SUBMIT_JOB_BG, b"f", b"u%d" % i, b"p%d" % i)
        due = b"%d" % (self.clock.seconds() + 5)
        client.send(P.SUBMIT_JOB_EPOCH, b"f", b"later", due, b"s")
        handles = [p[1][0] for p in client.packets()]
        self.server.stopService()
        self.patch(replay, "INDEX_CHUNK", 3)
        self.store.manual_index = True
        self.start(spill_after=2)
        self.store.answer_index()
        self.clock.advance(10)
        while self.store.index_asked:
            self.store.answer_index()
        self.successResultOf(self.server.when_ready())
        worker = self.connect().can_do(b"f")
        self.assertEqual([g[0] for g in self.drain(worker, 7)], handles)

    def test_whole_jobs_in_id_order(self) -> None:
        """
        Jobs that come back whole (the unique C{-}) are queued in their
        places among the records, in every chunking.
        """
        from txgearmand import replay

        self.start(spill_after=0)
        client = self.connect()
        uniques = [b"u0", b"-", b"u2", b"u3", b"-", b"u5", b"u6", b"-"]
        for i, unique in enumerate(uniques):
            client.send(P.SUBMIT_JOB_BG, b"f", unique, b"p%d" % i)
        handles = [p[1][0] for p in client.packets()]
        self.server.stopService()
        for chunk in (1, 2, 3, 50_000):
            self.patch(replay, "INDEX_CHUNK", chunk)
            self.start(spill_after=2)
            worker = self.connect().can_do(b"f")
            # Taken without completing, so every start replays them all.
            order = []
            for _ in uniques:
                packet = worker.grab()
                self.assertEqual(packet[0], P.JOB_ASSIGN_UNIQ)
                order.append(packet[1][0])
            self.assertEqual(order, handles, chunk)
            self.server.stopService()

    def test_replayed_coalesce_and_new_handles(self) -> None:
        """
        A replayed spilled job still coalesces, and new jobs get new
        handles.
        """
        handles = self.fill()
        self.start(spill_after=3)
        client = self.connect()
        client.send(P.SUBMIT_JOB_BG, b"f", b"u7", b"x")
        client.send(P.SUBMIT_JOB_BG, b"f", b"new", b"x")
        (first, second) = client.packets()
        self.assertEqual(first, (P.JOB_CREATED, (handles[7],)))
        self.assertNotIn(second[1][0], handles)

    def test_dash_unique_whole(self) -> None:
        """
        Jobs with the unique C{-} come back whole (they coalesce on their
        payload, which a record does not keep).
        """
        self.start(spill_after=0)
        client = self.connect()
        for i in range(5):
            client.send(P.SUBMIT_JOB_BG, b"f", b"-", b"payload %d" % i)
        handles = [p[1][0] for p in client.packets()]
        client.send(P.GET_STATUS_UNIQUE, b"-")
        before = client.packets()
        self.server.stopService()
        self.start(spill_after=2)
        self.assertEqual(self.server.table.spilled, {})
        client = self.connect()
        client.send(P.SUBMIT_JOB_BG, b"f", b"-", b"payload 4")
        self.assertEqual(client.packets(), [(P.JOB_CREATED, (handles[4],))])
        client.send(P.GET_STATUS_UNIQUE, b"-")
        self.assertEqual(client.packets(), before)

    def test_handle_taken(self) -> None:
        """
        A spilled row whose handle a replayed job already has gets a new
        handle.
        """
        self.start(spill_after=0)
        self.submit_many(3)
        self.server.stopService()
        job = self.store.jobs[3]
        self.store.jobs[3] = job._replace(handle=self.store.jobs[1].handle)
        self.start(spill_after=1)
        self.assertEqual(len(self.server.table), 3)
        self.assertEqual(len(set(self.server.table.by_handle) | set(self.server.table.spilled)), 3)


class SpilledRecordTests(SynchronousTestCase):
    """
    L{Spilled}'s states.
    """

    def test_repr(self) -> None:
        from txgearmand.records import FunctionQueue

        entry = Spilled(b"H:1", b"u", 1, FunctionQueue(b"f"), 1, None, Spilled.STORED)
        self.assertEqual(repr(entry), "<Spilled b'H:1' state=1>")


class SpillSeenTests(SpillTestMixin, SynchronousTestCase):
    """
    Spilled jobs are seen in the status snapshot and in the metrics.
    """

    def test_status(self) -> None:
        """
        C{/status.json}'s totals count the spilled jobs among the queued,
        and apart.
        """
        from txgearmand import status

        self.start(spill_after=2)
        self.submit_many(6)
        totals = status.snapshot(self.server)["totals"]
        self.assertEqual((totals["queued"], totals["spilled"]), (6, 4))

    def test_metrics(self) -> None:
        """
        C{/metrics} has the spilled jobs and the fetches back.
        """
        try:
            from prometheus_client.parser import text_string_to_metric_families
        except ImportError:
            raise SkipTest("prometheus-client is not installed") from None
        from txgearmand import metrics

        self.start(spill_after=2)
        self.submit_many(6)
        self.drain(self.connect().can_do(b"f"), 2)
        body, _ = metrics.exposition(self.server)
        values = {
            sample.name: sample.value
            for family in text_string_to_metric_families(body.decode())
            for sample in family.samples
        }
        self.assertEqual(values["gearman_jobs_spilled"], 2)
        self.assertEqual(values["gearman_spill_fetches_total"], 2)


class SpillTakeoverTests(SynchronousTestCase):
    """
    With a shared store, spilled jobs another server adopted are dropped
    here, as whole ones are.
    """

    def shared_server(self) -> tuple[Any, Clock, JobServer]:
        """
        A started server on a fake store that is both shared and spilling,
        its clock and the store.
        """
        from txgearmand.interfaces import ISharedJobStore
        from txgearmand.test.test_shared_store import FakeSharedStore

        @implementer(ISharedJobStore, ISpillStore)
        class Both(FakeSharedStore, SpillStore):
            def __init__(self) -> None:
                FakeSharedStore.__init__(self)
                SpillStore.__init__(self)

        store = Both()
        clock = Clock()
        server = JobServer(clock, store=store, job_handle_prefix=b"H:me", spill_after=2)
        server.startService()
        return store, clock, server

    def test_taken_over(self) -> None:
        """
        Taken over, the server forgets the spilled jobs not kept (they run
        on the adopter) and keeps the kept ones, in order; the store's rows
        stay.
        """
        store, clock, server = self.shared_server()
        client = FakeConnection(server)
        handles = [client.submit(b"f", b"%d" % i, ptype=P.SUBMIT_JOB_BG) for i in range(6)]
        self.assertEqual(len(server.table.spilled), 4)
        # Kept: the first (whole) and the fifth (spilled).
        store.adoptions.append(Adoption([], [1, 5]))
        clock.advance(1)
        self.assertEqual(len(server.table), 2)
        self.assertEqual(server.registry.get(b"f").queued, [0, 2, 0])  # type: ignore[union-attr]
        self.assertEqual(len(store.jobs), 6)
        worker = FakeConnection(server).can_do(b"f")
        got = []
        for _ in range(2):
            packet = worker.grab()
            got.append(packet[1][0])
            worker.send(P.WORK_COMPLETE, packet[1][0], b"")
        self.assertEqual(got, [handles[0], handles[4]])
        self.assertEqual(worker.grab(), (P.NO_JOB, ()))
        self.assertEqual(server.table.held_bytes, 0)

    def test_taken_over_tail_freed(self) -> None:
        """
        Spilled jobs another server adopted leave no records in the tail
        (nothing reads a tail with no live job in it), and a function left
        with nothing is forgotten.
        """
        store, clock, server = self.shared_server()
        client = FakeConnection(server)
        for i in range(6):
            client.submit(b"f", b"%d" % i, ptype=P.SUBMIT_JOB_BG)
            client.submit(b"g", b"%d" % i, ptype=P.SUBMIT_JOB_BG)
        fq = server.registry.get(b"f")
        assert fq is not None and fq.tails is not None
        # Kept: f's first two (whole) and none of g's.
        store.adoptions.append(Adoption([], [1, 3]))
        clock.advance(1)
        self.assertEqual(len(server.table), 2)
        self.assertEqual(fq.queued, [0, 2, 0])
        self.assertEqual([len(tail) for tail in fq.tails], [0, 0, 0])
        self.assertIsNone(server.registry.get(b"g"))
        self.assertEqual(server.flow.jobs_ended, 10)
