# -*- test-case-name: txgearmand.test.test_inprocess -*-
"""
The fast write path: write straight to a connection's socket when its
Twisted transport has nothing buffered.

Why: a Gearman reply is small and usually fits the kernel's buffer at
once.  Through C{transport.write} every reply costs Twisted's
write-readiness round trip (two epoll updates, a poll and a callback);
a direct C{send} costs one system call.  This reaches into Twisted's
C{tcp.Connection} (its C{dataBuffer}, C{offset} and C{_tempDataLen}), so
it is used only where those exist, and anything it cannot send goes
through C{transport.write} as usual.
"""

from __future__ import annotations

import socket
from typing import Any

from twisted.internet import tcp

__all__ = ["direct_socket", "write"]


def direct_socket(transport: object) -> socket.socket | None:
    """
    The socket of a plain TCP or UNIX transport whose buffer we can check
    (Twisted's C{tcp.Connection}), else L{None} (TLS, test transports).
    """
    if not isinstance(transport, tcp.Connection):
        return None
    if not all(hasattr(transport, a) for a in ("_tempDataLen", "offset", "dataBuffer")):
        return None
    sock = getattr(transport, "socket", None)
    return sock if isinstance(sock, socket.socket) else None


def write(transport: Any, sock: socket.socket | None, data: bytes) -> None:
    """
    Write C{data}: straight to C{sock} (from L{direct_socket}) when the
    transport has nothing buffered, the rest (or all) through the
    transport.
    """
    if (
        sock is not None
        and not transport._tempDataLen
        and transport.offset == len(transport.dataBuffer)
        and not transport.disconnecting
    ):
        try:
            sent = sock.send(data)
        except OSError:
            # Would block, or the connection is broken: the transport
            # buffers the data, or finds out.
            sent = 0
        if sent == len(data):
            return
        data = data[sent:]
    transport.write(data)
