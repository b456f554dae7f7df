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

__all__ = ["buffered", "direct_socket", "measurable", "socket_of", "write"]


def direct_socket(transport: object) -> socket.socket | None:
    """
    The socket of a plain TCP or UNIX transport whose buffer we can check
    (Twisted's C{tcp.Connection}), else C{None} (TLS, test transports).
    """
    if not isinstance(transport, tcp.Connection):
        return None
    if not all(hasattr(transport, a) for a in ("_tempDataLen", "offset", "dataBuffer")):
        return None
    sock = getattr(transport, "socket", None)
    return sock if isinstance(sock, socket.socket) else None


def write(transport: Any, sock: socket.socket | None, data: bytes) -> bool:
    """
    Write C{data}: straight to C{sock} (from L{direct_socket}) when the
    transport has nothing buffered, the rest (or all) through the
    transport.

    @return: whether any of it went through the transport (and may wait
        in its buffer): then the caller looks at L{buffered}.
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
            return False
        data = data[sent:]
    transport.write(data)
    return True


def socket_of(transport: Any) -> socket.socket | None:
    """
    The socket under C{transport}: a Twisted TCP or UNIX transport's, or
    that of the one a wrapper (TLS) keeps as C{transport}; else C{None}.
    """
    for _ in range(4):
        if isinstance(transport, tcp.Connection):
            sock = getattr(transport, "socket", None)
            return sock if isinstance(sock, socket.socket) else None
        transport = getattr(transport, "transport", None)
        if transport is None:
            break
    return None


def measurable(transport: Any) -> bool:
    """
    Whether L{buffered} can see what C{transport} holds: a Twisted TCP or
    UNIX transport, or a wrapper (TLS) around one.
    """
    for _ in range(4):
        if isinstance(transport, tcp.Connection):
            return True
        transport = getattr(transport, "transport", None)
        if transport is None:
            break
    return False


def buffered(transport: Any) -> int:
    """
    How many bytes written to C{transport} have not reached the kernel:
    Twisted's TCP and UNIX transports, and wrappers around them (TLS)
    that keep the wrapped one as C{transport}; 0 for anything else.
    """
    total = 0
    for _ in range(4):
        if isinstance(transport, tcp.Connection):
            data = getattr(transport, "dataBuffer", b"")
            return (
                total
                + len(data)
                - getattr(transport, "offset", 0)
                + getattr(transport, "_tempDataLen", 0)
            )
        # TLS holds application data until its handshake is done.
        waiting = getattr(transport, "_appSendBuffer", None)
        if waiting:
            total += sum(len(chunk) for chunk in waiting)
        transport = getattr(transport, "transport", None)
        if transport is None:
            break
    return total
