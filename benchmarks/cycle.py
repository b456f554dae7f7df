"""
CPU cost of the server's per-job work, without the network: clients and
workers are connections on null transports, driven in a loop.

    python -m benchmarks.cycle [--jobs 200000]

Used to profile the hot path (python -m cProfile -s tottime -m benchmarks.cycle).
"""

from __future__ import annotations

import argparse
import sys
import time

from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock

from txgearmand.protocol import GearmanProtocol
from txgearmand.server import JobServer
from txgearmand.wire import RESPONSE_MAGIC, PacketParser, encode_request
from txgearmand.wire import PacketType as P


class NullTransport:
    """
    Just enough transport: keeps what is written until taken.
    """

    disconnecting = False

    def __init__(self) -> None:
        self.written: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def take(self) -> bytes:
        data = b"".join(self.written)
        self.written = []
        return data

    def getPeer(self) -> IPv4Address:
        return IPv4Address("TCP", "127.0.0.1", 1)

    def registerProducer(self, producer: object, streaming: bool) -> None:
        pass

    def unregisterProducer(self) -> None:
        pass

    def loseConnection(self) -> None:
        pass


def run(
    jobs: int, clients: int = 10, workers: int = 10, window: int = 8, watched: bool = False
) -> float:
    """
    Jobs per second through submit, grab and complete.  Only the server's
    public surface is used (packets in, packets out), so the same loop
    measures any version of it.

    @param watched: as with a status site or metrics on (jobs are timed).
    """
    clock = Clock()
    server = JobServer(clock, job_handle_prefix=b"H:bench")
    server.startService()
    if watched:
        server.meters.watch()

    def connect() -> tuple[GearmanProtocol, NullTransport]:
        p = GearmanProtocol(server)
        t = NullTransport()
        p.makeConnection(t)  # type: ignore[arg-type]
        return p, t

    cs = [connect() for _ in range(clients)]
    ws = [connect() for _ in range(workers)]
    for w, _ in ws:
        w.dataReceived(encode_request(P.CAN_DO, b"f"))
    clock.advance(0)
    submit = encode_request(P.SUBMIT_JOB, b"f", b"", b"x" * 100)
    grab = encode_request(P.GRAB_JOB)
    start = time.process_time()
    done = 0
    while done < jobs:
        for c, _ in cs:
            c.dataReceived(submit * window)
        # The end of a reactor turn: the server writes what it batched.
        clock.advance(0)
        for w, t in ws:
            parser = PacketParser(magic=RESPONSE_MAGIC)
            while True:
                w.dataReceived(grab)
                clock.advance(0)
                ((ptype, body),) = parser.feed(t.take())
                if ptype != P.JOB_ASSIGN:
                    break
                handle = body.split(b"\0", 1)[0]
                w.dataReceived(encode_request(P.WORK_COMPLETE, handle, b"ok"))
                done += 1
        clock.advance(0)
        for _, t in cs:
            t.take()
    return done / (time.process_time() - start)


def run_background(jobs: int, window: int = 1000) -> float:
    """
    Background submissions per second: SUBMIT_JOB_BG pipelined C{window}
    to a read on one connection, each answered with JOB_CREATED (as
    C{python -m benchmarks}' bg_submit_drain); the jobs stay queued.
    """
    clock = Clock()
    server = JobServer(clock, job_handle_prefix=b"H:bench")
    server.startService()
    p = GearmanProtocol(server)
    t = NullTransport()
    p.makeConnection(t)  # type: ignore[arg-type]
    burst = encode_request(P.SUBMIT_JOB_BG, b"f", b"", b"x" * 100) * window
    start = time.process_time()
    done = 0
    while done < jobs:
        p.dataReceived(burst)
        clock.advance(0)
        t.take()
        done += window
    return done / (time.process_time() - start)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--watched", action="store_true", help="as with --web or --metrics on (jobs timed)"
    )
    parser.add_argument(
        "--background",
        action="store_true",
        help="background submissions only (SUBMIT_JOB_BG -> JOB_CREATED, 1000 per read)",
    )
    args = parser.parse_args(argv)
    rates = []
    for _ in range(args.rounds):
        if args.background:
            rates.append(run_background(args.jobs))
            print(f"{rates[-1]:.0f} jobs/s (background submit; no network; CPU time)")
            continue
        rates.append(run(args.jobs, watched=args.watched))
        print(f"{rates[-1]:.0f} jobs/s (submit, grab, complete; no network; CPU time)")
    rates.sort()
    print(f"best {rates[-1]:.0f}  median {rates[len(rates) // 2]:.0f} jobs/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
