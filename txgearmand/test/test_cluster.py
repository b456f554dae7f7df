"""
Three real C{twistd gearmand} on one PostgreSQL database, with workers on
all three, 10,000 acknowledged background jobs, and one server killed
(SIGKILL) while its jobs are queued and running: every acknowledged job
completes, the only jobs run twice are those the killed server had handed
out, and the killed server, restarted under its name, runs none of them.

Skipped, saying why, when no PostgreSQL server can be had (see
L{txgearmand.test._postgres}).
"""

from __future__ import annotations

import re
import socket
import struct
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThread
from twisted.logger import Logger
from twisted.trial.unittest import SkipTest, TestCase

from txgearmand.test import _postgres, _process
from txgearmand.wire import PacketType as P
from txgearmand.wire import encode_request

log = Logger()

FUNCTION = b"cluster"
JOBS = 10_000
SERVERS = 3
#: Worker connections per server: as many jobs can be running on each.
WORKERS = 3
#: What a worker does per job: enough that jobs are still queued, and
#: some running, when the kill comes.
WORK_SECONDS = 0.002
#: Background submissions in flight on each submitting connection.
WINDOW = 200
TAKEOVER_AFTER = 3
#: The victim's jobs the workers must have grabbed before the kill.
GRABBED_BEFORE_KILL = 300
#: How long nothing must run after the restart (three heartbeats and
#: looks for dead servers of the restarted one).
QUIET_SECONDS = 3.0
TABLE = "txgearmand_jobs"


def wait_until(what: str, condition: Callable[[], bool], timeout: float) -> None:
    """
    Poll C{condition} until it holds.

    @raise AssertionError: naming C{what}, if it does not within C{timeout}.
    """
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


class Link:
    """
    A blocking Gearman connection that keeps partial packets across read
    time-outs.
    """

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""

    def send(self, *packets: bytes) -> None:
        """
        Send encoded packets at once.
        """
        self.sock.sendall(b"".join(packets))

    def read(self, timeout: float) -> tuple[int, bytes] | None:
        """
        The next packet, or L{None} if none arrives within C{timeout}.

        @raise ConnectionError: if the server closed the connection.
        """
        deadline = time.monotonic() + timeout
        while True:
            if len(self.buf) >= 12:
                ptype, size = struct.unpack_from(">II", self.buf, 4)
                if len(self.buf) >= 12 + size:
                    body = self.buf[12 : 12 + size]
                    self.buf = self.buf[12 + size :]
                    return ptype, body
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            self.sock.settimeout(left)
            try:
                chunk = self.sock.recv(1 << 16)
            except socket.timeout:
                return None
            if not chunk:
                raise ConnectionError("closed by the server")
            self.buf += chunk

    def close(self) -> None:
        """
        Close the socket.
        """
        self.sock.close()


class Ledger:
    """
    What the workers did: every job they grabbed (unique id, server) and
    completed, and which jobs each server's workers hold right now (grabbed,
    WORK_COMPLETE not yet sent). Sends of WORK_COMPLETE happen under the
    lock, so that a snapshot taken under it, with the kill, is exact.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.grabs: list[tuple[bytes, int]] = []
        self.completes: list[tuple[bytes, int]] = []
        self.holding: dict[int, set[bytes]] = {}
        self.errors: list[str] = []

    def grabbed(self, unique: bytes, server: int) -> None:
        """
        A worker of C{server} was handed a job.
        """
        with self.lock:
            self.grabs.append((unique, server))
            self.holding.setdefault(server, set()).add(unique)

    def complete(self, link: Link, handle: bytes, unique: bytes, server: int) -> None:
        """
        Send a job's WORK_COMPLETE and note it (if the send fails, the job
        stays held: it was running when its server died).
        """
        with self.lock:
            link.send(encode_request(P.WORK_COMPLETE, handle, b""))
            self.completes.append((unique, server))
            self.holding[server].discard(unique)

    def grabbed_count(self, server: int) -> int:
        """
        How many jobs the workers of C{server} were handed.
        """
        with self.lock:
            return sum(1 for _, s in self.grabs if s == server)


def work(port: int, server: int, ledger: Ledger, stop: threading.Event) -> None:
    """
    A worker on one server until C{stop} is set or its connection dies:
    grab (GRAB_JOB_UNIQ), work C{WORK_SECONDS}, complete; sleep (PRE_SLEEP)
    when there is nothing to do.
    """
    link = None
    try:
        link = Link(port)
        link.send(encode_request(P.CAN_DO, FUNCTION))
        while not stop.is_set():
            link.send(encode_request(P.GRAB_JOB_UNIQ))
            while True:
                packet = link.read(0.2)
                if packet is None:
                    if stop.is_set():
                        return
                    continue
                if packet[0] in (P.NO_JOB, P.JOB_ASSIGN_UNIQ):
                    break
            ptype, body = packet
            if ptype == P.NO_JOB:
                link.send(encode_request(P.PRE_SLEEP))
                link.read(0.2)  # a NOOP, or grab again anyway
                continue
            handle, _, unique, payload = body.split(b"\0", 3)
            if payload != unique:
                ledger.errors.append(f"job {unique!r} came with payload {payload!r}")
            ledger.grabbed(unique, server)
            time.sleep(WORK_SECONDS)
            ledger.complete(link, handle, unique, server)
    except OSError:
        return  # ConnectionError included: its server died
    finally:
        if link is not None:
            link.close()


def submit(port: int, uniques: list[bytes], acked: list[bytes]) -> None:
    """
    Submit background jobs (the unique id as the payload too) on one
    connection, C{WINDOW} in flight; append to C{acked} those answered
    JOB_CREATED, in order, until done or the connection dies.
    """
    link = Link(port)
    sent = answered = 0
    try:
        while answered < len(uniques):
            if sent < len(uniques) and sent - answered < WINDOW:
                batch = uniques[sent : min(len(uniques), answered + WINDOW)]
                link.send(*(encode_request(P.SUBMIT_JOB_BG, FUNCTION, u, u) for u in batch))
                sent += len(batch)
            packet = link.read(30)
            if packet is None:
                raise AssertionError(f"no answer to submission {answered} in 30 s")
            if packet[0] == P.JOB_CREATED:
                acked.append(uniques[answered])
            answered += 1
    except OSError:
        return
    finally:
        link.close()


def status_counts(port: int) -> tuple[int, int]:
    """
    The test function's (total, running) jobs by the admin C{status}.
    """
    for line in _process.admin(port, b"status").splitlines():
        fields = line.split(b"\t")
        if fields[0] == FUNCTION and len(fields) >= 3:
            return int(fields[1]), int(fields[2])
    return 0, 0


def sql(url: str, query: str, *args: Any) -> list[tuple[Any, ...]]:
    """
    Run one statement on the test database; its rows.
    """
    return _postgres.query(url, query, *args)


class Cluster:
    """
    The processes and threads of one test, all stopped by L{close}.
    """

    def __init__(self) -> None:
        self.servers: list[_process.Server] = []
        self.threads: list[threading.Thread] = []
        self.stop = threading.Event()
        self.closed = False

    def start(self, server: _process.Server) -> _process.Server:
        """
        Start a server, to be killed at L{close}.
        """
        if self.closed:
            raise RuntimeError("the test is over")
        self.servers.append(server)
        return server.start()

    def thread(self, target: Callable[..., None], *args: Any) -> threading.Thread:
        """
        Start a daemon thread, to be joined at L{close}.
        """
        t = threading.Thread(target=target, args=args, daemon=True)
        self.threads.append(t)
        t.start()
        return t

    def close(self) -> None:
        """
        Kill every server, stop and join every thread.
        """
        self.closed = True
        self.stop.set()
        for server in self.servers:
            server.kill()
        for t in self.threads:
            t.join(10)


class ThreeServersTests(TestCase):
    """
    Three servers on one PostgreSQL database, one killed and restarted.
    """

    def test_kill_one_of_three(self) -> Deferred[None]:
        """
        10,000 background jobs acknowledged by three servers, workers on
        all three; one server is killed (SIGKILL) while it has jobs queued
        and running. Every acknowledged job completes; a job runs twice
        only if the killed server had handed it out (running at the kill,
        or finished just before it, its removal not yet committed); the
        killed server, restarted under its name and port after the
        takeover, has none of its old jobs and runs nothing.
        """
        try:
            url = _postgres.fresh_database()
        except _postgres.Unavailable as e:
            raise SkipTest(str(e)) from None
        cluster = Cluster()
        self.addCleanup(cluster.close)
        workdir = Path(self.mktemp()).resolve()
        return deferToThread(self.scenario, url, workdir, cluster)

    test_kill_one_of_three.timeout = 120  # type: ignore[attr-defined]

    def scenario(self, url: str, workdir: Path, cluster: Cluster) -> None:
        """
        The test, in a thread (blocking sockets and processes), so that
        trial's time-out holds.
        """
        started = time.monotonic()
        servers = []
        for i in range(SERVERS):
            d = workdir / f"n{i}"
            d.mkdir(parents=True)
            servers.append(
                _process.twistd_gearmand(
                    d,
                    f"--queue={url}?application_name=txg-n{i}",
                    f"--node=n{i}",
                    f"--takeover-after={TAKEOVER_AFTER}",
                )
            )
            cluster.start(servers[-1])
        victim, survivors = servers[0], servers[1:]
        ledger = Ledger()
        for i, server in enumerate(servers):
            for _ in range(WORKERS):
                cluster.thread(work, server.port, i, ledger, cluster.stop)
        victim_workers = cluster.threads[:WORKERS]

        uniques = [b"job-%05d" % n for n in range(JOBS)]
        submitted = set(uniques)
        acked: list[list[bytes]] = [[] for _ in servers]
        submitters = [
            cluster.thread(submit, server.port, uniques[i::SERVERS], acked[i])
            for i, server in enumerate(servers)
        ]

        # The kill: once the victim acknowledged all its share, its workers
        # ran some and hold some (running), and more are queued.
        wait_until(
            "the victim to have jobs acknowledged, run and running",
            lambda: (
                not submitters[0].is_alive()
                and ledger.grabbed_count(0) >= GRABBED_BEFORE_KILL
                and bool(ledger.holding.get(0))
            ),
            60,
        )
        self.assertEqual(len(acked[0]), len(uniques[0::SERVERS]), "the victim refused jobs")
        app = "txg-n0"
        backends = "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s"
        self.assertGreater(sql(url, backends, app)[0][0], 0, "the victim's connection not found")
        queued_at_kill, _ = status_counts(victim.port)
        assert victim.process is not None
        deadline = time.monotonic() + 10
        while True:
            # Killed under the lock with a job held: no WORK_COMPLETE is
            # sent in between, so the snapshot is what was running.
            with ledger.lock:
                if ledger.holding.get(0) or time.monotonic() > deadline:
                    victim.process.kill()
                    killed_at = time.monotonic()
                    running = set(ledger.holding.get(0, ()))
                    completed_on_victim = {u for u, s in ledger.completes if s == 0}
                    grabs_at_kill = len(ledger.grabs)
                    break
            time.sleep(0.001)
        victim.process.wait(_process.STOP_TIMEOUT)

        # What the takeover will adopt: the victim's rows, once its
        # PostgreSQL session is gone (no commit of it still in flight).
        wait_until("the victim's session to end", lambda: not sql(url, backends, app)[0][0], 5)
        stored_at_kill = {
            bytes(u) for (u,) in sql(url, f"SELECT uniq FROM {TABLE} WHERE owner = 'n0'")
        }
        # The earliest takeover: the last heartbeat was up to 1 s before.
        self.assertLess(
            time.monotonic() - killed_at, TAKEOVER_AFTER - 1, "too slow to see what was stored"
        )
        for t in victim_workers:
            t.join(10)
        # A JOB_ASSIGN the victim sent just before it died is read (and the
        # grab noted) only after the kill: that job was running there too.
        with ledger.lock:
            running |= {u for u, s in ledger.grabs[grabs_at_kill:] if s == 0}
        for t in submitters:
            t.join(60)
        every_acked = {u for share in acked for u in share}

        def all_done() -> bool:
            with ledger.lock:
                completed = {u for u, _ in ledger.completes}
            return every_acked <= completed and all(
                status_counts(s.port) == (0, 0) for s in survivors
            )

        wait_until("every acknowledged job to complete", all_done, 60)
        done_at = time.monotonic()
        adoptions = [
            (int(n), s.port)
            for s in survivors
            for n in re.findall(r"adopted (\d+) stored jobs of node n0\b", s.log())
        ]

        # The restart: same node, same port; it has nothing left to run.
        again = _process.Server(victim.argv, victim.port, victim.log_path, victim.cwd)
        cluster.start(again)
        restarted_status = status_counts(again.port)
        probe = Link(again.port)
        try:
            probe.send(encode_request(P.CAN_DO, FUNCTION), encode_request(P.GRAB_JOB_UNIQ))
            probe_reply = probe.read(10)
        finally:
            probe.close()
        with ledger.lock:
            runs_before_restart = len(ledger.grabs)
        for _ in range(WORKERS):
            cluster.thread(work, again.port, SERVERS, ledger, cluster.stop)
        time.sleep(QUIET_SECONDS)  # a time with nothing happening: no poll ends it
        with ledger.lock:
            late = ledger.grabs[runs_before_restart:]
            grabs = list(ledger.grabs)
            completes = list(ledger.completes)
        cluster.stop.set()

        completed = {u for u, _ in completes}
        runs = Counter(u for u, _ in grabs)
        duplicates = {u for u, n in runs.items() if n > 1}
        unfinished = stored_at_kill & completed_on_victim
        allowed = running | unfinished
        counts = {
            "acknowledged": len(every_acked),
            "completed": len(completed),
            "runs": len(grabs),
            "duplicates": len(duplicates),
            "allowed": len(allowed),
            "running_at_kill": len(running),
            "finished_not_removed": len(unfinished),
            "stored_at_kill": len(stored_at_kill),
            "queued_at_kill": queued_at_kill,
            "adopted": sum(n for n, _ in adoptions),
            "kill_to_done_s": round(done_at - killed_at, 1),
            "total_s": round(time.monotonic() - started, 1),
        }
        summary = ", ".join(f"{k}={v}" for k, v in counts.items())
        log.info("cluster kill test: {summary}", summary=summary)
        self.assertEqual(ledger.errors, [], summary)
        self.assertEqual(completed - submitted, set(), "completed jobs never submitted")
        self.assertEqual(every_acked - completed, set(), f"acknowledged, never done; {summary}")
        self.assertEqual(duplicates - allowed, set(), f"ran twice, not allowed; {summary}")
        self.assertEqual(
            [u for u, n in runs.items() if n > 2], [], f"ran more than twice; {summary}"
        )
        self.assertEqual(running - stored_at_kill, set(), f"running, not stored; {summary}")
        self.assertEqual(
            len(adoptions), 1, f"adopted {adoptions} (once by one survivor); {summary}"
        )
        self.assertEqual(adoptions[0][0], len(stored_at_kill), summary)
        survived = {u for u, s in grabs if s in (1, 2)}
        self.assertEqual(stored_at_kill - survived, set(), f"adopted, never run; {summary}")
        self.assertGreater(len(stored_at_kill), len(running), f"none queued at the kill; {summary}")

        # Fenced: the restarted server has none of its old jobs.
        self.assertEqual(restarted_status, (0, 0), "the restarted server has jobs queued")
        self.assertIsNotNone(probe_reply)
        assert probe_reply is not None
        self.assertEqual(P(probe_reply[0]), P.NO_JOB)
        self.assertEqual(late, [], f"ran after everything was done; {summary}")
        self.assertEqual(status_counts(again.port), (0, 0))
        self.assertEqual(sql(url, f"SELECT count(*) FROM {TABLE}")[0][0], 0, "rows left")
