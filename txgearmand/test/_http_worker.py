"""
A worker for the HTTP submission tests, run as a process against any
Gearman server (txgearmand or C gearmand)::

    python -m txgearmand.test._http_worker tcp:127.0.0.1:4730 RECORD FUNCTION...

Its functions: C{reverse} (the payload reversed), C{fail} (WORK_FAIL),
C{exception} (WORK_EXCEPTION C{ValueError: boom}), C{slow} (after a
second, the payload, C{/} and the unique id), C{record} (appends the
payload and a newline to the file RECORD, returns the payload) and
C{chunks} (WORK_DATA C{abc}, WORK_STATUS 1/2, WORK_WARNING, WORK_DATA
C{def}, then C{xyz}).  It runs until it is killed.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

from twisted.internet import defer, endpoints, task

from txgearmand.worker import GearmanWorker, WorkerJob, WorkFailed


def _fail(job: WorkerJob) -> bytes:
    raise WorkFailed()


def _exception(job: WorkerJob) -> bytes:
    raise ValueError("boom")


def _chunks(job: WorkerJob) -> bytes:
    job.send_data(b"abc")
    job.send_status(1, 2)
    job.send_warning(b"careful")
    job.send_data(b"def")
    return b"xyz"


def functions(reactor: Any, record: str) -> dict[str, Callable[[WorkerJob], Any]]:
    """
    The worker's functions, by name.
    """

    def slow(job: WorkerJob) -> defer.Deferred[bytes]:
        return task.deferLater(reactor, 1.0, lambda: job.payload + b"/" + job.unique)

    def recorded(job: WorkerJob) -> bytes:
        with open(record, "ab") as f:
            f.write(job.payload + b"\n")
        return job.payload

    return {
        "reverse": lambda job: job.payload[::-1],
        "fail": _fail,
        "exception": _exception,
        "slow": slow,
        "record": recorded,
        "chunks": _chunks,
    }


def main(reactor: Any, server: str, record: str, *names: str) -> defer.Deferred[None]:
    """
    Work for C{server} until killed.
    """
    worker = GearmanWorker([endpoints.clientFromString(reactor, server)], reactor)
    table = functions(reactor, record)
    for name in names:
        worker.register(name, table[name])
    worker.start()
    return defer.Deferred()


if __name__ == "__main__":
    task.react(main, sys.argv[1:])
