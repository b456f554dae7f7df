"""
Load helpers that speak the raw Gearman protocol over blocking sockets.
"""

from __future__ import annotations

import multiprocessing
import os
import queue
import socket
import struct
import threading
import time
from typing import Any

from txgearmand.wire import PacketType as P
from txgearmand.wire import encode_request


def connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=900)
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


#: Packets encoded and sent at a time: a submitter never holds more.
SUBMIT_CHUNK = 500


def pipelined_background_submits(
    port: int,
    count: int,
    function: bytes = b"bench",
    payload: bytes = b"x" * 100,
    connections: int = 1,
) -> float:
    """
    Submit C{count} background jobs (distinct unique ids), all pipelined,
    on C{connections} connections (more than one: one load process each);
    return the jobs acknowledged per second.

    The packets are encoded and sent a chunk at a time and the replies are
    counted, not kept, so the load process's memory does not grow with
    C{count}.

    @raise RuntimeError: if a submission gets anything but JOB_CREATED, or
        a connection fails.
    """
    tag = os.urandom(4).hex().encode()
    shares = [count // connections + (i < count % connections) for i in range(connections)]
    firsts = [sum(shares[:i]) for i in range(connections)]
    if connections <= 1:
        sock = connect(port)
        start = time.perf_counter()
        outcome = _submit_on(sock, count, function, payload, tag, 0)
        elapsed = time.perf_counter() - start
        sock.close()
        outcomes = [outcome]
    else:
        ctx = multiprocessing.get_context("fork")
        ready: Any = ctx.Queue()
        results: Any = ctx.Queue()
        go = ctx.Event()
        procs = [
            ctx.Process(
                target=_submit_process,
                args=(port, n, function, payload, tag, first, ready, go, results),
            )
            for n, first in zip(shares, firsts)
        ]
        for p in procs:
            p.start()
        try:
            for _ in procs:
                ready.get(timeout=60)
            start = time.perf_counter()
            go.set()
            outcomes = []
            while len(outcomes) < len(procs):
                try:
                    outcomes.append(results.get(timeout=5))
                except queue.Empty:
                    if not any(p.is_alive() for p in procs):
                        raise RuntimeError("a submitting process died") from None
            elapsed = time.perf_counter() - start
        finally:
            go.set()
            for p in procs:
                p.join(30)
                if p.is_alive():
                    p.kill()
    failed = [o for o in outcomes if o[1] or o[2]]
    if failed:
        created = sum(o[0] for o in outcomes)
        refused = sum(o[1] for o in outcomes)
        raise RuntimeError(
            f"{created} of {count} submissions acknowledged, {refused} refused; "
            f"first failure: {failed[0][2] or failed[0][3]!r}"
        )
    return count / elapsed


#: (JOB_CREATED replies, other replies, what went wrong, first other reply)
_Outcome = tuple[int, int, str, bytes]


def _submit_process(
    port: int,
    count: int,
    function: bytes,
    payload: bytes,
    tag: bytes,
    first: int,
    ready: Any,
    go: Any,
    results: Any,
) -> None:
    try:
        sock = connect(port)
    except OSError as e:
        ready.put(1)
        results.put((0, 0, f"connect: {e}", b""))
        return
    ready.put(1)
    go.wait(120)
    results.put(_submit_on(sock, count, function, payload, tag, first))
    sock.close()


def _submit_on(
    sock: socket.socket, count: int, function: bytes, payload: bytes, tag: bytes, first: int
) -> _Outcome:
    """
    Send C{count} SUBMIT_JOB_BG (unique ids C{tag-first} onwards) a chunk at
    a time while a thread counts the replies.
    """
    counted: list[_Outcome] = []
    reader = threading.Thread(target=lambda: counted.append(_count_replies(sock, count)))
    reader.start()
    problem = ""
    try:
        for i in range(first, first + count, SUBMIT_CHUNK):
            sock.sendall(
                b"".join(
                    encode_request(P.SUBMIT_JOB_BG, function, b"%s-%d" % (tag, j), payload)
                    for j in range(i, min(i + SUBMIT_CHUNK, first + count))
                )
            )
    except OSError as e:
        problem = f"send: {e}"
    reader.join()
    created, other, why, first_other = counted[0]
    return created, other, problem or why, first_other


def _count_replies(sock: socket.socket, count: int) -> _Outcome:
    created = other = 0
    first_other = b""
    buf = b""
    try:
        while created + other < count:
            chunk = sock.recv(1 << 20)
            if not chunk:
                return created, other, "closed by the server", first_other
            buf = buf + chunk if buf else chunk
            pos = 0
            while len(buf) - pos >= 12:
                ptype, size = struct.unpack_from(">II", buf, pos + 4)
                if len(buf) - pos - 12 < size:
                    break
                if ptype == P.JOB_CREATED:
                    created += 1
                else:
                    other += 1
                    if not first_other:
                        first_other = buf[pos : pos + 12 + size][:200]
                pos += 12 + size
            buf = buf[pos:]
    except OSError as e:
        return created, other, f"receive: {e}", first_other
    return created, other, "", first_other


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


def proc_status_kib(pid: int) -> dict[str, int]:
    """
    The C{Vm*} sizes of a process's C{/proc/PID/status} (VmRSS, VmHWM,
    VmSwap...), in KiB.
    """
    sizes: dict[str, int] = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("Vm"):
                name, value = line.split(":", 1)
                sizes[name] = int(value.split()[0])
    return sizes


def meminfo_kib() -> dict[str, int]:
    """
    The machine's C{/proc/meminfo}, in KiB.
    """
    info: dict[str, int] = {}
    with open("/proc/meminfo") as f:
        for line in f:
            name, value = line.split(":", 1)
            info[name] = int(value.split()[0])
    return info


def cpu_seconds(pid: int) -> tuple[float, float]:
    """
    The user and system CPU time a process has used, all its threads
    together (fields 14 and 15 of C{/proc/PID/stat}), in seconds; the
    kernel counts it in clock ticks (usually 10 ms).
    """
    with open(f"/proc/{pid}/stat") as f:
        stat = f.read()
    # The command name (field 2) is in parentheses and may hold spaces.
    fields = stat[stat.rindex(")") + 2 :].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def minor_faults(pid: int) -> int:
    """
    A process's minor page faults so far (field 10 of C{/proc/PID/stat}):
    each is a kernel entry, so a steady count per job means memory mapped
    and unmapped per job.
    """
    with open(f"/proc/{pid}/stat") as f:
        stat = f.read()
    return int(stat[stat.rindex(")") + 2 :].split()[7])
