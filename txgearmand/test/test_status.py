"""
What the server counts about itself (L{txgearmand.meters}) and the state
it reports as data (L{txgearmand.status.snapshot}).
"""

from __future__ import annotations

import json

from twisted.trial.unittest import SynchronousTestCase

from txgearmand.meters import OTHER, FunctionCounts, Histogram
from txgearmand.status import snapshot
from txgearmand.test.helpers import ServerTestMixin
from txgearmand.test.test_durability import ManualStore
from txgearmand.wire import PacketType as P


class FunctionCountsTests(SynchronousTestCase):
    """
    Counters per function name, bounded in number.
    """

    def test_limit(self) -> None:
        """
        Past the limit, new names share the counters of C{_other}; known
        names keep their own.
        """
        counts = FunctionCounts(limit=2)
        a = counts.of(b"a")
        self.assertIs(counts.of(b"a"), a)
        counts.of(b"b")
        c = counts.of(b"c")
        self.assertIs(counts.of(b"d"), c)
        self.assertEqual(sorted(counts.by_name), [OTHER, b"a", b"b"])
        a[0] += 2
        c[0] += 1
        self.assertEqual(counts.totals()[0], 3)


class HistogramTests(SynchronousTestCase):
    """
    L{Histogram}: buckets, sum, count, last.
    """

    def test_observe(self) -> None:
        """
        Each observation lands in the first bucket whose bound is at or
        above it; cumulative counts end with infinity and the count.
        """
        h = Histogram((1.0, 2.0))
        for value in (0.5, 1.0, 1.5, 3.0):
            h.observe(value)
        self.assertEqual(h.cumulative(), [(1.0, 2), (2.0, 3), (float("inf"), 4)])
        self.assertEqual((h.count, h.sum, h.last, h.mean()), (4, 6.0, 3.0, 1.5))
        self.assertIsNone(Histogram().mean())


class SnapshotTests(ServerTestMixin, SynchronousTestCase):
    """
    L{snapshot} after a scripted run matches the server's state.
    """

    def run_jobs(self) -> None:
        """
        Five jobs of C{resize} submitted (three background), two completed,
        one failed, one raised; one C{crop} refused by its max queue.
        """
        self.make_server(max_queue={b"crop": 1})
        self.server.meters.watch()
        self.client = self.connect()
        self.client.send(P.SET_CLIENT_ID, b"web-1")
        for i in range(3):
            self.client.submit(b"resize", b"bg%d" % i, ptype=P.SUBMIT_JOB_BG)
        for i in range(2):
            self.client.submit(b"resize", b"fg%d" % i, unique=b"u%d" % i)
        self.client.submit(b"crop", b"x", ptype=P.SUBMIT_JOB_BG)
        self.client.send(P.SUBMIT_JOB_BG, b"crop", b"", b"y")
        self.working = self.connect().can_do(b"resize")
        self.clock.advance(2)
        for reply in (P.WORK_COMPLETE, P.WORK_COMPLETE, P.WORK_FAIL, P.WORK_EXCEPTION):
            handle = self.working.grab()[1][0]
            self.clock.advance(0.5)
            args = (handle,) if reply == P.WORK_FAIL else (handle, b"r")
            self.working.send(reply, *args)
        self.working.grab()

    def test_counts(self) -> None:
        """
        Totals and the function's row count what happened, the running and
        queued jobs are listed with their ages, and it is all JSON.
        """
        self.run_jobs()
        data = json.loads(json.dumps(snapshot(self.server)))
        totals = data["totals"]
        self.assertEqual(
            {k: totals[k] for k in ("submitted_fg", "submitted_bg", "completed", "failed")},
            {"submitted_fg": 2, "submitted_bg": 4, "completed": 2, "failed": 1},
        )
        self.assertEqual((totals["exceptions"], totals["refused"]), (1, 1))
        self.assertEqual((totals["queued"], totals["running"]), (1, 1))
        [crop, resize] = data["functions"]
        self.assertEqual(crop["name"], "crop")
        self.assertEqual(crop["max_queue"], [1, 1, 1])
        self.assertEqual(crop["refused"], 1)
        self.assertEqual(crop["queued"], {"high": 0, "normal": 1, "low": 0})
        self.assertEqual(resize["running"], 1)
        self.assertEqual(resize["workers"], 1)
        self.assertEqual(resize["completed"], 2)
        jobs = data["jobs"]
        self.assertEqual(jobs["total"], 2)
        states = {j["function"]: j for j in jobs["list"]}
        self.assertEqual(states["resize"]["state"], "running")
        self.assertEqual(states["resize"]["worker"], self.working.participant.describe())
        self.assertEqual(states["crop"]["age"], 4.0)
        self.assertEqual(data["run_time"]["count"], 4)
        self.assertEqual(data["run_time"]["mean"], 0.5)
        [worker] = data["workers"]
        self.assertEqual(worker["functions"], ["resize"])
        self.assertEqual(worker["done"], 4)
        [client] = data["clients"]
        self.assertEqual((client["id"], client["submitted"]), ("web-1", 6))
        self.assertEqual(data["server"]["connections"], 2)
        self.assertGreater(data["server"]["packets_in"], 10)
        self.assertGreater(data["server"]["bytes_out"], 0)
        self.assertEqual(data["store"]["kind"], "memory")

    def test_rates(self) -> None:
        """
        While watched, the history gives jobs per second in and out.
        """
        self.make_server()
        self.server.meters.watch()
        client = self.connect()
        worker = self.connect().can_do(b"f")
        for _ in range(10):
            client.submit(b"f", b"x", ptype=P.SUBMIT_JOB_BG)
        for _ in range(5):
            handle = worker.grab()[1][0]
            worker.send(P.WORK_COMPLETE, handle, b"")
        self.clock.advance(5)
        samples = snapshot(self.server)["rates"]["samples"]
        self.assertEqual(samples[0], {"t": 5.0, "in": 2.0, "out": 1.0})
        self.server.stopService()
        self.assert_no_timers()

    def test_limit(self) -> None:
        """
        Lists stop at the limit; the totals do not.
        """
        self.make_server()
        client = self.connect()
        for i in range(5):
            client.submit(b"f%d" % i, b"x", ptype=P.SUBMIT_JOB_BG)
        data = snapshot(self.server, limit=2)
        self.assertEqual(len(data["functions"]), 2)
        self.assertEqual((data["jobs"]["total"], data["jobs"]["shown"]), (5, 2))
        self.assertEqual(len(data["jobs"]["list"]), 2)
        self.assertIsNone(data["jobs"]["list"][0]["age"])


class StoreSnapshotTests(SynchronousTestCase):
    """
    The store's part: its kind, write latency and last error.
    """

    def test_store(self) -> None:
        """
        Write latency and the last error are reported.
        """
        from twisted.internet.task import Clock

        from txgearmand.server import JobServer
        from txgearmand.test.helpers import FakeConnection

        clock = Clock()
        store = ManualStore()
        server = JobServer(clock, store=store, job_handle_prefix=b"H:s")
        server.startService()
        client = FakeConnection(server)
        client.send(P.SUBMIT_JOB_BG, b"f", b"", b"x")
        clock.advance(0.25)
        store.commit()
        client.send(P.SUBMIT_JOB_BG, b"f", b"", b"y")
        store.fail_next = True
        store.commit()
        self.flushLoggedErrors(OSError)
        data = snapshot(server)["store"]
        self.assertEqual(data["kind"], "ManualStore")
        self.assertEqual(data["writes"], 2)
        self.assertEqual(data["latency_last"], 0.0)
        self.assertEqual(data["latency_mean"], 0.125)
        self.assertEqual(data["last_error"], {"text": "disk full", "at": 0.25})
        self.assertEqual(snapshot(server)["totals"]["refused"], 1)


class CountedNameTests(SynchronousTestCase):
    """
    Names that would cost memory for good are counted under C{_other}.
    """

    def test_long_and_control(self) -> None:
        """
        A name over 128 bytes, or with a control character, shares the
        counters of C{_other}; a negative duration counts as 0.
        """
        counts = FunctionCounts()
        self.assertIs(counts.of(b"x" * 129), counts.of(OTHER))
        self.assertIs(counts.of(b"a\nb"), counts.of(OTHER))
        self.assertIsNot(counts.of(b"x" * 128), counts.of(OTHER))
        h = Histogram()
        h.observe(-1.0)
        self.assertEqual((h.sum, h.buckets[0]), (0.0, 1))
