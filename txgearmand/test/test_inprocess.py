"""
Tests for L{txgearmand.inprocess}, on the real reactor: in-process
connections over socketpairs, C{to_inprocess_server} and C{start_worker}.
"""

from __future__ import annotations

import os
import signal
import socket
import struct
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

from twisted.internet import reactor as _reactor
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Protocol, connectionDone
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread
from twisted.logger import ILogObserver, globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SkipTest, TestCase

from txgearmand._direct import direct_socket
from txgearmand.client import GearmanClient
from txgearmand.inprocess import InProcessEndpoint, start_worker
from txgearmand.protocol import GearmanProtocol
from txgearmand.server import JobServer
from txgearmand.test import _process
from txgearmand.wire import PacketType as P
from txgearmand.wire import encode_request
from txgearmand.worker import GearmanWorker, WorkerJob

reactor: Any = _reactor


async def eventually(predicate: Callable[[], bool], timeout: float = 20.0) -> None:
    """
    Let the reactor run until C{predicate()} is true.
    """
    waited = 0.0
    while not predicate():
        if waited > timeout:
            raise AssertionError(f"timed out waiting for {predicate}")
        await deferLater(reactor, 0.01, lambda: None)
        waited += 0.01


def _forbidden(*args: object, **kwargs: object) -> None:
    raise AssertionError("an in-process test opened a port or a network connection")


def protocols(server: JobServer) -> list[GearmanProtocol]:
    """
    The connections of a job server's participants.
    """
    return [cast(GearmanProtocol, p.peer) for p in server.clients()]


class InProcessTestMixin:
    """
    A job server on the real reactor, stopped at cleanup.
    """

    timeout = 60

    def setUp(self) -> None:
        assert isinstance(self, TestCase)
        self.server = JobServer(reactor, job_handle_prefix=b"H:inproc")
        self.server.startService()
        self.addCleanup(self._stop_server)
        self.endpoint = InProcessEndpoint(reactor, self.server)

    async def _stop_server(self) -> None:
        await self.server.stopService()
        await eventually(lambda: not self.server.clients())

    def client(self) -> GearmanClient:
        assert isinstance(self, TestCase)
        client = GearmanClient(self.endpoint, reactor)
        self.addCleanup(client.close)
        return client

    def worker(self, **functions: Callable[[WorkerJob], Any]) -> GearmanWorker:
        assert isinstance(self, TestCase)
        worker = GearmanWorker(self.endpoint, reactor)
        for name, work in functions.items():
            worker.register(name, work)
        worker.start()
        self.addCleanup(worker.stop)
        return worker


class InProcessEndpointTests(InProcessTestMixin, TestCase):
    """
    Tests for L{InProcessEndpoint}.
    """

    async def test_round_trip_without_port(self) -> None:
        """
        A client and a worker in this process do a job through the job
        server with no port and no network connection opened.
        """
        for name in ("listenTCP", "listenUNIX", "listenSSL", "connectTCP", "connectUNIX"):
            self.patch(reactor, name, _forbidden)
        self.worker(reverse=lambda job: job.payload[::-1])
        client = self.client()
        self.assertEqual(await client.submit("reverse", b"in process"), b"ssecorp ni")
        (worker_conn,) = [c for c in self.server.clients() if c.abilities]
        self.assertEqual(worker_conn.peer.peer_host(), "in-process")
        self.assertTrue(worker_conn.peer.is_local())

    async def test_client_close_reaches_server(self) -> None:
        """
        A client that closes its side is gone from the server.
        """
        protocol = cast(Protocol, await self.endpoint.connect(_factory(Protocol)))
        await eventually(lambda: len(self.server.clients()) == 1)
        assert protocol.transport is not None
        protocol.transport.loseConnection()
        await eventually(lambda: not self.server.clients())

    async def test_server_close_reaches_client(self) -> None:
        """
        When the server closes the connection, the client is told.
        """
        lost: Deferred[object] = Deferred()

        class Watcher(Protocol):
            def connectionLost(self, reason: Failure = connectionDone) -> None:
                lost.callback(reason.type)

        await self.endpoint.connect(_factory(Watcher))
        await eventually(lambda: len(self.server.clients()) == 1)
        self.server.clients()[0].peer.close()
        from twisted.internet.error import ConnectionDone

        self.assertIs(await lost, ConnectionDone)

    async def test_refused_when_not_accepting(self) -> None:
        """
        While the job server does not accept connections, connecting fails.
        """
        from twisted.internet.error import ConnectionRefusedError

        self.server.accepting = False
        with self.assertRaises(ConnectionRefusedError):
            await self.endpoint.connect(_factory(Protocol))
        self.server.accepting = True

    async def test_lost_worker_requeues(self) -> None:
        """
        A worker that goes away in-process while holding a job has it done
        by another.
        """
        started: Deferred[WorkerJob] = Deferred()
        hung: Deferred[bytes] = Deferred()

        def hang(job: WorkerJob) -> Deferred[bytes]:
            started.callback(job)
            return hung

        first = self.worker(job=hang)
        client = self.client()
        result = client.submit("job", b"x")
        await started
        (conn,) = first._protocols
        assert conn.transport is not None
        conn.transport.abortConnection()  # type: ignore[attr-defined]
        self.worker(job=lambda job: b"second")
        self.assertEqual(await result, b"second")
        hung.callback(b"too late")

    async def test_back_pressure(self) -> None:
        """
        A client that stops reading makes the server stop reading it too;
        nothing is lost once it reads again.
        """

        class Lazy(Protocol):
            received = 0

            def connectionMade(self) -> None:
                assert self.transport is not None
                self.transport.pauseProducing()  # type: ignore[attr-defined]

            def dataReceived(self, data: bytes) -> None:
                self.received += len(data)

        chunk = b"x" * 65536
        chunks = 100

        def flood(job: WorkerJob) -> bytes:
            for _ in range(chunks):
                job.send_data(chunk)
            return b"done"

        self.worker(flood=flood)
        lazy = cast(Lazy, await self.endpoint.connect(_factory(Lazy)))
        assert lazy.transport is not None
        lazy.transport.write(encode_request(P.SUBMIT_JOB, b"flood", b"", b""))
        await eventually(lambda: any(c.paused for c in protocols(self.server)))
        lazy.transport.resumeProducing()  # type: ignore[attr-defined]
        await eventually(lambda: lazy.received >= chunks * (len(chunk) + 12))
        await eventually(lambda: not any(c.paused for c in protocols(self.server)))
        lazy.transport.loseConnection()


class DirectWriteTests(InProcessTestMixin, TestCase):
    """
    Writing straight to the socket (when the transport holds nothing) must
    keep every byte, in order, also when the socket takes only part.
    """

    async def test_partial_sends_keep_order(self) -> None:
        """
        A write the socket cannot take whole is finished by the transport,
        and later writes queue behind it.
        """

        class Collect(Protocol):
            data = b""

            def dataReceived(self, data: bytes) -> None:
                self.data += data

        client = cast(Collect, await self.endpoint.connect(_factory(Collect)))
        await eventually(lambda: len(self.server.clients()) == 1)
        (conn,) = protocols(self.server)
        sock = direct_socket(conn.transport)
        self.assertIsNotNone(sock)
        assert sock is not None
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        big = bytes(range(256)) * 4096
        conn.send_raw(big)
        conn.send_raw(b"after")
        transport: Any = conn.transport
        self.assertTrue(
            transport._tempDataLen or len(transport.dataBuffer),
            "the socket should not have taken a megabyte at once",
        )
        await eventually(lambda: len(client.data) == len(big) + 5)
        self.assertEqual(client.data, big + b"after")
        assert client.transport is not None
        client.transport.loseConnection()


def _factory(protocol_class: type[Protocol]) -> Any:
    from twisted.internet.protocol import Factory

    return Factory.forProtocol(protocol_class)


class ToInProcessServerTests(InProcessTestMixin, TestCase):
    """
    Tests for L{JobServer.to_inprocess_server}.
    """

    async def test_thread_uses_socket(self) -> None:
        """
        Code in another thread speaks Gearman over the returned socket.
        """
        sock = self.server.to_inprocess_server()

        def blocking() -> list[bytes]:
            replies = []
            with sock:
                sock.settimeout(10)
                for packet in (
                    encode_request(P.SUBMIT_JOB_BG, b"threaded", b"", b"payload"),
                    encode_request(P.ECHO_REQ, b"hello"),
                ):
                    sock.sendall(packet)
                    header = _recv_exactly(sock, 12)
                    size = struct.unpack(">I", header[8:])[0]
                    replies.append(_recv_exactly(sock, size))
            return replies

        replies = await deferToThread(blocking)
        self.assertEqual(replies[1], b"hello")
        (job,) = self.server.jobs()
        self.assertEqual((job.handle, job.data), (replies[0], b"payload"))
        await eventually(lambda: not self.server.clients())


def _recv_exactly(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError("closed")
        data += chunk
    return data


_PYTHON_CHILD = """
from twisted.internet import task
from twisted.internet.defer import Deferred
from txgearmand.worker import GearmanWorker


def main(reactor):
    worker = GearmanWorker.from_stdio(reactor, client_id="child")
    worker.register("shout", lambda job: job.payload.upper())
    worker.register("hang", lambda job: Deferred())
    worker.start()
    return worker.finished


task.react(main)
"""

_PERL_CHILD = r"""
use strict; use warnings;
use Gearman::Worker;
my $w = Gearman::Worker->new;
$w->register_function(perl_reverse => sub { scalar reverse $_[0]->arg });
$w->work(stop_if => sub { 0 });
"""


class StartWorkerTests(InProcessTestMixin, TestCase):
    """
    Tests for L{start_worker}: workers as child processes over a socketpair
    on their standard input and output.
    """

    def script(self, text: str, name: str) -> str:
        path = Path(self.mktemp()).resolve()
        path.mkdir(parents=True)
        script = path / name
        script.write_text(text)
        return str(script)

    async def test_python_worker(self) -> None:
        """
        A Python worker (L{GearmanWorker.from_stdio}) started as a child does
        jobs; when it is killed holding a job, its exit is logged and the
        job goes to another worker.
        """
        events: list[dict[str, Any]] = []
        observer = cast(ILogObserver, events.append)
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)
        argv = [sys.executable, self.script(_PYTHON_CHILD, "child.py")]
        pid, connection, watcher = start_worker(reactor, self.server, argv, _process.environment())
        self.addCleanup(_kill, pid)
        self.assertEqual(connection.label, f"[gearman_child:{pid}]")
        client = self.client()
        self.assertEqual(await client.submit("shout", b"quiet"), b"QUIET")
        (conn,) = [c for c in self.server.clients() if c.abilities]
        self.assertIs(conn.peer, connection)
        self.assertEqual(conn.client_id, b"child")
        result = client.submit("hang", b"x")
        await eventually(lambda: bool(connection.participant.held))
        os.kill(pid, signal.SIGKILL)
        await watcher.ended
        self.assertTrue(
            any(
                e.get("log_namespace") == "txgearmand.inprocess" and e.get("pid") == pid
                for e in events
            )
        )
        self.worker(hang=lambda job: b"rescued")
        self.assertEqual(await result, b"rescued")

    async def test_seed_api(self) -> None:
        """
        L{JobServer.start_worker} returns the pid and the connection, as
        Gearman::Server's does.
        """
        argv = [sys.executable, self.script(_PYTHON_CHILD, "child.py")]
        env = dict(_process.environment())
        self.patch(os, "environ", env)
        pid, connection = self.server.start_worker(argv)
        self.addCleanup(_kill, pid)
        self.assertIsInstance(pid, int)
        watcher = self.server.children[pid]
        self.assertEqual(await self.client().submit("shout", b"seed"), b"SEED")
        self.assertIn(connection, [p.peer for p in self.server.clients()])
        _kill(pid)
        await watcher.ended
        self.assertNotIn(pid, self.server.children)

    async def test_perl_worker(self) -> None:
        """
        Perl's Gearman::Worker, which honours GEARMAN_WORKER_USE_STDIO, works
        as a child.
        """
        if not _process.has_perl_module("Gearman::Worker"):
            raise SkipTest("Perl Gearman::Worker is not installed (libgearman-client-perl)")
        pid, _, watcher = start_worker(
            reactor, self.server, ["perl", self.script(_PERL_CHILD, "worker.pl")]
        )
        self.addCleanup(_kill, pid)
        self.assertEqual(await self.client().submit("perl_reverse", b"camel"), b"lemac")
        os.kill(pid, signal.SIGTERM)
        await watcher.ended


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
