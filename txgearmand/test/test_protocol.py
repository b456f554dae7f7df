"""
Tests for L{txgearmand.protocol}: how one connection handles what arrives
on the wire, good and bad, and how it writes.
"""

from __future__ import annotations

from twisted.internet.address import IPv4Address
from twisted.trial.unittest import SynchronousTestCase

from txgearmand import wire
from txgearmand.protocol import GearmanProtocol, GearmanServerFactory
from txgearmand.test.helpers import ServerTestMixin
from txgearmand.wire import PacketType as P
from txgearmand.wire import encode, encode_request

_RESPONSE_ONLY = [
    P.UNUSED,
    P.NOOP,
    P.JOB_CREATED,
    P.NO_JOB,
    P.JOB_ASSIGN,
    P.ECHO_RES,
    P.ERROR,
    P.STATUS_RES,
    P.OPTION_RES,
    P.JOB_ASSIGN_UNIQ,
    P.SUBMIT_JOB_SCHED,
    P.JOB_ASSIGN_ALL,
    P.STATUS_RES_UNIQUE,
]


class RequestTests(ServerTestMixin, SynchronousTestCase):
    """
    Requests other than jobs and results.
    """

    def test_echo(self) -> None:
        """
        ECHO_REQ is answered with ECHO_RES carrying the same bytes.
        """
        conn = self.connect()
        conn.send(P.ECHO_REQ, b"a\0b\xff")
        self.assertEqual(conn.packets(), [(P.ECHO_RES, (b"a\0b\xff",))])

    def test_option_exceptions(self) -> None:
        """
        OPTION_REQ C{exceptions}, in any case, is echoed in OPTION_RES.
        """
        conn = self.connect()
        conn.send(P.OPTION_REQ, b"Exceptions")
        self.assertEqual(conn.packets(), [(P.OPTION_RES, (b"Exceptions",))])
        self.assertTrue(conn.participant.exceptions)

    def test_option_unknown(self) -> None:
        """
        Any other option gets C gearmand's UNKNOWN_OPTION error.
        """
        conn = self.connect()
        conn.send(P.OPTION_REQ, b"speed")
        self.assertEqual(
            conn.packets(),
            [(P.ERROR, (b"UNKNOWN_OPTION", b"Server does not recognize given option"))],
        )

    def test_set_client_id(self) -> None:
        """
        SET_CLIENT_ID is shown by C{workers}, without whitespace (which
        would break parsers of that listing) and at most 127 bytes long.
        """
        conn = self.connect()
        conn.send(P.SET_CLIENT_ID, b"my worker\t1")
        self.assertEqual(conn.participant.client_id, b"myworker1")
        conn.send(P.SET_CLIENT_ID, b" ")
        self.assertEqual(conn.participant.client_id, b"-")
        conn.send(P.SET_CLIENT_ID, b"x" * 200)
        self.assertEqual(conn.participant.client_id, b"x" * 127)
        self.assertEqual(conn.packets(), [])

    def test_all_yours(self) -> None:
        """
        ALL_YOURS is accepted silently (it expects no answer).
        """
        conn = self.connect()
        conn.send(P.ALL_YOURS)
        self.assertEqual(conn.packets(), [])
        self.assertFalse(conn.closed)

    def test_cant_do_unknown(self) -> None:
        """
        CANT_DO for a function never registered is ignored.
        """
        conn = self.connect()
        conn.send(P.CANT_DO, b"nothing")
        self.assertEqual(conn.packets(), [])

    def test_released_handles_bounded(self) -> None:
        """
        A connection remembers only the last L{MAX_RELEASED} handles taken
        from it.
        """
        from txgearmand.records import MAX_RELEASED

        conn = self.connect()
        for i in range(MAX_RELEASED + 10):
            conn.participant.remember_released(b"H:%d" % i)
        self.assertEqual(len(conn.participant.released), MAX_RELEASED)
        self.assertNotIn(b"H:0", conn.participant.released)
        self.assertIn(b"H:%d" % (MAX_RELEASED + 9), conn.participant.released)

    def test_can_do_empty(self) -> None:
        """
        CAN_DO with an empty name is refused.
        """
        conn = self.connect()
        conn.send(P.CAN_DO, b"")
        self.assertEqual(conn.packets()[0][1][0], b"INVALID_ARGUMENT")
        self.assertEqual(conn.participant.abilities, {})


class BadInputTests(ServerTestMixin, SynchronousTestCase):
    """
    Bad input gets a clear error and never hurts other connections.
    """

    def test_response_only_types(self) -> None:
        """
        Types only a server sends, and the unused ones, get C gearmand's
        INVALID_COMMAND; the connection stays usable.
        """
        conn = self.connect()
        for ptype in _RESPONSE_ONLY:
            conn.send(ptype, b"x")
            self.assertEqual(
                conn.packets(), [(P.ERROR, (b"INVALID_COMMAND", b"Command not expected"))], ptype
            )
        conn.send(P.ECHO_REQ, b"still here")
        self.assertEqual(conn.packets(), [(P.ECHO_RES, (b"still here",))])

    def test_response_magic(self) -> None:
        """
        A packet with the response magic gets INVALID_MAGIC; the connection
        stays usable.
        """
        conn = self.connect()
        conn.send_bytes(encode(P.ECHO_REQ, b"x") + encode_request(P.ECHO_REQ, b"y"))
        self.assertEqual(
            conn.packets(),
            [(P.ERROR, (b"INVALID_MAGIC", b"Request magic expected")), (P.ECHO_RES, (b"y",))],
        )

    def test_bad_magic_closes(self) -> None:
        """
        An unknown magic gets an ERROR and the connection is closed; what
        came before it was handled.
        """
        conn = self.connect()
        conn.send_bytes(encode_request(P.ECHO_REQ, b"a") + b"\0BAD\0\0\0\x10\0\0\0\0")
        self.assertEqual(
            conn.packets(),
            [(P.ECHO_RES, (b"a",)), (P.ERROR, (b"INVALID_MAGIC", b"Request magic expected"))],
        )
        self.assertTrue(conn.closed)

    def test_unknown_type_closes(self) -> None:
        """
        A type over 42 gets an ERROR and the connection is closed.
        """
        conn = self.connect()
        conn.send_bytes(b"\0REQ\0\0\0\x2b\0\0\0\0")
        self.assertEqual(
            conn.packets(), [(P.ERROR, (b"INVALID_COMMAND", b"Invalid command expected"))]
        )
        self.assertTrue(conn.closed)

    def test_oversize_closes_and_requeues(self) -> None:
        """
        A header declaring a body over C{max_packet_size} gets
        ARGUMENT_TOO_LARGE and the connection is closed; the job that
        worker held goes to another worker, and other connections are
        untouched.
        """
        self.make_server(max_packet_size=1024)
        client = self.connect()
        h = client.submit(b"f")
        bad = self.worker(b"f")
        bad.grab()
        bad.send_bytes(b"\0REQ\0\0\0\x0d" + (1025).to_bytes(4, "big") + h)
        (error,) = bad.packets()
        self.assertEqual(error[1][0], b"ARGUMENT_TOO_LARGE")
        self.assertTrue(bad.closed)
        good = self.worker(b"f")
        self.assertEqual(good.grab()[1][0], h)
        good.send(P.WORK_COMPLETE, h, b"x" * 1000)
        self.assertEqual(client.packets(), [(P.WORK_COMPLETE, (h, b"x" * 1000))])

    def test_malformed_bodies(self) -> None:
        """
        A packet with too few arguments gets INVALID_ARGUMENT and changes
        nothing; the connection stays usable.
        """
        conn = self.connect()
        for ptype, body in [
            (P.SUBMIT_JOB, b"f\0u"),
            (P.SUBMIT_JOB_BG, b"f"),
            (P.SUBMIT_JOB_HIGH, b""),
            (P.SUBMIT_JOB_HIGH_BG, b"f"),
            (P.SUBMIT_JOB_LOW, b"f"),
            (P.SUBMIT_JOB_LOW_BG, b"f"),
            (P.SUBMIT_JOB_EPOCH, b"f\x00u\x001"),
            (P.SUBMIT_REDUCE_JOB, b"f\0u\0r\0"),
            (P.SUBMIT_REDUCE_JOB_BACKGROUND, b"f"),
            (P.WORK_STATUS, b"H:test:1\x001"),
            (P.CAN_DO_TIMEOUT, b"f"),
        ]:
            conn.send_bytes(
                wire.REQUEST_MAGIC
                + int(ptype).to_bytes(4, "big")
                + len(body).to_bytes(4, "big")
                + body
            )
            reply = conn.packets()
            self.assertEqual(len(reply), 1, ptype)
            self.assertEqual(reply[0][0], P.ERROR, ptype)
            self.assertEqual(reply[0][1][0], b"INVALID_ARGUMENT", ptype)
        self.assertEqual(self.server.jobs(), [])
        self.assertFalse(conn.closed)

    def test_long_text_line(self) -> None:
        """
        A text line over the limit gets an ERR line and the connection is
        closed.
        """
        conn = self.connect()
        conn.send_bytes(b"x" * (wire.DEFAULT_MAX_LINE_LENGTH + 10))
        self.assertTrue(conn.text().startswith(b"ERR LINE_TOO_LONG "))
        self.assertTrue(conn.closed)

    def test_handler_error_contained(self) -> None:
        """
        A bug in a handler answers SERVER_ERROR and the connection goes on
        with the next packet.
        """
        conn = self.connect()

        def broken(worker: GearmanProtocol) -> None:
            raise RuntimeError("bug")

        self.patch(self.server, "on_client_sleep", broken)
        conn.send_bytes(encode_request(P.PRE_SLEEP) + encode_request(P.ECHO_REQ, b"ok"))
        self.assertEqual(
            conn.packets(),
            [(P.ERROR, (b"SERVER_ERROR", b"Internal server error")), (P.ECHO_RES, (b"ok",))],
        )
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)


class ChunkingTests(ServerTestMixin, SynchronousTestCase):
    """
    Input in any chunking, pipelined.
    """

    def test_byte_by_byte(self) -> None:
        """
        A conversation that arrives one byte at a time is handled exactly
        as if it arrived whole.
        """
        data = (
            encode_request(P.SUBMIT_JOB, b"f", b"u", b"payload")
            + b"status\r\n"
            + encode_request(P.ECHO_REQ, b"e")
        )
        whole = self.connect()
        whole.send_bytes(data)
        expected = whole.text()
        self.make_server()
        split = self.connect()
        for i in range(len(data)):
            split.send_bytes(data[i : i + 1])
        self.assertEqual(split.text(), expected)

    def test_large_payload(self) -> None:
        """
        A 4 MiB payload arriving in 1400-byte reads reaches the worker whole.
        """
        payload = bytes(range(256)) * (16 * 1024)
        client = self.connect()
        data = encode_request(P.SUBMIT_JOB_BG, b"f", b"", payload)
        for i in range(0, len(data), 1400):
            client.send_bytes(data[i : i + 1400])
        (created,) = client.packets()
        worker = self.worker(b"f")
        self.assertEqual(worker.grab(), (P.JOB_ASSIGN_UNIQ, (created[1][0], b"f", b"", payload)))


class WriteTests(ServerTestMixin, SynchronousTestCase):
    """
    How the connection writes.
    """

    def test_one_write_per_read(self) -> None:
        """
        Every reply caused by one read goes out in one write.
        """
        conn = self.connect()
        conn.transport.writes = 0
        conn.send_bytes(b"".join(encode_request(P.ECHO_REQ, b"%d" % i) for i in range(50)))
        self.assertEqual(conn.transport.writes, 1)
        self.assertEqual(len(conn.packets()), 50)

    def test_one_write_per_listener(self) -> None:
        """
        Results relayed by one read reach each listener in one write.
        """
        client = self.connect()
        handles = [client.submit(b"f", ptype=P.SUBMIT_JOB) for _ in range(10)]
        worker = self.worker(b"f")
        for _ in handles:
            worker.grab()
        client.transport.writes = 0
        worker.send_bytes(b"".join(encode_request(P.WORK_COMPLETE, h, b"r") for h in handles))
        self.assertEqual(client.transport.writes, 1)
        self.assertEqual(len(client.packets()), 10)

    def test_coalesced_per_turn(self) -> None:
        """
        What several reads in one reactor turn send a connection goes out
        at the end of the turn, in one write.
        """
        self.make_server()
        client = self.connect()
        handles = []
        for i in range(3):
            client.send(P.SUBMIT_JOB, b"f", b"", b"%d" % i)
        self.clock.advance(0)
        handles = [p[1][0] for p in client.packets()]
        workers = [self.worker(b"f") for _ in handles]
        for w in workers:
            w.send(P.GRAB_JOB)
        self.clock.advance(0)
        client.transport.writes = 0
        for w, h in zip(workers, handles):
            # Three reads in one turn: the turn does not end between them.
            w.protocol.dataReceived(encode_request(P.WORK_COMPLETE, h, b"r"))
        self.assertEqual(client.packets(), [])
        self.clock.advance(0)
        self.assertEqual(client.transport.writes, 1)
        self.assertEqual([p[0] for p in client.packets()], [P.WORK_COMPLETE] * 3)

    def test_back_pressure(self) -> None:
        """
        When its transport's buffer fills, the connection stops reading the
        peer; it reads again when the buffer drains.
        """
        conn = self.connect()
        self.assertIs(conn.transport.producer, conn.protocol)
        conn.protocol.pauseProducing()
        self.assertEqual(conn.transport.producerState, "paused")
        conn.protocol.resumeProducing()
        self.assertEqual(conn.transport.producerState, "producing")

    def test_tcp_nodelay(self) -> None:
        """
        TCP connections get TCP_NODELAY: small replies are not held back
        by Nagle's algorithm.
        """
        from txgearmand.test.helpers import CountingTransport

        calls: list[bool] = []

        class TCPTransport(CountingTransport):
            def setTcpNoDelay(self, enabled: bool) -> None:
                calls.append(enabled)

        self.make_server()
        protocol = GearmanProtocol(self.server)
        protocol.makeConnection(TCPTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 9)))
        self.assertEqual(calls, [True])

    def test_write_after_close_ignored(self) -> None:
        """
        Telling a closed connection to send does nothing.
        """
        conn = self.connect()
        conn.disconnect()
        conn.protocol.send_packet(P.NOOP)
        self.assertEqual(conn.text(), b"")


class FactoryTests(ServerTestMixin, SynchronousTestCase):
    """
    Tests for L{GearmanServerFactory}.
    """

    def test_builds_protocols(self) -> None:
        """
        The factory builds a L{GearmanProtocol} of its job server.
        """
        self.make_server()
        factory = GearmanServerFactory(self.server)
        protocol = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 1))
        assert isinstance(protocol, GearmanProtocol)
        self.assertIs(protocol.server, self.server)

    def test_refuses_when_not_accepting(self) -> None:
        """
        While the job server does not accept connections (stopped or
        draining), the factory refuses them.
        """
        self.make_server()
        factory = GearmanServerFactory(self.server)
        self.server.stopService()
        self.assertIsNone(factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 1)))

    def test_stop_closes_connections(self) -> None:
        """
        Stopping the job server closes its connections and cancels its
        timers.
        """
        self.make_server(wakeup=1)
        client = self.connect()
        h = client.submit(b"f")
        w = self.connect()
        w.send(P.CAN_DO_TIMEOUT, b"f", b"5000")
        w.grab()
        self.server.stopService()
        self.assertTrue(client.closed)
        self.assertTrue(w.closed)
        self.assertIsNone(self.server.job_by_handle(h))
        self.assert_no_timers()
