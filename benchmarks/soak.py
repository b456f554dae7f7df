"""
A soak benchmark: a real C{twistd -n gearmand} under a mixed load with
churn for a set time, then an account of every job and of the server's
memory.

    python -m benchmarks.soak                   # 300 s of load
    python -m benchmarks.soak --short           # 20 s: a CI smoke run
    python -m benchmarks.soak --duration 120 --sqlite
    python -m benchmarks.soak --server-python ~/.cache/txgearmand/pypy-venv/bin/python
    python -m benchmarks.soak --server-args "--wakeup=1"

Everything runs on 127.0.0.1, in one process with one selector loop (the
server gets the other core): steady clients submitting foreground and
background jobs at the three priorities, clients that vanish while their
foreground jobs run, a slow reader that never reads the WORK_DATA streamed
to it, workers that complete, fail, raise, stream, overrun their
CAN_DO_TIMEOUT, leave cleanly or vanish mid-job, and a flood of bad
packets on short-lived connections.  After a warm-up (whose drained RSS
is the start figure) and the load, the workers drain the queues, and each
job (unique id and JOB_CREATED handle tracked) must end completed, failed
as the rules say, refused at submission, or still listed by the admin
C{show jobs}; anything else is lost.

The exit status is 1 when a job was lost, a job was done twice without a
cause, the server died, or its RSS after the drain and an idle pause grew
over the start by more than C{--rss-bound-mib}; 0 otherwise.

The RSS bound (32 MiB) is from what CPython servers measured: with the
output limits, the end RSS was 0 to 13 MiB over the start in 20 to 300 s
runs, levelling off after about two minutes (memory the allocators keep
and garbage awaiting a full collection, not live objects: after
C{gc.collect()} Python's traced memory stays flat); without the limits,
slow readers' unread output took 28 MiB in 20 s.  PyPy's RSS grows until
its collector does a major collection, which this load seldom triggers
(about 150 MiB in 60 s): give it a bound of its own.
"""

from __future__ import annotations

import argparse
import heapq
import itertools
import os
import random
import re
import selectors
import shlex
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections import Counter, deque
from collections.abc import Callable
from pathlib import Path
from typing import Any, Optional

from benchmarks._load import rss_kib
from txgearmand import wire
from txgearmand.test import _process
from txgearmand.wire import PacketType as P

_READ = selectors.EVENT_READ
_WRITE = selectors.EVENT_WRITE

MAIN = b"soak.main"
SLOW = b"soak.slow"
FLOOD = b"soak.flood"
FUNCTIONS = (MAIN, SLOW, FLOOD)

_FG = {0: P.SUBMIT_JOB_HIGH, 1: P.SUBMIT_JOB, 2: P.SUBMIT_JOB_LOW}
_BG = {0: P.SUBMIT_JOB_HIGH_BG, 1: P.SUBMIT_JOB_BG, 2: P.SUBMIT_JOB_LOW_BG}
_TERMINAL = (int(P.WORK_COMPLETE), int(P.WORK_FAIL), int(P.WORK_EXCEPTION))
_PROGRESS = (int(P.WORK_DATA), int(P.WORK_WARNING), int(P.WORK_STATUS))

#: Job modes, in the payload: what a worker does with the job.
COMPLETE = b"c"  # WORK_COMPLETE at once
DELAY = b"d"  # WORK_COMPLETE after 10-100 ms
FAIL = b"f"  # WORK_FAIL
EXCEPTION = b"x"  # WORK_EXCEPTION
STREAM = b"s"  # WORK_STATUS, WORK_DATA, WORK_WARNING, then WORK_COMPLETE
QUICK = b"q"  # (soak.slow) WORK_COMPLETE after 50 ms, within the timeout
OVERRUN = b"o"  # (soak.slow) overrun the timeout, then a late WORK_COMPLETE
FLOOD_MODE = b"F"  # (soak.flood) many 64 KiB WORK_DATA at once, then WORK_COMPLETE
TRICKLE = b"T"  # (soak.flood) 64 KiB WORK_DATA 12 times a second, then WORK_COMPLETE

#: soak.main's mix of modes (weights).
MAIN_MODES = ((COMPLETE, 58), (DELAY, 5), (FAIL, 6), (EXCEPTION, 6), (STREAM, 25))
#: The CAN_DO_TIMEOUT of the soak.slow workers, in milliseconds (C
#: gearmand's unit, the server's default), and how long past it an
#: overrunning worker sends its late result.
SLOW_TIMEOUT_MS = 1000
OVERRUN_MARGIN = 0.8

_OUTPUT_OPTIONS = ("output-hard-limit", "output-soft-limit", "output-soft-seconds")
#: Options being added to the server: passed only when its --help has them.
NEW_OPTIONS = (*_OUTPUT_OPTIONS, "max-memory", "read-timeout")


def parse_size(text: str) -> int:
    """
    C{65536}, C{64K}, C{1M}, C{1G}: bytes.
    """
    match = re.fullmatch(r"\s*(\d+)\s*([kKmMgG]?)i?[bB]?\s*", text)
    if match is None:
        raise ValueError(f"not a size: {text!r}")
    power = " kmg".index(match.group(2).lower() or " ")
    return int(match.group(1)) * (1 << (10 * power))


def req(ptype: int, *args: bytes) -> bytes:
    return wire.encode_request(ptype, *args)


class Timer:
    __slots__ = ("args", "cancelled", "fn")

    def __init__(self, fn: Callable[..., None], args: tuple[Any, ...]) -> None:
        self.fn = fn
        self.args = args
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class Loop:
    """
    A selector loop with timers: every connection of the harness runs in it.
    """

    def __init__(self) -> None:
        self.selector = selectors.DefaultSelector()
        self._timers: list[tuple[float, int, Timer]] = []
        self._seq = itertools.count()

    def call_later(self, delay: float, fn: Callable[..., None], *args: Any) -> Timer:
        timer = Timer(fn, args)
        heapq.heappush(self._timers, (time.monotonic() + delay, next(self._seq), timer))
        return timer

    def every(self, interval: float, fn: Callable[[], None]) -> Timer:
        """
        Call C{fn} every C{interval} seconds until the returned timer is
        cancelled.
        """
        handle = Timer(fn, ())

        def tick() -> None:
            if handle.cancelled:
                return
            fn()
            self.call_later(interval, tick)

        self.call_later(interval, tick)
        return handle

    def run_once(self, max_wait: float) -> None:
        wait = max_wait
        if self._timers:
            wait = min(wait, max(0.0, self._timers[0][0] - time.monotonic()))
        if self.selector.get_map():
            events = self.selector.select(wait)
        else:
            time.sleep(wait)
            events = []
        for key, mask in events:
            conn: Conn = key.data
            if mask & _READ and not conn.closed:
                conn.on_readable()
            if mask & _WRITE and not conn.closed:
                conn.on_writable()
        now = time.monotonic()
        timers = self._timers
        while timers and timers[0][0] <= now:
            _, _, timer = heapq.heappop(timers)
            if not timer.cancelled:
                timer.fn(*timer.args)

    def run_for(self, seconds: float, check: Callable[[], None] | None = None) -> None:
        self.run_until(lambda: False, seconds, check)

    def run_until(
        self, done: Callable[[], bool], timeout: float, check: Callable[[], None] | None = None
    ) -> bool:
        """
        Run until C{done()} or C{timeout} seconds; whether it was done.
        C{check} runs each turn and may raise to abort.
        """
        deadline = time.monotonic() + timeout
        while not done():
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self.run_once(min(left, 0.05))
            if check is not None:
                check()
        return True


class Conn:
    """
    A non-blocking connection to the server in the loop: a send buffer, a
    response parser, and C{on_packet} / C{on_closed} for subclasses.
    """

    def __init__(self, soak: Soak, sock: socket.socket | None = None, reading: bool = True) -> None:
        self.soak = soak
        self.loop = soak.loop
        if sock is None:
            sock = socket.create_connection(("127.0.0.1", soak.port), timeout=10)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setblocking(False)
        self.sock = sock
        self.parser = wire.PacketParser(magic=wire.RESPONSE_MAGIC)
        self.out = bytearray()
        self.reading = reading
        self.closed = False
        self.closing = False
        self.received = 0
        self._events = 0
        self._update()

    def _update(self) -> None:
        want = (_READ if self.reading else 0) | (_WRITE if self.out else 0)
        if want == self._events or self.closed:
            return
        if not self._events:
            self.loop.selector.register(self.sock, want, self)
        elif not want:
            self.loop.selector.unregister(self.sock)
        else:
            self.loop.selector.modify(self.sock, want, self)
        self._events = want

    def start_reading(self) -> None:
        self.reading = True
        self._update()

    def send(self, data: bytes) -> None:
        if self.closed:
            return
        if self.out:
            self.out += data
            self._update()
            return
        try:
            sent = self.sock.send(data)
        except BlockingIOError:
            sent = 0
        except OSError as e:
            self._lost(f"send: {e}")
            return
        if sent < len(data):
            self.out += memoryview(data)[sent:]
            self._update()

    def on_writable(self) -> None:
        try:
            sent = self.sock.send(self.out)
        except BlockingIOError:
            return
        except OSError as e:
            self._lost(f"send: {e}")
            return
        del self.out[:sent]
        self._update()
        if self.closing and not self.out:
            self.close()

    def on_readable(self) -> None:
        try:
            data = self.sock.recv(1 << 18)
        except BlockingIOError:
            return
        except OSError as e:
            self._lost(f"recv: {e}")
            return
        if not data:
            self._lost("eof")
            return
        self.received += len(data)
        for ptype, body in self.parser.feed(data):
            if self.closed:
                return
            self.on_packet(ptype, body)
        error = self.parser.error
        if error is not None and not self.closed:
            self.soak.anomaly(f"{type(self).__name__}: unparseable reply from the server: {error}")
            self.close()

    def close(self, reset: bool = False) -> None:
        """
        Close it ourselves: once what is buffered is sent (at most 5 s), or
        at once with a RST (C{reset}).
        """
        if self.closed:
            return
        if self.out and not reset:
            if not self.closing:
                self.closing = True
                self.loop.call_later(5.0, self.close, True)
            return
        if reset:
            try:
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            except OSError:
                pass
        self._shut()
        self.on_closed(by_server=False, reason="closed by us")

    def _lost(self, reason: str) -> None:
        if self.closed:
            return
        self._shut()
        self.on_closed(by_server=True, reason=reason)

    def _shut(self) -> None:
        self.closed = True
        if self._events:
            self.loop.selector.unregister(self.sock)
            self._events = 0
        self.out = bytearray()
        self.sock.close()

    def on_packet(self, ptype: int, body: bytes) -> None:
        raise NotImplementedError

    def on_closed(self, by_server: bool, reason: str) -> None:
        pass


class Job:
    """
    What the harness knows of one submission.
    """

    __slots__ = (
        "acked",
        "assigned",
        "background",
        "client",
        "client_gone",
        "function",
        "got",
        "handle",
        "mode",
        "priority",
        "refused",
        "results",
        "streamed",
        "timed_out",
        "uid",
        "vanished",
    )

    def __init__(
        self, uid: int, function: bytes, mode: bytes, background: bool, priority: int
    ) -> None:
        self.uid = uid
        self.function = function
        self.mode = mode
        self.background = background
        self.priority = priority
        self.client: Client | None = None
        self.handle: bytes | None = None
        self.acked = False
        self.refused: bytes | None = None
        #: The submitter closed (or lost) its connection before the job's
        #: end reached it.
        self.client_gone = False
        #: Results workers sent while holding the job: "C", "F", "X".
        self.results: list[str] = []
        #: Terminal packets the submitter received (packet types).
        self.got: list[int] = []
        self.assigned = 0
        self.vanished = 0
        self.timed_out = 0
        self.streamed = 0

    @property
    def failed_attempts(self) -> int:
        return self.vanished + self.timed_out


class Worker(Conn):
    """
    A worker on one function: grabs one job at a time, sleeps with
    PRE_SLEEP, does what the job's mode says; a vanisher closes mid-job
    now and then (half of the time with a RST).
    """

    serial = itertools.count(1)

    def __init__(
        self,
        soak: Soak,
        kind: str,
        function: bytes,
        timeout_ms: int = 0,
        uniq: bool = True,
        vanish: float = 0.0,
    ) -> None:
        super().__init__(soak)
        self.kind = kind
        self.function = function
        self.timeout_ms = timeout_ms
        self.uniq = uniq
        self.vanish_p = vanish
        self.current: Job | None = None
        self.grabbing = False
        self.sleeping = False
        self.retiring = False
        self.number = next(self.serial)
        hello = [req(P.SET_CLIENT_ID, b"soak-%s-%d" % (kind.encode(), self.number))]
        if timeout_ms:
            hello.append(req(P.CAN_DO_TIMEOUT, function, b"%d" % timeout_ms))
        else:
            hello.append(req(P.CAN_DO, function))
        self.send(b"".join(hello))
        self.grab()

    @property
    def idle(self) -> bool:
        return self.closed or (self.current is None and not self.grabbing and not self.out)

    def grab(self, before: bytes = b"") -> None:
        if self.retiring or self.soak.workers_stopping:
            if before:
                self.send(before)
            if self.retiring:
                self.close()
            return
        self.grabbing = True
        self.send(before + req(P.GRAB_JOB_UNIQ if self.uniq else P.GRAB_JOB))

    def retire(self) -> None:
        self.retiring = True
        if self.idle:
            self.close()

    def on_packet(self, ptype: int, body: bytes) -> None:
        if ptype == P.NO_JOB:
            self.grabbing = False
            if self.retiring:
                self.close()
            elif not self.soak.workers_stopping:
                self.sleeping = True
                self.send(req(P.PRE_SLEEP))
        elif ptype == P.NOOP:
            if self.sleeping and not self.grabbing and self.current is None:
                self.sleeping = False
                self.grab()
        elif ptype == P.JOB_ASSIGN_UNIQ or ptype == P.JOB_ASSIGN:
            self.grabbing = False
            self.sleeping = False
            if ptype == P.JOB_ASSIGN_UNIQ:
                handle, function, unique, data = body.split(b"\0", 3)
            else:
                handle, function, data = body.split(b"\0", 2)
                unique = None
            self.begin(handle, function, unique, data)
        elif ptype == P.ERROR:
            self.soak.anomaly(f"worker {self.kind} got ERROR {body!r}")
        else:
            self.soak.anomaly(f"worker {self.kind} got unexpected packet type {ptype}")

    def begin(self, handle: bytes, function: bytes, unique: bytes | None, data: bytes) -> None:
        soak = self.soak
        uid_text, _, rest = data.partition(b"|")
        mode = rest[:1]
        job = soak.jobs.get(int(uid_text)) if uid_text.isdigit() else None
        if job is None or function != job.function or (unique and unique != b"s" + uid_text):
            soak.anomaly(f"worker {self.kind} was assigned an unknown job {handle!r} {data[:40]!r}")
            self.grab(req(P.WORK_FAIL, handle))
            return
        if job.handle is not None and job.handle != handle:
            soak.anomaly(f"job {job.uid} assigned as {handle!r}, created as {job.handle!r}")
        if job.refused is not None:
            soak.anomaly(f"job {job.uid} was refused ({job.refused!r}) but assigned")
        job.assigned += 1
        self.current = job
        if self.vanish_p and not soak.calm and soak.rng.random() < self.vanish_p:
            if soak.rng.random() < 0.5:
                self.vanish(job)
            else:
                # Mid-job: after some progress, a little later.
                self.send(
                    req(P.WORK_STATUS, handle, b"1", b"3")
                    + req(P.WORK_DATA, handle, b"partial-%d" % job.uid)
                )
                self.loop.call_later(soak.rng.uniform(0.005, 0.05), self.vanish, job)
            return
        if mode == COMPLETE:
            self.finish(job, handle, "C")
        elif mode == DELAY or mode == QUICK:
            delay = 0.05 if mode == QUICK else soak.rng.uniform(0.01, 0.1)
            self.loop.call_later(delay, self.finish, job, handle, "C")
        elif mode == FAIL:
            self.finish(job, handle, "F")
        elif mode == EXCEPTION:
            self.finish(job, handle, "X")
        elif mode == STREAM:
            parts = []
            for i in range(1, 4):
                parts.append(req(P.WORK_STATUS, handle, b"%d" % i, b"3"))
                parts.append(req(P.WORK_DATA, handle, b"chunk-%d-" % i + b"d" * 200))
            parts.append(req(P.WORK_WARNING, handle, b"careful"))
            self.send(b"".join(parts))
            self.finish(job, handle, "C")
        elif mode == OVERRUN:
            delay = SLOW_TIMEOUT_MS / 1000 + OVERRUN_MARGIN
            self.loop.call_later(delay, self.late_result, job, handle)
        elif mode == FLOOD_MODE:
            self.send(req(P.WORK_DATA, handle, soak.flood_chunk) * soak.flood_chunks)
            self.finish(job, handle, "C")
        elif mode == TRICKLE:
            self.trickle(job, handle, soak.flood_chunks)
        else:
            soak.anomaly(f"job {job.uid} has an unknown mode {mode!r}")
            self.finish(job, handle, "F")

    def trickle(self, job: Job, handle: bytes, left: int) -> None:
        if self.closed:
            return
        if not left:
            self.finish(job, handle, "C")
            return
        self.send(req(P.WORK_DATA, handle, self.soak.flood_chunk))
        self.loop.call_later(1 / 12, self.trickle, job, handle, left - 1)

    def finish(self, job: Job, handle: bytes, result: str) -> None:
        if self.closed:
            return
        job.results.append(result)
        self.current = None
        if result == "C":
            packet = req(P.WORK_COMPLETE, handle, b"done:%d" % job.uid)
        elif result == "F":
            packet = req(P.WORK_FAIL, handle)
        else:
            packet = req(P.WORK_EXCEPTION, handle, b"boom:%d" % job.uid)
        self.grab(packet)

    def late_result(self, job: Job, handle: bytes) -> None:
        """
        The job overran its timeout: the server took it back; its late
        result must be dropped quietly.
        """
        if self.closed:
            return
        job.timed_out += 1
        self.soak.stats["late results sent"] += 1
        self.current = None
        self.grab(req(P.WORK_COMPLETE, handle, b"late:%d" % job.uid))

    def vanish(self, job: Job) -> None:
        if self.closed:
            return
        job.vanished += 1
        self.current = None
        self.soak.stats["workers vanished mid-job"] += 1
        self.close(reset=self.soak.rng.random() < 0.5)

    def on_closed(self, by_server: bool, reason: str) -> None:
        soak = self.soak
        if by_server:
            soak.anomaly(f"worker {self.kind} lost its connection: {reason}")
        if self.current is not None:
            # Lost while holding it: to the server, as if it vanished.
            self.current.vanished += 1
            self.current = None
        soak.workers.discard(self)
        if not soak.workers_stopping and not soak.aborted:
            soak.loop.call_later(0.05, soak.replace_worker, self)


class Client(Conn):
    """
    A client: submits jobs, pairs each JOB_CREATED (or ERROR) with its
    submission in order, and collects what its foreground jobs send back.
    """

    def __init__(
        self,
        soak: Soak,
        kind: str,
        exceptions: bool = False,
        sock: socket.socket | None = None,
        reading: bool = True,
    ) -> None:
        super().__init__(soak, sock, reading)
        self.kind = kind
        self.exceptions = exceptions
        self.pending: deque[Job] = deque()
        self.waiting: dict[bytes, Job] = {}
        self.ready = not exceptions
        if exceptions:
            self.send(req(P.OPTION_REQ, b"exceptions"))

    @property
    def open_foreground(self) -> int:
        return len(self.waiting) + sum(1 for j in self.pending if not j.background)

    def submit(self, job: Job, payload: bytes) -> None:
        job.client = self
        table = _BG if job.background else _FG
        self.pending.append(job)
        self.soak.stats["submitted"] += 1
        self.send(req(table[job.priority], job.function, b"s%d" % job.uid, payload))

    def on_packet(self, ptype: int, body: bytes) -> None:
        soak = self.soak
        if ptype == P.JOB_CREATED:
            if not self.pending:
                soak.anomaly(f"{self.kind} client: JOB_CREATED {body!r} with nothing pending")
                return
            job = self.pending.popleft()
            job.acked = True
            job.handle = body
            soak.by_handle[body] = job
            if not job.background:
                self.waiting[body] = job
        elif ptype == P.ERROR:
            code, _, text = body.partition(b"\0")
            if not self.pending:
                soak.anomaly(f"{self.kind} client: ERROR {code!r} {text[:80]!r}")
                return
            job = self.pending.popleft()
            job.refused = code
        elif ptype in _TERMINAL:
            handle, _, data = body.partition(b"\0")
            job_or_none = self.waiting.pop(handle, None)
            if job_or_none is None:
                soak.anomaly(f"{self.kind} client: result {ptype} for unknown handle {handle!r}")
                return
            job = job_or_none
            job.got.append(ptype)
            if ptype == P.WORK_COMPLETE and data != b"done:%d" % job.uid:
                soak.anomaly(f"job {job.uid}: the client got WORK_COMPLETE {data[:40]!r}")
            if ptype == P.WORK_EXCEPTION and not self.exceptions:
                soak.anomaly(f"job {job.uid}: WORK_EXCEPTION to a client that did not ask")
            self.job_done(job)
        elif ptype in _PROGRESS:
            handle = body.partition(b"\0")[0]
            job_or_none = self.waiting.get(handle)
            if job_or_none is None:
                soak.anomaly(f"{self.kind} client: progress {ptype} for unknown {handle!r}")
            else:
                job_or_none.streamed += 1
        elif ptype == P.OPTION_RES:
            self.ready = True
        else:
            soak.anomaly(f"{self.kind} client: unexpected packet type {ptype}")

    def job_done(self, job: Job) -> None:
        pass

    def on_closed(self, by_server: bool, reason: str) -> None:
        for job in self.pending:
            job.client_gone = True
        for job in self.waiting.values():
            job.client_gone = True
        self.on_gone(by_server, reason)

    def on_gone(self, by_server: bool, reason: str) -> None:
        if by_server:
            self.soak.anomaly(f"{self.kind} client lost its connection: {reason}")
        self.soak.clients.discard(self)


class VanishingClient(Client):
    """
    Submits a few foreground jobs (and maybe a background one), waits for
    their JOB_CREATED, then closes while they are queued or running.
    """

    def __init__(self, soak: Soak) -> None:
        super().__init__(soak, "vanishing")
        rng = soak.rng
        for _ in range(rng.randint(1, 3)):
            mode = rng.choice((DELAY, DELAY, STREAM, COMPLETE))
            soak.submit(self, MAIN, mode, False)
        if rng.random() < 0.3:
            soak.submit(self, MAIN, COMPLETE, True)
        self.deadline = self.loop.call_later(5.0, self.leave)
        soak.episodes.add(self)

    def on_packet(self, ptype: int, body: bytes) -> None:
        super().on_packet(ptype, body)
        if not self.pending and not self.deadline.cancelled:
            self.deadline.cancel()
            self.loop.call_later(self.soak.rng.uniform(0.0, 0.1), self.leave)

    def leave(self) -> None:
        if not self.closed:
            self.soak.stats["clients vanished"] += 1
            self.close(reset=self.soak.rng.random() < 0.3)

    def on_gone(self, by_server: bool, reason: str) -> None:
        if by_server:
            self.soak.anomaly(f"vanishing client lost its connection: {reason}")
        self.soak.episodes.discard(self)


class SlowReader(Client):
    """
    Submits foreground jobs to soak.flood, whose worker streams megabytes
    of WORK_DATA (all at once, or C{trickle}: 768 KiB/s), with a tiny
    receive buffer, and does not read for C{hold} seconds; then reads
    until its jobs end, the server closes it, or time runs out.  At once,
    it passes C{--output-hard-limit}; trickling, it stays over
    C{--output-soft-limit} for seconds (once the kernel's send buffer,
    some 3 MiB on loopback, is full) but under the hard limit.
    """

    def __init__(self, soak: Soak, hold: float, trickle: bool) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.settimeout(10)
        sock.connect(("127.0.0.1", soak.port))
        super().__init__(soak, "slow-reader", sock=sock, reading=False)
        # One trickle at a time: two would pass the hard limit too.
        for _ in range(1 if trickle else soak.args.slow_reader_jobs):
            soak.submit(self, FLOOD, TRICKLE if trickle else FLOOD_MODE, False)
        soak.episodes.add(self)
        soak.stats["slow readers"] += 1
        self.loop.call_later(hold, self.wake)
        self.deadline = self.loop.call_later(hold + 30.0, self.give_up)

    def wake(self) -> None:
        if not self.closed:
            self.start_reading()

    def job_done(self, job: Job) -> None:
        if not self.waiting and not self.pending:
            self.deadline.cancel()
            self.soak.stats["slow readers served to the end"] += 1
            self.close()

    def give_up(self) -> None:
        if not self.closed:
            self.soak.stats["slow readers given up"] += 1
            self.close()

    def on_gone(self, by_server: bool, reason: str) -> None:
        soak = self.soak
        soak.episodes.discard(self)
        self.deadline.cancel()
        soak.stats["slow reader bytes read"] += self.received
        if by_server:
            soak.stats["slow readers disconnected by the server"] += 1


#: Bad inputs: (name, expects an ERROR/ERR reply, expects the server to close).
BAD_KINDS: tuple[tuple[str, bool, bool], ...] = (
    ("garbage", True, True),
    ("wrong magic", True, True),
    ("type 0 / over 42", True, True),
    ("response magic", True, False),
    ("response-only type", True, False),
    ("too few arguments", True, False),
    ("oversized length", True, True),
    ("text garbage", True, False),
    ("overlong text line", True, True),
    ("half header", False, False),
    ("half body", False, False),
)


class BadConn(Conn):
    """
    One short-lived connection that sends one kind of bad input and
    watches for the ERROR (or ERR line) and the close.
    """

    def __init__(self, soak: Soak, kind: str, wants_error: bool, wants_close: bool) -> None:
        super().__init__(soak)
        self.kind = kind
        self.wants_error = wants_error
        self.half = kind.startswith("half")
        # Half-sent packets: the server closes them only with a read timeout.
        self.wants_close = wants_close or (self.half and soak.read_timeout is not None)
        self.got_error = False
        soak.episodes.add(self)
        self.send(self.payload(soak.rng, kind))
        if self.half:
            wait = soak.read_timeout + 3.0 if soak.read_timeout is not None else 2.0
        else:
            wait = 5.0
        self.deadline = self.loop.call_later(wait, self.expire)

    def payload(self, rng: random.Random, kind: str) -> bytes:
        if kind == "garbage":
            magic = b"\0REQ"
            while magic in (wire.REQUEST_MAGIC, wire.RESPONSE_MAGIC):
                magic = b"\0" + rng.randbytes(3)
            return magic + rng.randbytes(rng.randint(8, 2000))
        if kind == "wrong magic":
            return b"\0REx" + struct.pack(">II", P.SUBMIT_JOB, 5) + b"a\0b\0c"
        if kind == "type 0 / over 42":
            ptype = rng.choice((0, 43, 1000, 0xFFFFFFFF))
            return wire.REQUEST_MAGIC + struct.pack(">II", ptype, 0)
        if kind == "response magic":
            return wire.RESPONSE_MAGIC + struct.pack(">II", P.ECHO_REQ, 2) + b"hi"
        if kind == "response-only type":
            return req(rng.choice((P.NOOP, P.JOB_CREATED, P.NO_JOB, P.ERROR, P.SUBMIT_JOB_SCHED)))
        if kind == "too few arguments":
            return req(rng.choice((P.SUBMIT_JOB, P.SUBMIT_JOB_BG, P.WORK_STATUS)), b"soak.nothing")
        if kind == "oversized length":
            size = rng.choice((0xFFFFFFFF, self.soak.max_packet_size + 1))
            return wire.REQUEST_MAGIC + struct.pack(">II", P.SUBMIT_JOB, size) + b"x" * 100
        if kind == "text garbage":
            return b"zz" + bytes(rng.choice(b"abcdefghij") for _ in range(20)) + b"\r\n"
        if kind == "overlong text line":
            return b"z" * (wire.DEFAULT_MAX_LINE_LENGTH + 1024)
        if kind == "half header":
            return req(P.SUBMIT_JOB, b"soak.nothing", b"", b"x")[: rng.randint(1, 11)]
        if kind == "half body":
            size = rng.choice((1000, 1 << 20))
            return wire.REQUEST_MAGIC + struct.pack(">II", P.SUBMIT_JOB, size) + b"soak.nothing\0"
        raise ValueError(kind)

    def on_packet(self, ptype: int, body: bytes) -> None:
        if ptype == P.ERROR or (ptype == wire.TEXT_LINE and body.startswith(b"ERR")):
            self.got_error = True
            if not self.wants_close:
                self.finish(closed_by_server=False)
                self.close()
        else:
            self.soak.anomaly(f"bad input {self.kind!r}: unexpected reply {ptype} {body[:60]!r}")

    def expire(self) -> None:
        if not self.closed:
            self.finish(closed_by_server=False)
            self.close()

    def on_closed(self, by_server: bool, reason: str) -> None:
        if by_server:
            self.finish(closed_by_server=True)

    def finish(self, closed_by_server: bool) -> None:
        soak = self.soak
        if self not in soak.episodes:
            return
        soak.episodes.discard(self)
        self.deadline.cancel()
        soak.stats["bad connections"] += 1
        bad = soak.bad
        bad[(self.kind, "sent")] += 1
        if self.got_error:
            bad[(self.kind, "ERROR")] += 1
        if closed_by_server:
            bad[(self.kind, "closed by server")] += 1
            soak.stats["bad connections closed by the server"] += 1
        if self.wants_error and not self.got_error:
            bad[(self.kind, "no ERROR")] += 1
        if self.wants_close and not closed_by_server:
            bad[(self.kind, "not closed")] += 1
        if self.half and not closed_by_server:
            bad[(self.kind, "hung until we closed")] += 1


class Admin(Conn):
    """
    The admin text protocol on one connection: commands answered in order,
    each reply up to its C{.} line; latencies kept.
    """

    def __init__(self, soak: Soak) -> None:
        super().__init__(soak)
        self.queue: deque[tuple[float, Callable[[list[bytes]], None]]] = deque()
        self.lines: list[bytes] = []
        self.latencies: list[float] = []

    def command(self, line: bytes, callback: Callable[[list[bytes]], None]) -> None:
        self.queue.append((time.monotonic(), callback))
        self.send(line + b"\r\n")

    @property
    def oldest(self) -> float:
        return time.monotonic() - self.queue[0][0] if self.queue else 0.0

    def on_packet(self, ptype: int, body: bytes) -> None:
        if ptype != wire.TEXT_LINE:
            self.soak.anomaly(f"admin: packet {ptype} {body[:60]!r}")
            return
        if body != b".":
            self.lines.append(body)
            return
        lines, self.lines = self.lines, []
        if not self.queue:
            self.soak.anomaly("admin: a reply nobody asked for")
            return
        sent, callback = self.queue.popleft()
        self.latencies.append(time.monotonic() - sent)
        callback(lines)

    def on_closed(self, by_server: bool, reason: str) -> None:
        if by_server:
            self.soak.anomaly(f"admin connection lost: {reason}")


class ServerDied(Exception):
    pass


class Soak:
    """
    The harness: the loop, the ledger of jobs, the participants, the
    phases and the figures.
    """

    def __init__(self, args: argparse.Namespace, server: _process.Server, options: set[str]):
        self.args = args
        self.server = server
        assert server.process is not None
        self.pid = server.process.pid
        self.port = server.port
        self.rng = random.Random(args.seed)
        self.loop = Loop()
        self.jobs: dict[int, Job] = {}
        self.by_handle: dict[bytes, Job] = {}
        self.uids = itertools.count(1)
        self.stats: Counter[str] = Counter()
        self.bad: Counter[tuple[str, str]] = Counter()
        self.anomalies: Counter[str] = Counter()
        self.workers: set[Worker] = set()
        self.clients: set[Client] = set()
        self.steady: list[Client] = []
        self.episodes: set[Conn] = set()
        self.loading = False
        self.calm = False
        self.workers_stopping = False
        self.aborted = False
        self.status: dict[bytes, tuple[int, int, int]] = {}
        self.status_asked = 0.0
        self._quiet_since: float | None = None
        self.rss: list[tuple[float, int]] = []
        self.read_timeout: float | None = args.read_timeout if "read-timeout" in options else None
        self.max_packet_size = 64 * 1024 * 1024
        self.flood_chunk = b"F" * 65536
        self.flood_chunks = max(1, int(args.slow_reader_mib * 16))
        self._periodic: list[Timer] = []
        self._budget = 0.0
        self._slow_budget = 0.0
        self._last_tick = time.monotonic()
        self.t0 = time.monotonic()
        self.phase = "start"
        self.rss_log = open(args.rss_log, "w") if args.rss_log else None
        self.admin = Admin(self)
        self._admin_pending = False
        self.loop.every(0.5, self.sample)
        self.loop.every(0.5, self.poll_status)

    # -- bookkeeping ------------------------------------------------------

    def anomaly(self, text: str) -> None:
        # Numbers (uids, handles) vary: count by the text without them.
        self.anomalies[re.sub(r"\d+", "N", text)] += 1
        if sum(self.anomalies.values()) <= 20:
            print(f"  ! {text}", file=sys.stderr, flush=True)

    def check(self) -> None:
        if self.server.process is not None and self.server.process.poll() is not None:
            self.aborted = True
            raise ServerDied(f"the server exited with {self.server.process.returncode}")

    def sample(self) -> None:
        try:
            self.rss.append((time.monotonic(), rss_kib(self.pid)))
        except OSError:
            return
        if self.rss_log is not None:
            t, kib = self.rss[-1]
            self.rss_log.write(f"{t - self.t0:.1f}\t{self.phase}\t{kib}\t{len(self.jobs)}\n")

    def poll_status(self) -> None:
        if self._admin_pending or self.admin.closed:
            if self.admin.oldest > 10:
                self.anomaly("admin status unanswered for 10 s")
            return
        self._admin_pending = True
        asked = time.monotonic()
        self.admin.command(b"status", lambda lines: self._got_status(lines, asked))

    def _got_status(self, lines: list[bytes], asked: float) -> None:
        self._admin_pending = False
        self.status_asked = asked
        status = {}
        for line in lines:
            fields = line.split(b"\t")
            if len(fields) == 4 and fields[0] in FUNCTIONS:
                status[fields[0]] = (int(fields[1]), int(fields[2]), int(fields[3]))
        self.status = status

    def server_cpu(self) -> float:
        with open(f"/proc/{self.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    # -- participants -------------------------------------------------------

    def submit(self, client: Client, function: bytes, mode: bytes, background: bool) -> Job:
        uid = next(self.uids)
        job = Job(uid, function, mode, background, self.rng.randrange(3))
        self.jobs[uid] = job
        size = self.rng.choice((0, 16, 100, 1000, 4000))
        if self.rng.random() < 0.005:
            size = 65536
        client.submit(job, b"%d|%s|" % (uid, mode) + b"p" * size)
        return job

    def start_workers(self) -> None:
        a = self.args
        for i in range(a.workers):
            self.workers.add(Worker(self, "steady", MAIN, uniq=i % 2 == 0))
        for _ in range(a.vanishers):
            self.workers.add(Worker(self, "vanisher", MAIN, vanish=0.3))
        for _ in range(a.timeout_workers):
            self.workers.add(Worker(self, "timeout", SLOW, timeout_ms=SLOW_TIMEOUT_MS))
        for _ in range(a.flood_workers):
            self.workers.add(Worker(self, "flood", FLOOD))
        for i in range(a.clients):
            client = Client(self, "steady", exceptions=i % 2 == 1)
            self.clients.add(client)
            self.steady.append(client)

    def replace_worker(self, old: Worker) -> None:
        if self.workers_stopping or self.aborted:
            return
        self.workers.add(
            Worker(
                self,
                old.kind,
                old.function,
                timeout_ms=old.timeout_ms,
                uniq=old.uniq,
                vanish=old.vanish_p,
            )
        )

    def retire_one(self) -> None:
        steady = [w for w in self.workers if w.kind == "steady" and not w.retiring]
        if steady:
            self.stats["workers retired cleanly"] += 1
            self.rng.choice(steady).retire()

    # -- load ---------------------------------------------------------------

    def tick(self) -> None:
        """
        Submit at the set rates, keeping each steady client's foreground
        jobs under its window.
        """
        now = time.monotonic()
        dt = min(now - self._last_tick, 0.2)
        self._last_tick = now
        a = self.args
        rng = self.rng
        self._budget += a.rate * dt
        self._slow_budget += a.slow_rate * dt
        ready = [c for c in self.steady if c.ready and not c.closed]
        if not ready:
            return
        modes = [m for m, _ in MAIN_MODES]
        weights = [w for _, w in MAIN_MODES]
        while self._budget >= 1:
            self._budget -= 1
            client = rng.choice(ready)
            background = rng.random() < 0.5
            if not background and client.open_foreground >= a.window:
                background = True
            self.submit(client, MAIN, rng.choices(modes, weights)[0], background)
        while self._slow_budget >= 1:
            self._slow_budget -= 1
            client = rng.choice(ready)
            mode = OVERRUN if rng.random() < a.overrun_share else QUICK
            self.submit(client, SLOW, mode, rng.random() < 0.5)

    def spawn_vanishing_client(self) -> None:
        VanishingClient(self)

    def spawn_slow_reader(self, hold: float) -> None:
        SlowReader(self, hold, trickle=self.stats["slow readers"] % 2 == 1)

    def spawn_bad(self) -> None:
        name, wants_error, wants_close = self.rng.choice(BAD_KINDS)
        BadConn(self, name, wants_error, wants_close)

    def start_load(self, slow_hold: float) -> None:
        self.loading = True
        self.calm = False
        self._last_tick = time.monotonic()
        a = self.args
        every = self.loop.every
        self._periodic = [every(0.01, self.tick), every(1.0, self.retire_one)]
        if a.vanishing_clients > 0:
            self._periodic.append(every(1.0 / a.vanishing_clients, self.spawn_vanishing_client))
        if a.bad_rate > 0:
            self._periodic.append(every(1.0 / a.bad_rate, self.spawn_bad))
        if a.slow_reader_every > 0:
            self._periodic.append(
                every(a.slow_reader_every, lambda: self.spawn_slow_reader(slow_hold))
            )
            self.spawn_slow_reader(slow_hold)

    def stop_load(self) -> None:
        self.loading = False
        self.calm = True
        for timer in self._periodic:
            timer.cancel()
        self._periodic = []

    def drained(self) -> bool:
        """
        No episode running, no foreground job unanswered, and an admin
        status asked for since then with no job of ours.
        """
        if self.episodes or any(c.pending or c.waiting for c in self.clients):
            self._quiet_since = None
            return False
        if self._quiet_since is None:
            self._quiet_since = time.monotonic()
        return (
            self.status_asked > self._quiet_since and sum(s[0] for s in self.status.values()) == 0
        )

    # -- the run --------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        a = self.args
        loop = self.loop
        check = self.check
        started = time.monotonic()
        self.start_workers()
        want = a.workers + a.vanishers
        if not loop.run_until(
            lambda: (
                self.status.get(MAIN, (0, 0, 0))[2] >= want and all(c.ready for c in self.steady)
            ),
            20,
            check,
        ):
            raise RuntimeError("the workers did not register within 20 s")
        # Warm-up: the whole mix once, drained; its idle RSS is the start.
        print(f"warm-up: {a.warmup:.0f} s", file=sys.stderr, flush=True)
        self.phase = "warm-up"
        self.start_load(slow_hold=min(4.0, a.slow_reader_hold))
        loop.run_for(a.warmup, check)
        self.stop_load()
        self.phase = "warm-up drain"
        if not loop.run_until(self.drained, 40, check):
            self.anomaly("the warm-up did not drain within 40 s")
        loop.run_for(2.0, check)
        rss_start = rss_kib(self.pid)
        cpu0 = self.server_cpu()
        jobs0 = len(self.jobs)
        print(
            f"load: {a.duration:.0f} s (start RSS {rss_start / 1024:.1f} MiB)",
            file=sys.stderr,
            flush=True,
        )
        load_started = time.monotonic()
        self.phase = "load"
        self.start_load(slow_hold=a.slow_reader_hold)
        last_print = load_started
        while time.monotonic() - load_started < a.duration:
            loop.run_once(0.05)
            check()
            if time.monotonic() - last_print >= 30:
                last_print = time.monotonic()
                print(
                    f"  {last_print - load_started:4.0f} s: {len(self.jobs)} jobs, "
                    f"RSS {self.rss[-1][1] / 1024:.1f} MiB, queued "
                    f"{sum(s[0] for s in self.status.values())}",
                    file=sys.stderr,
                    flush=True,
                )
        load_seconds = time.monotonic() - load_started
        cpu_load = self.server_cpu() - cpu0
        self.stop_load()
        jobs_in_load = len(self.jobs) - jobs0
        self.phase = "drain"
        drain_started = time.monotonic()
        drained = loop.run_until(self.drained, a.drain_seconds, check)
        drain_seconds = time.monotonic() - drain_started
        if not drained:
            self.anomaly(f"the load did not drain within {a.drain_seconds:.0f} s")
        # Workers finish what they hold and stop grabbing; the snapshot is
        # taken while they are still connected (what one holds is listed).
        self.workers_stopping = True
        loop.run_until(lambda: all(w.idle for w in self.workers), 10, check)
        loop.run_until(
            lambda: not any(j.results for c in self.clients for j in c.waiting.values()), 3, check
        )
        listed = self.show_jobs()
        for w in list(self.workers):
            w.close()
        for c in list(self.clients):
            c.close()
        for conn in list(self.episodes):
            conn.close()
        # Idle: only the admin connection (status twice a second).
        self.phase = "idle"
        loop.run_for(a.idle_seconds, check)
        rss_end = rss_kib(self.pid)
        end_workers = sum(st[2] for st in self.status.values())
        if end_workers:
            self.anomaly(f"the server still lists {end_workers} workers after all left")
        alive = _process.admin(self.port, b"version", timeout=10).startswith(b"OK")
        limits = _process.admin(self.port, b"limits", timeout=10)
        if self.rss_log is not None:
            self.rss_log.close()
        return {
            "elapsed": time.monotonic() - started,
            "load_seconds": load_seconds,
            "jobs_in_load": jobs_in_load,
            "server_cpu_load": cpu_load,
            "drain_seconds": drain_seconds,
            "drained": drained,
            "listed": listed,
            "rss_start": rss_start,
            "rss_end": rss_end,
            "alive": alive,
            "end_workers": end_workers,
            "limits": {
                fields[0].decode(): int(fields[1])
                for fields in (line.split(b"\t") for line in limits.splitlines())
                if len(fields) == 2 and fields[1].lstrip(b"-").isdigit()
            },
        }

    def show_jobs(self) -> set[bytes]:
        reply = _process.admin(self.port, b"show jobs", timeout=30)
        if not reply.endswith(b".\n"):
            self.anomaly("admin show jobs: incomplete reply")
        handles = set()
        for line in reply.splitlines():
            fields = line.split(b"\t")
            if len(fields) == 4:
                handles.add(fields[0])
        return handles


def account(soak: Soak, listed: set[bytes], retries: int) -> dict[str, Counter[str]]:
    """
    Put every job in exactly one class.
    """
    out: dict[str, Counter[str]] = {
        "refused": Counter(),
        "unacknowledged": Counter(),
        "completed": Counter(),
        "failed": Counter(),
        "queued": Counter(),
        "lost": Counter(),
        "doubled": Counter(),
        "submitted": Counter(),
    }
    known = set()
    for job in soak.jobs.values():
        kind = "bg" if job.background else "fg"
        out["submitted"][kind] += 1
        if len(job.results) > 1:
            cause = "after a worker vanished" if job.vanished else "without a cause"
            out["doubled"][cause] += 1
        if job.refused is not None:
            out["refused"][job.refused.decode("ascii", "replace")] += 1
            continue
        if not job.acked:
            out["unacknowledged"]["ran" if job.results else "never seen by a worker"] += 1
            continue
        assert job.handle is not None
        known.add(job.handle)
        stayed = not job.background and not job.client_gone
        if job.handle in listed:
            out["queued"]["running" if job.assigned > job.failed_attempts else "queued"] += 1
            if job.results:
                soak.anomaly("a job a worker finished is still listed")
            continue
        if job.results:
            first = job.results[0]
            want = {
                "C": P.WORK_COMPLETE,
                "F": P.WORK_FAIL,
                "X": P.WORK_EXCEPTION
                if job.client is not None and job.client.exceptions
                else P.WORK_FAIL,
            }[first]
            if stayed and job.got != [want]:
                out["lost"][f"result {first} not delivered (client got {job.got})"] += 1
                continue
            if job.vanished:
                soak.stats["requeued after a worker vanished, then finished"] += 1
            if stayed:
                # STREAM sends 7 progress packets; a worker that vanished
                # mid-job sent 2 before it went.
                want_progress = 7 if job.mode == STREAM else 0
                progress = job.streamed - want_progress
                if progress < 0 or progress > 2 * job.vanished or progress % 2:
                    soak.anomaly(f"{job.streamed} progress packets for a {job.mode!r} job")
            if first == "C":
                if job.background:
                    out["completed"]["background"] += 1
                elif stayed:
                    out["completed"]["foreground, delivered"] += 1
                else:
                    out["completed"]["foreground, client gone"] += 1
            elif first == "F":
                out["failed"]["WORK_FAIL from the worker"] += 1
            else:
                out["failed"]["WORK_EXCEPTION from the worker"] += 1
            continue
        if retries and job.failed_attempts >= retries:
            if stayed and job.got != [P.WORK_FAIL]:
                out["lost"][f"retries exhausted, client got {job.got} not [WORK_FAIL]"] += 1
            else:
                cause = "timed out" if job.timed_out else "workers vanished"
                out["failed"][f"{cause} {retries} times (--job-retries)"] += 1
            continue
        if not job.background and job.client_gone:
            out["failed"]["dropped: its client left before a worker finished it"] += 1
            continue
        detail = "background" if job.background else "foreground, client stayed"
        if job.timed_out:
            detail += f", {job.timed_out} timeouts (a late result taken?)"
        if job.got:
            detail += f", client got {job.got}"
        out["lost"][detail] += 1
    unknown = len(listed - known)
    if unknown:
        soak.anomaly(f"{unknown} listed jobs were not acknowledged to us")
    return out


def server_options(python: str) -> set[str]:
    """
    The long options C{twistd gearmand} takes, from its --help.
    """
    code = _process._TWISTD
    out = subprocess.run(
        [python, "-c", code, "gearmand", "--help"],
        capture_output=True,
        env=_process.environment(),
        timeout=60,
        check=False,
        cwd=tempfile.gettempdir(),
    ).stdout.decode("utf-8", "replace")
    return set(re.findall(r"--([a-z][a-z-]+)=?", out))


def retries_of(extra: list[str], default: int) -> int:
    retries = default
    for i, word in enumerate(extra):
        if word.startswith("--job-retries="):
            retries = int(word.split("=", 1)[1])
        elif word in ("--job-retries", "-j") and i + 1 < len(extra):
            retries = int(extra[i + 1])
    return retries


def log_problems(log: str) -> list[str]:
    """
    Lines of the server's log that say something went wrong.
    """
    pattern = re.compile(r"#(error|critical|failure)\]|Traceback|Unhandled", re.IGNORECASE)
    return [line for line in log.splitlines() if pattern.search(line)]


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.soak",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add = parser.add_argument
    add("--duration", type=float, default=300.0, help="seconds of load (default 300)")
    add("--short", action="store_true", help="20 s of load, a CI smoke run")
    add("--sqlite", action="store_true", help="--queue sqlite:<tmpfile> (default memory)")
    add(
        "--server-python",
        default=sys.executable,
        help="the Python that runs twistd ('pypy': the benchmarks' PyPy venv)",
    )
    add("--server-args", default="", help="more twistd gearmand options (shell words)")
    add("--rss-bound-mib", type=float, default=32.0, help="end RSS over start allowed (32)")
    add("--job-retries", type=int, default=3, help="--job-retries for the server (3)")
    add("--rate", type=float, default=500.0, help="soak.main jobs/s (500)")
    add("--slow-rate", type=float, default=1.5, help="soak.slow (timeout) jobs/s (1.5)")
    add("--overrun-share", type=float, default=0.2, help="soak.slow jobs that overrun (0.2)")
    add("--window", type=int, default=32, help="foreground jobs in flight per client (32)")
    add("--clients", type=int, default=4, help="steady client connections (4)")
    add("--workers", type=int, default=8, help="steady soak.main workers (8)")
    add("--vanishers", type=int, default=2, help="soak.main workers that vanish mid-job (2)")
    add("--timeout-workers", type=int, default=4, help="soak.slow CAN_DO_TIMEOUT workers (4)")
    add("--flood-workers", type=int, default=2, help="soak.flood streaming workers (2)")
    add("--vanishing-clients", type=float, default=4.0, help="vanishing clients per s (4)")
    add("--bad-rate", type=float, default=10.0, help="bad-input connections per s (10)")
    add(
        "--slow-reader-every",
        type=float,
        default=10.0,
        help="a slow reader every S s, 0 for none (10)",
    )
    add("--slow-reader-hold", type=float, default=10.0, help="seconds it does not read (10)")
    add("--slow-reader-jobs", type=int, default=2, help="fast flood jobs per slow reader (2)")
    add("--slow-reader-mib", type=float, default=8.0, help="MiB of WORK_DATA per job (8)")
    add("--max-packet-size", default="1M", help="the server's --max-packet-size (1M)")
    add("--output-hard-limit", default="4M", help="passed if the server has it (4M)")
    add("--output-soft-limit", default="1M", help="passed if the server has it (1M)")
    add("--output-soft-seconds", default="2", help="passed if the server has it (2)")
    add("--max-memory", default="512M", help="passed if the server has it (512M)")
    add("--read-timeout", type=float, default=5.0, help="passed if the server has it (5)")
    add("--warmup", type=float, default=6.0, help="warm-up seconds before the start RSS (6)")
    add("--drain-seconds", type=float, default=60.0, help="bound on the final drain (60)")
    add("--idle-seconds", type=float, default=5.0, help="idle before the end RSS (5)")
    add("--seed", type=int, default=None, help="random seed (default: from the clock)")
    add("--keep", action="store_true", help="keep the server's directory and log")
    add("--rss-log", default=None, help="write RSS samples (s, phase, KiB, jobs) to this file")
    args = parser.parse_args(argv)
    if args.server_python == "pypy":
        venv = os.environ.get(
            "TXGEARMAND_PYPY_VENV", str(Path.home() / ".cache/txgearmand/pypy-venv")
        )
        args.server_python = str(Path(venv) / "bin" / "python")
        if not Path(args.server_python).exists():
            print(f"no PyPy venv at {venv} (python -m benchmarks makes it)", file=sys.stderr)
            return 2
    if args.short:
        args.duration = 20.0
    if args.seed is None:
        args.seed = int(time.time())
    started = time.monotonic()
    options = server_options(args.server_python)
    if "queue" not in options:
        print(f"cannot read the options of {args.server_python} twistd gearmand", file=sys.stderr)
        return 2
    extra = shlex.split(args.server_args)
    retries = retries_of(extra, args.job_retries)
    workdir = Path(tempfile.mkdtemp(prefix="txgearmand-soak-"))
    queue = f"sqlite:{workdir / 'soak.sqlite'}" if args.sqlite else "memory"
    server_argv = [
        f"--queue={queue}",
        f"--job-retries={args.job_retries}",
        f"--max-packet-size={args.max_packet_size}",
    ]
    passed = []
    for name in NEW_OPTIONS:
        if name in options:
            value = getattr(args, name.replace("-", "_"))
            server_argv.append(f"--{name}={value}")
            passed.append(name)
    missing = [n for n in NEW_OPTIONS if n not in options]
    server_argv += extra
    server = _process.twistd_gearmand(workdir, *server_argv, python=args.server_python)
    print(
        f"server: {args.server_python} twistd gearmand {' '.join(server_argv)}\n"
        f"  (not in this server: {', '.join('--' + m for m in missing) or 'none'}; "
        f"seed {args.seed})",
        file=sys.stderr,
        flush=True,
    )
    soak: Soak | None = None
    result: dict[str, Any] = {}
    died: str | None = None
    exit_code: int | None = None
    try:
        server.start()
        soak = Soak(args, server, options)
        soak.max_packet_size = parse_size(args.max_packet_size)
        if any(w.startswith("--max-packet-size") for w in extra):
            soak.max_packet_size = 0xFFFFFFFE  # unknown: only the 4 GiB case is sure
        try:
            result = soak.run()
        except ServerDied as e:
            died = str(e)
        except OSError as e:
            # A connection refused or reset: fine to report if the server died.
            if server.process is None or server.process.poll() is None:
                raise
            died = f"the server exited with {server.process.returncode} ({e})"
    finally:
        if soak is not None:
            soak.aborted = True
            for conn in [*soak.workers, *soak.clients, *soak.episodes, soak.admin]:
                conn.close()
        exit_code = server.stop()
        log = server.log()
    if soak is None:
        return 2
    failed = report(soak, args, result, retries, died, exit_code, log, passed)
    print(f"\n(took {time.monotonic() - started:.0f} s end to end; server log {server.log_path})")
    if not args.keep and not failed:
        for path in sorted(workdir.rglob("*"), reverse=True):
            path.unlink() if path.is_file() else path.rmdir()
        workdir.rmdir()
    return 1 if failed else 0


def report(
    soak: Soak,
    args: argparse.Namespace,
    result: dict[str, Any],
    retries: int,
    died: str | None,
    exit_code: int | None,
    log: str,
    passed: list[str],
) -> bool:
    """
    Print the table; whether the run failed.
    """
    problems = log_problems(log)
    listed: set[bytes] = result.get("listed", set())
    acc = account(soak, listed, retries)
    stats = soak.stats

    def total(name: str) -> int:
        return sum(acc[name].values())

    def parts(name: str) -> str:
        items = [(k, v) for k, v in acc[name].most_common() if v]
        return "(" + "; ".join(f"{k}: {v}" for k, v in items) + ")" if items else ""

    rows: list[tuple[str, str]] = []
    add = rows.append
    load = result.get("load_seconds", 0.0)
    add(("duration (load)", f"{load:.0f} s after a {args.warmup:.0f} s warm-up"))
    if result:
        add(
            (
                "load",
                f"{result['jobs_in_load']} jobs, {result['jobs_in_load'] / max(load, 1):.0f}/s; "
                f"server CPU {100 * result['server_cpu_load'] / max(load, 1):.0f}%",
            )
        )
    submitted = total("submitted")
    acked = submitted - total("refused") - total("unacknowledged")
    add(("jobs submitted", f"{submitted} {parts('submitted')}"))
    add(("  acknowledged", str(acked)))
    add(("  refused (ERROR)", f"{total('refused')} {parts('refused')}".strip()))
    add(("  unacknowledged", f"{total('unacknowledged')} {parts('unacknowledged')}".strip()))
    add(("completed", f"{total('completed')} {parts('completed')}"))
    add(("failed", str(total("failed"))))
    for cause, n in acc["failed"].most_common():
        add((f"  {cause}", str(n)))
    add(("still queued", f"{total('queued')} {parts('queued')}".strip()))
    add(("LOST", f"{total('lost')} {parts('lost')}".strip()))
    add(("doubled", f"{total('doubled')} {parts('doubled')}".strip()))
    add(
        (
            "workers vanished mid-job",
            f"{stats['workers vanished mid-job']} (jobs requeued and then finished: "
            f"{stats['requeued after a worker vanished, then finished']})",
        )
    )
    add(("workers retired cleanly", str(stats["workers retired cleanly"])))
    add(("timed-out attempts (late results)", str(stats["late results sent"])))
    add(("clients vanished", str(stats["clients vanished"])))
    add(
        (
            "slow readers disconnected",
            f"{stats['slow readers disconnected by the server']} of {stats['slow readers']} "
            f"(served to the end {stats['slow readers served to the end']}, "
            f"read {stats['slow reader bytes read'] / 1048576:.1f} MiB)",
        )
    )
    kinds = [k for k, _, _ in BAD_KINDS]
    add(
        (
            "bad connections closed",
            f"{stats['bad connections closed by the server']} by the server of "
            f"{stats['bad connections']}",
        )
    )
    for kind in kinds:
        b = soak.bad
        if not b[(kind, "sent")]:
            continue
        text = f"{b[(kind, 'sent')]} sent, {b[(kind, 'ERROR')]} ERROR, "
        text += f"{b[(kind, 'closed by server')]} closed by server"
        for what in ("no ERROR", "not closed", "hung until we closed"):
            if b[(kind, what)]:
                text += f", {b[(kind, what)]} {what}"
        add((f"  {kind}", text))
    lat = sorted(soak.admin.latencies)
    if lat:
        add(
            (
                "admin status latency",
                f"median {1000 * lat[len(lat) // 2]:.1f} ms, max {1000 * lat[-1]:.0f} ms",
            )
        )
    peak = max((v for _, v in soak.rss), default=0)
    start = result.get("rss_start", 0)
    end = result.get("rss_end", 0)
    add(
        (
            "RSS start / peak / end",
            f"{start / 1024:.1f} / {peak / 1024:.1f} / {end / 1024:.1f} MiB "
            f"(end - start {(end - start) / 1024:+.1f} MiB, bound {args.rss_bound_mib:.0f})",
        )
    )
    if result:
        add(("drain", f"{result['drain_seconds']:.1f} s, drained: {result['drained']}"))
    limits: dict[str, int] = result.get("limits", {})
    if limits:
        names = (
            "closed_output_hard",
            "closed_output_soft",
            "closed_stalled",
            "refused_submissions",
            "refused_packets",
            "refused_connections",
            "memory_released",
        )
        add(("server's own counts", ", ".join(f"{n} {limits.get(n, '?')}" for n in names)))
        # Ours at the end: the admin connection and the one asking.
        open_at_end = limits.get("connections", 2)
        add(("connections at the end", f"{open_at_end} (2 expected: admin ones)"))
        if open_at_end != 2:
            soak.anomaly(f"the server counts {open_at_end} connections at the end, not 2")
    add(("limits passed", ", ".join("--" + p for p in passed) or "none (not in this server)"))
    clean = "Server Shut Down." in log
    add(
        (
            "server",
            died
            or f"alive to the end: {result.get('alive')}; after SIGTERM exit code {exit_code}"
            + (" (clean shutdown, logged)" if clean else " (no clean shutdown logged)"),
        )
    )
    add(("server log errors", str(len(problems))))
    add(("harness anomalies", str(sum(soak.anomalies.values()))))
    width = max(len(k) for k, _ in rows) + 2
    print()
    for key, value in rows:
        print(f"{key:{width}s}{value}")
    for text, n in soak.anomalies.most_common(15):
        print(f"  anomaly x{n}: {text}")
    for line in problems[:10]:
        print(f"  log: {line[:200]}")
    reasons = []
    if total("lost"):
        reasons.append(f"{total('lost')} jobs lost")
    if acc["doubled"]["without a cause"]:
        reasons.append("jobs done twice without a cause")
    if died or not result or not result.get("alive"):
        reasons.append(f"the server died or stopped answering ({died})")
    if result and (end - start) / 1024 > args.rss_bound_mib:
        reasons.append(f"RSS grew by {(end - start) / 1024:.1f} MiB")
    print("\nFAILED: " + "; ".join(reasons) if reasons else "\nOK")
    return bool(reasons)


if __name__ == "__main__":
    sys.exit(main())
