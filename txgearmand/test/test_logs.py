"""
What the job server logs about jobs and refusals: structured events whose
fields are text (not Python reprs of bytes), at INFO.
"""

from __future__ import annotations

from typing import Any, cast

from twisted.logger import ILogObserver, LogLevel, formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from txgearmand.test.helpers import ServerTestMixin
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
