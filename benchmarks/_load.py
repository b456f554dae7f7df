"""
Load helpers that speak the raw Gearman protocol over blocking sockets.
"""

from __future__ import annotations

import os
import socket
import struct
import threading
import time

from txgearmand.wire import PacketType as P
from txgearmand.wire import encode_request


def connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=120)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def read_packets(sock: socket.socket, count: int) -> list[tuple[int, bytes]]:
    """
    Read C{count} response packets.
    """
    out: list[tuple[int, bytes]] = []
    buf = b""
    while len(out) < count:
        chunk = sock.recv(1 << 20)
        if not chunk:
            raise ConnectionError(f"closed after {len(out)} packets")
        buf += chunk
        pos = 0
        while len(buf) - pos >= 12:
            ptype, size = struct.unpack_from(">II", buf, pos + 4)
            if len(buf) - pos - 12 < size:
                break
            out.append((ptype, buf[pos + 12 : pos + 12 + size]))
            pos += 12 + size
        buf = buf[pos:]
    return out


def pipelined_background_submits(
    port: int, count: int, function: bytes = b"bench", payload: bytes = b"x" * 100
) -> float:
    """
    Submit C{count} background jobs (distinct unique ids) on one
    connection, all pipelined; return the jobs acknowledged per second.
    """
    sock = connect(port)
    tag = os.urandom(4).hex().encode()
    packets = [
        encode_request(P.SUBMIT_JOB_BG, function, b"%s-%d" % (tag, i), payload)
        for i in range(count)
    ]
    result: list[list[tuple[int, bytes]]] = []
    reader = threading.Thread(target=lambda: result.append(read_packets(sock, count)))
    start = time.perf_counter()
    reader.start()
    for i in range(0, count, 500):
        sock.sendall(b"".join(packets[i : i + 500]))
    reader.join()
    elapsed = time.perf_counter() - start
    sock.close()
    replies = result[0]
    errors = [r for r in replies if r[0] != P.JOB_CREATED]
    if errors:
        raise RuntimeError(f"{len(errors)} submissions failed: {errors[0]!r}")
    return count / elapsed


def status_total(port: int, function: bytes) -> int:
    from txgearmand.test._process import admin

    for line in admin(port, b"status", timeout=60).splitlines():
        fields = line.split(b"\t")
        if fields[0] == function:
            return int(fields[1])
    return 0


def rss_kib(pid: int) -> int:
    """
    A process's resident set size, in KiB.
    """
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0
