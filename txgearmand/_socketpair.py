# -*- test-case-name: txgearmand.test.test_inprocess -*-
"""
Connections without a listening port: one end of a C{socketpair()} is
adopted by the reactor as a server connection built by a factory, the
other goes to whoever asked (a thread, a child process, a client
protocol).  It knows nothing of Gearman: the job server passes its own
protocol factory in.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping, Sequence
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionRefusedError, ProcessDone
from twisted.internet.interfaces import (
    IAddress,
    IProtocol,
    IProtocolFactory,
    IReactorProcess,
    IReactorSocket,
)
from twisted.internet.protocol import ProcessProtocol, ServerFactory
from twisted.python.failure import Failure

from txgearmand import _log

__all__ = ["WorkerProcess", "adopt_server_end", "pair", "socket_to", "spawn_with_socket"]

log = _log.logger("txgearmand.inprocess")


class _Labelling(ServerFactory):
    """
    Wraps a server factory: the protocol it builds gets a C{label} (shown
    instead of a peer address) and is remembered.
    """

    def __init__(self, wrapped: IProtocolFactory, label: str) -> None:
        self.wrapped = wrapped
        self.label = label
        self.built: IProtocol | None = None

    def buildProtocol(self, addr: IAddress | None) -> Any:
        protocol = self.wrapped.buildProtocol(addr)  # type: ignore[arg-type]
        if protocol is not None:
            protocol.label = self.label  # type: ignore[attr-defined]
        self.built = protocol
        return protocol


def pair() -> tuple[socket.socket, socket.socket]:
    """
    A connected UNIX socket pair: the server's end (non-blocking) and the
    other.
    """
    server_end, other_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    server_end.setblocking(False)
    return server_end, other_end


def adopt_server_end(
    reactor: IReactorSocket, factory: IProtocolFactory, sock: socket.socket, label: str
) -> IProtocol | None:
    """
    Make C{sock} a server connection of the reactor, its protocol built by
    C{factory} and labelled; C{sock} itself is closed (the reactor keeps a
    duplicate).

    @return: the protocol, or C{None} if the factory refused.
    """
    labelling = _Labelling(factory, label)
    try:
        reactor.adoptStreamConnection(sock.fileno(), socket.AF_UNIX, labelling)
    finally:
        sock.close()
    return labelling.built


def socket_to(reactor: IReactorSocket, factory: IProtocolFactory, label: str) -> socket.socket:
    """
    A connected, blocking socket whose other end is a server connection
    built by C{factory}.

    @raise ConnectionRefusedError: if the factory refused.
    """
    server_end, client_end = pair()
    if adopt_server_end(reactor, factory, server_end, label) is None:
        client_end.close()
        raise ConnectionRefusedError("the job server refused the connection")
    client_end.setblocking(True)
    return client_end


class WorkerProcess(ProcessProtocol):
    """
    Watches a worker started by L{spawn_with_socket}: logs its output on
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


def spawn_with_socket(
    reactor: Any,
    factory: IProtocolFactory,
    argv: Sequence[str] | str,
    env: Mapping[str, str] | None = None,
    path: str | None = None,
) -> tuple[int, IProtocol, WorkerProcess]:
    """
    Start a program as a child whose standard input and output are one end
    of a socketpair, the other end a server connection built by
    C{factory}; C{GEARMAN_WORKER_USE_STDIO=1} is in its environment.  Its
    standard error is logged, and so is its exit.

    @param reactor: provides C{IReactorProcess} and C{IReactorSocket}.
    @param argv: the program and its arguments (a string runs alone).
    @param env: its environment (default: ours).
    @raise ConnectionRefusedError: if the factory refused.
    @return: the child's pid, the server's protocol for it, and the
        L{WorkerProcess} watching it.
    """
    argv = [argv] if isinstance(argv, str) else list(argv)
    environment = dict(os.environ if env is None else env)
    environment["GEARMAN_WORKER_USE_STDIO"] = "1"
    server_end, child_end = pair()
    try:
        connection = adopt_server_end(reactor, factory, server_end, "[gearman_child]")
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
    connection.label = f"[gearman_child:{watcher.pid}]"  # type: ignore[attr-defined]
    return watcher.pid, connection, watcher
