# -*- test-case-name: txgearmand.test.test_inprocess -*-
"""
Connections to a L{JobServer} from the same process or from a child
process, without a listening port.

Each connection is a C{socketpair()}: one end is adopted by the reactor as
a server connection (C{IReactorSocket.adoptStreamConnection}), the other
goes to a Twisted client protocol (L{InProcessEndpoint}), to code outside
Twisted (L{to_inprocess_server}) or to a child's standard input and output
(L{start_worker}).
"""

from __future__ import annotations

import socket
from collections.abc import Mapping, Sequence
from typing import Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.interfaces import (
    IAddress,
    IProtocol,
    IProtocolFactory,
    IReactorSocket,
    IStreamClientEndpoint,
)
from twisted.internet.protocol import ServerFactory
from twisted.python.failure import Failure
from zope.interface import implementer

from txgearmand._socketpair import (
    WorkerProcess,
    adopt_server_end,
    pair,
)
from txgearmand.protocol import GearmanProtocol
from txgearmand.server import JobServer

__all__ = ["InProcessEndpoint", "WorkerProcess", "start_worker", "to_inprocess_server"]


class _RecordingFactory(ServerFactory):
    """
    Wraps a client factory and remembers the protocol it built.
    """

    def __init__(self, wrapped: IProtocolFactory) -> None:
        self.wrapped = wrapped
        self.built: IProtocol | None = None

    def buildProtocol(self, addr: IAddress | None) -> Any:
        self.built = self.wrapped.buildProtocol(addr)  # type: ignore[arg-type]
        return self.built


@implementer(IStreamClientEndpoint)
class InProcessEndpoint:
    """
    A client endpoint whose connections go straight to a L{JobServer} in
    this process: no port, no network.

    Each C{connect} makes a UNIX C{socketpair()} and gives one end to a
    new L{GearmanProtocol} of the job server and the other to the client's
    protocol, both adopted by the reactor (C{adoptStreamConnection}).
    Unlike an in-memory pump, this keeps real transports: the client and the
    server each have a kernel buffer and Twisted's write buffer, so
    back-pressure (C{pauseProducing} when a side stops reading) and
    connection loss (either side's C{loseConnection}, or the other end's
    close, reaches the other as C{connectionLost}) behave exactly as over
    TCP, and a worker that goes away in-process has its job requeued.
    The reactor must provide C{IReactorSocket} (epoll, poll and select do).
    """

    def __init__(self, reactor: IReactorSocket, job_server: JobServer) -> None:
        self._reactor = reactor
        self._job_server = job_server

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[IProtocol]:
        """
        Connect a protocol built by C{protocolFactory} to the job server.

        @return: a Deferred firing with the protocol, or failing with
            C{ConnectionRefusedError} while the job server does not accept
            connections.
        """
        if not self._job_server.accepting:
            return fail(ConnectionRefusedError("the job server does not accept connections"))
        server_end, client_end = pair()
        client_end.setblocking(False)
        try:
            server = adopt_server_end(
                self._reactor, self._job_server.factory, server_end, "in-process"
            )
            if server is None:
                return fail(ConnectionRefusedError("the job server refused the connection"))
            recorder = _RecordingFactory(protocolFactory)
            self._reactor.adoptStreamConnection(client_end.fileno(), socket.AF_UNIX, recorder)
        except BaseException:
            return fail(Failure())
        finally:
            client_end.close()
        if recorder.built is None:
            server.transport.loseConnection()  # type: ignore[attr-defined]
            return fail(ConnectionRefusedError("the client factory built no protocol"))
        return succeed(recorder.built)


def to_inprocess_server(reactor: IReactorSocket, job_server: JobServer) -> socket.socket:
    """
    A connected socket to the job server, for code outside Twisted (a
    thread, or a program given the descriptor), as Gearman::Server's
    C{to_inprocess_server}.  The socket is blocking; close it when done.
    """
    return job_server.doors.socket(reactor)


def start_worker(
    reactor: Any,
    job_server: JobServer,
    argv: Sequence[str] | str,
    env: Mapping[str, str] | None = None,
    path: str | None = None,
) -> tuple[int, GearmanProtocol, WorkerProcess]:
    """
    Start a worker program as a child process that speaks Gearman on its
    standard input and output, as Gearman::Server's C{start_worker}: its
    fd 0 and 1 are one end of a socketpair whose other end is a server
    connection, and C{GEARMAN_WORKER_USE_STDIO=1} is in its environment
    (Perl's Gearman::Worker, and L{txgearmand.worker.GearmanWorker} with
    L{txgearmand.endpoints.stdio_endpoint}, honour it).  Its standard error
    is logged, and so is its exit; the jobs it held then go to another
    worker.

    @param reactor: provides C{IReactorProcess} and C{IReactorSocket}.
    @param argv: the program and its arguments (a string runs alone).
    @param env: its environment (default: ours).
    @return: the child's pid, the server's connection to it, and the
        L{WorkerProcess} watching it.
    """
    pid, connection, watcher = job_server.doors.start_worker(argv, env, path, reactor)
    assert isinstance(connection, GearmanProtocol)
    return pid, connection, watcher
