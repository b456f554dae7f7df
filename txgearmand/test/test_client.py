"""
Tests for L{txgearmand.client} against real servers: a C{twistd gearmand}
process and Debian's C gearmand, each started on a free loopback port.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

from twisted.internet import reactor as _reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.trial.unittest import SkipTest, TestCase

from txgearmand.client import (
    LOW,
    GearmanClient,
    GearmanWorker,
    JobException,
    JobStatus,
    WorkerJob,
)
from txgearmand.test import _process
from txgearmand.test.test_inprocess import eventually

reactor: Any = _reactor


class _ServerTestsMixin:
    """
    The client and worker against a real server; subclasses say which.
    """

    timeout = 90

    def start(self) -> _process.Server:
        raise NotImplementedError

    def setUp(self) -> None:
        assert isinstance(self, TestCase)
        self.workdir = Path(self.mktemp()).resolve()
        self.workdir.mkdir(parents=True)
        self.server = self.start()
        self.addCleanup(self.server.kill)
        self.endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", self.server.port, timeout=5)

    def client(self) -> GearmanClient:
        assert isinstance(self, TestCase)
        client = GearmanClient(self.endpoint, reactor)
        self.addCleanup(client.close)
        return client

    def worker(self, **functions: Any) -> GearmanWorker:
        assert isinstance(self, TestCase)
        worker = GearmanWorker(self.endpoint, reactor, client_id="txworker")
        for name, work in functions.items():
            worker.register(name, work)
        worker.start()
        self.addCleanup(worker.stop)
        return worker

    async def test_round_trip(self) -> None:
        """
        A job goes from the client to the worker, with its unique id, and
        its updates and result come back.
        """
        seen: list[bytes] = []

        def work(job: WorkerJob) -> bytes:
            seen.append(job.unique)
            job.send_status(1, 2)
            job.send_data(b"partial")
            return job.payload.upper()

        self.worker(upper=work)
        client = self.client()
        updates: list[object] = []
        result = await client.submit(
            "upper",
            b"hello",
            unique="u-1",
            on_status=lambda n, d: updates.append((n, d)),
            on_data=updates.append,
        )
        assert isinstance(self, TestCase)
        self.assertEqual(result, b"HELLO")
        self.assertEqual(updates, [(1, 2), b"partial"])
        self.assertEqual(seen, [b"u-1"])

    async def test_exception(self) -> None:
        """
        A worker function's exception reaches the client.
        """

        def broken(job: WorkerJob) -> bytes:
            raise RuntimeError("broken on purpose")

        self.worker(broken=broken)
        assert isinstance(self, TestCase)
        with self.assertRaises(JobException) as caught:
            await self.client().submit("broken", b"")
        self.assertIn(b"broken on purpose", caught.exception.data)
        self.flushLoggedErrors(RuntimeError)

    async def test_background_status_echo(self) -> None:
        """
        A background job's handle comes back at once; its status can be
        asked; a worker started later does it.
        """
        client = self.client()
        handle = await client.submit("later", b"x", background=True, priority=LOW)
        status = await client.get_status(handle)
        assert isinstance(self, TestCase)
        self.assertEqual(status, JobStatus(handle, True, False, 0, 0))
        self.assertEqual(await client.echo(b"ping"), b"ping")
        done: Deferred[bytes] = Deferred()

        def later(job: WorkerJob) -> bytes:
            done.callback(job.payload)
            return b""

        self.worker(later=later)
        self.assertEqual(await done, b"x")


class TxGearmandClientTests(_ServerTestsMixin, TestCase):
    """
    Against C{twistd gearmand}.
    """

    def start(self) -> _process.Server:
        return _process.twistd_gearmand(self.workdir).start()

    async def test_reconnect_after_restart(self) -> None:
        """
        A worker and a client whose server restarts reconnect (with
        back-off) and work again.
        """
        self.worker(echo=lambda job: job.payload)
        client = self.client()
        self.assertEqual(await client.submit("echo", b"before"), b"before")
        port = self.server.port
        self.server.stop()
        self.server = _process.Server(
            [*self.server.argv], port, self.workdir / "twistd2.log", self.workdir
        )
        self.addCleanup(self.server.kill)
        for _ in range(50):
            try:
                self.server.start()
                break
            except RuntimeError:
                # The old process's port may take a moment to free.
                await eventually(lambda: True)
        await eventually(lambda: b"echo\t0\t0\t1" in _process.admin(port, b"status"), timeout=30)
        self.assertEqual(await client.submit("echo", b"after"), b"after")


class CGearmandClientTests(_ServerTestsMixin, TestCase):
    """
    Against Debian's C gearmand (gearman-job-server).
    """

    def start(self) -> _process.Server:
        server = _process.c_gearmand(self.workdir, "--threads=1")
        if server is None:
            raise SkipTest("C gearmand is not installed (Debian package gearman-job-server)")
        return server.start()


class NoGlobalReactorTests(TestCase):
    """
    Importing the client does not install a reactor.
    """

    def test_import(self) -> None:
        """
        C{import txgearmand.client} (and the in-process and testing modules)
        leaves C{twisted.internet.reactor} unimported.
        """
        code = (
            "import sys\n"
            "import txgearmand.client, txgearmand.inprocess, txgearmand.testing\n"
            "print('twisted.internet.reactor' in sys.modules)\n"
        )
        out = subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            env=_process.environment(),
            timeout=60,
            check=True,
        ).stdout
        self.assertEqual(out.strip(), b"False")
