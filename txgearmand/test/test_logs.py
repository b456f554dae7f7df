"""
What the job server logs about participants, jobs, refusals and its store:
structured events whose fields are text (not Python reprs of bytes), at
INFO; and each job's steps at DEBUG.
"""

from __future__ import annotations

from typing import Any, cast

from twisted.internet.task import Clock
from twisted.logger import ILogObserver, LogLevel, formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from txgearmand import _log
from txgearmand.server import JobServer
from txgearmand.test.helpers import FakeConnection, ServerTestMixin
from txgearmand.test.helpers import capture_logs as _capture
from txgearmand.test.test_durability import ManualStore
from txgearmand.wire import PacketType as P


class JobLogTests(ServerTestMixin, SynchronousTestCase):
    """
    A job failing, raising, timing out, going back, running out of
    attempts, being cancelled; a submission refused.
    """

    def setUp(self) -> None:
        self.events: list[dict[str, Any]] = []
        observer = cast(ILogObserver, self.events.append)
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)

    def logged(self, start: str) -> dict[str, Any]:
        """
        The one INFO event whose text starts with C{start}; its fields are
        text.
        """
        found = [
            e
            for e in self.events
            if e.get("log_level") == LogLevel.info and formatEvent(e).startswith(start)
        ]
        self.assertEqual(len(found), 1, [formatEvent(e) for e in self.events])
        event = found[0]
        text = formatEvent(event)
        self.assertNotIn("b'", text)
        for name in ("handle", "function"):
            if name in event:
                self.assertIsInstance(event[name], str)
        return event

    def running(self, **settings: Any) -> tuple[Any, bytes]:
        """
        A server with one background job running on a worker.
        """
        self.make_server(**settings)
        client = self.connect()
        client.submit(b"resize", b"x", b"u1", ptype=P.SUBMIT_JOB_BG)
        worker = self.connect().can_do(b"resize")
        handle = worker.grab()[1][0]
        return worker, handle

    def test_work_fail(self) -> None:
        """
        WORK_FAIL is logged with the job's handle and function as
        text.
        """
        worker, handle = self.running()
        worker.send(P.WORK_FAIL, handle)
        event = self.logged("Job H:test:1 (resize) failed on")
        self.assertEqual((event["handle"], event["function"]), ("H:test:1", "resize"))

    def test_work_exception(self) -> None:
        """
        WORK_EXCEPTION is logged with its text cut to 200
        characters.
        """
        worker, handle = self.running()
        worker.send(P.WORK_EXCEPTION, handle, b"E" * 1000)
        event = self.logged("Job H:test:1 (resize) raised on")
        self.assertEqual(event["exception"], "E" * 200 + "...")

    def test_timeout_requeue_and_exhausted(self) -> None:
        """
        A timeout, the job going back for its next attempt, its
        worker leaving with it, and its last failed attempt are each
        logged.
        """
        self.make_server(job_retries=2)
        client = self.connect()
        client.submit(b"resize", b"x", ptype=P.SUBMIT_JOB_BG)
        worker = self.connect()
        worker.send(P.CAN_DO_TIMEOUT, b"resize", b"1000")
        worker.grab()
        self.clock.advance(2)
        self.logged("Job H:test:1 (resize) timed out on")
        self.assertEqual(self.logged("Job H:test:1 (resize) queued again")["attempt"], 2)
        worker.grab()
        worker.disconnect()
        event = self.logged(f"Worker {worker.participant.describe()} went away")
        self.assertEqual(event["handle"], "H:test:1")
        self.assertEqual(self.logged("Job H:test:1 (resize) failed: no result")["retries"], 2)

    def test_cancel(self) -> None:
        """
        An admin cancel is logged.
        """
        self.make_server()
        client = self.connect()
        client.submit(b"resize", b"x", ptype=P.SUBMIT_JOB_BG)
        client.admin(b"cancel job H:test:1")
        self.logged("Job H:test:1 (resize) cancelled")

    def test_refused(self) -> None:
        """
        A refused submission is logged with its request and error
        code.
        """
        self.make_server(max_queue={b"resize": 1})
        client = self.connect()
        client.submit(b"resize", b"x", ptype=P.SUBMIT_JOB_BG)
        client.send(P.SUBMIT_JOB_BG, b"resize", b"", b"y")
        event = self.logged("Refused SUBMIT_JOB_BG from")
        self.assertEqual(event["code"], "QUEUE_ERROR")

    def test_refusal_flood(self) -> None:
        """
        A connection refused again and again is logged ten times, then once
        per thousand refusals.
        """
        self.make_server(max_queue={b"resize": 1})
        client = self.connect()
        client.submit(b"resize", b"x", ptype=P.SUBMIT_JOB_BG)
        for _ in range(2500):
            client.send(P.SUBMIT_JOB_BG, b"resize", b"", b"y")
        lines = [formatEvent(e) for e in self.events if formatEvent(e).startswith("Refused")]
        self.assertEqual(len(lines), 12)
        self.assertTrue(
            lines[-1].endswith("(2000 refusals on this connection; one in 1000 is logged)")
        )


class JSONLogTests(SynchronousTestCase):
    """
    C{twistd --logger=txgearmand.jsonlog.observer}.
    """

    def test_every_line_is_json(self) -> None:
        """
        A server run with the JSON observer writes one JSON object per
        line, each a log event with its fields as data.
        """
        import json
        import os
        import signal
        import subprocess
        import sys
        from pathlib import Path

        from txgearmand.test import _process

        workdir = Path(self.mktemp()).resolve()
        workdir.mkdir(parents=True)
        port = _process.free_port()
        log = workdir / "log.jsonl"
        env = _process.environment()
        env["TXGEARMAND_JSON_LOG"] = str(log)
        process = subprocess.Popen(
            [
                sys.executable,
                "-c",
                _process._TWISTD,
                "-n",
                "--pidfile=",
                "--logger=txgearmand.jsonlog.observer",
                "gearmand",
                f"--port=tcp:{port}:interface=127.0.0.1",
                "--queue=memory",
                "--max-queue=f=1",
            ],
            cwd=workdir,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

        def kill() -> None:
            if process.poll() is None:
                process.kill()
                process.wait(_process.STOP_TIMEOUT)

        self.addCleanup(kill)
        _process.wait_for_port(port, process, _process.START_TIMEOUT)
        from txgearmand.wire import encode_request

        _process.request(
            port,
            encode_request(P.SUBMIT_JOB_BG, b"f", b"", b"1")
            + encode_request(P.SUBMIT_JOB_BG, b"f", b"", b"2"),
            2,
        )
        os.kill(process.pid, signal.SIGTERM)
        process.wait(_process.STOP_TIMEOUT)
        lines = log.read_text().splitlines()
        self.assertGreater(len(lines), 3)
        events = [json.loads(line) for line in lines]
        refused = [e for e in events if e.get("log_format", "").startswith("Refused")]
        self.assertEqual(len(refused), 1)
        self.assertEqual(refused[0]["code"], "QUEUE_ERROR")
        self.assertEqual(refused[0]["request"], "SUBMIT_JOB_BG")


class StatsTests(ServerTestMixin, SynchronousTestCase):
    """
    C{stats_interval}: a one-line summary at INFO.
    """

    def test_summary(self) -> None:
        """
        Every interval, a line with the jobs queued and running, workers,
        clients, and jobs per second in and out; none with an interval of
        0, and no timer left after the server stops.
        """
        events: list[dict[str, Any]] = []
        observer = cast(ILogObserver, events.append)
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)
        self.make_server(stats_interval=10)
        client = self.connect()
        for _ in range(30):
            client.submit(b"f", b"x", ptype=P.SUBMIT_JOB_BG)
        worker = self.connect().can_do(b"f")
        for _ in range(10):
            handle = worker.grab()[1][0]
            worker.send(P.WORK_COMPLETE, handle, b"")
        worker.grab()
        self.clock.advance(10)
        [line] = [e for e in events if e.get("log_namespace", "").startswith("txgearmand.stats")]
        self.assertEqual(
            formatEvent(line),
            "Stats: 19 queued, 1 running, 1 workers, 1 clients; 3.0 jobs/s in, 1.0 jobs/s out",
        )
        self.clock.advance(10)
        self.assertEqual(
            len([e for e in events if e.get("log_namespace", "").startswith("txgearmand.stats")]), 2
        )
        self.server.stopService()
        self.assert_no_timers()


class RoleLogTests(ServerTestMixin, SynchronousTestCase):
    """
    A participant's first role, and its end with its counts, at INFO.
    """

    def setUp(self) -> None:
        self.events = _capture(self)

    def info(self) -> list[str]:
        return [formatEvent(e) for e in self.events if e.get("log_level") == LogLevel.info]

    def find(self, start: str) -> dict[str, Any]:
        found = [
            e
            for e in self.events
            if e.get("log_level") == LogLevel.info and formatEvent(e).startswith(start)
        ]
        self.assertEqual(len(found), 1, self.info())
        return found[0]

    def test_client_and_worker(self) -> None:
        """
        A client is logged at its first submission (not each), a worker
        at its first grab with its functions and client id; each one's
        end says how many jobs it submitted and did.
        """
        self.make_server()
        client = self.connect()
        client.send(P.SET_CLIENT_ID, b"resizer-1")
        client.submit(b"resize", b"x")
        client.submit(b"resize", b"y")
        peer = client.participant.describe()
        event = self.find(f"Client {peer} (resizer-1) submits jobs")
        self.assertEqual((event["peer"], event["id"]), (peer, "resizer-1"))
        worker = self.connect().can_do(b"resize", b"crop")
        handle = worker.grab()[1][0]
        wpeer = worker.participant.describe()
        event = self.find(f"Worker {wpeer} (-) can do resize, crop")
        self.assertEqual(event["functions"], "resize, crop")
        worker.send(P.WORK_COMPLETE, handle, b"done")
        worker.grab()
        worker.disconnect()
        client.disconnect()
        event = self.find(f"Worker {wpeer} (-) left; jobs submitted: 0, done: 1")
        self.assertEqual((event["submitted"], event["done"]), (0, 1))
        event = self.find(f"Client {peer} (resizer-1) left; jobs submitted: 2")
        self.assertEqual(event["submitted"], 2)

    def test_sleeping_worker_and_both_roles(self) -> None:
        """
        A worker that sleeps before it ever grabs is logged when it sleeps;
        a participant that submits and works is both.
        """
        self.make_server()
        both = self.connect().can_do(b"f")
        both.send(P.PRE_SLEEP)
        self.find(f"Worker {both.participant.describe()} (-) can do f")
        both.submit(b"g", b"x", ptype=P.SUBMIT_JOB_BG)
        both.disconnect()
        self.find(f"Client and worker {both.participant.describe()} (-) left")

    def test_admin_and_idle_not_at_info(self) -> None:
        """
        Connections that only ask admin questions, or register and never
        ask for work, say nothing at INFO.
        """
        self.make_server()
        before = len(self.info())
        admin = self.connect()
        admin.admin(b"status")
        admin.disconnect()
        idle = self.connect().can_do(b"f")
        idle.disconnect()
        self.assertEqual(self.info()[before:], [])


class StoreRefusalLogTests(SynchronousTestCase):
    """
    A submission the store failed to take is logged as refused.
    """

    def test_store_failed(self) -> None:
        """
        The submitter's C{QUEUE_ERROR} is logged with the function and the
        store's error.
        """
        events = _capture(self)
        store = ManualStore()
        clock = Clock()
        server = JobServer(clock, store=store, job_handle_prefix=b"H:d")
        server.startService()
        client = FakeConnection(server)
        client.send(P.SUBMIT_JOB_BG, b"resize", b"", b"x")
        store.fail_next = True
        store.commit()
        clock.advance(0)
        self.flushLoggedErrors(OSError)
        [event] = [e for e in events if formatEvent(e).startswith("Refused a submission")]
        self.assertEqual(
            formatEvent(event),
            f"Refused a submission of resize from {client.participant.describe()}:"
            " QUEUE_ERROR The job store failed: disk full",
        )
        self.assertEqual(event["code"], "QUEUE_ERROR")


class DebugLogTests(ServerTestMixin, SynchronousTestCase):
    """
    At DEBUG, each job's submit, assign and completion, with its handle,
    function, unique and sizes, never its payload.
    """

    def setUp(self) -> None:
        self.events = _capture(self)
        self.addCleanup(_log.set_level, "INFO")

    def debug_events(self) -> list[dict[str, Any]]:
        return [
            e
            for e in self.events
            if e.get("log_level") == LogLevel.debug
            and e.get("log_namespace", "").startswith("txgearmand.flow")
        ]

    def test_steps(self) -> None:
        """
        Submit (and a coalesced one), assign and complete are each one
        event with their fields as text.
        """
        self.make_server(verbose="DEBUG")
        client = self.connect()
        handle = client.submit(b"resize", b"secret-payload", unique=b"u-1")
        self.connect().submit(b"resize", b"secret-payload", unique=b"u-1")
        worker = self.connect().can_do(b"resize")
        worker.grab()
        worker.send(P.WORK_COMPLETE, handle, b"result!")
        submitted, joined, assigned, completed = self.debug_events()
        text = formatEvent(submitted)
        self.assertEqual(
            text,
            f"Job H:test:1 (resize) submitted by {client.participant.describe()}:"
            " unique u-1, 14 bytes, normal priority, foreground",
        )
        self.assertEqual(
            (submitted["handle"], submitted["function"], submitted["unique"], submitted["size"]),
            ("H:test:1", "resize", "u-1", 14),
        )
        self.assertIn("joined by", formatEvent(joined))
        self.assertEqual(
            formatEvent(assigned),
            f"Job H:test:1 (resize) assigned to {worker.participant.describe()}",
        )
        self.assertEqual(completed["size"], 7)
        self.assertEqual(completed["clients"], 2)
        for event in self.debug_events():
            self.assertNotIn("secret", formatEvent(event))
            self.assertNotIn("b'", formatEvent(event))

    def test_not_at_info(self) -> None:
        """
        At INFO no per-job event is even made.
        """
        self.make_server(verbose="INFO")
        handle = self.connect().submit(b"f", b"x")
        worker = self.connect().can_do(b"f")
        worker.grab()
        worker.send(P.WORK_COMPLETE, handle, b"")
        self.assertFalse(_log.debugging)
        self.assertEqual(self.debug_events(), [])


class StoreLogTests(SynchronousTestCase):
    """
    A store write that takes longer than C{store_slow_seconds} is logged
    once, a hung one before it returns, and the next quick one as the
    store's recovery.
    """

    def setUp(self) -> None:
        self.events = _capture(self)
        self.clock = Clock()
        self.store = ManualStore()
        self.server = JobServer(
            self.clock, store=self.store, job_handle_prefix=b"H:d", store_slow_seconds=2
        )
        self.server.startService()
        self.client = FakeConnection(self.server)

    def store_events(self) -> list[str]:
        return [
            formatEvent(e)
            for e in self.events
            if e.get("log_namespace", "").startswith("txgearmand.durability")
            and "store is" in formatEvent(e)
        ]

    def test_slow_then_quick(self) -> None:
        """
        A hung write is reported while it waits (once), then the first
        quick write says the store is quick again.
        """
        self.client.send(P.SUBMIT_JOB_BG, b"f", b"", b"x")
        self.clock.advance(1)
        self.assertEqual(self.store_events(), [])
        self.clock.advance(1.5)
        self.assertEqual(len(self.store_events()), 1)
        self.assertIn("a write has waited 2.500 s (1 writes outstanding)", self.store_events()[0])
        self.clock.advance(10)
        self.store.commit()
        self.assertEqual(len(self.store_events()), 1)
        self.assertTrue(self.server.durability.slow)
        self.client.send(P.SUBMIT_JOB_BG, b"f", b"", b"y")
        self.clock.advance(0.5)
        self.store.commit()
        [slow, quick] = self.store_events()
        self.assertTrue(quick.startswith("The job store is quick again: writing 1 job"), quick)
        self.assertFalse(self.server.durability.slow)
        event = next(e for e in self.events if formatEvent(e) == slow)
        self.assertEqual(event["threshold"], 2)
        self.assertEqual(event["log_level"], LogLevel.warn)

    def test_failing_is_not_quick(self) -> None:
        """
        A write that fails at once (a database that went away) does not
        make a slow store quick again.
        """
        self.client.send(P.SUBMIT_JOB_BG, b"f", b"", b"x")
        self.clock.advance(3)
        self.client.send(P.SUBMIT_JOB_BG, b"f", b"", b"y")
        self.store.fail_next = True
        self.store.commit()
        self.flushLoggedErrors(OSError)
        self.assertTrue(self.server.durability.slow)
        self.assertEqual(len(self.store_events()), 1)

    def test_slow_commit_measured(self) -> None:
        """
        A write that returns late but before the watch looks is reported
        with how long it took.
        """
        self.client.send(P.SUBMIT_JOB_BG, b"f", b"", b"x")
        self.clock.pump([0.5, 0.5])
        self.clock.seconds = lambda: 5.0  # type: ignore[method-assign]
        self.store.commit()
        [slow] = self.store_events()
        self.assertIn("writing 1 job changes took 5.000 s", slow)

    def test_no_timer_when_idle(self) -> None:
        """
        The watch runs only while writes are outstanding, and stops with
        the server.
        """
        self.client.send(P.SUBMIT_JOB_BG, b"f", b"", b"x")
        self.store.commit()
        self.clock.advance(2)
        self.assertIsNone(self.server.durability.watch_timer)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.client.send(P.SUBMIT_JOB_BG, b"f", b"", b"y")
        self.assertIsNotNone(self.server.durability.watch_timer)
        self.server.stopService()
        self.store.commit()
        self.assertIsNone(self.server.durability.watch_timer)
