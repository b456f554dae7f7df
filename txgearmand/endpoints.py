# -*- test-case-name: txgearmand.test.test_client -*-
"""
What L{txgearmand.client} and L{txgearmand.worker} share: their endpoint
handling, and the endpoint a worker started by a job server connects
over (L{stdio_endpoint}).

Nothing here imports the global reactor.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Sequence
from typing import Any, Union

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import (
    IAddress,
    IProtocol,
    IProtocolFactory,
    IStreamClientEndpoint,
)
from twisted.internet.protocol import Factory, Protocol, ServerFactory
from zope.interface import implementer

__all__ = ["Text", "stdio_endpoint"]

#: What the client and worker APIs take for a name or some data: bytes, or
#: a str that is sent as UTF-8.
Text = Union[str, bytes]


def _b(value: Text) -> bytes:
    return value.encode("utf-8") if isinstance(value, str) else bytes(value)


class _ProtocolFactory(Factory):
    """
    A factory whose protocols C{build} makes.
    """

    def __init__(self, build: Callable[[], Protocol]) -> None:
        self._build = build

    def buildProtocol(self, addr: IAddress | None) -> Protocol:
        protocol = self._build()
        protocol.factory = self
        return protocol


def _as_list(endpoints: Sequence[IStreamClientEndpoint] | IStreamClientEndpoint) -> list[Any]:
    """
    One endpoint, or a non-empty sequence of them, as a list.
    """
    if IStreamClientEndpoint.providedBy(endpoints):
        return [endpoints]
    result = list(endpoints)  # type: ignore[arg-type]
    if not result:
        raise ValueError("at least one endpoint is needed")
    return result


@implementer(IStreamClientEndpoint)
class _AdoptedEndpoint:
    """
    Connects once, over an already connected UNIX socket descriptor.
    """

    def __init__(self, reactor: Any, fd: int) -> None:
        self._reactor = reactor
        self._fd = fd
        self._used = False

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[IProtocol]:
        if self._used:
            return fail(ConnectionDone("the standard input socket was already used"))
        self._used = True
        fd = os.dup(self._fd)
        os.set_blocking(fd, False)
        built: list[IProtocol | None] = []

        class Recorder(ServerFactory):
            def buildProtocol(self, addr: IAddress | None) -> Any:
                built.append(protocolFactory.buildProtocol(addr))  # type: ignore[arg-type]
                return built[-1]

        try:
            self._reactor.adoptStreamConnection(fd, socket.AF_UNIX, Recorder())
        finally:
            os.close(fd)
        if not built or built[0] is None:
            return fail(ConnectionDone("no protocol was built"))
        return succeed(built[0])


def stdio_endpoint(reactor: Any, fd: int = 0) -> IStreamClientEndpoint:
    """
    An endpoint for the socket a parent job server gave this process on its
    standard input (C{GEARMAN_WORKER_USE_STDIO}); it connects once.

    @param reactor: provides C{IReactorSocket}.
    @param fd: the socket's descriptor (standard input by default).
    """
    return _AdoptedEndpoint(reactor, fd)
