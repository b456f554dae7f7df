"""
How the L{JobServer} uses its store: acknowledging only what is committed,
keeping replies in order, forgetting what ends, and replaying at start-up.
"""

from __future__ import annotations

from collections.abc import Sequence

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from txgearmand.interfaces import IJobStore, StoredJob
from txgearmand.job import HIGH, LOW, NORMAL
from txgearmand.server import JobServer
from txgearmand.store import MemoryStore
from txgearmand.test.helpers import FakeConnection
from txgearmand.wire import PacketType as P
from txgearmand.wire import encode_request


@implementer(IJobStore)
class ManualStore(MemoryStore):
    """
    A memory store whose adds commit only when the test says so.
    """

    def __init__(self) -> None:
        super().__init__()
        self.batches: list[tuple[list[StoredJob], Deferred[None]]] = []
        self.removed: list[int] = []
        self.fail_next = False

    @property
    def waiting(self) -> list[StoredJob]:
        """
        The jobs given to the store and not yet committed.
        """
        return [job for jobs, _ in self.batches for job in jobs]

    def add_many(self, jobs: Sequence[StoredJob]) -> Deferred[None]:
        d: Deferred[None] = Deferred()
        self.batches.append((list(jobs), d))
        return d

    def remove_many(self, job_ids: Sequence[int]) -> Deferred[None]:
        self.removed.extend(job_ids)
        return super().remove_many(job_ids)

    def commit(self) -> None:
        batches, self.batches = self.batches, []
        for jobs, d in batches:
            if self.fail_next:
                d.errback(OSError("disk full"))
            else:
                for job in jobs:
                    self.jobs[job.id] = job
                d.callback(None)


class DurabilityTestMixin:
    store: MemoryStore

    def start(self, store: MemoryStore | None = None, **kwargs: object) -> JobServer:
        self.clock = Clock()
        if store is not None:
            self.store = store
        kwargs.setdefault("job_handle_prefix", b"H:d")
        self.server = JobServer(self.clock, store=self.store, **kwargs)  # type: ignore[arg-type]
        self.server.startService()
        return self.server

    def connect(self) -> FakeConnection:
        return FakeConnection(self.server)

    def commit(self) -> None:
        """
        The store commits what waits; the replies go out on the next turn.
        """
        self.store.commit()  # type: ignore[attr-defined]
        self.clock.advance(0)


class AcknowledgeTests(DurabilityTestMixin, SynchronousTestCase):
    """
    JOB_CREATED for a background job only after its record is committed.
    """

    def setUp(self) -> None:
        self.start(ManualStore())

    def test_created_after_commit(self) -> None:
        """
        A background submission is answered once the store commits it.
        """
        client = self.connect()
        client.send(P.SUBMIT_JOB_BG, b"f", b"u", b"data")
        self.assertEqual(client.packets(), [])
        (stored,) = self.store.waiting  # type: ignore[attr-defined]
        self.assertEqual(stored, StoredJob(1, b"H:d:1", b"f", b"u", b"data", NORMAL, None, b""))
        self.commit()
        self.assertEqual(client.packets(), [(P.JOB_CREATED, (b"H:d:1",))])

    def test_replies_keep_order(self) -> None:
        """
        What follows an unacknowledged submission on its connection waits
        behind it; other connections are not held up.
        """
        client = self.connect()
        other = self.connect()
        client.send_bytes(
            encode_request(P.SUBMIT_JOB_BG, b"f", b"", b"1")
            + encode_request(P.ECHO_REQ, b"after")
            + encode_request(P.SUBMIT_JOB, b"g", b"", b"fg")
        )
        other.send(P.ECHO_REQ, b"other")
        self.assertEqual(other.packets(), [(P.ECHO_RES, (b"other",))])
        self.assertEqual(client.packets(), [])
        client.transport.writes = 0
        self.commit()
        self.assertEqual(
            client.packets(),
            [
                (P.JOB_CREATED, (b"H:d:1",)),
                (P.ECHO_RES, (b"after",)),
                (P.JOB_CREATED, (b"H:d:2",)),
            ],
        )
        self.assertEqual(client.transport.writes, 1)

    def test_one_commit_acknowledges_a_batch(self) -> None:
        """
        Pipelined submissions are all answered by one commit.
        """
        client = self.connect()
        client.send_bytes(
            b"".join(encode_request(P.SUBMIT_JOB_BG, b"f", b"", b"%d" % i) for i in range(50))
        )
        self.assertEqual(len(self.store.waiting), 50)  # type: ignore[attr-defined]
        self.assertEqual(len(self.store.batches), 1)  # type: ignore[attr-defined]
        self.commit()
        self.assertEqual(len(client.packets()), 50)

    def test_store_failure(self) -> None:
        """
        When the store cannot take a job, the submitter gets QUEUE_ERROR and
        the job is not kept.
        """
        client = self.connect()
        client.send(P.SUBMIT_JOB_BG, b"f", b"u", b"x")
        self.store.fail_next = True  # type: ignore[attr-defined]
        self.commit()
        ((ptype, (code, text)),) = client.packets()
        self.assertEqual((ptype, code), (P.ERROR, b"QUEUE_ERROR"))
        self.assertIn(b"disk full", text)
        self.assertEqual(self.server.jobs(), [])
        self.assertIsNone(self.server.job_of_unique(b"f", b"u"))

    def test_store_failure_on_joining_foreground(self) -> None:
        """
        A background submission that joined a foreground job and that the
        store could not take is refused; the job is foreground again, so it
        is dropped when its client leaves before a worker takes it.
        (Found by the fuzzer: it was kept, unstored, for nobody.)
        """
        fg, bg = self.connect(), self.connect()
        fg.send(P.SUBMIT_JOB, b"f", b"u", b"x")
        self.assertEqual(fg.packets(), [(P.JOB_CREATED, (b"H:d:1",))])
        bg.send(P.SUBMIT_JOB_BG, b"f", b"u", b"x")
        self.store.fail_next = True  # type: ignore[attr-defined]
        self.commit()
        ((ptype, (code, _)),) = bg.packets()
        self.assertEqual((ptype, code), (P.ERROR, b"QUEUE_ERROR"))
        [job] = self.server.jobs()
        self.assertTrue(job.require_listener)
        fg.disconnect()
        self.assertEqual(self.server.jobs(), [])

    def test_store_failure_after_foreground_left(self) -> None:
        """
        If the foreground client left while the store worked, the refused
        job is dropped at once.
        """
        fg, bg = self.connect(), self.connect()
        fg.send(P.SUBMIT_JOB, b"f", b"u", b"x")
        bg.send(P.SUBMIT_JOB_BG, b"f", b"u", b"x")
        fg.disconnect()
        self.assertEqual(len(self.server.jobs()), 1)
        self.store.fail_next = True  # type: ignore[attr-defined]
        self.commit()
        self.assertEqual(self.server.jobs(), [])

    def test_duplicate_waits_for_same_commit(self) -> None:
        """
        A duplicate background submission of an uncommitted job is
        answered with the same handle when that job is committed.
        """
        c1, c2 = self.connect(), self.connect()
        c1.send(P.SUBMIT_JOB_BG, b"f", b"u", b"x")
        c2.send(P.SUBMIT_JOB_BG, b"f", b"u", b"x")
        self.assertEqual(len(self.store.waiting), 1)  # type: ignore[attr-defined]
        self.assertEqual(c2.packets(), [])
        self.commit()
        self.assertEqual(c1.packets(), c2.packets())

    def test_same_connection_joins_twice(self) -> None:
        """
        A connection that submits one unique id twice before the commit
        gets two JOB_CREATED for it, in order with what it was sent
        meanwhile.
        """
        client = self.connect()
        client.send(P.SUBMIT_JOB_BG, b"f", b"u", b"x")
        client.send(P.ECHO_REQ, b"between")
        client.send(P.SUBMIT_JOB_BG, b"f", b"u", b"x")
        client.send(P.SUBMIT_JOB_BG, b"f", b"v", b"y")
        self.assertEqual(client.packets(), [])
        self.commit()
        self.assertEqual(
            client.packets(),
            [
                (P.JOB_CREATED, (b"H:d:1",)),
                (P.ECHO_RES, (b"between",)),
                (P.JOB_CREATED, (b"H:d:1",)),
                (P.JOB_CREATED, (b"H:d:2",)),
            ],
        )
        # Nothing is kept for the replies sent.
        self.assertEqual(client.protocol._pending_jobs, set())
        self.assertEqual(client.protocol._twice, set())

    def test_same_connection_joins_twice_refused(self) -> None:
        """
        If the store fails that commit, both submissions of the id are
        refused, each in its place.
        """
        client = self.connect()
        client.send(P.SUBMIT_JOB_BG, b"f", b"u", b"x")
        client.send(P.ECHO_REQ, b"between")
        client.send(P.SUBMIT_JOB_BG, b"f", b"u", b"x")
        self.store.fail_next = True  # type: ignore[attr-defined]
        self.commit()
        self.assertEqual(
            [(ptype, args[0]) for ptype, args in client.packets()],
            [(P.ERROR, b"QUEUE_ERROR"), (P.ECHO_RES, b"between"), (P.ERROR, b"QUEUE_ERROR")],
        )
        self.assertEqual(client.protocol._pending_jobs, set())
        self.assertEqual(self.server.jobs(), [])

    def test_foreground_not_stored(self) -> None:
        """
        Foreground jobs are not stored (as in C gearmand): their client is
        gone with the server anyway.
        """
        client = self.connect()
        client.send(P.SUBMIT_JOB, b"f", b"", b"x")
        self.assertEqual(len(client.packets()), 1)
        self.assertEqual(self.store.waiting, [])  # type: ignore[attr-defined]

    def test_background_joining_foreground_is_stored(self) -> None:
        """
        A background submission that joins a foreground job makes it
        stored: the background submitter was promised durability.
        """
        fg, bg = self.connect(), self.connect()
        fg.send(P.SUBMIT_JOB, b"f", b"u", b"x")
        bg.send(P.SUBMIT_JOB_BG, b"f", b"u", b"x")
        self.assertEqual(bg.packets(), [])
        self.assertEqual(len(self.store.waiting), 1)  # type: ignore[attr-defined]
        self.commit()
        self.assertEqual(bg.packets(), fg.packets())

    def test_job_ends_record_removed(self) -> None:
        """
        A stored job that ends - done, failed (with the failed list off),
        cancelled - is removed.
        """
        self.server.stopService()
        self.start(ManualStore(), failed_keep=0)
        client = self.connect()
        for unique in (b"a", b"b", b"c"):
            client.send(P.SUBMIT_JOB_BG, b"f", unique, b"")
        self.commit()
        handles = [p[1][0] for p in client.packets()]
        worker = self.connect().can_do(b"f")
        worker.grab()
        worker.send(P.WORK_COMPLETE, handles[0], b"")
        worker.grab()
        worker.send(P.WORK_FAIL, handles[1])
        self.assertEqual(client.admin(b"cancel job " + handles[2]), b"OK\r\n")
        self.assertEqual(self.store.removed, [1, 2, 3])  # type: ignore[attr-defined]
        self.assertEqual(self.store.jobs, {})

    def test_requeue_keeps_record(self) -> None:
        """
        A job put back after its worker was lost stays stored.
        """
        client = self.connect()
        client.send(P.SUBMIT_JOB_BG, b"f", b"", b"")
        self.commit()
        worker = self.connect().can_do(b"f")
        worker.grab()
        worker.disconnect()
        self.assertEqual(self.store.removed, [])  # type: ignore[attr-defined]
        self.assertEqual(len(self.store.jobs), 1)

    def test_epoch_stored(self) -> None:
        """
        A scheduled job is stored with its time.
        """
        client = self.connect()
        client.send(P.SUBMIT_JOB_EPOCH, b"f", b"", b"5000", b"later")
        (stored,) = self.store.waiting  # type: ignore[attr-defined]
        self.assertEqual(stored.when, 5000.0)


class ReplayTests(DurabilityTestMixin, SynchronousTestCase):
    """
    Starting on a store that holds jobs.
    """

    def setUp(self) -> None:
        self.store = MemoryStore()

    def fill(self) -> None:
        """
        Run a server that accepts some jobs, then stop it.
        """
        self.start()
        client = self.connect()
        client.send(P.SUBMIT_JOB_LOW_BG, b"f", b"", b"low")
        client.send(P.SUBMIT_JOB_BG, b"f", b"u1", b"normal")
        client.send(P.SUBMIT_JOB_HIGH_BG, b"f", b"", b"high")
        client.send(P.SUBMIT_JOB_BG, b"g", b"-", b"dash")
        client.send(P.SUBMIT_JOB_EPOCH, b"f", b"", b"100", b"scheduled")
        client.send(P.SUBMIT_JOB, b"f", b"", b"foreground")
        self.clock.advance(0)
        self.handles = [p[1][0] for p in client.packets()]
        self.server.stopService()

    def test_replay(self) -> None:
        """
        A new server on the store queues the background jobs again with
        their priority, unique id, function, payload and handle, in order;
        the foreground job is not there.
        """
        self.fill()
        self.start()
        jobs = {j.handle: j for j in self.server.jobs()}
        self.assertEqual(sorted(jobs), sorted(self.handles[:5]))
        worker = self.connect().can_do(b"f")
        order = [worker.grab()[1] for _ in range(3)]
        self.assertEqual(
            order,
            [
                (self.handles[2], b"f", b"", b"high"),
                (self.handles[1], b"f", b"u1", b"normal"),
                (self.handles[0], b"f", b"", b"low"),
            ],
        )
        self.assertEqual(worker.grab(), (P.NO_JOB, ()))
        self.assertEqual(jobs[self.handles[1]].priority, NORMAL)
        self.assertEqual(jobs[self.handles[2]].priority, HIGH)
        self.assertEqual(jobs[self.handles[0]].priority, LOW)

    def test_coalescing_after_replay(self) -> None:
        """
        Unique ids (and C{-} payloads) still coalesce onto replayed jobs.
        """
        self.fill()
        self.start()
        client = self.connect()
        self.assertEqual(client.submit(b"f", b"x", unique=b"u1"), self.handles[1])
        self.assertEqual(client.submit(b"g", b"dash", unique=b"-"), self.handles[3])

    def test_scheduled_after_replay(self) -> None:
        """
        A scheduled job is released at its time after a restart, and at
        once if its time passed while the server was down.
        """
        self.fill()
        self.start()
        self.clock.advance(99)
        worker = self.connect().can_do(b"f")
        for _ in range(3):
            worker.grab()
        self.assertEqual(worker.grab(), (P.NO_JOB, ()))
        self.clock.advance(1)
        self.assertEqual(worker.grab()[1][3], b"scheduled")
        self.server.stopService()
        store = self.store
        self.fill()
        late = Clock()
        late.advance(500)
        server = JobServer(late, store=store, job_handle_prefix=b"H:d")
        server.startService()
        payloads = {j.data for j in server.jobs() if j.state.name == "QUEUED"}
        self.assertIn(b"scheduled", payloads)

    def test_new_handles_do_not_collide(self) -> None:
        """
        Handles given after a replay follow the replayed ones.
        """
        self.fill()
        self.start()
        client = self.connect()
        client.send(P.SUBMIT_JOB_BG, b"f", b"", b"new")
        self.clock.advance(0)
        ((_, (new,)),) = client.packets()
        stored = self.handles[:5]
        self.assertNotIn(new, stored)
        self.assertGreater(int(new.rsplit(b":", 1)[1]), int(stored[-1].rsplit(b":", 1)[1]))

    def test_max_queue_counts_replayed(self) -> None:
        """
        Max-queue limits count replayed jobs; none of them is dropped.
        """
        self.fill()
        self.start(max_queue={b"f": 2})
        self.assertEqual(self.server.registry.get(b"f").total(), 4)  # type: ignore[union-attr]
        client = self.connect()
        client.send(P.SUBMIT_JOB, b"f", b"", b"")
        self.assertEqual(client.packets()[0][1][0], b"QUEUE_ERROR")

    def test_connections_wait_for_replay(self) -> None:
        """
        A connection made before the store is replayed is not read until
        it is.
        """
        loading: Deferred[list[StoredJob]] = Deferred()

        @implementer(IJobStore)
        class SlowStore(MemoryStore):
            def load(self) -> Deferred[list[StoredJob]]:
                return loading

        self.start(SlowStore())
        self.assertFalse(self.server.ready)
        conn = self.connect()
        self.assertEqual(conn.transport.producerState, "paused")
        loading.callback([StoredJob(7, b"H:d:7", b"f", b"", b"old", 1, None, b"")])
        self.assertTrue(self.server.ready)
        self.assertEqual(conn.transport.producerState, "producing")
        self.assertEqual(self.server.job_by_handle(b"H:d:7").data, b"old")  # type: ignore[union-attr]

    def test_store_fails_to_open(self) -> None:
        """
        A store that fails to open ends the server (through its
        C{on_shutdown}) instead of running without durability.
        """

        @implementer(IJobStore)
        class BrokenStore(MemoryStore):
            def open(self) -> Deferred[None]:
                return fail(OSError("no such database"))

        self.clock = Clock()
        server = JobServer(self.clock, store=BrokenStore())
        ended: list[bool] = []
        server.on_shutdown = lambda: ended.append(True)
        server.startService()
        self.clock.advance(0)
        self.assertEqual(ended, [True])
        self.assertFalse(server.accepting)
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 1)

    def test_stop_closes_store(self) -> None:
        """
        Stopping the server closes the store.
        """
        self.start()
        self.assertTrue(self.store.opened)
        self.server.stopService()
        self.assertFalse(self.store.opened)

    def test_stop_while_loading_closes_store(self) -> None:
        """
        Stopped while the store loads, the server waits for the load to
        end, never serves, and closes the store.
        """
        loading: Deferred[list[StoredJob]] = Deferred()

        @implementer(IJobStore)
        class SlowStore(MemoryStore):
            def load(self) -> Deferred[list[StoredJob]]:
                return loading

        store = SlowStore()
        self.start(store)
        stopped = self.server.stopService()
        self.assertNoResult(stopped)
        self.assertTrue(store.opened)
        loading.callback([StoredJob(7, b"H:d:7", b"f", b"", b"old", 1, None, b"")])
        self.successResultOf(stopped)
        self.assertFalse(store.opened)
        self.assertFalse(self.server.ready)

    def test_stop_after_failed_open(self) -> None:
        """
        A store that failed to open is not closed at the stop (it has
        nothing open), and the stop ends.
        """
        closed: list[bool] = []

        @implementer(IJobStore)
        class BrokenStore(MemoryStore):
            def open(self) -> Deferred[None]:
                return fail(OSError("no such database"))

            def close(self) -> Deferred[None]:
                closed.append(True)
                return succeed(None)

        self.start(BrokenStore())
        self.successResultOf(self.server.stopService())
        self.assertEqual(closed, [])
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 1)


class BackpressureTests(DurabilityTestMixin, SynchronousTestCase):
    """
    A connection with many submissions waiting for the store stops reading
    until half of them are answered.
    """

    def setUp(self) -> None:
        from txgearmand import commits

        self.patch(commits, "MAX_UNCOMMITTED", 4)
        self.start(ManualStore())

    def test_pauses_and_resumes(self) -> None:
        """
        At C{MAX_UNCOMMITTED} uncommitted submissions reading stops; once the
        store commits them it starts again; every submission is answered.
        """
        client = self.connect()
        other = self.connect()
        for i in range(3):
            client.send(P.SUBMIT_JOB_BG, b"f", b"", b"%d" % i)
        self.assertEqual(client.transport.producerState, "producing")
        client.send(P.SUBMIT_JOB_BG, b"f", b"", b"3")
        self.assertEqual(client.transport.producerState, "paused")
        self.assertEqual(other.transport.producerState, "producing")
        self.commit()
        self.assertEqual(client.transport.producerState, "producing")
        self.assertEqual([p[0] for p in client.packets()], [P.JOB_CREATED] * 4)

    def test_output_pause_kept(self) -> None:
        """
        A connection paused because its peer does not read stays paused
        when its submissions are committed.
        """
        client = self.connect()
        for i in range(4):
            client.send(P.SUBMIT_JOB_BG, b"f", b"", b"%d" % i)
        client.protocol.pauseProducing()
        self.commit()
        self.assertEqual(client.transport.producerState, "paused")
        client.protocol.resumeProducing()
        self.assertEqual(client.transport.producerState, "producing")

    def test_commit_pause_kept(self) -> None:
        """
        Its peer reading again does not resume a connection that waits for
        the store.
        """
        client = self.connect()
        for i in range(4):
            client.send(P.SUBMIT_JOB_BG, b"f", b"", b"%d" % i)
        client.protocol.pauseProducing()
        client.protocol.resumeProducing()
        self.assertEqual(client.transport.producerState, "paused")
        self.commit()
        self.assertEqual(client.transport.producerState, "producing")

    def test_not_a_stall(self) -> None:
        """
        An incomplete packet held while reading is paused for the store is
        not the peer's stall; once reading resumes, it is watched again.
        """
        client = self.connect()
        for i in range(3):
            client.send(P.SUBMIT_JOB_BG, b"f", b"", b"%d" % i)
        # The read that reaches the limit ends with the start of a packet.
        client.send_bytes(encode_request(P.SUBMIT_JOB_BG, b"f", b"", b"3") + b"\0REQ")
        self.assertEqual(client.transport.producerState, "paused")
        self.clock.advance(61)
        self.assertFalse(client.closed)
        self.commit()
        self.assertEqual(client.transport.producerState, "producing")
        self.clock.advance(61)
        self.assertTrue(client.closed)
