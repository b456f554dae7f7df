# -*- test-case-name: txgearmand.test.test_inprocess -*-
"""
The ways into a job server that it opens itself (Gearman::Server's
C{create_listening_sock}, C{to_inprocess_server} and C{start_worker}): a
TCP port, a socket for code outside Twisted, a child worker on its
standard input and output.  Each connection is built by the server's
protocol factory, which is handed in: this module knows no protocol.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.interfaces import IListeningPort, IProtocol, IProtocolFactory

from txgearmand._socketpair import WorkerProcess, socket_to, spawn_with_socket

__all__ = ["Doors"]


class Doors:
    """
    Opens connections into a job server.

    @ivar children: the workers L{start_worker} started and that still run,
        by pid (each a L{WorkerProcess}, whose C{ended} fires at exit).
    """

    def __init__(
        self,
        reactor: Any,
        factory: Callable[[], IProtocolFactory],
        accepting: Callable[[], bool],
    ) -> None:
        """
        @param factory: gives the server's protocol factory.
        @param accepting: whether the server accepts connections now.
        """
        self._reactor = reactor
        self._factory = factory
        self._accepting = accepting
        self.children: dict[int, WorkerProcess] = {}

    def _check(self) -> None:
        if not self._accepting():
            raise ConnectionRefusedError("the job server does not accept connections")

    def listen_tcp(
        self, port: int, local_addr: str | None = None, backlog: int = 1024
    ) -> Deferred[IListeningPort]:
        """
        Listen on a TCP port (every IPv4 address, or C{local_addr}).
        """
        endpoint = TCP4ServerEndpoint(
            self._reactor, port, backlog=backlog, interface=local_addr or ""
        )
        listening: Deferred[IListeningPort] = endpoint.listen(self._factory())
        return listening

    def socket(self, reactor: Any = None) -> socket.socket:
        """
        A connected, blocking socket to the server (its reactor must
        provide C{IReactorSocket}).

        @raise ConnectionRefusedError: while the server does not accept.
        """
        self._check()
        return socket_to(reactor or self._reactor, self._factory(), "in-process")

    def start_worker(
        self,
        argv: Sequence[str] | str,
        env: Mapping[str, str] | None = None,
        path: str | None = None,
        reactor: Any = None,
    ) -> tuple[int, IProtocol, WorkerProcess]:
        """
        Start a worker program as a child speaking Gearman on its standard
        input and output; remember it in L{children} until it exits.

        @raise ConnectionRefusedError: while the server does not accept.
        @return: the child's pid, the server's connection to it, and the
            L{WorkerProcess} watching it.
        """
        self._check()
        pid, connection, watcher = spawn_with_socket(
            reactor or self._reactor, self._factory(), argv, env, path
        )
        self.children[pid] = watcher
        watcher.ended.addBoth(self._ended, pid)
        return pid, connection, watcher

    def _ended(self, result: object, pid: int) -> object:
        self.children.pop(pid, None)
        return result
