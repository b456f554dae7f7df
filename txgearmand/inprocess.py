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

import os
import socket
from collections.abc import Mapping, Sequence
from typing import Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import ConnectionRefusedError, ProcessDone
from twisted.internet.interfaces import (
    IAddress,
    IProtocol,
    IProtocolFactory,
    IReactorProcess,
    IReactorSocket,
    IStreamClientEndpoint,
)
from twisted.internet.protocol import ProcessProtocol, ServerFactory
from twisted.python.failure import Failure
from zope.interface import implementer

from txgearmand import _log
from txgearmand.protocol import GearmanProtocol, GearmanServerFactory
from txgearmand.server import JobServer

__all__ = ["InProcessEndpoint", "WorkerProcess", "start_worker", "to_inprocess_server"]

log = _log.logger("txgearmand.inprocess")


class _LabelledServerFactory(GearmanServerFactory):
    """
    Builds server protocols that show a label instead of a peer address,
    and remembers the last one.
    """

    def __init__(self, job_server: JobServer, label: str) -> None:
        super().__init__(job_server)
        self.label = label
        self.built: GearmanProtocol | None = None

    def buildProtocol(self, addr: IAddress | None) -> GearmanProtocol | None:
        protocol = super().buildProtocol(addr)
        if protocol is not None:
            protocol.label = self.label
        self.built = protocol
        return protocol


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


def _pair() -> tuple[socket.socket, socket.socket]:
    server_end, other_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    server_end.setblocking(False)
    return server_end, other_end


def _adopt_server_end(
    reactor: IReactorSocket, job_server: JobServer, sock: socket.socket, label: str
) -> GearmanProtocol | None:
    factory = _LabelledServerFactory(job_server, label)
    try:
        reactor.adoptStreamConnection(sock.fileno(), socket.AF_UNIX, factory)
    finally:
        # The reactor has its own duplicate of the descriptor.
        sock.close()
    return factory.built


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
        server_end, client_end = _pair()
        client_end.setblocking(False)
        try:
            server = _adopt_server_end(self._reactor, self._job_server, server_end, "in-process")
            if server is None:
                return fail(ConnectionRefusedError("the job server refused the connection"))
            recorder = _RecordingFactory(protocolFactory)
            self._reactor.adoptStreamConnection(client_end.fileno(), socket.AF_UNIX, recorder)
        except BaseException:
            return fail(Failure())
        finally:
            client_end.close()
        if recorder.built is None:
            server.close()
            return fail(ConnectionRefusedError("the client factory built no protocol"))
        return succeed(recorder.built)


def to_inprocess_server(reactor: IReactorSocket, job_server: JobServer) -> socket.socket:
    """
    A connected socket to the job server, for code outside Twisted (a
    thread, or a program given the descriptor), as Gearman::Server's
    C{to_inprocess_server}.  The socket is blocking; close it when done.
    """
    if not job_server.accepting:
        raise ConnectionRefusedError("the job server does not accept connections")
    server_end, client_end = _pair()
    if _adopt_server_end(reactor, job_server, server_end, "in-process") is None:
        client_end.close()
        raise ConnectionRefusedError("the job server refused the connection")
    client_end.setblocking(True)
    return client_end


class WorkerProcess(ProcessProtocol):
    """
    Watches a worker started by L{start_worker}: logs its output on
    standard error and its exit.

    @ivar ended: fires with the exit code when the child is gone.
    """

    def __init__(self, argv: Sequence[str]) -> None:
        self.argv = list(argv)
        self.ended: Deferred[int | None] = Deferred()
        self.pid: int | None = None

    def errReceived(self, data: bytes) -> None:
        log.info(
            "worker {pid} {argv}: {text}",
            pid=self.pid,
            argv=self.argv[0],
            text=data.decode("utf-8", "replace").rstrip(),
        )

    def processEnded(self, reason: Failure) -> None:
        code = getattr(reason.value, "exitCode", None)
        if reason.check(ProcessDone):
            log.info("worker {pid} {argv} exited", pid=self.pid, argv=self.argv)
        else:
            log.warn(
                "worker {pid} {argv} ended: {why}",
                pid=self.pid,
                argv=self.argv,
                why=reason.getErrorMessage(),
            )
        self.ended.callback(code)


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
    (Perl's Gearman::Worker, and L{txgearmand.client.GearmanWorker} with
    L{txgearmand.client.stdio_endpoint}, honour it).  Its standard error
    is logged, and so is its exit; the jobs it held then go to another
    worker.

    @param reactor: provides C{IReactorProcess} and C{IReactorSocket}.
    @param argv: the program and its arguments (a string runs alone).
    @param env: its environment (default: ours).
    @return: the child's pid, the server's connection to it, and the
        L{WorkerProcess} watching it.
    """
    if isinstance(argv, str):
        argv = [argv]
    argv = list(argv)
    if not job_server.accepting:
        raise ConnectionRefusedError("the job server does not accept connections")
    environment = dict(os.environ if env is None else env)
    environment["GEARMAN_WORKER_USE_STDIO"] = "1"
    server_end, child_end = _pair()
    try:
        connection = _adopt_server_end(reactor, job_server, server_end, "[gearman_child]")
        if connection is None:
            raise ConnectionRefusedError("the job server refused the connection")
        watcher = WorkerProcess(argv)
        fd = child_end.fileno()
        process = IReactorProcess(reactor).spawnProcess(
            watcher,
            argv[0],
            argv,
            env=environment,
            path=path,
            childFDs={0: fd, 1: fd, 2: "r"},
        )
        watcher.pid = process.pid
    finally:
        child_end.close()
    assert watcher.pid is not None
    connection.label = f"[gearman_child:{watcher.pid}]"
    return watcher.pid, connection, watcher
