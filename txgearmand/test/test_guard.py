"""
Tests for L{txgearmand.guard}: the memory budget, the read timeout for
stalled peers, the output and connection limits, giving memory back; and
for the pieces under it (L{txgearmand._host}, the parser's view of an
incomplete message, L{txgearmand._direct.buffered}).
"""

from __future__ import annotations

import socket
import struct
from typing import Any, cast

from twisted.internet import defer, reactor, task
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport
from twisted.logger import ILogObserver, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase, TestCase

from txgearmand import _direct, _host, tap, wire
from txgearmand.guard import SMALL_PARTIAL, WATCH_FLOOR, Guard
from txgearmand.job import JOB_OVERHEAD, JobTable
from txgearmand.protocol import GearmanProtocol, GearmanServerFactory
from txgearmand.server import JobServer
from txgearmand.settings import Settings, SettingsError
from txgearmand.test.helpers import ServerTestMixin
from txgearmand.testing import RecordingPeer
from txgearmand.wire import PacketType

_P = PacketType


def header(ptype: int, length: int) -> bytes:
    """
    A request packet header that declares a body of C{length} bytes.
    """
    return struct.pack(">4sII", wire.REQUEST_MAGIC, ptype, length)


class SettingsTests(SynchronousTestCase):
    """
    The settings of the guard are checked like every other.
    """

    def test_defaults(self) -> None:
        """
        By default: a budget of 40% of the memory available, a hard output
        limit with room for two of the largest packets, a 16 MiB soft limit
        for a minute, a 60 s read timeout, keep-alive after 120 s.
        """
        s = Settings()
        available = _host.memory_available()
        if available is not None:
            self.assertEqual(s.max_memory, int(available * _host.DEFAULT_SHARE))
        self.assertEqual(s.output_hard_limit, 2 * (64 * 1024**2 + 12))
        self.assertEqual(s.output_soft_limit, 16 * 1024**2)
        self.assertEqual(s.output_soft_seconds, 60)
        self.assertEqual(s.read_timeout, 60)
        self.assertEqual(s.tcp_keepalive, 120)
        self.assertEqual(s.max_connections, 0)
        self.assertEqual(Settings(max_packet_size=1024).output_hard_limit, 128 * 1024**2)
        small = Settings(max_packet_size=1024, output_hard_limit=4096)
        self.assertEqual(small.output_soft_limit, 4096)

    def test_bad(self) -> None:
        """
        A hard limit a single packet could pass, a soft limit above the
        hard one and negative values are refused, naming the setting.
        """
        cases: list[tuple[dict[str, Any], str]] = [
            ({"max_packet_size": 1000, "output_hard_limit": 1000}, "output_hard_limit"),
            ({"output_hard_limit": 10**9, "output_soft_limit": 2 * 10**9}, "output_soft_limit"),
            ({"max_memory": -1}, "max_memory"),
            ({"read_timeout": -1}, "read_timeout"),
            ({"tcp_keepalive": -1}, "tcp_keepalive"),
            ({"max_connections": -1}, "max_connections"),
            ({"output_soft_seconds": -1}, "output_soft_seconds"),
        ]
        for kwargs, name in cases:
            with self.assertRaises(SettingsError) as raised:
                Settings(**kwargs)
            self.assertEqual(raised.exception.setting, name)
        Settings(output_hard_limit=0, output_soft_limit=10**12)


class OptionTests(SynchronousTestCase):
    """
    The command line options of the guard.
    """

    def parse(self, *argv: str) -> tap.GearmandOptions:
        o = tap.GearmandOptions()
        o.parseOptions(list(argv))
        return o

    def test_values(self) -> None:
        """
        Sizes take K, M, G or a percentage (of the memory available for
        C{--max-memory}); the rest are numbers.
        """
        o = self.parse(
            "--max-memory=512M",
            "--output-hard-limit=256M",
            "--output-soft-limit=1M",
            "--output-soft-seconds=5",
            "--read-timeout=7.5",
            "--tcp-keepalive=0",
            "--max-connections=100",
        )
        s: Settings = o["settings"]
        self.assertEqual(s.max_memory, 512 * 1024**2)
        self.assertEqual(s.output_hard_limit, 256 * 1024**2)
        self.assertEqual(s.output_soft_limit, 1024**2)
        self.assertEqual(s.output_soft_seconds, 5)
        self.assertEqual(s.read_timeout, 7.5)
        self.assertEqual(s.tcp_keepalive, 0)
        self.assertEqual(s.max_connections, 100)
        self.assertEqual(self.parse("--max-memory=0")["settings"].max_memory, 0)
        available = _host.memory_available()
        if available is not None:
            self.assertEqual(
                self.parse("--max-memory=10%")["settings"].max_memory, int(available * 0.1)
            )

    def test_bad(self) -> None:
        """
        A bad value is a usage error that names its option.
        """
        for argv, option in [
            (["--max-memory=lots"], "--max-memory"),
            (["--max-memory=150%"], "--max-memory"),
            (["--output-soft-limit=x"], "--output-soft-limit"),
            (["--max-packet-size=1M", "--output-hard-limit=1M"], "--output-hard-limit"),
            (["--read-timeout=-1"], "--read-timeout"),
        ]:
            with self.assertRaises(Exception) as raised:
                self.parse(*argv)
            self.assertIn(option, str(raised.exception))

    def test_fit_open_files(self) -> None:
        """
        The connection limit served fits the open file limit, less what
        the server keeps for itself.
        """
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        self.addCleanup(resource.setrlimit, resource.RLIMIT_NOFILE, (soft, hard))
        fitted = tap.fit_open_files(Settings(max_connections=10))
        self.assertEqual(fitted.max_connections, 10)
        auto = tap.fit_open_files(Settings())
        now = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        self.assertEqual(auto.max_connections, now - tap.RESERVED_FILES)
        if hard != resource.RLIM_INFINITY:
            huge = tap.fit_open_files(Settings(max_connections=hard + 1000))
            self.assertEqual(huge.max_connections, hard - tap.RESERVED_FILES)


class ParserTests(SynchronousTestCase):
    """
    What the parser says about the message it holds.
    """

    def test_incomplete(self) -> None:
        """
        A partial header reserves a header; a partial body reserves the
        whole packet and says it is in its body; a partial line what it
        holds.
        """
        parser = wire.PacketParser()
        self.assertEqual(parser.incomplete(), (0, False))
        parser.feed(header(_P.SUBMIT_JOB, 1000)[:5])
        self.assertEqual(parser.incomplete(), (12, False))
        parser.feed(header(_P.SUBMIT_JOB, 1000)[5:] + b"x" * 10)
        self.assertEqual(parser.incomplete(), (1012, True))
        parser.feed(b"x" * 990)
        self.assertEqual(parser.incomplete(), (0, False))
        parser.feed(b"stat")
        self.assertEqual(parser.incomplete(), (4, False))

    def test_stop(self) -> None:
        """
        C{stop} drops what is held and stops the parser.
        """
        parser = wire.PacketParser()
        parser.feed(header(_P.SUBMIT_JOB, 1000) + b"x")
        error = wire.WireError(b"QUEUE_ERROR", b"no")
        parser.stop(error)
        self.assertIs(parser.error, error)
        self.assertEqual(parser.buffered(), 0)
        self.assertEqual(parser.feed(b"status\n"), [])


class BudgetTests(ServerTestMixin, SynchronousTestCase):
    """
    The memory budget: jobs held, partial packets, output.
    """

    def test_job_bytes(self) -> None:
        """
        The job table counts what its jobs cost, from submission to end.
        """
        self.make_server()
        client = self.connect()
        client.submit(b"f", b"x" * 1000, b"u1", ptype=_P.SUBMIT_JOB_BG)
        self.assertEqual(self.server.table.held_bytes, 1000 + JOB_OVERHEAD)
        client.submit(b"f", b"x" * 1000, b"u1", ptype=_P.SUBMIT_JOB_BG)
        self.assertEqual(self.server.table.held_bytes, 1000 + JOB_OVERHEAD)
        worker = self.connect().can_do(b"f")
        handle = worker.grab()[1][0]
        worker.send(_P.WORK_COMPLETE, handle, b"")
        self.assertEqual(self.server.table.held_bytes, 0)

    def test_submissions_refused_over_budget(self) -> None:
        """
        Past the budget a submission gets ERROR QUEUE_ERROR (the connection
        stays); every job acknowledged before is kept; once workers have
        taken the server back under it, submissions are accepted again,
        and the log says both.
        """
        self.make_server(max_memory=20 * (2000 + JOB_OVERHEAD))
        events: list[dict[str, Any]] = []
        observer = cast(ILogObserver, events.append)
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)
        client = self.connect()
        handles = []
        while True:
            client.send(_P.SUBMIT_JOB_BG, b"f", b"", b"x" * 2000)
            [(ptype, args)] = client.packets()
            if ptype != _P.JOB_CREATED:
                break
            handles.append(args[0])
        self.assertEqual(len(handles), 20)
        self.assertEqual((ptype, args[0]), (_P.ERROR, b"QUEUE_ERROR"))
        self.assertIn(b"memory budget", args[1])
        self.assertFalse(client.closed)
        self.assertEqual(len(self.server.jobs()), 20)
        self.assertTrue(self.server.guard.over)
        limits = dict(
            line.split(b"\t") for line in client.admin(b"limits").splitlines() if b"\t" in line
        )
        self.assertEqual(limits[b"over_budget"], b"1")
        self.assertEqual(limits[b"refused_submissions"], b"1")
        worker = self.connect().can_do(b"f")
        for _ in range(5):
            handle = worker.grab()[1][0]
            worker.send(_P.WORK_COMPLETE, handle, b"")
        self.clock.advance(1)
        self.assertFalse(self.server.guard.over)
        client.submit(b"f", b"x" * 2000, ptype=_P.SUBMIT_JOB_BG)
        texts = [e.get("log_format", "") for e in events]
        self.assertTrue(any(t.startswith("Over the memory budget") for t in texts))
        self.assertTrue(any(t.startswith("Back under the memory budget") for t in texts))

    def test_large_partial_refused(self) -> None:
        """
        A packet whose declared size would take the server over its budget
        is refused on its header: ERROR QUEUE_ERROR, and the connection is
        closed; a small one is let through even then.
        """
        self.make_server(max_memory=1024**2)
        big = self.connect()
        big.send_bytes(header(_P.SUBMIT_JOB_BG, 2 * 1024**2) + b"f\0\0")
        [(ptype, args)] = big.packets()
        self.assertEqual((ptype, args[0]), (_P.ERROR, b"QUEUE_ERROR"))
        self.assertTrue(big.closed)
        self.assertEqual(self.server.guard.partial, 0)
        self.assertEqual(self.server.guard.counts["refused_packets"], 1)
        fits = self.connect()
        fits.send_bytes(header(_P.SUBMIT_JOB_BG, 512 * 1024) + b"f\0\0")
        self.assertEqual(self.server.guard.partial, 512 * 1024 + 12)
        second = self.connect()
        second.send_bytes(header(_P.SUBMIT_JOB_BG, 600 * 1024) + b"f\0\0")
        self.assertTrue(second.closed)
        small = self.connect()
        small.send_bytes(header(_P.WORK_COMPLETE, SMALL_PARTIAL - 100) + b"H")
        self.assertFalse(small.closed)
        fits.disconnect()
        small.disconnect()
        self.assertEqual(self.server.guard.partial, 0)

    def test_reservation_follows_the_packet(self) -> None:
        """
        The reservation of a packet ends when it completes, and a new one
        in the same read takes its place.
        """
        self.make_server()
        conn = self.connect()
        body = b"f\0\0" + b"x" * 997
        packet = header(_P.SUBMIT_JOB_BG, len(body)) + body
        conn.send_bytes(packet[:100])
        self.assertEqual(self.server.guard.partial, 1012)
        conn.send_bytes(packet[100:] + packet[:20])
        self.assertEqual(self.server.guard.partial, 1012)
        conn.send_bytes(packet[20:])
        self.assertEqual(self.server.guard.partial, 0)
        self.assertEqual(len(self.server.jobs()), 2)

    def test_split_submission_counted_once(self) -> None:
        """
        A job that fits the budget fits it however its packet arrives: its
        reservation ends when it is whole, before it becomes a job.
        """
        self.make_server(max_memory=3 * 1024**2)
        client = self.connect()
        packet = wire.encode_request(_P.SUBMIT_JOB_BG, b"f", b"", b"x" * (2 * 1024**2))
        for offset in range(0, len(packet), 256 * 1024):
            client.send_bytes(packet[offset : offset + 256 * 1024])
        self.assertEqual([p[0] for p in client.packets()], [_P.JOB_CREATED])
        self.assertEqual(self.server.guard.partial, 0)
        self.assertEqual(self.server.table.held_bytes, sum(job.cost for job in self.server.jobs()))

    def test_results_never_refused(self) -> None:
        """
        Near the budget, a large result still arrives (refusing it would
        requeue its job for the next worker, to be refused again): only
        submissions are refused.
        """
        self.make_server(max_memory=10 * 1024**2)
        client = self.connect()
        for _ in range(9):
            client.submit(b"f", b"x" * 1024**2, ptype=_P.SUBMIT_JOB_BG)
        worker = self.connect().can_do(b"f")
        handle = worker.grab()[1][0]
        packet = wire.encode_request(_P.WORK_COMPLETE, handle, b"r" * (1536 * 1024))
        for offset in range(0, len(packet), 256 * 1024):
            worker.send_bytes(packet[offset : offset + 256 * 1024])
        self.assertFalse(worker.closed)
        self.assertEqual(len(self.server.jobs()), 8)
        self.assertEqual(self.server.guard.counts["refused_packets"], 0)

    def test_no_budget(self) -> None:
        """
        With C{max_memory=0} nothing is refused for memory.
        """
        self.make_server(max_memory=0)
        client = self.connect()
        for _ in range(50):
            client.submit(b"f", b"x" * 100_000, ptype=_P.SUBMIT_JOB_BG)
        self.assertEqual(len(self.server.jobs()), 50)

    def test_memory_given_back(self) -> None:
        """
        After the counted bytes pass the watch floor and fall to under
        half their peak, the heap is trimmed, once; then the watch stops.
        """
        released: list[int] = []
        clock = task.Clock()
        table = JobTable(b"H:t")

        def release() -> bool:
            released.append(1)
            return True

        guard = Guard(clock, Settings(max_memory=0), table, release)
        table.held_bytes = WATCH_FLOOR + 10
        self.assertGreater(table.held_bytes, guard.alarm)
        self.assertTrue(guard.admit(0))
        clock.advance(1)
        self.assertEqual(released, [])
        table.held_bytes = 1000
        clock.advance(1)
        self.assertEqual(released, [1])
        self.assertEqual(guard.counts["memory_released"], 1)
        clock.advance(10)
        self.assertEqual(released, [1])
        self.assertEqual(clock.getDelayedCalls(), [])


class StallTests(ServerTestMixin, SynchronousTestCase):
    """
    The read timeout: incomplete packets and lines, never idle connections.
    """

    def test_partial_header(self) -> None:
        """
        A header still incomplete after the timeout closes its connection,
        even if it trickles in; the count goes up; no timer is left.
        """
        self.make_server(read_timeout=60)
        conn = self.connect()
        packet = header(_P.ECHO_REQ, 0)
        for i in range(5):
            conn.send_bytes(packet[i : i + 1])
            self.clock.advance(10)
        self.assertFalse(conn.closed)
        self.clock.advance(11)
        self.assertTrue(conn.closed)
        self.assertEqual(self.server.guard.counts["closed_stalled"], 1)
        self.assert_no_timers()

    def test_partial_line(self) -> None:
        """
        So does an admin line without its end.
        """
        self.make_server(read_timeout=5)
        conn = self.connect()
        conn.send_bytes(b"stat")
        self.clock.advance(6)
        self.assertTrue(conn.closed)

    def test_body_progress(self) -> None:
        """
        A body that keeps arriving is given the time it takes; one that
        stops for the timeout is closed.
        """
        self.make_server(read_timeout=60)
        conn = self.connect()
        conn.send_bytes(header(_P.ECHO_REQ, 100))
        for _ in range(5):
            self.clock.advance(50)
            conn.send_bytes(b"x")
        self.assertFalse(conn.closed)
        self.clock.advance(61)
        self.assertTrue(conn.closed)

    def test_idle_left_alone(self) -> None:
        """
        A connection with nothing half-sent (a sleeping worker) is never
        closed, and costs no timer.
        """
        self.make_server(read_timeout=1)
        worker = self.connect().can_do(b"f")
        worker.send(_P.PRE_SLEEP)
        self.clock.advance(3600)
        self.assertFalse(worker.closed)
        self.assert_no_timers()

    def test_whole_packets_left_alone(self) -> None:
        """
        A packet completed in time resets nothing and closes nothing.
        """
        self.make_server(read_timeout=10)
        conn = self.connect()
        packet = wire.encode_request(_P.ECHO_REQ, b"hello")
        conn.send_bytes(packet[:3])
        self.clock.advance(9)
        conn.send_bytes(packet[3:])
        self.clock.advance(20)
        self.assertFalse(conn.closed)
        self.assertEqual(conn.packets(), [(_P.ECHO_RES, (b"hello",))])

    def test_not_while_we_do_not_read(self) -> None:
        """
        While the server does not read a connection (its peer does not
        read what it is sent), its incomplete packet is not a stall; once
        it reads again, the timeout starts again.
        """
        self.make_server(read_timeout=60)
        conn = self.connect()
        conn.send_bytes(wire.encode_request(_P.SUBMIT_JOB, b"f", b"", b"x" * 100_000)[:50_000])
        conn.protocol.pauseProducing()
        self.clock.advance(120)
        self.assertFalse(conn.closed)
        conn.protocol.resumeProducing()
        self.clock.advance(59)
        self.assertFalse(conn.closed)
        self.clock.advance(2)
        self.assertTrue(conn.closed)

    def test_disabled(self) -> None:
        """
        C{read_timeout=0} never closes.
        """
        self.make_server(read_timeout=0)
        conn = self.connect()
        conn.send_bytes(b"\0RE")
        self.clock.advance(10_000)
        self.assertFalse(conn.closed)


class ConnectionLimitTests(ServerTestMixin, SynchronousTestCase):
    """
    C{max_connections}.
    """

    def test_limit(self) -> None:
        """
        At the limit the factory refuses new connections (they are closed
        as they arrive); below it again, it accepts them.
        """
        self.make_server(max_connections=2)
        factory = GearmanServerFactory(self.server)
        addr = IPv4Address("TCP", "127.0.0.1", 1)
        first = self.connect()
        self.connect()
        self.assertEqual(self.server.guard.connections, 2)
        for _ in range(2):
            refused = factory.buildProtocol(addr)
            assert refused is not None
            self.assertNotIsInstance(refused, GearmanProtocol)
            transport = StringTransport()
            refused.makeConnection(transport)
            self.assertTrue(transport.disconnecting)
        self.assertEqual(self.server.guard.counts["refused_connections"], 2)
        self.assertEqual(self.server.guard.connections, 2)
        first.disconnect()
        self.assertIsInstance(factory.buildProtocol(addr), GearmanProtocol)


def serve_and_connect(test: TestCase, settings: dict[str, Any]) -> tuple[JobServer, socket.socket]:
    """
    A job server with these settings on a real loopback port, and a
    client socket connected to it; all closed at the test's cleanup.
    """
    server = JobServer(reactor, job_handle_prefix=b"H:t", **settings)
    server.startService()
    test.addCleanup(server.stopService)
    port = reactor.listenTCP(0, GearmanServerFactory(server), interface="127.0.0.1")
    test.addCleanup(port.stopListening)
    sock = socket.create_connection(("127.0.0.1", port.getHost().port))  # type: ignore[attr-defined]
    test.addCleanup(sock.close)
    return server, sock


class OutputLimitTests(TestCase):
    """
    Output limits, on a real loopback connection (its kernel buffers fill
    for real).
    """

    timeout = 30

    @defer.inlineCallbacks
    def stream_to_non_reader(self, **settings: Any) -> Any:
        server, sock = serve_and_connect(self, settings)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.sendall(wire.encode_request(_P.SUBMIT_JOB, b"stream", b"", b"go"))
        peer = RecordingPeer.join(server, "worker")
        assert peer.participant is not None
        worker = peer.participant
        server.workers.can_do(worker, b"stream")
        for _ in range(100):
            job = server.grab_job(worker)
            if job is not None:
                break
            yield task.deferLater(reactor, 0.01, lambda: None)
        assert job is not None
        chunk = b"d" * 32 * 1024
        sent = 0
        for _ in range(2000):
            if not job.listeners:
                break
            with server.output:
                server.work_data(worker, job.handle, chunk)
            sent += len(chunk)
            yield task.deferLater(reactor, 0.001, lambda: None)
        return server, job, sent

    @defer.inlineCallbacks
    def test_hard_limit(self) -> Any:
        """
        A client that does not read the WORK_DATA streamed to it is closed
        once its unsent output passes the hard limit; its interest in the
        job is dropped, the worker keeps its job, the output counted
        against the budget goes back to nothing, and the memory is given
        back.
        """
        server, job, sent = yield self.stream_to_non_reader(
            max_packet_size=64 * 1024,
            output_hard_limit=1024**2,
            output_soft_limit=0,
        )
        self.assertEqual(job.listeners, [])
        self.assertLess(sent, 8 * 1024**2)
        self.assertEqual(server.guard.counts["closed_output_hard"], 1)
        self.assertIsNotNone(job.worker)
        yield task.deferLater(reactor, 0.05, lambda: None)
        self.assertEqual(server.guard.output, 0)
        # What it held is handed back at the guard's next look.
        yield task.deferLater(reactor, 1.1, lambda: None)
        self.assertEqual(server.guard.counts["memory_released"], 1)

    @defer.inlineCallbacks
    def test_soft_limit(self) -> Any:
        """
        Over the soft limit for its time, the client is closed too.
        """
        server, job, _sent = yield self.stream_to_non_reader(
            max_packet_size=64 * 1024,
            output_hard_limit=0,
            output_soft_limit=256 * 1024,
            output_soft_seconds=0.2,
        )
        self.assertEqual(job.listeners, [])
        self.assertEqual(server.guard.counts["closed_output_soft"], 1)


class BufferedTests(SynchronousTestCase):
    """
    L{_direct.buffered} on transports it does not know.
    """

    def test_unknown(self) -> None:
        """
        Anything that is not a Twisted TCP transport (or wraps one) has 0.
        """
        self.assertEqual(_direct.buffered(object()), 0)
        self.assertEqual(_direct.buffered(None), 0)


class HostTests(SynchronousTestCase):
    """
    L{txgearmand._host}.
    """

    def test_rss(self) -> None:
        """
        The resident size of this process is read where /proc exists.
        """
        rss = _host.rss_bytes()
        if rss is None:
            self.skipTest("no /proc here")
        self.assertGreater(rss, 1024**2)

    def test_raise_open_files(self) -> None:
        """
        The soft limit is raised towards what is asked, never lowered.
        """
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        self.addCleanup(resource.setrlimit, resource.RLIMIT_NOFILE, (soft, hard))
        before, now, _ = _host.raise_open_files(1)
        self.assertEqual(now, before)
        self.assertEqual(resource.getrlimit(resource.RLIMIT_NOFILE)[0], soft)


class KeepAliveTests(TestCase):
    """
    TCP keep-alive on accepted connections.
    """

    timeout = 10

    @defer.inlineCallbacks
    def accepted_socket(self, **settings: Any) -> Any:
        server, _sock = serve_and_connect(self, settings)
        for _ in range(200):
            if server.clients():
                break
            yield task.deferLater(reactor, 0.01, lambda: None)
        [participant] = server.clients()
        accepted = _direct.socket_of(participant.peer.transport)  # type: ignore[attr-defined]
        assert accepted is not None
        return accepted

    @defer.inlineCallbacks
    def test_on(self) -> Any:
        """
        With C{tcp_keepalive=N} the socket probes after N idle seconds.
        """
        accepted = yield self.accepted_socket(tcp_keepalive=45)
        self.assertTrue(accepted.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE))
        if hasattr(socket, "TCP_KEEPIDLE"):
            self.assertEqual(accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE), 45)
            self.assertEqual(accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL), 30)

    @defer.inlineCallbacks
    def test_off(self) -> Any:
        """
        With C{tcp_keepalive=0} it does not.
        """
        accepted = yield self.accepted_socket(tcp_keepalive=0)
        self.assertFalse(accepted.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE))
