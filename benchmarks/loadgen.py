"""
A Gearman load generator that speaks the raw protocol.

Each load process multiplexes many connections with C{selectors}; the
runner starts several processes so that the generator is not the
bottleneck.  Only packets every server understands are used (SUBMIT_JOB,
SUBMIT_JOB_BG, GRAB_JOB, PRE_SLEEP, WORK_COMPLETE) unless a scenario says
otherwise.
"""

from __future__ import annotations

import multiprocessing
import os
import selectors
import socket
import struct
import time
from collections.abc import Callable
from typing import Any

from txgearmand.wire import PacketType as P

_HEADER = struct.Struct(">4sII")
_REQ = b"\0REQ"

CAN_DO = int(P.CAN_DO)
PRE_SLEEP = int(P.PRE_SLEEP)
NOOP = int(P.NOOP)
SUBMIT_JOB = int(P.SUBMIT_JOB)
JOB_CREATED = int(P.JOB_CREATED)
GRAB_JOB = int(P.GRAB_JOB)
NO_JOB = int(P.NO_JOB)
JOB_ASSIGN = int(P.JOB_ASSIGN)
WORK_COMPLETE = int(P.WORK_COMPLETE)
WORK_FAIL = int(P.WORK_FAIL)
SUBMIT_JOB_BG = int(P.SUBMIT_JOB_BG)
ERROR = int(P.ERROR)
GRAB_JOB_UNIQ = int(P.GRAB_JOB_UNIQ)
JOB_ASSIGN_UNIQ = int(P.JOB_ASSIGN_UNIQ)
SUBMIT_JOB_HIGH_BG = int(P.SUBMIT_JOB_HIGH_BG)
SUBMIT_JOB_LOW_BG = int(P.SUBMIT_JOB_LOW_BG)


def packet(ptype: int, *args: bytes) -> bytes:
    body = b"\0".join(args)
    return _HEADER.pack(_REQ, ptype, len(body)) + body


class Conn:
    """
    A non-blocking connection with a receive buffer and a send queue.
    """

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.setblocking(False)
        self.buf = b""
        self.out: list[bytes] = []
        self.closed = False

    def send(self, data: bytes) -> None:
        self.out.append(data)

    def flush(self) -> None:
        if not self.out:
            return
        data = b"".join(self.out)
        self.out = []
        self.sock.setblocking(True)
        try:
            self.sock.sendall(data)
        finally:
            self.sock.setblocking(False)

    def packets(self) -> list[tuple[int, bytes]]:
        try:
            chunk = self.sock.recv(1 << 20)
        except BlockingIOError:
            return []
        if not chunk:
            self.closed = True
            return []
        buf = self.buf + chunk if self.buf else chunk
        out = []
        pos = 0
        size = len(buf)
        while size - pos >= 12:
            _, ptype, length = _HEADER.unpack_from(buf, pos)
            end = pos + 12 + length
            if end > size:
                break
            out.append((ptype, buf[pos + 12 : end]))
            pos = end
        self.buf = buf[pos:]
        return out


def run_workers(
    port: int,
    count: int,
    function: bytes,
    stop_at: float,
    ready: Any,
    results: Any,
    grab: int = GRAB_JOB,
    done: Any = None,
) -> None:
    """
    C{count} worker connections that complete every job at once (the
    result is the payload's first 16 bytes), until C{stop_at} or until the
    event C{done} is set; count jobs and NOOPs.
    """
    sel = selectors.DefaultSelector()
    conns = []
    for _ in range(count):
        c = Conn(port)
        c.send(packet(CAN_DO, function) + packet(grab))
        c.flush()
        sel.register(c.sock, selectors.EVENT_READ, c)
        conns.append(c)
    ready.put(count)
    jobs = noops = 0
    assign = JOB_ASSIGN if grab == GRAB_JOB else JOB_ASSIGN_UNIQ
    while time.time() < stop_at and not (done is not None and done.is_set()):
        for key, _ in sel.select(timeout=0.05):
            c = key.data
            for ptype, body in c.packets():
                if ptype == assign:
                    handle = body.split(b"\0", 1)[0]
                    data = body.rsplit(b"\0", 1)[-1][:16]
                    c.send(packet(WORK_COMPLETE, handle, data) + packet(grab))
                    jobs += 1
                elif ptype == NO_JOB:
                    c.send(packet(PRE_SLEEP))
                elif ptype == NOOP:
                    noops += 1
                    c.send(packet(grab))
            c.flush()
            if c.closed:
                sel.unregister(c.sock)
    results.put(("workers", jobs, noops))
    for c in conns:
        c.sock.close()


def run_clients(
    port: int,
    count: int,
    function: bytes,
    payload: bytes,
    window: int,
    start_at: float,
    measure_from: float,
    stop_at: float,
    results: Any,
) -> None:
    """
    C{count} client connections, each keeping C{window} foreground jobs in
    flight; report completions and latencies after C{measure_from}.
    """
    sel = selectors.DefaultSelector()
    conns = []
    pending: dict[Conn, list[float]] = {}
    started: dict[tuple[Conn, bytes], float] = {}
    submit = packet(SUBMIT_JOB, function, b"", payload)
    while time.time() < start_at:
        time.sleep(0.001)
    for _ in range(count):
        c = Conn(port)
        sel.register(c.sock, selectors.EVENT_READ, c)
        conns.append(c)
        pending[c] = []
        now = time.perf_counter()
        for _ in range(window):
            c.send(submit)
            pending[c].append(now)
        c.flush()
    latencies: list[float] = []
    done = errors = 0
    while time.time() < stop_at:
        for key, _ in sel.select(timeout=0.05):
            c = key.data
            for ptype, body in c.packets():
                if ptype == JOB_CREATED:
                    started[(c, body)] = pending[c].pop(0)
                elif ptype == WORK_COMPLETE:
                    handle = body.split(b"\0", 1)[0]
                    t0 = started.pop((c, handle), None)
                    now = time.perf_counter()
                    if t0 is not None and time.time() >= measure_from:
                        latencies.append(now - t0)
                        done += 1
                    c.send(submit)
                    pending[c].append(now)
                elif ptype in (ERROR, WORK_FAIL):
                    errors += 1
                    c.send(submit)
                    pending[c].append(time.perf_counter())
            c.flush()
    results.put(("clients", done, latencies, errors))
    for c in conns:
        c.sock.close()


def run_counted_clients(
    port: int,
    count: int,
    function: bytes,
    payload: bytes,
    window: int,
    quota: int,
    ready: Any,
    go: Any,
    done: Any,
    results: Any,
) -> None:
    """
    C{count} client connections that, once the event C{go} is set, each
    run C{quota} foreground jobs keeping C{window} in flight; report the
    jobs completed, then keep the connections open until C{done} is set.
    """
    sel = selectors.DefaultSelector()
    conns = []
    for _ in range(count):
        c = Conn(port)
        sel.register(c.sock, selectors.EVENT_READ, c)
        conns.append(c)
    ready.put(count)
    go.wait(120)
    submit = packet(SUBMIT_JOB, function, b"", payload)
    sent: dict[Conn, int] = {}
    for c in conns:
        sent[c] = min(window, quota)
        c.send(submit * sent[c])
        c.flush()
    completed = errors = 0
    stop_at = time.time() + 600
    while completed < count * quota and time.time() < stop_at:
        for key, _ in sel.select(timeout=0.05):
            c = key.data
            for ptype, _body in c.packets():
                if ptype == WORK_COMPLETE:
                    completed += 1
                elif ptype in (ERROR, WORK_FAIL):
                    errors += 1
                    sent[c] -= 1
                else:
                    continue
                if sent[c] < quota:
                    c.send(submit)
                    sent[c] += 1
            c.flush()
            if c.closed:
                stop_at = 0.0  # the server went away: report what was done
    results.put(("clients", completed, errors))
    done.wait(120)
    for c in conns:
        c.sock.close()


def foreground_fixed(
    port: int,
    clients: int,
    workers: int,
    payload_size: int,
    window: int,
    jobs: int,
    probe: Callable[[], Any],
) -> tuple[float, Any, Any]:
    """
    Run exactly C{jobs} foreground jobs (shared among C{clients} client
    connections, each keeping C{window} in flight) through C{workers}
    worker connections, each kind spread over two processes.

    Every connection is made and every worker asleep before C{probe()} is
    called; the clients start after it and it is called again as soon as
    the last job is complete, before anything disconnects, so only the jobs
    happen between the two calls.

    @return: the seconds the jobs took, and what C{probe} returned before
        and after.
    """
    ctx = multiprocessing.get_context("fork")
    ready: Any = ctx.Queue()
    results: Any = ctx.Queue()
    go = ctx.Event()
    done = ctx.Event()
    function = b"fx" + os.urandom(3).hex().encode()
    payload = os.urandom(payload_size // 2 + 1).hex().encode()[:payload_size]
    stop_at = time.time() + 900
    worker_procs = [
        ctx.Process(
            target=run_workers,
            args=(port, n, function, stop_at, ready, results, GRAB_JOB, done),
        )
        for n in _split(workers)
    ]
    quota = jobs // clients
    client_procs = [
        ctx.Process(
            target=run_counted_clients,
            args=(port, n, function, payload, window, quota, ready, go, done, results),
        )
        for n in _split(clients)
    ]
    try:
        for p in worker_procs + client_procs:
            p.start()
        for _ in worker_procs + client_procs:
            ready.get(timeout=60)
        time.sleep(0.3)  # the workers have grabbed, got NO_JOB and slept
        before = probe()
        start = time.perf_counter()
        go.set()
        completed = errors = 0
        for _ in client_procs:
            _, n, e = results.get(timeout=900)
            completed += n
            errors += e
        elapsed = time.perf_counter() - start
        after = probe()
    finally:
        go.set()
        done.set()
        for p in worker_procs + client_procs:
            p.join(30)
            if p.is_alive():
                p.kill()
    if completed != quota * clients or errors:
        raise RuntimeError(f"{completed} of {quota * clients} jobs completed, {errors} errors")
    return elapsed, before, after


def submit_background(
    port: int, count: int, function: bytes, payload: bytes, priorities: bool = False
) -> float:
    """
    Submit C{count} background jobs on one connection, pipelined (a window
    of 1000); return the seconds until the last JOB_CREATED.
    """
    c = Conn(port)
    c.sock.setblocking(True)
    kinds = (
        (SUBMIT_JOB_HIGH_BG, SUBMIT_JOB_BG, SUBMIT_JOB_LOW_BG) if priorities else (SUBMIT_JOB_BG,)
    )
    start = time.perf_counter()
    sent = received = 0
    window = 1000
    c.sock.setblocking(False)
    sel = selectors.DefaultSelector()
    sel.register(c.sock, selectors.EVENT_READ)
    while received < count:
        burst = []
        while sent < count and sent - received < window:
            burst.append(packet(kinds[sent % len(kinds)], function, b"", payload))
            sent += 1
        if burst:
            c.send(b"".join(burst))
            c.flush()
        sel.select(timeout=1)
        for ptype, body in c.packets():
            if ptype == JOB_CREATED:
                received += 1
            elif ptype == ERROR:
                raise RuntimeError(f"server error: {body!r}")
        if c.closed:
            raise RuntimeError("the server closed the connection")
    elapsed = time.perf_counter() - start
    c.sock.close()
    return elapsed


def drain(port: int, workers: int, function: bytes, count: int, grab: int = GRAB_JOB) -> float:
    """
    Start C{workers} worker processes on a queue of C{count} jobs; return
    the seconds until all are done.
    """
    ctx = multiprocessing.get_context("fork")
    ready: Any = ctx.Queue()
    results: Any = ctx.Queue()
    procs = []
    per = max(1, workers // 2)
    n_procs = (workers + per - 1) // per
    stop_at = time.time() + 600
    done_flag = ctx.Event()
    for i in range(n_procs):
        n = min(per, workers - i * per)
        p = ctx.Process(
            target=_drain_worker, args=(port, n, function, count, ready, results, done_flag, grab)
        )
        p.start()
        procs.append(p)
    for _ in procs:
        ready.get(timeout=60)
    start = time.perf_counter()
    total = 0
    while total < count and time.time() < stop_at:
        total += results.get(timeout=600)
    elapsed = time.perf_counter() - start
    done_flag.set()
    for p in procs:
        p.join(30)
    return elapsed


def _drain_worker(
    port: int,
    count: int,
    function: bytes,
    total: int,
    ready: Any,
    results: Any,
    done_flag: Any,
    grab: int,
) -> None:
    sel = selectors.DefaultSelector()
    conns = []
    for _ in range(count):
        c = Conn(port)
        sel.register(c.sock, selectors.EVENT_READ, c)
        conns.append(c)
    ready.put(count)
    for c in conns:
        c.send(packet(CAN_DO, function) + packet(grab))
        c.flush()
    assign = JOB_ASSIGN if grab == GRAB_JOB else JOB_ASSIGN_UNIQ
    batch = 0
    last = time.time()
    while not done_flag.is_set():
        for key, _ in sel.select(timeout=0.05):
            c = key.data
            for ptype, body in c.packets():
                if ptype == assign:
                    handle = body.split(b"\0", 1)[0]
                    c.send(packet(WORK_COMPLETE, handle, b"") + packet(grab))
                    batch += 1
                elif ptype == NO_JOB:
                    c.send(packet(PRE_SLEEP))
                elif ptype == NOOP:
                    c.send(packet(grab))
            c.flush()
        if batch and (batch >= 1000 or time.time() - last > 0.05):
            results.put(batch)
            batch = 0
            last = time.time()
    if batch:
        results.put(batch)
    for c in conns:
        c.sock.close()


def foreground(
    port: int,
    clients: int,
    workers: int,
    payload_size: int,
    window: int,
    seconds: float,
    warmup: float,
) -> dict[str, float]:
    """
    Foreground jobs with C{clients} client and C{workers} worker
    connections (each kind spread over two processes); jobs/s and latency.
    """
    ctx = multiprocessing.get_context("fork")
    ready: Any = ctx.Queue()
    results: Any = ctx.Queue()
    function = b"fg" + os.urandom(3).hex().encode()
    payload = os.urandom(payload_size // 2 + 1).hex().encode()[:payload_size]
    now = time.time()
    start_at = now + 1.0
    measure_from = start_at + warmup
    stop_at = measure_from + seconds
    procs = []
    for n in _split(workers):
        procs.append(
            ctx.Process(target=run_workers, args=(port, n, function, stop_at + 0.5, ready, results))
        )
    for p in procs:
        p.start()
    for _ in procs:
        ready.get(timeout=60)
    client_procs = []
    for n in _split(clients):
        client_procs.append(
            ctx.Process(
                target=run_clients,
                args=(port, n, function, payload, window, start_at, measure_from, stop_at, results),
            )
        )
    for p in client_procs:
        p.start()
    latencies: list[float] = []
    done = errors = 0
    for _ in range(len(procs) + len(client_procs)):
        item = results.get(timeout=seconds + warmup + 120)
        if item[0] == "clients":
            done += item[1]
            latencies.extend(item[2])
            errors += item[3]
    for p in procs + client_procs:
        p.join(30)
    latencies.sort()
    return {
        "jobs_per_s": done / seconds,
        "p50_ms": _percentile(latencies, 0.50) * 1000,
        "p99_ms": _percentile(latencies, 0.99) * 1000,
        "errors": errors,
    }


def idle_herd(port: int, sleepers: int, jobs: int, interval: float) -> float:
    """
    C{sleepers} idle workers; one job every C{interval} seconds; return the
    NOOPs sent per job.
    """
    ctx = multiprocessing.get_context("fork")
    ready: Any = ctx.Queue()
    results: Any = ctx.Queue()
    function = b"herd" + os.urandom(3).hex().encode()
    stop_at = time.time() + 5 + jobs * interval + 2
    procs = [
        ctx.Process(target=run_workers, args=(port, n, function, stop_at, ready, results))
        for n in _split(sleepers)
    ]
    for p in procs:
        p.start()
    for _ in procs:
        ready.get(timeout=60)
    time.sleep(1.0)  # every worker has grabbed, got NO_JOB and slept
    c = Conn(port)
    c.sock.setblocking(True)
    for _ in range(jobs):
        c.sock.sendall(packet(SUBMIT_JOB_BG, function, b"", b"x"))
        time.sleep(interval)
    c.sock.close()
    noops = done = 0
    for _ in procs:
        _, jobs_done, n = results.get(timeout=120)
        noops += n
        done += jobs_done
    for p in procs:
        p.join(30)
    return noops / max(jobs, 1)


def _split(n: int) -> list[int]:
    if n <= 1:
        return [n]
    return [n - n // 2, n // 2]


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    return values[min(len(values) - 1, int(q * len(values)))]
