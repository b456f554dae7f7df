"""
Several servers on one PostgreSQL database: each store (a node) owns the
jobs it accepted, on a real PostgreSQL server (skipped, saying why, when
none can be had); and how the job server uses a shared store's adoptions
(with a fake store).
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock, deferLater
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from txgearmand.interfaces import Adoption, ISharedJobStore, StoredJob
from txgearmand.server import JobServer
from txgearmand.store import MemoryStore
from txgearmand.store.postgresql import PostgreSQLStore
from txgearmand.test import _postgres, _process
from txgearmand.test.helpers import FakeConnection
from txgearmand.test.test_crash import RawWorker
from txgearmand.wire import PacketType as P

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


class _SharedTestsMixin(_postgres.DriverMixin, TestCase):
    """
    A fresh database per test, and stores (nodes) on it that are closed at
    the end; through psycopg 3 (each test case has a pg8000 twin).
    """

    def setUp(self) -> None:
        self.use_driver()
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
        return _postgres.query(self.url, query, *args)


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
            self.sql(
                "INSERT INTO txgearmand_jobs VALUES (%s, %s, %s, %s, %s, %s, %s, %s)", *job(n)[:8]
            )
        a = await self.node("a")
        b = await self.node("b")
        self.assertEqual(await a.load(), [job(1), job(2)])
        self.assertEqual(await b.load(), [])
        await b.add_many([job(1, b"g")])
        await a.remove_many([1])
        self.assertEqual(await a.load(), [job(2)])
        self.assertEqual(await b.load(), [job(1, b"g")])

    async def test_stored_again(self) -> None:
        """
        A job stored again after a failed attempt (attempts and next run
        time) replaces its row, and only while the row is this node's at
        its epoch; the attempts go with the job when another node adopts
        it.
        """
        a = await self.node("a", takeover_after=1)
        await a.add_many([job(1)])
        again = job(1)._replace(attempts=2, when=1234.5)
        await a.update_many([again])
        self.assertEqual(await a.load(), [again])
        self.sql("UPDATE txgearmand_jobs_nodes SET heartbeat = now() - interval '1 minute'")
        b = await self.node("b", takeover_after=1)
        (adopted,) = (await b.adopt()).adopted
        self.assertEqual((adopted.attempts, adopted.when), (2, 1234.5))
        # Adopted: a's later rewrite touches nothing of it, before a knows
        # (its old epoch) and after (its new one): the row is not a's.
        await a.update_many([job(1)._replace(attempts=3)])
        self.assertEqual((await a.adopt()).kept, [])
        await a.update_many([job(1)._replace(attempts=4)])
        self.assertEqual([j.attempts for j in await b.load()], [2])
        self.assertEqual(await a.load(), [])
        self.assertEqual(len(self.sql("SELECT id FROM txgearmand_jobs")), 1)

    async def test_failed_columns(self) -> None:
        """
        A job stored again in the failed list (its first failure time,
        when it landed there, its reason) replaces its row and is read
        back so; adopted, it keeps them.
        """
        a = await self.node("a", takeover_after=1)
        await a.add_many([job(1), job(2)])
        failed = job(1)._replace(
            attempts=3, first_failed=10.5, failed_at=20.25, reason="exception: boom\tü"
        )
        await a.update_many([failed])
        self.assertEqual(await a.load(), [failed, job(2)])
        self.sql("UPDATE txgearmand_jobs_nodes SET heartbeat = now() - interval '1 minute'")
        b = await self.node("b", takeover_after=1)
        one, two = (await b.adopt()).adopted
        self.assertEqual(one._replace(id=1), failed)
        self.assertEqual((two.failed_at, two.first_failed, two.reason), (None, None, ""))


class PG8000OwnershipTests(OwnershipTests):
    """
    L{OwnershipTests} through pg8000.
    """

    driver = "pg8000"


def payloads(jobs: list[StoredJob]) -> list[bytes]:
    return sorted(job.payload for job in jobs)


class TakeoverTests(_SharedTestsMixin):
    """
    A live node adopts a dead node's jobs, each exactly once; the dead
    node, back, is fenced.
    """

    def age(self, name: str) -> None:
        """
        Make a node's heartbeat an hour old: dead to any takeover time.
        """
        self.sql(
            "UPDATE txgearmand_jobs_nodes SET heartbeat = now() - interval '1 hour'"
            " WHERE name = %s",
            name,
        )

    async def test_adopts_after_heartbeats_stop(self) -> None:
        """
        Node B adopts node A's jobs once A has not beaten for the takeover
        time, and not before; they are B's from then on, under new ids.
        """
        a = await self.node("a", takeover_after=0.5)
        b = await self.node("b", takeover_after=0.5)
        await a.add_many([job(1), job(2), job(3)])
        await b.add_many([job(1, b"g")])
        self.assertEqual(await b.adopt(), ([], None))
        await deferLater(reactor, 0.2, lambda: None)
        await a.adopt()  # a heartbeat: alive still
        await deferLater(reactor, 0.4, lambda: None)
        self.assertEqual((await b.adopt()).adopted, [])
        await deferLater(reactor, 0.5, lambda: None)
        adoption = await b.adopt()
        self.assertIsNone(adoption.kept)
        self.assertEqual(payloads(adoption.adopted), payloads([job(1), job(2), job(3)]))
        self.assertEqual([j.payload for j in adoption.adopted], [b"data 1", b"data 2", b"data 3"])
        self.assertTrue(all(j.id < 0 for j in adoption.adopted))
        self.assertEqual(await b.load(), [*adoption.adopted, job(1, b"g")])
        self.assertEqual((await b.adopt()).adopted, [])
        # B removes an adopted job by its new id.
        await b.remove_many([adoption.adopted[0].id])
        self.assertEqual(len(await b.load()), 3)

    async def test_fencing(self) -> None:
        """
        A node taken over cannot remove the adopted jobs; on its next
        heartbeat it learns it was taken over, says so, and keeps only the
        jobs it stored after the adoption.
        """
        a = await self.node("a", takeover_after=5)
        b = await self.node("b", takeover_after=5)
        await a.add_many([job(1), job(2)])
        self.age("a")
        # Draining to stop: nothing is taken.
        self.assertEqual(await b.adopt(take=False), ([], None))
        adopted = (await b.adopt()).adopted
        self.assertEqual(len(adopted), 2)
        await a.remove_many([1, 2])
        await a.add_many([job(3)])
        self.assertEqual(await b.load(), adopted)
        epoch = a.epoch
        adoption = await a.adopt()
        self.assertEqual(adoption, ([], [3]))
        self.assertGreater(a.epoch, epoch)
        self.assertEqual(await a.load(), [job(3)])
        await a.remove_many([3])
        self.assertEqual(await a.load(), [])
        self.assertEqual(await b.load(), adopted)
        # Alive again: its heartbeats are taken, nothing more is lost.
        self.assertEqual(await a.adopt(), ([], None))

    async def test_race(self) -> None:
        """
        Two nodes adopting the same dead node at once: each job is adopted
        by exactly one of them, time after time.
        """
        b = await self.node("b", takeover_after=5)
        c = await self.node("c", takeover_after=5)
        from twisted.internet.defer import gatherResults

        for n in range(20):
            name = f"dead{n}"
            dead = await self.node(name)
            jobs = [job(i) for i in range(1, 31)]
            await dead.add_many(jobs)
            await dead.close()
            self.age(name)
            one, other = await gatherResults([b.adopt(), c.adopt()])
            got = one.adopted + other.adopted
            self.assertEqual(payloads(got), payloads(jobs), f"round {n}")
        self.assertEqual(len(await b.load()) + len(await c.load()), 20 * 30)
        self.assertEqual(
            self.sql("SELECT count(*) FROM txgearmand_jobs WHERE owner NOT IN ('b', 'c')"),
            [(0,)],
        )


class PG8000TakeoverTests(TakeoverTests):
    """
    L{TakeoverTests} through pg8000.
    """

    driver = "pg8000"


@implementer(ISharedJobStore)
class FakeSharedStore(MemoryStore):
    """
    A memory store whose adoptions the test scripts.
    """

    node = "me"
    poll_interval = 1.0

    def __init__(self) -> None:
        super().__init__()
        self.adoptions: list[Adoption] = []
        self.calls = 0
        self.takes: list[bool] = []

    def adopt(self, take: bool = True) -> Deferred[Adoption]:
        self.calls += 1
        self.takes.append(take)
        if self.adoptions:
            return succeed(self.adoptions.pop(0))
        return succeed(Adoption([], None))


class SharedDurabilityTests(SynchronousTestCase):
    """
    The job server polls a shared store: it queues adopted jobs, and drops
    those it lost when taken over.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.store = FakeSharedStore()
        self.server = JobServer(self.clock, store=self.store, job_handle_prefix=b"H:me")
        self.server.startService()

    def test_interface(self) -> None:
        """
        The PostgreSQL store is a shared store.
        """
        verifyObject(ISharedJobStore, PostgreSQLStore(reactor, "postgresql://u@h/db", node="n"))

    def test_polls_and_queues_adopted(self) -> None:
        """
        Every poll interval the store is asked; adopted jobs are queued
        under new handles of this server, and a worker gets them.
        """
        self.assertEqual(self.store.calls, 0)
        self.clock.advance(1)
        self.assertEqual(self.store.calls, 1)
        worker = FakeConnection(self.server).can_do(b"f")
        worker.send(P.PRE_SLEEP)
        adopted = StoredJob(-5, b"H:other:7", b"f", b"u", b"adopted", 1, None, b"")
        self.store.adoptions.append(Adoption([adopted], None))
        self.clock.advance(1)
        (job,) = self.server.jobs()
        self.assertEqual(job.handle, b"H:me:1")
        self.assertEqual(job.store_id, -5)
        self.assertEqual(worker.packets(), [(P.NOOP, ())])
        self.assertEqual(worker.grab(), (P.JOB_ASSIGN_UNIQ, (b"H:me:1", b"f", b"u", b"adopted")))
        worker.send(P.WORK_COMPLETE, b"H:me:1", b"")
        self.clock.advance(0)
        self.assertEqual(self.server.jobs(), [])

    def test_adopted_failed_job(self) -> None:
        """
        An adopted job that was in the dead server's failed list joins
        this server's failed list (under a new handle), not a queue.
        """
        failed = StoredJob(-6, b"H:other:8", b"f", b"u", b"p", 1, None, b"", 2, 5.0, 9.0, "failed")
        self.store.jobs[-6] = failed
        self.store.adoptions.append(Adoption([failed], None))
        self.clock.advance(1)
        self.assertEqual(self.server.jobs(), [])
        (entry,) = self.server.failed.list()
        self.assertEqual(
            (entry.handle, entry.store_id, entry.attempts, entry.last_failed, entry.reason),
            (b"H:me:1", -6, 2, 9.0, "failed"),
        )
        # Taken over later: it is no longer this server's to keep.
        self.store.adoptions.append(Adoption([], []))
        self.clock.advance(1)
        self.assertEqual(self.server.failed.list(), [])
        self.assertEqual(self.store.jobs, {-6: failed})

    def test_taken_over(self) -> None:
        """
        Taken over, the server drops the stored jobs not kept, queued or
        running, without removing them from the store; the running one's
        late result is dropped quietly; kept jobs stay.
        """
        client = FakeConnection(self.server)
        running = client.submit(b"f", b"one", ptype=P.SUBMIT_JOB_BG)
        client.submit(b"f", b"two", ptype=P.SUBMIT_JOB_BG)
        kept = client.submit(b"f", b"three", ptype=P.SUBMIT_JOB_BG)
        worker = FakeConnection(self.server).can_do(b"f")
        self.assertEqual(worker.grab()[1][0], running)
        ids = {job.handle: job.store_id or 0 for job in self.server.jobs()}
        self.store.adoptions.append(Adoption([], [ids[kept]]))
        self.clock.advance(1)
        self.assertEqual([job.handle for job in self.server.jobs()], [kept])
        self.assertEqual(len(self.store.jobs), 3)
        worker.packets()
        worker.send(P.WORK_COMPLETE, running, b"late")
        self.clock.advance(0)
        self.assertEqual(worker.packets(), [])
        self.assertEqual(len(self.store.jobs), 3)
        self.assertEqual(worker.grab()[1][0], kept)

    def test_taken_over_with_listeners(self) -> None:
        """
        A foreground submission that joined a stored job (same unique id)
        gets WORK_FAIL when the job is dropped: it runs on another server
        now, and its result will not come here.
        """
        client = FakeConnection(self.server)
        handle = client.submit(b"f", b"x", unique=b"u", ptype=P.SUBMIT_JOB_BG)
        waiter = FakeConnection(self.server)
        self.assertEqual(waiter.submit(b"f", b"x", unique=b"u"), handle)
        self.store.adoptions.append(Adoption([], []))
        self.clock.advance(1)
        self.assertEqual(self.server.jobs(), [])
        self.assertEqual(waiter.packets(), [(P.WORK_FAIL, (handle,))])
        self.assertEqual(client.packets(), [])

    def test_not_while_draining(self) -> None:
        """
        A server draining to stop still proves it is alive, but adopts
        nothing.
        """
        worker = FakeConnection(self.server).can_do(b"f")
        client = FakeConnection(self.server)
        handle = client.submit(b"f", b"one", ptype=P.SUBMIT_JOB_BG)
        self.assertEqual(worker.grab()[1][0], handle)
        self.clock.advance(1)
        self.server.shutdown(graceful=True)
        self.clock.advance(1)
        self.assertEqual(self.store.takes, [True, False])

    def test_stop(self) -> None:
        """
        Stopping ends the polling.
        """
        self.clock.advance(1)
        self.server.stopService()
        self.clock.advance(0)
        self.assertEqual(self.clock.getDelayedCalls(), [])


class TwoServersTests(_postgres.DriverMixin, SynchronousTestCase):
    """
    Two real C{twistd gearmand} on one PostgreSQL database, through
    psycopg 3.
    """

    def start_two(self) -> tuple[_process.Server, _process.Server]:
        """
        Two servers on a fresh database, taking over after 1 s.
        """
        self.use_driver()
        try:
            url = _postgres.fresh_database()
        except _postgres.Unavailable as e:
            raise SkipTest(str(e)) from None
        servers = []
        for name in ("a", "b"):
            workdir = Path(self.mktemp()).resolve() / name
            workdir.mkdir(parents=True)
            server = _process.twistd_gearmand(workdir, f"--queue={url}", "--takeover-after=1")
            self.addCleanup(server.kill)
            servers.append(server.start())
        return servers[0], servers[1]

    def submit(self, server: _process.Server, prefix: bytes, n: int) -> list[bytes]:
        """
        Submit background jobs, each acknowledged; their payloads.
        """
        conn = _process.PacketConnection(server.port)
        payloads = []
        for i in range(n):
            payload = b"%s-%d" % (prefix, i)
            conn.send(P.SUBMIT_JOB_BG, b"shared", b"", payload)
            conn.expect(P.JOB_CREATED)
            payloads.append(payload)
        conn.close()
        return payloads

    def work(self, server: _process.Server, n: int) -> list[bytes]:
        """
        Run jobs on a server until C{n} are done (or 30 s pass).
        """
        worker = RawWorker(server.port, b"shared")
        self.addCleanup(worker.close)
        done: list[bytes] = []
        deadline = time.monotonic() + 30
        while len(done) < n and time.monotonic() < deadline:
            job = worker.grab()
            if job is None:
                time.sleep(0.1)
                continue
            done.append(job[1])
            worker.complete(job[0])
        return done

    def test_paused_and_back(self) -> None:
        """
        A server paused (SIGSTOP) past the takeover time has its jobs run
        by the other; resumed, it says once that it was taken over, and
        has none of them left to run.
        """
        a, b = self.start_two()
        expected = self.submit(a, b"a", 20)
        assert a.process is not None
        os.kill(a.process.pid, signal.SIGSTOP)
        try:
            done = self.work(b, len(expected))
        finally:
            os.kill(a.process.pid, signal.SIGCONT)
        self.assertEqual(sorted(done), sorted(expected), b.log()[-3000:])
        deadline = time.monotonic() + 10
        while "dropped here" not in a.log() and time.monotonic() < deadline:
            time.sleep(0.1)
        self.assertEqual(a.log().count("dropped here"), 1, a.log()[-3000:])
        self.assertEqual(_process.admin(a.port, b"status"), b".\n")
        worker = RawWorker(a.port, b"shared")
        self.addCleanup(worker.close)
        self.assertIsNone(worker.grab())

    def test_kill_one(self) -> None:
        """
        One server is killed (SIGKILL) with acknowledged jobs queued: the
        other runs them, each once, after the takeover time; restarted,
        the killed one has none of them left (fenced).
        """
        a, b = self.start_two()
        expected = self.submit(a, b"a", 50) + self.submit(b, b"b", 5)
        a.kill()
        done = self.work(b, len(expected))
        self.assertEqual(sorted(done), sorted(expected), b.log()[-3000:])
        self.assertIn("adopted 50 stored jobs", b.log())
        again = _process.Server(a.argv, a.port, a.log_path, a.cwd)
        self.addCleanup(again.kill)
        again.start()
        self.assertEqual(_process.admin(again.port, b"status"), b".\n")
        self.assertEqual(again.stop(), -15)


class PG8000TwoServersTests(TwoServersTests):
    """
    L{TwoServersTests} through pg8000.
    """

    driver = "pg8000"
