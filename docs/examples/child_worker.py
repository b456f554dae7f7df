"""
A worker meant to be started by ``start_worker``: it speaks Gearman to its
parent over its standard input and output (GEARMAN_WORKER_USE_STDIO) and
exits when the parent goes away.
"""

from __future__ import annotations

import hashlib

from twisted.internet import task

from txgearmand.worker import GearmanWorker, WorkerJob


def sha256(job: WorkerJob) -> str:
    return hashlib.sha256(job.payload).hexdigest()


def main(reactor):  # type: ignore[no-untyped-def]
    worker = GearmanWorker.from_stdio(reactor, client_id="sha256-child")
    worker.register("sha256", sha256)
    worker.start()
    return worker.finished


if __name__ == "__main__":
    task.react(main)
