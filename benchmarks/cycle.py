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
from txgearmand.wire import PacketType as P
from txgearmand.wire import encode_request


class NullTransport:
    """
    Just enough transport: counts what is written.
    """

    disconnecting = False

    def __init__(self) -> None:
        self.written = 0

    def write(self, data: bytes) -> None:
        self.written += len(data)

    def getPeer(self) -> IPv4Address:
        return IPv4Address("TCP", "127.0.0.1", 1)

    def registerProducer(self, producer: object, streaming: bool) -> None:
        pass

    def unregisterProducer(self) -> None:
        pass

    def loseConnection(self) -> None:
        pass


def run(jobs: int, clients: int = 10, workers: int = 10, window: int = 8) -> float:
    server = JobServer(Clock(), job_handle_prefix=b"H:bench", coalesce_writes=False)
    server.startService()

    def connect() -> GearmanProtocol:
        p = GearmanProtocol(server)
        p.makeConnection(NullTransport())  # type: ignore[arg-type]
        return p

    cs = [connect() for _ in range(clients)]
    ws = [connect() for _ in range(workers)]
    for w in ws:
        w.dataReceived(encode_request(P.CAN_DO, b"f"))
    submit = encode_request(P.SUBMIT_JOB, b"f", b"", b"x" * 100)
    grab = encode_request(P.GRAB_JOB)
    handles = [job_handle for job_handle in ()]
    start = time.perf_counter()
    done = 0
    while done < jobs:
        for c in cs:
            c.dataReceived(submit * window)
        for w in ws:
            while True:
                w.dataReceived(grab)
                if not w.held:
                    break
                (handle,) = list(w.held)
                w.dataReceived(encode_request(P.WORK_COMPLETE, handle, b"ok"))
                done += 1
    del handles
    return done / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=200_000)
    args = parser.parse_args(argv)
    for _ in range(3):
        print(f"{run(args.jobs):.0f} jobs/s (submit, grab, complete; no network)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
