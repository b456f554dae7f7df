"""
The retry policy of background jobs that fail (C{--retry-failed},
C{--retry-backoff}): queued again after a growing delay, keeping their
handle, unique id and priority, their attempts kept in the store, and a
run-time override per function (admin C{retryfailed}).
"""

from __future__ import annotations

import os
import random
import shutil
import sqlite3
import time
from typing import Any

from twisted.internet import reactor as _reactor
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase

from txgearmand import admin as admin_module
from txgearmand.interfaces import StoredJob
from txgearmand.job import JobState
from txgearmand.meters import COMPLETED, EXCEPTIONS, FAILED, RETRIED
from txgearmand.server import JobServer
from txgearmand.settings import Settings, SettingsError
from txgearmand.store import MemoryStore
from txgearmand.store.sqlite import SQLiteStore
from txgearmand.tap import Options
from txgearmand.test._process import run
from txgearmand.test.helpers import LOCAL, REMOTE, FakeConnection, ServerTestMixin
from txgearmand.test.test_interop import ServerMixin, status, wait_until
from txgearmand.wire import PacketType as P

reactor: Any = _reactor


class FixedRandom(random.Random):
    """
    A random source whose C{random()} always gives one number: the jitter
    of retry delays made exact.
    """

    def __init__(self, value: float) -> None:
        super().__init__(0)
        self.value = value

    def random(self) -> float:
        return self.value


class _RetryMixin(ServerTestMixin):
    def start(self, **kwargs: Any) -> JobServer:
        kwargs.setdefault("retry_backoff", (1.0, 300.0))
        server = self.make_server(**kwargs)
        # The whole delay (no jitter): 1, 2, 4... seconds.
        server.flow.random = FixedRandom(1.0)
        return server

    def counts(self, function: bytes = b"f") -> list[int]:
        return self.server.registry.by_name[function].counts

    def take(self, worker: FakeConnection, handle: bytes) -> None:
        """
        The worker grabs the job with this handle.
        """
        assert isinstance(self, SynchronousTestCase)
        ptype, args = worker.grab()
        self.assertEqual((ptype, args[0]), (P.JOB_ASSIGN_UNIQ, handle))

    def nothing_to_grab(self, worker: FakeConnection) -> None:
        assert isinstance(self, SynchronousTestCase)
        self.assertEqual(worker.grab(), (P.NO_JOB, ()))


class RetryTests(_RetryMixin, SynchronousTestCase):
    """
    Background jobs that fail are tried again after their delay.
    """

    def test_fails_twice_then_succeeds(self) -> None:
        """
        With C{retry_failed=3}, a background job whose worker fails it
        twice is queued again after 1 s, then after 2 s, keeping its
        handle, unique id and data, and completes once.
        """
        self.start(retry_failed=3)
        client = self.connect()
        handle = client.submit(b"f", b"payload", b"u1", P.SUBMIT_JOB_BG)
        worker = self.worker(b"f")
        for delay in (1.0, 2.0):
            self.take(worker, handle)
            worker.send(P.WORK_FAIL, handle)
            self.nothing_to_grab(worker)
            self.clock.advance(delay - 0.01)
            self.nothing_to_grab(worker)
            self.clock.advance(0.01)
        self.assertEqual(worker.grab(), (P.JOB_ASSIGN_UNIQ, (handle, b"f", b"u1", b"payload")))
        worker.send(P.WORK_COMPLETE, handle, b"done")
        self.assertIsNone(self.server.job_by_handle(handle))
        counts = self.counts()
        self.assertEqual((counts[FAILED], counts[RETRIED], counts[COMPLETED]), (2, 2, 1))
        self.assertEqual(client.packets(), [])

    def test_sleeping_worker_woken(self) -> None:
        """
        A job queued again at its time wakes a sleeping worker.
        """
        self.start(retry_failed=1)
        handle = self.connect().submit(b"f", b"", b"", P.SUBMIT_JOB_BG)
        worker = self.worker(b"f")
        self.take(worker, handle)
        worker.send(P.WORK_FAIL, handle)
        worker.send(P.PRE_SLEEP)
        self.assertEqual(worker.packets(), [])
        self.clock.advance(1.0)
        self.assertEqual(worker.packets(), [(P.NOOP, ())])

    def test_always_fails(self) -> None:
        """
        A background job that always fails ends after C{retry_failed + 1}
        attempts, then is forgotten as without retries.
        """
        self.start(retry_failed=2)
        handle = self.connect().submit(b"f", b"", b"", P.SUBMIT_JOB_BG)
        worker = self.worker(b"f")
        for delay in (1.0, 2.0, None):
            self.take(worker, handle)
            worker.send(P.WORK_FAIL, handle)
            if delay is not None:
                self.clock.advance(delay)
        self.assertIsNone(self.server.job_by_handle(handle))
        self.nothing_to_grab(worker)
        self.clock.advance(1000)
        self.nothing_to_grab(worker)
        counts = self.counts()
        self.assertEqual((counts[FAILED], counts[RETRIED]), (3, 2))

    def test_exception_retried(self) -> None:
        """
        WORK_EXCEPTION is retried as WORK_FAIL is (and the WORK_FAIL a Perl
        worker sends after it is dropped).
        """
        self.start(retry_failed=1)
        handle = self.connect().submit(b"f", b"", b"", P.SUBMIT_JOB_BG)
        worker = self.worker(b"f")
        self.take(worker, handle)
        worker.send(P.WORK_EXCEPTION, handle, b"boom")
        worker.send(P.WORK_FAIL, handle)
        self.assertEqual(worker.packets(), [])
        self.clock.advance(1.0)
        self.take(worker, handle)
        worker.send(P.WORK_EXCEPTION, handle, b"boom again")
        self.assertIsNone(self.server.job_by_handle(handle))
        counts = self.counts()
        self.assertEqual((counts[EXCEPTIONS], counts[RETRIED], counts[FAILED]), (2, 1, 0))

    def test_foreground_not_retried(self) -> None:
        """
        A foreground job that fails ends, its client told, as without
        retries.
        """
        self.start(retry_failed=3)
        client = self.connect()
        handle = client.submit(b"f", b"", b"", P.SUBMIT_JOB)
        worker = self.worker(b"f")
        self.take(worker, handle)
        worker.send(P.WORK_FAIL, handle)
        self.assertEqual(client.packets(), [(P.WORK_FAIL, (handle,))])
        self.assertIsNone(self.server.job_by_handle(handle))
        self.assertEqual(self.counts()[RETRIED], 0)

    def test_off_by_default(self) -> None:
        """
        Without C{retry_failed}, a failed background job ends at once.
        """
        self.start()
        handle = self.connect().submit(b"f", b"", b"", P.SUBMIT_JOB_BG)
        worker = self.worker(b"f")
        self.take(worker, handle)
        worker.send(P.WORK_FAIL, handle)
        self.assertIsNone(self.server.job_by_handle(handle))
        self.assertEqual(self.counts()[RETRIED], 0)

    def test_duplicates_join_a_waiting_job(self) -> None:
        """
        Submissions with the unique id of a job waiting for its retry join
        it: background ones get its handle, foreground ones its result.
        Foreground clients that had joined it before it failed were told
        and are done with it.
        """
        self.start(retry_failed=1)
        first = self.connect()
        handle = first.submit(b"f", b"", b"u", P.SUBMIT_JOB_BG)
        early = self.connect()
        self.assertEqual(early.submit(b"f", b"", b"u", P.SUBMIT_JOB), handle)
        worker = self.worker(b"f")
        self.take(worker, handle)
        worker.send(P.WORK_FAIL, handle)
        self.assertEqual(early.packets(), [(P.WORK_FAIL, (handle,))])
        self.assertEqual(self.connect().submit(b"f", b"", b"u", P.SUBMIT_JOB_BG), handle)
        late = self.connect()
        self.assertEqual(late.submit(b"f", b"", b"u", P.SUBMIT_JOB), handle)
        self.assertEqual(len(self.server.jobs()), 1)
        self.clock.advance(1.0)
        self.take(worker, handle)
        worker.send(P.WORK_COMPLETE, handle, b"ok")
        self.assertEqual(late.packets(), [(P.WORK_COMPLETE, (handle, b"ok"))])
        self.assertEqual(early.packets(), [])

    def test_get_status(self) -> None:
        """
        GET_STATUS knows a job waiting for its retry (not running), and
        its progress starts again.
        """
        self.start(retry_failed=1)
        client = self.connect()
        handle = client.submit(b"f", b"", b"", P.SUBMIT_JOB_BG)
        worker = self.worker(b"f")
        self.take(worker, handle)
        worker.send(P.WORK_STATUS, handle, b"1", b"2")
        worker.send(P.WORK_FAIL, handle)
        client.send(P.GET_STATUS, handle)
        self.assertEqual(client.packets(), [(P.STATUS_RES, (handle, b"1", b"0", b"0", b"0"))])

    def test_priority_kept(self) -> None:
        """
        A job tried again keeps its priority: it goes before normal ones.
        """
        self.start(retry_failed=1)
        client = self.connect()
        high = client.submit(b"f", b"", b"", P.SUBMIT_JOB_HIGH_BG)
        worker = self.worker(b"f")
        self.take(worker, high)
        worker.send(P.WORK_FAIL, high)
        normal = client.submit(b"f", b"", b"", P.SUBMIT_JOB_BG)
        self.clock.advance(1.0)
        self.take(worker, high)
        self.take(worker, normal)

    def test_lost_workers_count_apart(self) -> None:
        """
        Lost workers count against C{job_retries}, as without the retry
        policy, not against C{retry_failed}.
        """
        self.start(retry_failed=5, job_retries=2)
        handle = self.connect().submit(b"f", b"", b"", P.SUBMIT_JOB_BG)
        for _ in range(2):
            worker = self.worker(b"f")
            self.take(worker, handle)
            worker.disconnect()
        self.assertIsNone(self.server.job_by_handle(handle))

    def test_cancel_waiting(self) -> None:
        """
        A job waiting for its retry can be cancelled.
        """
        self.start(retry_failed=1)
        handle = self.connect().submit(b"f", b"", b"", P.SUBMIT_JOB_BG)
        worker = self.worker(b"f")
        self.take(worker, handle)
        worker.send(P.WORK_FAIL, handle)
        self.assertTrue(self.server.cancel_job(handle))
        self.clock.advance(10)
        self.nothing_to_grab(worker)
        self.assertEqual(self.server.registry.by_name[b"f"].scheduled, 0)


class BackoffTests(_RetryMixin, SynchronousTestCase):
    """
    The delay before each retry.
    """

    def test_grows_and_caps(self) -> None:
        """
        The delay doubles from the first to the cap.
        """
        flow = self.start(retry_backoff=(1.5, 10)).flow
        self.assertEqual([flow.backoff(n) for n in range(1, 7)], [1.5, 3, 6, 10, 10, 10])
        self.assertEqual(flow.backoff(10_000), 10)

    def test_jitter(self) -> None:
        """
        Each delay is drawn between half and all of it.
        """
        flow = self.start(retry_backoff=(2, 100)).flow
        flow.random = FixedRandom(0.0)
        self.assertEqual([flow.backoff(n) for n in (1, 2, 9)], [1, 2, 50])
        flow.random = random.Random(13)
        for n in range(1, 10):
            full = min(100, 2 * 2 ** (n - 1))
            self.assertTrue(full / 2 <= flow.backoff(n) <= full)

    def test_settings(self) -> None:
        """
        C{retry_backoff} takes C{FIRST,CAP} or two numbers; bad values and
        a negative C{retry_failed} are refused.
        """
        self.assertEqual(Settings().retry_backoff, (1.0, 300.0))
        self.assertEqual(Settings(retry_backoff="0.5,60").retry_backoff, (0.5, 60.0))
        for bad in ("1", "a,b", "5,1", "-1,3", "1,2,3"):
            with self.assertRaises(SettingsError) as e:
                Settings(retry_backoff=bad)
            self.assertEqual(e.exception.setting, "retry_backoff")
        with self.assertRaises(SettingsError):
            Settings(retry_failed=-1)

    def test_options(self) -> None:
        """
        C{--retry-failed} and C{--retry-backoff} reach the settings.
        """
        options = Options()
        options.parseOptions(["--retry-failed", "4", "--retry-backoff", "2,30", "-q", "memory"])
        settings = options["settings"]
        self.assertEqual((settings.retry_failed, settings.retry_backoff), (4, (2.0, 30.0)))


class DurableRetryTests(_RetryMixin, SynchronousTestCase):
    """
    A job's attempts and next run time are kept in the store.
    """

    def test_attempts_stored_and_replayed(self) -> None:
        """
        A failed attempt rewrites the job's record (attempts, next run
        time) under its id; a server started on the store again holds it
        until that time and keeps counting.
        """
        store = MemoryStore()
        self.start(store=store, retry_failed=1, failed_keep=0)
        handle = self.connect().submit(b"f", b"x", b"u", P.SUBMIT_JOB_BG)
        worker = self.worker(b"f")
        self.clock.advance(5)
        self.take(worker, handle)
        worker.send(P.WORK_FAIL, handle)
        (record,) = store.jobs.values()
        self.assertEqual((record.handle, record.attempts, record.when), (handle, 1, 6.0))
        self.server.stopService()

        self.start(store=store, retry_failed=1, failed_keep=0)
        self.clock.advance(5)
        (job,) = self.server.jobs()
        self.assertEqual((job.handle, job.attempts, job.unique), (handle, 1, b"u"))
        worker = self.worker(b"f")
        self.nothing_to_grab(worker)
        self.clock.advance(1)
        self.take(worker, handle)
        worker.send(P.WORK_FAIL, handle)
        self.assertEqual(self.server.jobs(), [])
        self.assertEqual(store.jobs, {})

    def test_cancelled_in_the_turn_it_failed(self) -> None:
        """
        A job cancelled in the turn it failed and was stored again is
        removed from the store.
        """
        store = MemoryStore()
        self.start(store=store, retry_failed=1)
        handle = self.connect().submit(b"f", b"", b"", P.SUBMIT_JOB_BG)
        worker = self.worker(b"f")
        self.take(worker, handle)
        with self.server.output:
            self.server.work_fail(worker.participant, handle)
            self.assertTrue(self.server.cancel_job(handle))
        self.clock.advance(0)
        self.assertEqual(store.jobs, {})

    def test_not_written_when_off(self) -> None:
        """
        Without retries (and the failed list), a failed job is removed from
        the store as before.
        """
        store = MemoryStore()
        self.start(store=store, failed_keep=0)
        handle = self.connect().submit(b"f", b"", b"", P.SUBMIT_JOB_BG)
        worker = self.worker(b"f")
        self.take(worker, handle)
        worker.send(P.WORK_FAIL, handle)
        self.assertEqual(store.jobs, {})


class SQLiteRetryTests(TestCase):
    """
    Attempts in an SQLite store, and a store file from before them.
    """

    def old_file(self) -> str:
        """
        An SQLite file as txgearmand wrote it before the retry policy,
        holding one job.
        """
        path = os.path.join(self.mktemp() + ".d", "old.sqlite")
        os.makedirs(os.path.dirname(path))
        db = sqlite3.connect(path)
        db.execute(
            "CREATE TABLE txgearmand_jobs (id INTEGER PRIMARY KEY, handle BLOB NOT NULL,"
            " function BLOB NOT NULL, uniq BLOB NOT NULL, payload BLOB NOT NULL,"
            " priority INTEGER NOT NULL, when_to_run REAL, reducer BLOB NOT NULL)"
        )
        db.execute(
            "INSERT INTO txgearmand_jobs VALUES (7, ?, ?, ?, ?, 1, NULL, ?)",
            (b"H:old:7", b"f", b"u", b"data", b""),
        )
        db.commit()
        db.close()
        return path

    async def test_old_file_opens(self) -> None:
        """
        A store file from the previous version opens (its table gains the
        attempts column) and loads its job with no attempts; the job stored
        again with its attempts and next run time is read back so.
        """
        path = self.old_file()
        store = SQLiteStore(reactor, path)
        await store.open()
        (record,) = await store.load()
        self.assertEqual(record, StoredJob(7, b"H:old:7", b"f", b"u", b"data", 1, None, b"", 0))
        await store.add_many([record._replace(attempts=1, when=12.5)])
        await store.close()
        again = SQLiteStore(reactor, path)
        await again.open()
        self.addCleanup(again.close)
        (record,) = await again.load()
        self.assertEqual((record.id, record.attempts, record.when), (7, 1, 12.5))

    async def test_replayed(self) -> None:
        """
        A server started on an SQLite store holds a job stored with
        attempts and a next run time in the future until that time, its
        attempts kept.
        """
        path = self.old_file()
        store = SQLiteStore(reactor, path)
        await store.open()
        (record,) = await store.load()
        await store.add_many([record._replace(attempts=2, when=time.time() + 1000)])
        await store.close()
        server = JobServer(reactor, store=SQLiteStore(reactor, path), retry_failed=3)
        server.startService()
        await server.when_ready()
        (job,) = server.jobs()
        self.assertEqual((job.handle, job.attempts, job.state), (b"H:old:7", 2, JobState.SCHEDULED))
        await server.stopService()


class AdminTests(_RetryMixin, SynchronousTestCase):
    """
    C{retryfailed FUNCTION [N]} and C{show retries}.
    """

    def test_override(self) -> None:
        """
        C{retryfailed f N} sets how many times f's failed background jobs
        are tried again, whatever C{retry_failed} says; C{retryfailed f}
        goes back to it.  C{show retries} shows each function's limit, its
        jobs waiting to be tried again, and its retries so far.
        """
        self.start(retry_failed=0)
        admin = self.connect(LOCAL)
        self.assertEqual(admin.admin(b"retryfailed f 1"), b"OK\r\n")
        self.assertEqual(self.server.retry_failed(b"f"), 1)
        handle = self.connect().submit(b"f", b"", b"", P.SUBMIT_JOB_BG)
        self.connect().submit(b"g", b"", b"", P.SUBMIT_JOB_BG)
        worker = self.worker(b"f")
        self.take(worker, handle)
        worker.send(P.WORK_FAIL, handle)
        self.assertIsNotNone(self.server.job_by_handle(handle))
        self.assertEqual(admin.admin(b"show retries"), b"f\t1\t1\t1\ng\t0\t0\t0\n.\n")
        self.assertEqual(admin.admin(b"retryfailed f"), b"OK\r\n")
        self.assertEqual(self.server.retry_failed(b"f"), 0)
        self.clock.advance(1)
        self.take(worker, handle)
        worker.send(P.WORK_FAIL, handle)
        self.assertIsNone(self.server.job_by_handle(handle))

    def test_bad_arguments(self) -> None:
        """
        C{retryfailed} needs a function and at most a count of 0 or more.
        """
        self.start()
        admin = self.connect(LOCAL)
        self.assertTrue(admin.admin(b"retryfailed").startswith(b"ERR INVALID_ARGUMENTS"))
        for line in (b"retryfailed f -1", b"retryfailed f x", b"retryfailed f 1 2"):
            self.assertTrue(admin.admin(line).startswith(b"ERR INVALID_ARGUMENTS"), line)
        self.assertEqual(self.server.flow.retry_limits, {})

    def test_bounded(self) -> None:
        """
        Limits are kept for at most L{MAX_RETRY_LIMITS} functions: one
        more is refused, a known one may still change or go back.
        """
        self.patch(admin_module, "MAX_RETRY_LIMITS", 3)
        self.start()
        admin = self.connect(LOCAL)
        for name in (b"a", b"b", b"c"):
            self.assertEqual(admin.admin(b"retryfailed " + name + b" 1"), b"OK\r\n")
        self.assertTrue(admin.admin(b"retryfailed d 1").startswith(b"ERR TOO_MANY_FUNCTIONS"))
        self.assertEqual(admin.admin(b"retryfailed a 2"), b"OK\r\n")
        self.assertEqual(admin.admin(b"retryfailed b"), b"OK\r\n")
        self.assertEqual(admin.admin(b"retryfailed d 1"), b"OK\r\n")
        self.assertEqual(self.server.flow.retry_limits, {b"a": 2, b"c": 1, b"d": 1})

    def test_access_rules(self) -> None:
        """
        C{retryfailed} changes the server: with C{--admin-allow} rules, a
        peer no rule allows is refused; C{show retries} is not.
        """
        self.start(admin_allow=["127.0.0.1"])
        reply = self.connect(REMOTE).admin(b"retryfailed f 3")
        self.assertEqual(
            reply,
            b"ERR PERMISSION_DENIED retryfailed+is+not+allowed+from+this+connection"
            b"+by+--admin-allow\r\n",
        )
        self.assertEqual(self.server.retry_failed(b"f"), 0)
        self.assertEqual(self.connect(REMOTE).admin(b"show retries"), b".\n")
        self.assertEqual(self.connect(LOCAL).admin(b"retryfailed f 3"), b"OK\r\n")
        self.assertEqual(self.server.retry_failed(b"f"), 3)


class ProcessTests(ServerMixin, SynchronousTestCase):
    """
    C{twistd gearmand --retry-failed} with a real libgearman worker
    (C{gearman -w} from Debian's gearman-tools): a command that exits
    non-zero makes it answer WORK_FAIL.
    """

    def test_always_failing_worker(self) -> None:
        """
        A background job whose worker always fails is tried 3 times with
        C{--retry-failed 2}, after short delays, and then no more.
        """
        if shutil.which("gearman") is None:
            raise SkipTest("gearman is not installed (Debian package gearman-tools)")
        self.start_server("--retry-failed=2", "--retry-backoff=0.2,0.4", "--queue=memory")
        port = self.port
        tries = self.workdir / "tries.txt"
        tool = ["gearman", "-h", "127.0.0.1", "-p", str(port)]
        command = ["sh", "-c", f"echo try >> {tries}; exit 1"]
        self.spawn([*tool, "-w", "-f", "retryme", "--", *command], name="worker")
        wait_until(lambda: status(port).get(b"retryme", (0, 0, 0))[2] >= 1, what="the worker")
        run([*tool, "-b", "-f", "retryme", "payload"], timeout=60)
        wait_until(lambda: tries.exists() and tries.read_bytes().count(b"\n") == 3, what="3 tries")
        wait_until(lambda: status(port)[b"retryme"][0] == 0, what="the job to end")
        time.sleep(1.0)
        self.assertEqual(tries.read_bytes(), b"try\n" * 3)
