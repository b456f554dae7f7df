"""
The attacks of issue 9, measured: what each does to a server's memory, and
whether a normal client is still served meanwhile.

    python -m benchmarks.abuse                      # this checkout
    python -m benchmarks.abuse --root /tmp/before   # another checkout
    python -m benchmarks.abuse --server-args "--max-memory=0 --read-timeout=0"

Scenarios, each on a fresh ``twistd -n gearmand --queue memory`` on a free
loopback port (RSS read from /proc):

- ``stream``: a worker streams 200 MiB of WORK_DATA to a client that never
  reads (peak RSS growth; whether the client was closed).
- ``partial``: 40 connections each declare a 60 MiB packet and send 59 MiB
  of it (peak growth; how many were refused; RSS once they are gone).
- ``queue``: 600 background jobs of 1 MiB (accepted, refused, growth; RSS
  after a worker drained them).
- ``slowloris``: 300 connections send a header a byte every 0.5 s for 6 s
  (how many the server closed; the slowest normal round trip).

Prints one table; nothing is judged.
"""

from __future__ import annotations

import argparse
import shlex
import socket
import struct
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from txgearmand import _host, wire
from txgearmand.test import _process
from txgearmand.test._process import PacketConnection
from txgearmand.wire import PacketType as P

MiB = 1024**2


class Run:
    """
    One server process for one scenario.
    """

    def __init__(self, root: Path, python: str, extra: list[str]) -> None:
        self.workdir = Path(tempfile.mkdtemp(prefix="abuse-"))
        self.server = _process.twistd_gearmand(
            self.workdir, "--queue=memory", *extra, python=python
        )
        self.root = root
        self.conns: list[PacketConnection] = []

    def __enter__(self) -> Run:
        env_root = str(self.root)
        original = _process.PACKAGE_ROOT
        _process.PACKAGE_ROOT = env_root
        try:
            self.server.start()
        finally:
            _process.PACKAGE_ROOT = original
        return self

    def __exit__(self, *exc: object) -> None:
        for c in self.conns:
            c.close()
        self.server.kill()

    def conn(self) -> PacketConnection:
        c = PacketConnection(self.server.port)
        self.conns.append(c)
        return c

    def rss(self) -> int:
        assert self.server.process is not None
        return _host.rss_bytes(self.server.process.pid) or 0


def stream(run: Run) -> dict[str, Any]:
    normal = run.conn()
    normal.round_trip()
    before = run.rss()
    slow = run.conn()
    slow.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    slow.send(P.SUBMIT_JOB, b"stream", b"", b"go")
    worker = run.conn()
    worker.send(P.CAN_DO, b"stream")
    worker.send(P.GRAB_JOB)
    handle = worker.expect(P.JOB_ASSIGN).split(b"\0")[0]
    chunk = wire.encode_request(P.WORK_DATA, handle, b"d" * (64 * 1024))
    peak, slowest = before, 0.0
    start = time.monotonic()
    for i in range(3200):
        worker.sock.sendall(chunk)
        if i % 100 == 0:
            peak = max(peak, run.rss())
            slowest = max(slowest, normal.round_trip())
    took = time.monotonic() - start
    closed = slow.closed_by_server(2)
    time.sleep(2)
    return {
        "growth MiB": (peak - before) / MiB,
        "slowest rtt ms": slowest * 1000,
        "worker s": took,
        "client closed": closed,
        "after MiB": (run.rss() - before) / MiB,
    }


def partial(run: Run) -> dict[str, Any]:
    normal = run.conn()
    normal.round_trip()
    before = run.rss()
    held, refused = [], 0
    body = b"f\0\0" + b"x" * (MiB - 3)
    for _ in range(40):
        c = run.conn()
        try:
            c.sock.sendall(struct.pack(">4sII", wire.REQUEST_MAGIC, P.SUBMIT_JOB_BG, 60 * MiB))
            c.sock.sendall(body)
            c.sock.settimeout(0.1)
            c.recv()
            refused += 1
        except socket.timeout:
            held.append(c)
        except OSError:
            refused += 1
    rest = b"x" * MiB
    for c in held:
        try:
            for _ in range(58):
                c.sock.sendall(rest)
        except OSError:
            pass
    slowest = normal.round_trip()
    peak = run.rss()
    for c in held:
        c.close()
    time.sleep(3)
    return {
        "growth MiB": (peak - before) / MiB,
        "refused": refused,
        "slowest rtt ms": slowest * 1000,
        "after MiB": (run.rss() - before) / MiB,
    }


def queue(run: Run) -> dict[str, Any]:
    client = run.conn()
    before = run.rss()
    payload = b"q" * MiB
    accepted = refused = 0
    for i in range(600):
        client.send(P.SUBMIT_JOB_BG, b"big", b"u%d" % i, payload)
        ptype, _ = client.recv()
        if ptype == P.JOB_CREATED:
            accepted += 1
        else:
            refused += 1
    peak = run.rss()
    worker = run.conn()
    worker.send(P.CAN_DO, b"big")
    for _ in range(accepted):
        worker.send(P.GRAB_JOB)
        handle = worker.expect(P.JOB_ASSIGN).split(b"\0")[0]
        worker.send(P.WORK_COMPLETE, handle, b"")
    _process.admin(run.server.port, b"status")
    time.sleep(3)
    return {
        "accepted": accepted,
        "refused": refused,
        "growth MiB": (peak - before) / MiB,
        "after MiB": (run.rss() - before) / MiB,
    }


def slowloris(run: Run) -> dict[str, Any]:
    normal = run.conn()
    normal.round_trip()
    attackers = [run.conn() for _ in range(300)]
    header = struct.pack(">4sII", wire.REQUEST_MAGIC, P.ECHO_REQ, 4)
    slowest = 0.0
    for i in range(12):
        for c in attackers:
            try:
                c.sock.send(header[i % 11 : i % 11 + 1])
            except OSError:
                pass
        slowest = max(slowest, normal.round_trip())
        time.sleep(0.5)
    closed = sum(c.closed_by_server(0.05) for c in attackers)
    return {"closed": closed, "of": len(attackers), "slowest rtt ms": slowest * 1000}


SCENARIOS: dict[str, Callable[[Run], dict[str, Any]]] = {
    "stream": stream,
    "partial": partial,
    "queue": queue,
    "slowloris": slowloris,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", default=_process.PACKAGE_ROOT, help="checkout to run")
    parser.add_argument("--python", default=sys.executable)
    parser.add_argument("--server-args", default="", help="extra server options")
    parser.add_argument("--only", default=",".join(SCENARIOS))
    args = parser.parse_args(argv)
    extra = shlex.split(args.server_args)
    # The slowloris scenario needs a timeout shorter than its 6 s, where
    # the server has the option.
    for name in args.only.split(","):
        options = list(extra)
        if name == "slowloris" and _has_option(args.root, args.python, "--read-timeout"):
            options.append("--read-timeout=2")
        if name == "queue" and _has_option(args.root, args.python, "--max-memory"):
            options.append("--max-memory=256M")
        if name == "partial" and _has_option(args.root, args.python, "--max-memory"):
            options.append("--max-memory=256M")
        if name == "stream":
            options.append("--max-packet-size=1M")
            if _has_option(args.root, args.python, "--output-hard-limit"):
                options.append("--output-hard-limit=8M")
        with Run(Path(args.root), args.python, options) as run:
            try:
                result = SCENARIOS[name](run)
            except Exception as e:
                result = {"error": repr(e)}
        cells = ", ".join(
            f"{k} {v:.1f}" if isinstance(v, float) else f"{k} {v}" for k, v in result.items()
        )
        print(f"{name:10} {' '.join(options) or '-'}: {cells}", flush=True)
    return 0


def _has_option(root: str, python: str, option: str) -> bool:
    import subprocess

    env = _process.environment()
    env["PYTHONPATH"] = root
    out = subprocess.run(
        [python, "-c", _process._TWISTD, "gearmand", "--help"],
        capture_output=True,
        env=env,
        cwd=root,
        timeout=60,
        check=False,
    ).stdout
    return option.encode() in out


if __name__ == "__main__":
    raise SystemExit(main())
