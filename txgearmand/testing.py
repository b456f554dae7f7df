# -*- test-case-name: txgearmand.test.test_testing -*-
"""
A whole Gearman server in memory, under a fake clock, for unit tests of
code that uses Gearman (yours and ours)::

    server = MemoryGearmanServer()
    worker = GearmanWorker(server.endpoint(), server.clock)
    worker.register("reverse", lambda job: job.payload[::-1])
    worker.startService()
    client = GearmanClient(server.endpoint(), server.clock)
    d = client.submit("reverse", b"abc")
    server.flush()
    assert successResultOf(d) == b"cba"

Nothing moves until you call L{MemoryGearmanServer.flush} (or
L{MemoryGearmanServer.advance}, which also moves the clock), so tests are
synchronous and exact.  Connections use Twisted's in-memory transports
(C{twisted.test.iosim}, as treq's testing module does).
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.interfaces import IProtocol, IProtocolFactory, IStreamClientEndpoint
from twisted.internet.task import Clock
from twisted.test import iosim
from zope.interface import implementer

from txgearmand.interfaces import IPeer
from txgearmand.protocol import GearmanProtocol
from txgearmand.records import Participant
from txgearmand.server import JobServer
from txgearmand.wire import PacketType

__all__ = ["MemoryGearmanServer", "RecordingPeer"]


class MemoryGearmanServer:
    """
    A L{JobServer} on a C{Clock}, reachable through in-memory connections.

    @ivar clock: the fake clock the server (and your clients) run on.
    @ivar job_server: the L{JobServer}.
    """

    def __init__(self, clock: Clock | None = None, **options: Any) -> None:
        """
        @param options: keyword arguments for L{JobServer}.
        """
        self.clock = clock if clock is not None else Clock()
        options.setdefault("job_handle_prefix", b"H:memory")
        self.job_server = JobServer(self.clock, **options)
        self.job_server.startService()
        self._pumps: list[iosim.IOPump] = []

    def connect(self, protocol: IProtocol) -> GearmanProtocol:
        """
        Connect a client protocol to the server; return the server's side.
        """
        if not self.job_server.accepting:
            raise ConnectionRefusedError("the job server does not accept connections")
        server = GearmanProtocol(self.job_server)
        server.label = "memory"
        pump = iosim.connect(
            server,
            iosim.FakeTransport(server, isServer=True),
            protocol,
            iosim.FakeTransport(protocol, isServer=False),
            greet=False,
            clock=self.clock,
        )
        self._pumps.append(pump)
        return server

    def endpoint(self) -> IStreamClientEndpoint:
        """
        An endpoint whose connections go to this server.
        """
        return _MemoryEndpoint(self)

    def flush(self) -> bool:
        """
        Deliver every byte in flight, both ways, on every connection, until
        nothing moves; return whether anything did.
        """
        moved = False
        for _ in range(10000):
            # The end of a reactor turn: the server writes what it batched.
            self.clock.advance(0)
            round_moved = False
            for pump in list(self._pumps):
                if pump.flush():
                    round_moved = True
            self._pumps = [
                p for p in self._pumps if not (p.clientIO.disconnected and p.serverIO.disconnected)
            ]
            if not round_moved:
                return moved
            moved = True
        raise RuntimeError("the connections never went quiet")

    def advance(self, seconds: float) -> None:
        """
        Move the clock, then deliver what that caused.
        """
        self.flush()
        self.clock.advance(seconds)
        self.flush()


@implementer(IStreamClientEndpoint)
class _MemoryEndpoint:
    def __init__(self, server: MemoryGearmanServer) -> None:
        self._server = server

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[IProtocol]:
        protocol = protocolFactory.buildProtocol(iosim.FakeAddress())
        if protocol is None:
            return fail(ConnectionRefusedError("the factory built no protocol"))
        try:
            self._server.connect(protocol)
        except ConnectionRefusedError:
            return fail()
        return succeed(protocol)


@implementer(IPeer)
class RecordingPeer:
    """
    An L{IPeer} that records the packets the job server tells it to send:
    drive a L{JobServer} with it to test the model without a connection::

        server = JobServer(Clock())
        server.startService()
        client = RecordingPeer.join(server)
        server.submit_job(client.participant, b"f", b"", b"x")

    @ivar packets: what it was sent, as C{(PacketType, args)} pairs.
    @ivar participant: its L{Participant}, once it joined.
    @ivar closed: the server closed it.
    """

    def __init__(self, name: str = "recording", local: bool = True) -> None:
        self.name = name
        self.local = local
        self.packets: list[tuple[PacketType, tuple[bytes, ...]]] = []
        self.closed = False
        self.participant: Participant | None = None

    @classmethod
    def join(cls, server: JobServer, name: str = "recording") -> RecordingPeer:
        """
        A new peer, joined to C{server} as a participant.
        """
        peer = cls(name)
        peer.participant = server.new_client(peer)
        return peer

    def take(self) -> list[tuple[PacketType, tuple[bytes, ...]]]:
        """
        The packets sent since last asked.
        """
        packets, self.packets = self.packets, []
        return packets

    def send_packet(self, ptype: int, *args: bytes) -> None:
        self.packets.append((PacketType(ptype), args))

    def close(self) -> None:
        self.closed = True

    def describe(self) -> str:
        return self.name

    def peer_host(self) -> str:
        return self.name

    def fileno(self) -> int:
        return self.participant.number if self.participant is not None else -1

    def is_local(self) -> bool:
        return self.local
