"""
A PostgreSQL store whose database goes away and comes back: writes are
refused at once while it is down (not after a hang), the store connects
again with back-off and says so, jobs done meanwhile are removed once it
is back, and a server that was cut off does not take the others for dead;
and two servers given one node name.
With a private PostgreSQL cluster each test stops and starts (skipped,
saying why, when none can be had), and with fakes for the server's side.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase
from zope.interface import implementer

from txgearmand.interfaces import Adoption, ISharedJobStore, StoredJob, StoreUnavailable
from txgearmand.server import JobServer
from txgearmand.status import snapshot
from txgearmand.store import MemoryStore, _pgdriver, postgresql
from txgearmand.store.postgresql import PostgreSQLStore
from txgearmand.test import _postgres, _process
from txgearmand.test.helpers import FakeConnection
from txgearmand.test.helpers import capture_logs as _capture
from txgearmand.test.test_crash import RawWorker
from txgearmand.wire import PacketType as P


def job(n: int) -> StoredJob:
    return StoredJob(n, b"H:x:%d" % n, b"f", b"u%d" % n, b"data %d" % n, 1, None, b"")


def private_cluster(case: SynchronousTestCase) -> _postgres.Cluster:
    """
    A started private cluster, destroyed at the end of the test; the test
    is skipped when there can be none.
    """
    try:
        # The shared server says whether a driver and PostgreSQL are here.
        _postgres.server_url()
        cluster = _postgres.Cluster()
        case.addCleanup(cluster.destroy)
        cluster.start()
    except _postgres.Unavailable as e:
        raise SkipTest(str(e)) from None
    return cluster


class _Now:
    """
    A monotonic clock the test moves (the store's back-off runs on it).
    """

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class BackoffTests(_postgres.DriverMixin, TestCase):
    """
    The store, on a database stopped and started under it (through
    psycopg 3; L{PG8000BackoffTests} through pg8000).
    """

    def setUp(self) -> None:
        self.use_driver()
        self.cluster = private_cluster(self)
        self.events = _capture(self)
        self.connects = 0
        real = postgresql._connect

        def counting(*args: Any, **kwargs: Any) -> Any:
            self.connects += 1
            return real(*args, **kwargs)

        self.patch(postgresql, "_connect", counting)

    async def open(self, **kwargs: Any) -> PostgreSQLStore:
        store = PostgreSQLStore(reactor, self.cluster.url, node="a", **kwargs)
        self.now = _Now()
        store._monotonic = self.now
        await store.open()
        self.addCleanup(lambda: store.close() if store._pool.started else None)
        return store

    def logged(self, text: str) -> int:
        return sum(text in str(e.get("log_format", "")) for e in self.events)

    async def test_refused_at_once_then_back(self) -> None:
        """
        With the database stopped, a write fails with L{StoreUnavailable}
        after one attempt to connect; the next ones fail without an
        attempt until the back-off passes; once the database is back, the
        next attempt after the back-off connects, and writes go on.  The
        outage is logged once, and its end once.
        """
        store = await self.open()
        await store.add_many([job(1)])
        self.assertFalse(store.down)
        self.cluster.stop()
        with self.assertRaises(StoreUnavailable):
            await store.add_many([job(2)])
        self.assertTrue(store.down)
        attempts = self.connects
        for n in range(3, 6):
            with self.assertRaises(StoreUnavailable):
                await store.add_many([job(n)])
        self.assertEqual(self.connects, attempts)
        # A later attempt fails too, and the back-off grows.
        first = store._backoff
        self.now.now += store.max_backoff
        with self.assertRaises(StoreUnavailable):
            await store.remove_many([1])
        self.assertEqual(self.connects, attempts + 1)
        self.assertEqual(store._backoff, 2 * first)
        self.cluster.start()
        with self.assertRaises(StoreUnavailable):
            await store.add_many([job(6)])
        self.now.now += store.max_backoff
        await store.add_many([job(7)])
        self.assertFalse(store.down)
        self.assertEqual([j.id for j in await store.load()], [1, 7])
        self.assertEqual(self.logged("job store is unreachable"), 1)
        self.assertEqual(self.logged("job store again, after"), 1)

    async def test_heartbeat_while_down(self) -> None:
        """
        The heartbeat fails while the database is down (and is what finds
        it back when no job comes); once back, the node takes no dead
        node's jobs until it has been back for the takeover time, so that
        after an outage of the database every node may beat first.
        """
        store = await self.open(takeover_after=5)
        other = PostgreSQLStore(reactor, self.cluster.url, node="b", takeover_after=5)
        await other.open()
        await other.add_many([job(1)])
        await other.close()
        self.cluster.stop()
        # The first heartbeat fails on the connection the database closed;
        # the next, connecting again, finds the database gone.
        with self.assertRaises(_pgdriver.connection_errors()):
            await store.adopt()
        with self.assertRaises(StoreUnavailable):
            await store.adopt()
        self.assertTrue(store.down)
        self.cluster.start()
        # Node b's heartbeat is older than 5 s once we are back.
        self.now.now += store.max_backoff
        await self.age_heartbeats(store, 10)
        adoption = await store.adopt()
        self.assertFalse(store.down)
        self.assertEqual(adoption, Adoption([], None))
        self.now.now += 5
        adoption = await store.adopt()
        self.assertEqual([j.unique for j in adoption.adopted], [b"u1"])

    async def age_heartbeats(self, store: PostgreSQLStore, seconds: float) -> None:
        """
        Make every other node's heartbeat this much older (in the store's
        thread, on its connection).
        """

        def age() -> None:
            store._connection().execute(
                f"UPDATE {store.table}_nodes SET heartbeat = heartbeat - make_interval(secs => %s)"
                " WHERE name <> %s",
                (seconds, store.node),
            )

        await store._run(age)


class PG8000BackoffTests(BackoffTests):
    """
    L{BackoffTests} through pg8000.
    """

    driver = "pg8000"


class NodeTests(_postgres.DriverMixin, TestCase):
    """
    Two servers given one node name take each other's place at every
    heartbeat: each says so, once a minute.  Nodes long gone with no job
    left are forgotten.  (Through psycopg 3; L{PG8000NodeTests} through
    pg8000.)
    """

    def setUp(self) -> None:
        self.use_driver()
        try:
            self.url = _postgres.fresh_database()
        except _postgres.Unavailable as e:
            raise SkipTest(str(e)) from None
        self.events = _capture(self)

    async def test_twins(self) -> None:
        """
        The second start under a name takes the first one's jobs; the
        first, finding its heartbeat refused while the name's heartbeat is
        fresh, logs an error that names the cause, and so does the second
        in turn; not again at each heartbeat.
        """
        now = _Now()
        stores = []
        for _ in range(2):
            store = PostgreSQLStore(reactor, self.url, node="same")
            store._monotonic = now
            await store.open()
            self.addCleanup(store.close)
            stores.append(store)
            if len(stores) == 1:
                await store.add_many([job(1)])
        a, b = stores
        self.assertEqual(await a.adopt(), Adoption([], []))
        self.assertEqual([j.id for j in await b.load()], [1])
        for _ in range(3):
            await b.adopt()
            await a.adopt()
        errors = [e for e in self.events if "Another server is running as node" in e["log_format"]]
        self.assertEqual(len(errors), 2)
        self.assertEqual(errors[0]["node"], "same")
        now.now += 60
        await b.adopt()
        errors = [e for e in self.events if "Another server is running as node" in e["log_format"]]
        self.assertEqual(len(errors), 3)

    async def test_pruned(self) -> None:
        """
        A node silent for a week with no job left is removed from the
        nodes table (a node with jobs, or one silent for less, is kept);
        started again, it gets an epoch it never had.
        """
        a = PostgreSQLStore(reactor, self.url, node="a")
        await a.open()
        self.addCleanup(a.close)
        for name, jobs in (("gone", []), ("busy", [job(1)]), ("recent", [])):
            other = PostgreSQLStore(reactor, self.url, node=name)
            await other.open()
            await other.add_many(jobs)
            await other.close()

        def age() -> list[tuple[str, int]]:
            conn = a._connection()
            conn.execute(
                f"UPDATE {a.table}_nodes SET heartbeat = heartbeat - interval '8 days'"
                " WHERE name IN ('gone', 'busy')"
            )
            rows: list[tuple[str, int]] = conn.execute(
                f"SELECT name, epoch FROM {a.table}_nodes"
            ).fetchall()
            return rows

        before = dict(await a._run(age))
        a.takeover_after = 1e9
        await a.adopt()
        after = dict(
            await a._run(
                lambda: (
                    a._connection().execute(f"SELECT name, epoch FROM {a.table}_nodes").fetchall()
                )
            )
        )
        self.assertEqual(sorted(after), ["a", "busy", "recent"])
        again = PostgreSQLStore(reactor, self.url, node="gone")
        await again.open()
        self.addCleanup(again.close)
        self.assertGreater(again.epoch, max(before.values()))


class PG8000NodeTests(NodeTests):
    """
    L{NodeTests} through pg8000.
    """

    driver = "pg8000"


@implementer(ISharedJobStore)
class FlakyStore(MemoryStore):
    """
    A shared store (fake) whose writes fail with L{StoreUnavailable} while
    C{down}.
    """

    node = "fake"
    poll_interval = 1.0

    def __init__(self) -> None:
        super().__init__()
        self.down = False
        self.removed: list[int] = []

    def add_many(self, jobs: Any) -> Deferred[None]:
        if self.down:
            return fail(StoreUnavailable("down"))
        return super().add_many(jobs)

    def update_many(self, jobs: Any) -> Deferred[None]:
        if self.down:
            return fail(StoreUnavailable("down"))
        return super().update_many(jobs)

    def remove_many(self, job_ids: Any) -> Deferred[None]:
        if self.down:
            return fail(StoreUnavailable("down"))
        self.removed.extend(job_ids)
        return super().remove_many(job_ids)

    def adopt(self, take: bool = True) -> Deferred[Adoption]:
        if self.down:
            return fail(StoreUnavailable("down"))
        return succeed(Adoption([], None))


class ServerSideTests(SynchronousTestCase):
    """
    What the job server does while its store is down.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.store = FlakyStore()
        self.server = JobServer(self.clock, store=self.store, job_handle_prefix=b"H:me")
        self.server.startService()
        self.events = _capture(self)

    def test_refused_then_accepted(self) -> None:
        """
        A background submission gets QUEUE_ERROR while the store is down
        (no traceback logged for it: the store said it is down), and is
        accepted again once it is back; a foreground job runs meanwhile.
        """
        client = FakeConnection(self.server)
        worker = FakeConnection(self.server).can_do(b"f")
        self.store.down = True
        client.send(P.SUBMIT_JOB_BG, b"f", b"", b"x")
        self.clock.advance(0)
        ((ptype, args),) = client.packets()
        self.assertEqual((ptype, args[0]), (P.ERROR, b"QUEUE_ERROR"))
        self.assertTrue(self.server.durability.down)
        self.assertIs(snapshot(self.server)["store"]["down"], True)
        client.send(P.SUBMIT_JOB, b"f", b"", b"fg")
        (created,) = client.packets()
        handle = created[1][0]
        self.assertEqual(worker.grab(), (P.JOB_ASSIGN_UNIQ, (handle, b"f", b"", b"fg")))
        worker.send(P.WORK_COMPLETE, handle, b"done")
        self.assertEqual(client.packets(), [(P.WORK_COMPLETE, (handle, b"done"))])
        self.assertEqual([e for e in self.events if e.get("log_failure") is not None], [])
        self.store.down = False
        client.send(P.SUBMIT_JOB_BG, b"f", b"", b"y")
        self.clock.advance(0)
        self.assertEqual([p[0] for p in client.packets()], [P.JOB_CREATED])
        self.assertFalse(self.server.durability.down)

    def test_removals_sent_again(self) -> None:
        """
        Jobs that end while the store is down are removed once it answers
        again (at its next heartbeat, with no other write), so that they
        do not run again at the next start.
        """
        client = FakeConnection(self.server)
        worker = FakeConnection(self.server).can_do(b"f")
        client.send(P.SUBMIT_JOB_BG, b"f", b"", b"x")
        self.clock.advance(0)
        self.assertEqual(len(self.store.jobs), 1)
        self.store.down = True
        ptype, (handle, *_) = worker.grab()
        self.assertEqual(ptype, P.JOB_ASSIGN_UNIQ)
        worker.send(P.WORK_COMPLETE, handle, b"")
        self.clock.advance(0)
        self.assertEqual(len(self.store.jobs), 1)
        self.clock.advance(1)
        self.assertEqual(len(self.store.jobs), 1)
        self.store.down = False
        self.clock.advance(1)
        self.assertEqual(self.store.jobs, {})
        self.assertEqual(len(self.store.removed), 1)


class RetriedWhileDownTests(SynchronousTestCase):
    """
    A stored job that fails while the store is down goes on: its change
    (attempts, next run time) waits, and is written once the store is
    back; it is not dropped.
    """

    def test_update_refused(self) -> None:
        """
        The update of a job that failed an attempt is refused: the job
        still waits for its retry and runs; the store gets its attempts
        once it answers again.
        """
        clock = Clock()
        store = FlakyStore()
        server = JobServer(clock, store=store, retry_failed=3, retry_backoff="1,1")
        server.startService()
        client = FakeConnection(server)
        worker = FakeConnection(server).can_do(b"f")
        client.send(P.SUBMIT_JOB_BG, b"f", b"", b"x")
        clock.advance(0)
        (store_id,) = store.jobs
        store.down = True
        handle = worker.grab()[1][0]
        worker.send(P.WORK_FAIL, handle)
        clock.advance(0)
        self.assertEqual([job.handle for job in server.jobs()], [handle])
        self.assertEqual(store.jobs[store_id].attempts, 0)
        store.down = False
        clock.advance(1)
        self.assertEqual(store.jobs[store_id].attempts, 1)
        clock.advance(1)
        self.assertEqual(worker.grab()[1][0], handle)
        worker.send(P.WORK_COMPLETE, handle, b"")
        clock.advance(0)
        self.assertEqual(store.jobs, {})


class StoppedUnderLoadTests(_postgres.DriverMixin, SynchronousTestCase):
    """
    A real C{twistd gearmand} on a PostgreSQL cluster that is stopped and
    started while a client submits and a worker works (through psycopg 3).
    """

    def test_stop_and_start(self) -> None:
        """
        While the database is down, every background submission is
        answered (refused with QUEUE_ERROR), none hangs, and foreground
        jobs run; once it is back, submissions are acknowledged again
        without a restart; every acknowledged job is done, and the jobs
        done while it was down do not come back at the next start.
        """
        self.use_driver()
        cluster = private_cluster(self)
        workdir = Path(self.mktemp()).resolve()
        workdir.mkdir(parents=True)
        server = _process.twistd_gearmand(workdir, f"--queue={cluster.url}")
        self.addCleanup(server.kill)
        server.start()

        acknowledged: list[bytes] = []
        refused: list[bytes] = []
        replies: list[float] = []
        done: list[bytes] = []
        stop = threading.Event()
        errors: list[BaseException] = []

        def submit() -> None:
            conn = _process.PacketConnection(server.port, timeout=15)
            try:
                n = 0
                while not stop.is_set():
                    n += 1
                    payload = b"job-%d" % n
                    started = time.monotonic()
                    conn.send(P.SUBMIT_JOB_BG, b"f", b"", payload)
                    ptype, body = conn.recv()
                    replies.append(time.monotonic() - started)
                    if ptype == P.JOB_CREATED:
                        acknowledged.append(payload)
                    elif ptype == P.ERROR and b"QUEUE_ERROR" in body:
                        refused.append(payload)
                    else:
                        raise AssertionError((ptype, body))
                    time.sleep(0.002)
            except BaseException as e:
                errors.append(e)
            finally:
                conn.close()

        def work() -> None:
            worker = RawWorker(server.port, b"f")
            try:
                deadline = time.monotonic() + 120
                while time.monotonic() < deadline:
                    grabbed = worker.grab()
                    if grabbed is None:
                        if stop.is_set() and set(acknowledged) <= set(done):
                            break
                        time.sleep(0.01)
                        continue
                    if grabbed[1] != b"foreground":
                        done.append(grabbed[1])
                    worker.complete(grabbed[0])
            except BaseException as e:
                errors.append(e)
            finally:
                worker.close()

        threads = [threading.Thread(target=submit), threading.Thread(target=work)]
        for t in threads:
            t.start()
        try:
            wait_for(lambda: len(acknowledged) >= 100 or bool(errors), 30)
            cluster.stop()
            wait_for(lambda: len(refused) >= 20 or bool(errors), 30)
            # A foreground job while it is down.
            fg = _process.PacketConnection(server.port)
            fg.send(P.SUBMIT_JOB, b"f", b"", b"foreground")
            fg.expect(P.JOB_CREATED)
            fg.expect(P.WORK_COMPLETE)
            fg.close()
            cluster.start()
            back = len(acknowledged)
            wait_for(lambda: len(acknowledged) >= back + 100 or bool(errors), 60)
        finally:
            stop.set()
            for t in threads:
                t.join(60)
        self.assertEqual(errors, [])
        self.assertGreaterEqual(len(refused), 20)
        self.assertGreater(len(acknowledged), back)
        # Answered at once, not after a hang (a connect timeout is 5 s).
        self.assertLess(max(replies), 10)
        # Every acknowledged job is done, once; a refused job may have been
        # handed out while its write was in flight (it was not kept).
        self.assertEqual(len(done), len(set(done)))
        ran = set(done)
        self.assertEqual(set(acknowledged) - ran, set())
        self.assertEqual(ran - set(acknowledged) - set(refused), set())
        log = server.log()
        self.assertEqual(log.count("job store is unreachable"), 1, log[-3000:])
        self.assertEqual(log.count("job store again, after"), 1, log[-3000:])
        # Stopped and started again: nothing of them is left to run.
        self.assertEqual(server.stop(), -15)
        again = _process.Server(server.argv, server.port, server.log_path, server.cwd)
        self.addCleanup(again.kill)
        again.start()
        self.assertEqual(_process.admin(again.port, b"status"), b".\n")


def wait_for(condition: Any, seconds: float) -> None:
    """
    Poll until C{condition()} is true; fail after C{seconds}.
    """
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not so after {seconds} s")
        time.sleep(0.02)


class PG8000StoppedUnderLoadTests(StoppedUnderLoadTests):
    """
    L{StoppedUnderLoadTests} through pg8000.
    """

    driver = "pg8000"
