"""
Test helpers: a L{JobServer} on a fake clock, and connections to it over
in-memory transports that speak raw packets.
"""

from __future__ import annotations

import itertools
from typing import Any, cast

from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.interfaces import IAddress
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransportWithDisconnection
from twisted.logger import ILogObserver, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from txgearmand import wire
from txgearmand.protocol import GearmanProtocol
from txgearmand.records import Participant
from txgearmand.server import JobServer
from txgearmand.wire import PacketType

Packet = tuple[PacketType, tuple[bytes, ...]]

_ports = itertools.count(40000)


def decode(data: bytes) -> list[Packet]:
    """
    Decode what a server sent into packets, split into their arguments.
    """
    parser = wire.PacketParser(magic=wire.RESPONSE_MAGIC)
    out: list[Packet] = []
    for ptype, body in parser.feed(data):
        if ptype <= 0:
            raise AssertionError(f"not a response packet: {ptype} {body!r} in {data!r}")
        args = wire.split_body(ptype, body)
        if args is None:
            raise AssertionError(f"malformed {PacketType(ptype).name}: {body!r}")
        out.append((PacketType(ptype), args))
    if parser.buffered() or parser.error:
        raise AssertionError(f"trailing bytes in {data!r}")
    return out


class CountingTransport(StringTransportWithDisconnection):
    """
    A string transport that counts calls to C{write}.
    """

    writes = 0

    def write(self, data: bytes) -> None:
        self.writes += 1
        super().write(data)


class FakeConnection:
    """
    One connection to a L{JobServer} over an in-memory transport.
    """

    def __init__(self, server: JobServer, peer: IAddress | None = None) -> None:
        if peer is None:
            peer = IPv4Address("TCP", "127.0.0.1", next(_ports))
        self.server = server
        self.transport = CountingTransport(peerAddress=peer)
        self.protocol = GearmanProtocol(server)
        self.transport.protocol = self.protocol
        self.protocol.makeConnection(self.transport)

    @property
    def participant(self) -> Participant:
        """
        What the job server keeps for this connection.
        """
        return self.protocol.participant

    def end_turn(self) -> None:
        """
        End the reactor turn (on the server's fake clock): the server writes
        what it answered in the turn.
        """
        clock = self.server.reactor
        if isinstance(clock, Clock):
            clock.advance(0)

    def send(self, ptype: int, *args: bytes) -> None:
        """
        Send one request packet, as one read, and end the turn.
        """
        self.send_bytes(wire.encode_request(ptype, *args))

    def send_bytes(self, data: bytes) -> None:
        """
        Send raw bytes, as one read, and end the turn.
        """
        self.protocol.dataReceived(data)
        self.end_turn()

    def packets(self) -> list[Packet]:
        """
        The packets received since last asked.
        """
        data = self.transport.value()
        self.transport.clear()
        return decode(data)

    def text(self) -> bytes:
        """
        The raw bytes received since last asked.
        """
        data = self.transport.value()
        self.transport.clear()
        return bytes(data)

    def admin(self, line: bytes) -> bytes:
        """
        Send an admin command line; return the reply.
        """
        self.text()
        self.send_bytes(line + b"\r\n")
        return self.text()

    def can_do(self, *functions: bytes) -> FakeConnection:
        """
        Register for functions.
        """
        for f in functions:
            self.send(PacketType.CAN_DO, f)
        return self

    def submit(
        self, function: bytes, data: bytes = b"", unique: bytes = b"", ptype: int = 7
    ) -> bytes:
        """
        Submit a job; return its handle from JOB_CREATED.
        """
        self.packets()
        self.send(ptype, function, unique, data)
        reply = self.packets()
        if len(reply) != 1 or reply[0][0] != PacketType.JOB_CREATED:
            raise AssertionError(f"expected JOB_CREATED, got {reply!r}")
        return reply[0][1][0]

    def grab(self, ptype: int = PacketType.GRAB_JOB_UNIQ) -> Packet:
        """
        Grab a job; return the one reply packet.
        """
        self.packets()
        self.send(ptype)
        reply = self.packets()
        if len(reply) != 1:
            raise AssertionError(f"expected one reply to a grab, got {reply!r}")
        return reply[0]

    def disconnect(self) -> None:
        """
        The peer goes away.
        """
        self.transport.loseConnection()

    @property
    def closed(self) -> bool:
        """
        Whether the connection is closed.
        """
        return not self.transport.connected


class ServerTestMixin:
    """
    Gives a test a L{JobServer} on a L{Clock} and a way to connect to it.
    """

    clock: Clock
    server: JobServer

    def make_server(self, **kwargs: Any) -> JobServer:
        """
        Make (and remember) a job server with handle prefix C{H:test}.
        """
        self.clock = Clock()
        kwargs.setdefault("job_handle_prefix", b"H:test")
        self.server = JobServer(self.clock, **kwargs)
        self.server.startService()
        return self.server

    def connect(self, peer: IAddress | None = None) -> FakeConnection:
        """
        A new connection to the server.
        """
        if not hasattr(self, "server"):
            self.make_server()
        return FakeConnection(self.server, peer)

    def worker(self, *functions: bytes) -> FakeConnection:
        """
        A new connection registered for functions.
        """
        return self.connect().can_do(*functions)

    def assert_no_timers(self) -> None:
        """
        Nothing is left scheduled on the clock.
        """
        assert isinstance(self, SynchronousTestCase)
        self.assertEqual(self.clock.getDelayedCalls(), [])


LOCAL = IPv4Address("TCP", "127.0.0.1", 5000)
REMOTE = IPv4Address("TCP", "192.0.2.7", 5000)
LOCAL6 = IPv6Address("TCP", "::1", 5000)
UNIX = UNIXAddress(None)


def capture_logs(test: SynchronousTestCase) -> list[dict[str, Any]]:
    """
    Every log event from now to the end of C{test}.
    """
    events: list[dict[str, Any]] = []
    observer = cast(ILogObserver, events.append)
    globalLogPublisher.addObserver(observer)
    test.addCleanup(globalLogPublisher.removeObserver, observer)
    return events
