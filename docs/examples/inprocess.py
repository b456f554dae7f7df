"""
A Gearman client and worker in the same process as the job server: no port,
no network.

Run it with ``python docs/examples/inprocess.py``.
"""

from __future__ import annotations

from twisted.internet import defer, task

from txgearmand.client import GearmanClient
from txgearmand.inprocess import InProcessEndpoint
from txgearmand.server import JobServer
from txgearmand.worker import GearmanWorker, WorkerJob


def word_count(job: WorkerJob) -> bytes:
    words = job.payload.split()
    job.send_status(len(words), len(words))
    return b"%d" % len(words)


async def run(reactor) -> bytes:  # type: ignore[no-untyped-def]
    jobs = JobServer(reactor)
    jobs.startService()
    endpoint = InProcessEndpoint(reactor, jobs)

    worker = GearmanWorker(endpoint, reactor)
    worker.register("word_count", word_count)
    worker.start()

    client = GearmanClient(endpoint, reactor)
    try:
        result = await client.submit("word_count", b"the quick brown fox")
    finally:
        await worker.stop()
        await client.close()
        await jobs.stopService()
    print(f"word_count -> {result.decode()}")
    return result


def main(reactor) -> defer.Deferred[bytes]:  # type: ignore[no-untyped-def]
    return defer.Deferred.fromCoroutine(run(reactor))


if __name__ == "__main__":
    task.react(lambda reactor: main(reactor).addCallback(lambda _: None))
