"""
The failed list (dead-letter list, issue 13): background jobs that failed
for the last time are kept, bounded, durably; listed, run again and
dropped with admin commands; counted in C{/status.json} and C{/metrics}.
"""

from __future__ import annotations

import json
import os
from typing import Any

from twisted.internet import reactor as _reactor
from twisted.logger import formatEvent
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase

from txgearmand import metrics
from txgearmand.deadletter import REASON_LENGTH, FailedJob
from txgearmand.failures import exception_reason
from txgearmand.interfaces import StoredJob
from txgearmand.server import JobServer
from txgearmand.settings import Settings, SettingsError
from txgearmand.status import snapshot
from txgearmand.store import MemoryStore
from txgearmand.store.sqlite import SQLiteStore
from txgearmand.tap import Options
from txgearmand.test.helpers import LOCAL, REMOTE, FakeConnection
from txgearmand.test.helpers import capture_logs as _capture
from txgearmand.test.test_metrics import _parse
from txgearmand.test.test_retry import _RetryMixin
from txgearmand.testing import RecordingPeer
from txgearmand.wire import PacketType as P

reactor: Any = _reactor


def _lines(events: list[dict[str, Any]]) -> list[str]:
    return [formatEvent(event) for event in events]


class _FailedMixin(_RetryMixin):
    def fail_job(
        self,
        worker: FakeConnection,
        function: bytes = b"f",
        data: bytes = b"x",
        unique: bytes = b"",
        how: P = P.WORK_FAIL,
        *args: bytes,
    ) -> bytes:
        """
        Submit a background job, have the worker take it and fail it once.
        """
        handle = self.connect().submit(function, data, unique, P.SUBMIT_JOB_BG)
        self.take(worker, handle)
        worker.send(how, handle, *args)
        return handle


class LandingTests(_FailedMixin, SynchronousTestCase):
    """
    Which jobs land in the failed list, and with what.
    """

    def test_work_fail(self) -> None:
        """
        A background job whose last attempt answered WORK_FAIL leaves the
        table and lands in the list with its fields, attempts, times and
        the reason C{failed}, logged; the job's counter says so.
        """
        events = _capture(self)
        self.start(retry_failed=1)
        worker = self.worker(b"f")
        self.clock.advance(10)
        handle = self.fail_job(worker, data=b"payload", unique=b"u1")
        self.clock.advance(1)
        self.take(worker, handle)
        worker.send(P.WORK_FAIL, handle)
        self.assertIsNone(self.server.job_by_handle(handle))
        (entry,) = self.server.failed.list()
        self.assertEqual(
            (entry.handle, entry.function, entry.unique, entry.payload, entry.attempts),
            (handle, b"f", b"u1", b"payload", 2),
        )
        self.assertEqual((entry.first_failed, entry.last_failed, entry.reason), (10, 11, "failed"))
        self.assertIn(
            f"Job {handle.decode()} (f) kept in the failed list: unique u1, 2 failed attempts,"
            " failed",
            _lines(events),
        )
        self.assertEqual(self.server.registry.counts.by_name[b"f"][9], 1)

    def test_exception(self) -> None:
        """
        WORK_EXCEPTION's reason is its text, cut to 200 characters.
        """
        self.start()
        worker = self.worker(b"f")
        self.fail_job(worker, b"f", b"", b"", P.WORK_EXCEPTION, b"boom")
        self.fail_job(worker, b"f", b"", b"", P.WORK_EXCEPTION, b"x" * 500)
        first, second = self.server.failed.list()
        self.assertEqual(first.reason, "exception: boom")
        self.assertEqual(second.reason, ("exception: " + "x" * 500)[:REASON_LENGTH])
        self.assertEqual(len(second.reason), 200)

    def test_worker_lost(self) -> None:
        """
        Out of C{--job-retries} after lost workers: C{worker lost}, with
        every attempt counted, the first failure's time kept.
        """
        self.start(job_retries=2)
        handle = self.connect().submit(b"f", b"", b"", P.SUBMIT_JOB_BG)
        for t in (3, 4):
            self.clock.advance(t - self.clock.seconds())
            worker = self.worker(b"f")
            self.take(worker, handle)
            worker.disconnect()
        (entry,) = self.server.failed.list()
        self.assertEqual(
            (entry.reason, entry.attempts, entry.first_failed, entry.last_failed),
            ("worker lost", 2, 3, 4),
        )

    def test_timed_out(self) -> None:
        """
        Out of C{--job-retries} after timeouts: C{timed out}.
        """
        self.start(job_retries=1)
        handle = self.connect().submit(b"f", b"", b"", P.SUBMIT_JOB_BG)
        worker = self.connect()
        worker.send(P.CAN_DO_TIMEOUT, b"f\x001000")
        self.take(worker, handle)
        self.clock.advance(1)
        (entry,) = self.server.failed.list()
        self.assertEqual(entry.reason, "timed out")

    def test_foreground_never_kept(self) -> None:
        """
        A foreground job that fails is not kept: its client was told.
        """
        self.start()
        client = self.connect()
        handle = client.submit(b"f", b"", b"", P.SUBMIT_JOB)
        worker = self.worker(b"f")
        self.take(worker, handle)
        worker.send(P.WORK_FAIL, handle)
        self.assertEqual(client.packets(), [(P.WORK_FAIL, (handle,))])
        self.assertEqual(self.server.failed.list(), [])

    def test_off(self) -> None:
        """
        With C{failed_keep=0}, a failed background job ends as before,
        removed from the store.
        """
        store = MemoryStore()
        self.start(store=store, failed_keep=0)
        self.fail_job(self.worker(b"f"))
        self.assertEqual(self.server.failed.list(), [])
        self.assertEqual(store.jobs, {})


class BoundTests(_FailedMixin, SynchronousTestCase):
    """
    The list's bounds: a count and an age.
    """

    def test_count_drops_oldest(self) -> None:
        """
        Past C{failed_keep} jobs, the oldest is dropped, its row removed
        from the store; the first ten drops are logged, then one in 1000.
        """
        events = _capture(self)
        store = MemoryStore()
        self.start(store=store, failed_keep=2)
        worker = self.worker(b"f")
        handles = [self.fail_job(worker, data=b"%d" % n) for n in range(1013)]
        self.assertEqual([e.handle for e in self.server.failed.list()], handles[-2:])
        self.assertEqual(sorted(r.handle for r in store.jobs.values()), sorted(handles[-2:]))
        dropped = [line for line in _lines(events) if "dropped from the failed list" in line]
        self.assertEqual(len(dropped), 11)
        self.assertEqual(
            dropped[0],
            f"Failed job {handles[0].decode()} (f) dropped from the failed list:"
            " over --failed-keep 2",
        )
        self.assertTrue(dropped[-1].endswith("(1000 dropped so far; one in 1000 is logged)"))

    def test_memory_budget(self) -> None:
        """
        Kept jobs count against the memory budget like live ones: past
        it, submissions are refused; taken out of the list, they count no
        more.
        """
        self.start(max_memory=20000)
        worker = self.worker(b"f")
        for n in range(2):
            self.fail_job(worker, data=b"%d" % n + b"x" * 5000)
        table = self.server.table
        self.assertEqual(self.server.jobs(), [])
        self.assertGreater(table.held_bytes, 10000)
        client = self.connect()
        client.send(P.SUBMIT_JOB_BG, b"f", b"", b"y" * 9000)
        ((ptype, args),) = client.packets()
        self.assertEqual((ptype, args[0]), (P.ERROR, b"QUEUE_ERROR"))
        self.assertEqual(self.server.flow.drop_failed_function(b"f"), 2)
        self.assertEqual(table.held_bytes, 0)

    def test_age(self) -> None:
        """
        A job older than C{failed_max_age} is dropped when its time comes
        (a timer, only while the list has jobs), its row removed.
        """
        store = MemoryStore()
        self.start(store=store, failed_max_age=100)
        worker = self.worker(b"f")
        self.assertIsNone(self.server.failed.timer)
        first = self.fail_job(worker)
        self.clock.advance(50)
        second = self.fail_job(worker)
        self.clock.advance(49.9)
        self.assertEqual(len(self.server.failed), 2)
        self.clock.advance(0.1)
        self.assertEqual([e.handle for e in self.server.failed.list()], [second])
        self.assertEqual([r.handle for r in store.jobs.values()], [second])
        self.clock.advance(50)
        self.assertEqual(len(self.server.failed), 0)
        self.assertIsNone(self.server.failed.timer)
        self.assertEqual(store.jobs, {})
        self.assertNotEqual(first, second)

    def test_stop_cancels_timer(self) -> None:
        """
        Stopping the server stops the expiry timer.
        """
        self.start()
        self.fail_job(self.worker(b"f"))
        self.assertIsNotNone(self.server.failed.timer)
        self.server.stopService()
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_settings(self) -> None:
        """
        C{failed_keep} and C{failed_max_age} default to 1000 and 7 days,
        refuse negative values, and come from C{--failed-keep} and
        C{--failed-max-age}.
        """
        self.assertEqual((Settings().failed_keep, Settings().failed_max_age), (1000, 604800))
        for name in ("failed_keep", "failed_max_age"):
            with self.assertRaises(SettingsError) as e:
                Settings(**{name: -1})  # type: ignore[arg-type]
            self.assertEqual(e.exception.setting, name)
        options = Options()
        options.parseOptions(["--failed-keep", "5", "--failed-max-age", "60", "-q", "memory"])
        settings = options["settings"]
        self.assertEqual((settings.failed_keep, settings.failed_max_age), (5, 60.0))


class RetryAndDropTests(_FailedMixin, SynchronousTestCase):
    """
    Running failed jobs again, and dropping them.
    """

    def test_retry_one(self) -> None:
        """
        A failed job run again is queued now under its handle, unique id,
        priority and payload, with a fresh attempt count; its store row is
        written again (not failed any more) under its id; a sleeping
        worker is woken.
        """
        store = MemoryStore()
        self.start(store=store, retry_failed=1)
        worker = self.worker(b"f")
        handle = self.fail_job(worker, data=b"p", unique=b"u")
        self.clock.advance(1)
        self.take(worker, handle)
        worker.send(P.WORK_FAIL, handle)
        (record,) = store.jobs.values()
        self.assertEqual((record.attempts, record.failed_at, record.reason), (2, 1.0, "failed"))
        worker.send(P.PRE_SLEEP)
        self.assertTrue(self.server.flow.retry_failed_job(handle))
        self.assertEqual(worker.packets(), [(P.NOOP, ())])
        (again,) = store.jobs.values()
        self.assertEqual(
            (again.id, again.handle, again.attempts, again.failed_at, again.first_failed),
            (record.id, handle, 0, None, 0.0),
        )
        self.assertEqual(self.server.failed.list(), [])
        self.assertEqual(worker.grab(), (P.JOB_ASSIGN_UNIQ, (handle, b"f", b"u", b"p")))
        # A fresh count: it is tried again once more before it lands again.
        worker.send(P.WORK_FAIL, handle)
        self.assertIsNotNone(self.server.job_by_handle(handle))
        self.clock.advance(1)
        self.take(worker, handle)
        worker.send(P.WORK_COMPLETE, handle, b"")
        self.assertEqual(store.jobs, {})
        self.assertFalse(self.server.flow.retry_failed_job(handle))

    def test_retry_function(self) -> None:
        """
        Every failed job of a function runs again, oldest first; others
        stay.
        """
        self.start()
        worker = self.worker(b"f", b"g")
        f1 = self.fail_job(worker, b"f")
        g1 = self.fail_job(worker, b"g")
        f2 = self.fail_job(worker, b"f")
        self.assertEqual(self.server.flow.retry_failed_function(b"f"), 2)
        self.assertEqual([e.handle for e in self.server.failed.list()], [g1])
        self.assertEqual([j.handle for j in self.server.jobs()], [f1, f2])
        self.assertEqual(self.server.flow.retry_failed_function(b"f"), 0)

    def test_retry_joins_live_unique(self) -> None:
        """
        A failed job run again while a live job has its unique id joins
        that job (as a submission would): nothing runs twice, and its row
        leaves the store.
        """
        store = MemoryStore()
        self.start(store=store)
        worker = self.worker(b"f")
        failed = self.fail_job(worker, unique=b"u")
        live = self.connect().submit(b"f", b"x", b"u", P.SUBMIT_JOB_BG)
        self.assertNotEqual(failed, live)
        self.assertTrue(self.server.flow.retry_failed_job(failed))
        self.assertEqual([j.handle for j in self.server.jobs()], [live])
        self.assertEqual([r.handle for r in store.jobs.values()], [live])

    def test_handle_taken(self) -> None:
        """
        A failed job whose handle a live job has now runs under a new one.
        """
        self.start()
        worker = self.worker(b"f")
        handle = self.fail_job(worker)
        entry = self.server.failed.take(handle)
        assert entry is not None
        taken = self.connect().submit(b"f", b"", b"", P.SUBMIT_JOB_BG)
        entry.handle = taken
        self.server.failed.add(entry)
        self.assertTrue(self.server.flow.retry_failed_job(taken))
        self.assertEqual(len({j.handle for j in self.server.jobs()}), 2)

    def test_drop(self) -> None:
        """
        Dropping one, or all of a function: gone from the list and the
        store.
        """
        store = MemoryStore()
        self.start(store=store)
        worker = self.worker(b"f", b"g")
        f1 = self.fail_job(worker, b"f")
        self.fail_job(worker, b"f")
        g1 = self.fail_job(worker, b"g")
        self.assertTrue(self.server.flow.drop_failed_job(f1))
        self.assertFalse(self.server.flow.drop_failed_job(f1))
        self.assertEqual(self.server.flow.drop_failed_function(b"f"), 1)
        self.assertEqual([e.handle for e in self.server.failed.list()], [g1])
        self.assertEqual([r.handle for r in store.jobs.values()], [g1])
        self.assertEqual(self.server.failed.counts(), {b"g": 1})


class AdminTests(_FailedMixin, SynchronousTestCase):
    """
    C{show failed}, C{failed retry}, C{failed drop}.
    """

    def test_show(self) -> None:
        """
        C{show failed} lists every failed job, C{show failed FUNCTION} one
        function's, tab-separated, the reason on one line.
        """
        self.start()
        worker = self.worker(b"f", b"g")
        self.clock.advance(1.5)
        f1 = self.fail_job(worker, b"f", b"", b"u", P.WORK_EXCEPTION, b"a\tb\nc")
        self.clock.advance(1)
        g1 = self.fail_job(worker, b"g")
        admin = self.connect(LOCAL)
        self.assertEqual(
            admin.admin(b"show failed"),
            b"%s\tf\tu\t1\t1.500\t1.500\texception: a\\tb\\nc\n"
            b"%s\tg\t\t1\t2.500\t2.500\tfailed\n.\n" % (f1, g1),
        )
        self.assertEqual(
            admin.admin(b"show failed g"), b"%s\tg\t\t1\t2.500\t2.500\tfailed\n.\n" % (g1,)
        )
        self.assertEqual(admin.admin(b"show failed h"), b".\n")
        self.assertEqual(admin.admin(b"show failed g h"), b"ERR UNKNOWN_SHOW_ARGUMENTS\r\n")

    def test_retry_and_drop(self) -> None:
        """
        C{failed retry HANDLE}, C{failed retry function F}, C{failed drop
        HANDLE}, C{failed drop function F}: C{OK} (with a count for a
        function), C{ERR UNKNOWN_JOB} for a handle not in the list.
        """
        self.start()
        worker = self.worker(b"f", b"g")
        f1, f2, f3 = (self.fail_job(worker, b"f") for _ in range(3))
        g1 = self.fail_job(worker, b"g")
        admin = self.connect(LOCAL)
        self.assertEqual(admin.admin(b"failed retry " + f1), b"OK\r\n")
        self.assertEqual(admin.admin(b"failed retry " + f1), b"ERR UNKNOWN_JOB\r\n")
        self.assertEqual(admin.admin(b"failed drop " + f2), b"OK\r\n")
        self.assertEqual(admin.admin(b"failed drop " + f2), b"ERR UNKNOWN_JOB\r\n")
        self.assertEqual(admin.admin(b"failed retry function f"), b"OK 1\r\n")
        self.assertEqual(admin.admin(b"failed drop function g"), b"OK 1\r\n")
        self.assertEqual(admin.admin(b"failed drop function g"), b"OK 0\r\n")
        self.assertEqual([j.handle for j in self.server.jobs()], [f1, f3])
        self.assertNotIn(g1, self.server.failed)

    def test_bad_arguments(self) -> None:
        """
        C{failed} needs C{retry} or C{drop} and a handle or C{function F}.
        """
        self.start()
        admin = self.connect(LOCAL)
        self.assertEqual(
            admin.admin(b"failed"),
            b"ERR INVALID_ARGUMENTS An+incomplete+set+of+arguments+was+sent+to+this+command"
            b"+failed\r\n",
        )
        self.assertEqual(
            admin.admin(b"failed again H:1"),
            b"ERR INVALID_ARGUMENTS failed+takes+retry+or+drop\r\n",
        )
        for line in (b"failed retry", b"failed drop a b", b"failed retry function"):
            self.assertTrue(admin.admin(line).startswith(b"ERR INVALID_ARGUMENTS"), line)

    def test_access_rules(self) -> None:
        """
        C{failed} changes the server: refused to a peer no C{--admin-allow}
        rule allows, and the job stays; C{show failed} is not refused.
        """
        self.start(admin_allow=["127.0.0.1"])
        handle = self.fail_job(self.worker(b"f"))
        self.assertEqual(
            self.connect(REMOTE).admin(b"failed drop " + handle),
            b"ERR PERMISSION_DENIED failed+is+not+allowed+from+this+connection"
            b"+by+--admin-allow\r\n",
        )
        self.assertIn(handle, self.server.failed)
        self.assertTrue(self.connect(REMOTE).admin(b"show failed").startswith(handle))
        self.assertEqual(self.connect(LOCAL).admin(b"failed drop " + handle), b"OK\r\n")


class SeenTests(_FailedMixin, SynchronousTestCase):
    """
    The list in C{/status.json} and C{/metrics}.
    """

    def test_status(self) -> None:
        """
        Each function row has C{failed_kept} (jobs in the list now) and
        C{dead_lettered} (landed since the start); the totals too; a
        function with only failed jobs left is listed.
        """
        self.start()
        worker = self.worker(b"f")
        self.fail_job(worker, b"f")
        self.fail_job(worker, b"f")
        self.server.flow.drop_failed_job(self.server.failed.list()[0].handle)
        worker.disconnect()
        data = json.loads(json.dumps(snapshot(self.server)))
        (row,) = data["functions"]
        self.assertEqual(
            (row["name"], row["failed_kept"], row["dead_lettered"], row["workers"]), ("f", 1, 2, 0)
        )
        self.assertEqual((data["totals"]["failed_kept"], data["totals"]["dead_lettered"]), (1, 2))

    def test_metrics(self) -> None:
        """
        C{gearman_jobs_failed_kept} and C{gearman_jobs_dead_lettered_total}
        by function.
        """
        if not metrics.available():
            raise SkipTest("prometheus-client is not installed")
        self.start()
        worker = self.worker(b"f", b"g")
        for function in (b"f", b"f", b"g"):
            self.fail_job(worker, function)
        self.server.flow.retry_failed_function(b"g")
        body, _ = metrics.exposition(self.server)
        samples = _parse(body.decode("utf-8"))
        self.assertEqual(samples[("gearman_jobs_failed_kept", (("function", "f"),))], 2)
        self.assertNotIn(("gearman_jobs_failed_kept", (("function", "g"),)), samples)
        self.assertEqual(samples[("gearman_jobs_dead_lettered_total", (("function", "f"),))], 2)
        self.assertEqual(samples[("gearman_jobs_dead_lettered_total", (("function", "g"),))], 1)


class DurableTests(_FailedMixin, SynchronousTestCase):
    """
    The list survives a restart on the same store, within its bounds.
    """

    def restart(self, store: MemoryStore, **kwargs: Any) -> JobServer:
        self.server.stopService()
        server = self.start(store=store, **kwargs)
        self.clock.advance(0)
        return server

    def test_replayed(self) -> None:
        """
        A server started again on the store has the failed jobs back in
        the list (not queued), with their fields.
        """
        store = MemoryStore()
        self.start(store=store)
        worker = self.worker(b"f")
        handle = self.fail_job(worker, b"f", b"p", b"u", P.WORK_EXCEPTION, b"bad")
        self.restart(store)
        self.assertEqual(self.server.jobs(), [])
        (entry,) = self.server.failed.list()
        self.assertEqual(
            (entry.handle, entry.unique, entry.payload, entry.attempts, entry.reason),
            (handle, b"u", b"p", 1, "exception: bad"),
        )
        # New jobs do not take its handle.
        self.assertNotEqual(self.connect().submit(b"f", b"", b"", P.SUBMIT_JOB_BG), handle)

    def test_bounds_at_load(self) -> None:
        """
        Loaded, the list keeps its bound: the oldest beyond it are dropped
        (their rows removed); with the list off, every failed row goes.
        """
        store = MemoryStore()
        self.start(store=store)
        worker = self.worker(b"f")
        handles = [self.fail_job(worker) for _ in range(3)]
        self.restart(store, failed_keep=2)
        self.assertEqual([e.handle for e in self.server.failed.list()], handles[1:])
        self.assertEqual(len(store.jobs), 2)
        self.restart(store, failed_keep=0)
        self.assertEqual(store.jobs, {})

    def test_record(self) -> None:
        """
        A L{FailedJob} and its stored record say the same.
        """
        entry = FailedJob(b"H:1", b"f", b"u", b"p", 2, b"r", 3, 1.0, 2.0, "why", 7)
        record = entry.stored()
        self.assertEqual(
            record, StoredJob(7, b"H:1", b"f", b"u", b"p", 2, None, b"r", 3, 1.0, 2.0, "why")
        )
        back = FailedJob.from_record(record, b"H:1")
        self.assertEqual(back.stored(), record)


class SQLiteTests(TestCase):
    """
    The failed list in an SQLite store, across a restart.
    """

    async def test_restart(self) -> None:
        """
        A server restarted on the same SQLite file has its failed list
        back, with attempts, times and reason; a job run again is stored
        again as a live job.
        """
        path = os.path.join(self.mktemp() + ".d", "jobs.sqlite")
        os.makedirs(os.path.dirname(path))
        server = JobServer(reactor, store=SQLiteStore(reactor, path), job_handle_prefix=b"H:s")
        server.startService()
        await server.when_ready()
        with server.output:
            handle = server.submit_job(None, b"f", b"u", b"data", background=True).handle
        worker = server.new_client(RecordingPeer())
        server.workers.can_do(worker, b"f")
        with server.output:
            job = server.grab_job(worker)
            assert job is not None and job.handle == handle
            server.work_exception(worker, handle, b"oops")
        (before,) = server.failed.list()
        await server.stopService()

        server = JobServer(reactor, store=SQLiteStore(reactor, path), job_handle_prefix=b"H:s")
        server.startService()
        await server.when_ready()
        self.assertEqual(server.jobs(), [])
        (entry,) = server.failed.list()
        self.assertEqual(
            (entry.handle, entry.unique, entry.payload, entry.attempts, entry.reason),
            (handle, b"u", b"data", 1, "exception: oops"),
        )
        self.assertEqual(
            (entry.first_failed, entry.last_failed), (before.first_failed, before.last_failed)
        )
        self.assertTrue(server.flow.retry_failed_job(handle))
        await server.stopService()
        store = SQLiteStore(reactor, path)
        await store.open()
        (record,) = await store.load()
        await store.close()
        self.assertEqual((record.handle, record.attempts, record.failed_at), (handle, 0, None))


class ExceptionReasonTests(SynchronousTestCase):
    """
    A WORK_EXCEPTION's data as the failed list and the log show it.
    """

    def test_plain(self) -> None:
        """
        Text stays as it is, without surrounding space.
        """
        self.assertEqual(exception_reason(b"boom\n"), "boom")

    def test_control_characters(self) -> None:
        """
        Control characters are escaped, so that the reason is one line.
        """
        self.assertEqual(exception_reason(b"a\nb\tc\x05d\x7f"), "a\\nb\\tc\\x05d\\x7f")

    def test_perl_storable(self) -> None:
        """
        Perl's Gearman::Worker freezes a dying function's error with
        Storable: a short scalar and a long one are unwrapped.
        """
        self.assertEqual(exception_reason(b"\x05\x0b\x0a\x05boom\n"), "boom")
        long = b"x" * 300
        self.assertEqual(
            exception_reason(b"\x05\x0b\x01" + len(long).to_bytes(4, "big") + long),
            "x" * 200 + "...",
        )

    def test_not_storable(self) -> None:
        """
        Data that only starts like Storable's (its length does not match)
        is shown as it came, escaped.
        """
        self.assertEqual(exception_reason(b"\x05\x0b\x0a\x09boom"), "\\x05\\x0b\\n\\tboom")

    def test_invalid_utf8(self) -> None:
        """
        Bytes that are not UTF-8 are shown as escapes, and the text is cut
        to the kept length (marked C{...}; the failed list cuts the mark).
        """
        self.assertEqual(exception_reason(b"\xff" + b"y" * 300), "\\xff" + "y" * 196 + "...")
