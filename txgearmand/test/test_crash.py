"""
Crash tests: a real C{twistd gearmand} with a durable store is killed with
SIGKILL while a real client (Python's C{gear}) submits background jobs and
a worker holds one; after a restart every acknowledged job is done at least
once and no job is invented.
"""

from __future__ import annotations

import socket
import struct
import threading
import time
from pathlib import Path

from twisted.trial.unittest import SkipTest, SynchronousTestCase

from txgearmand.test import _postgres, _process
from txgearmand.wire import PacketType as P
from txgearmand.wire import encode_request

try:
    import gear
except ImportError:  # pragma: no cover
    gear = None

JOBS = 400


class RawWorker:
    """
    A minimal blocking worker over one socket.
    """

    def __init__(self, port: int, function: bytes) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.sendall(encode_request(P.CAN_DO, function))

    def _read(self) -> tuple[int, bytes]:
        header = self._exactly(12)
        ptype, size = struct.unpack(">II", header[4:])
        return ptype, self._exactly(size)

    def _exactly(self, n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = self.sock.recv(n - len(data))
            if not chunk:
                raise ConnectionError("closed")
            data += chunk
        return data

    def grab(self) -> tuple[bytes, bytes] | None:
        """
        Grab a job: its handle and payload, or None.
        """
        self.sock.sendall(encode_request(P.GRAB_JOB_UNIQ))
        while True:
            ptype, body = self._read()
            if ptype == P.NO_JOB:
                return None
            if ptype == P.JOB_ASSIGN_UNIQ:
                handle, _, _, payload = body.split(b"\0", 3)
                return handle, payload
            # NOOPs and the like: keep reading.

    def complete(self, handle: bytes) -> None:
        self.sock.sendall(encode_request(P.WORK_COMPLETE, handle, b""))

    def close(self) -> None:
        self.sock.close()


class _CrashTestsMixin:
    """
    The crash test; subclasses say which store.
    """

    #: More server options.
    options: tuple[str, ...] = ()

    def queue_url(self) -> str:
        raise NotImplementedError

    def test_kill_and_restart(self) -> None:
        """
        Every background job acknowledged before a SIGKILL - queued, or
        running on a worker at the time - is done after the restart, and
        nothing else but jobs that were submitted.
        """
        assert isinstance(self, SynchronousTestCase)
        if gear is None:
            raise SkipTest("the gear package is not installed (pip install gear)")
        workdir = Path(self.mktemp()).resolve()
        workdir.mkdir(parents=True)
        queue = self.queue_url()
        server = _process.twistd_gearmand(workdir, f"--queue={queue}", *self.options)
        self.addCleanup(server.kill)
        server.start()

        client = gear.Client("crash-test")
        client.addServer("127.0.0.1", server.port)
        client.waitForServer(timeout=30)
        self.addCleanup(client.shutdown)
        acknowledged: dict[bytes, bytes] = {}
        submitted: set[bytes] = set()
        stop = threading.Event()

        def submit() -> None:
            for i in range(JOBS):
                if stop.is_set():
                    return
                payload = b"job-%d" % i
                submitted.add(payload)
                job = gear.Job(b"crash", payload)
                try:
                    client.submitJob(job, background=True, timeout=3)
                except Exception:
                    return
                if job.handle:
                    acknowledged[job.handle] = payload

        thread = threading.Thread(target=submit, daemon=True)
        thread.start()
        deadline = time.monotonic() + 60
        while len(acknowledged) < JOBS // 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        holder = RawWorker(server.port, b"crash")
        held = holder.grab()
        assert held is not None
        # Still submitting: the kill lands in the middle of the traffic.
        assert server.process is not None
        server.process.kill()
        server.process.wait(30)
        stop.set()
        thread.join(30)
        holder.close()
        self.assertGreaterEqual(len(acknowledged), JOBS // 2)
        self.assertIn(held[0], acknowledged)

        restarted = _process.Server(server.argv, server.port, workdir / "after.log", workdir)
        self.addCleanup(restarted.kill)
        restarted.start()
        worker = RawWorker(restarted.port, b"crash")
        self.addCleanup(worker.close)
        done: dict[bytes, bytes] = {}
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            job = worker.grab()
            if job is None:
                # NO_JOB with jobs still queued: spilled ones are on their
                # way back from the store (a worker would PRE_SLEEP).
                if not _queued(restarted.port, b"crash"):
                    break
                time.sleep(0.05)
                continue
            done[job[0]] = job[1]
            worker.complete(job[0])
        missing = {h: p for h, p in acknowledged.items() if done.get(h) != p}
        self.assertEqual(missing, {}, f"acknowledged jobs lost: {len(missing)}")
        self.assertTrue(set(done.values()) <= submitted, "a job was invented")
        self.assertEqual(restarted.stop(), -15)
        # Done jobs were removed: a second restart has nothing left.
        third = _process.Server(server.argv, server.port, workdir / "third.log", workdir)
        self.addCleanup(third.kill)
        third.start()
        self.assertEqual(_process.admin(third.port, b"status"), b".\n")


def _queued(port: int, function: bytes) -> int:
    for line in _process.admin(port, b"status").splitlines():
        fields = line.split(b"\t")
        if fields[0] == function:
            return int(fields[1]) - int(fields[2])
    return 0


class SQLiteCrashTests(_CrashTestsMixin, SynchronousTestCase):
    """
    With C{--queue sqlite:PATH}.
    """

    def queue_url(self) -> str:
        path = Path(self.mktemp()).resolve()
        path.mkdir(parents=True)
        return f"sqlite:{path / 'jobs.sqlite'}"


class SQLiteSpillCrashTests(SQLiteCrashTests):
    """
    With C{--queue sqlite:PATH} and C{--spill-after 5}: most queued jobs
    are records in memory, their payloads in the store only, when the
    server is killed (and after the restart, which loads records).
    """

    options = ("--spill-after=5",)


class PostgreSQLCrashTests(_CrashTestsMixin, SynchronousTestCase):
    """
    With C{--queue postgresql://...}.
    """

    def queue_url(self) -> str:
        try:
            return _postgres.fresh_database()
        except _postgres.Unavailable as e:
            raise SkipTest(str(e)) from None
