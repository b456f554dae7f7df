"""
A job server that runs its workers as child processes (``start_worker``):
each child gets one end of a socketpair as its standard input and output.

Run it with ``python docs/examples/start_worker.py``.
"""

from __future__ import annotations

import os
import sys

from twisted.internet import defer, task

from txgearmand.client import GearmanClient
from txgearmand.inprocess import InProcessEndpoint, start_worker
from txgearmand.server import JobServer

CHILD = os.path.join(os.path.dirname(os.path.abspath(__file__)), "child_worker.py")


async def run(reactor, env=None) -> bytes:  # type: ignore[no-untyped-def]
    jobs = JobServer(reactor)
    jobs.startService()
    children = [start_worker(reactor, jobs, [sys.executable, CHILD], env) for _ in range(2)]
    client = GearmanClient(InProcessEndpoint(reactor, jobs), reactor)
    try:
        digest = await client.submit("sha256", b"hello")
    finally:
        await client.close()
        # Closing the server's side of the socketpairs ends the children.
        await jobs.stopService()
        for _, _, process in children:
            await process.ended
    pids = [pid for pid, _, _ in children]
    print(f"children {pids}: sha256(hello) = {digest.decode()}")
    return digest


def main(reactor, env=None) -> defer.Deferred[bytes]:  # type: ignore[no-untyped-def]
    return defer.Deferred.fromCoroutine(run(reactor, env))


if __name__ == "__main__":
    task.react(lambda reactor: main(reactor).addCallback(lambda _: None))
