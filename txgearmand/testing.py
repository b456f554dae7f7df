# -*- test-case-name: txgearmand.test.test_testing -*-
"""
A whole Gearman server in memory, under a fake clock, for unit tests of
code that uses Gearman (yours and ours).

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

from txgearmand.protocol import GearmanProtocol
from txgearmand.server import JobServer

__all__ = ["MemoryGearmanServer"]


class MemoryGearmanServer:
    """
    A L{JobServer} on a L{Clock}, reachable through in-memory connections.

    @ivar clock: the fake clock the server (and your clients) run on.
    @ivar job_server: the L{JobServer}.
    """

    def __init__(self, clock: Clock | None = None, **options: Any) -> None:
        """
        @param options: keyword arguments for L{JobServer}.
        """
        self.clock = clock if clock is not None else Clock()
        options.setdefault("job_handle_prefix", b"H:memory")
        # Replies at the end of each read, not of a reactor turn: nothing
        # waits for the clock to move.
        options.setdefault("coalesce_writes", False)
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
