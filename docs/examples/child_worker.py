"""
A worker meant to be started by ``start_worker`` (see start_worker.py): it
speaks Gearman to its parent over its standard input and output, which is a
socket (GEARMAN_WORKER_USE_STDIO=1 is in its environment), and exits when
the parent goes away.

Run by hand, it needs a server to connect to::

    python docs/examples/child_worker.py tcp:localhost:4730

and then works for that server until it is stopped (Ctrl-C or SIGTERM).
Without one, it says how to run it and exits with status 2.
"""

from __future__ import annotations

import hashlib
import os
import stat
import sys

from twisted.internet import defer, endpoints, task

from txgearmand.worker import GearmanWorker, WorkerJob

USAGE = """\
usage: child_worker.py SERVER
  SERVER is a Twisted client endpoint, e.g. tcp:localhost:4730.
  Started by a job server's start_worker (GEARMAN_WORKER_USE_STDIO=1, a
  socket on standard input), it needs no argument.
"""


def sha256(job: WorkerJob) -> str:
    return hashlib.sha256(job.payload).hexdigest()


def started_by_job_server() -> bool:
    """
    Whether a job server started this process: it says so in the
    environment, and standard input is a socket.
    """
    if os.environ.get("GEARMAN_WORKER_USE_STDIO") != "1":
        return False
    try:
        return stat.S_ISSOCK(os.fstat(0).st_mode)
    except OSError:
        return False


def main(reactor, *argv: str):  # type: ignore[no-untyped-def]
    if started_by_job_server() and not argv:
        worker = GearmanWorker.from_stdio(reactor, client_id="sha256-child")
        worker.register("sha256", sha256)
        worker.start()
        return worker.finished
    if len(argv) != 1:
        sys.stderr.write(USAGE)
        raise SystemExit(2)
    endpoint = endpoints.clientFromString(reactor, argv[0])
    worker = GearmanWorker([endpoint], reactor, client_id="sha256-worker")
    worker.register("sha256", sha256)
    worker.start()
    # On Ctrl-C or SIGTERM, let a running job finish before the reactor stops.
    reactor.addSystemEventTrigger("before", "shutdown", worker.stop)
    return defer.Deferred()


if __name__ == "__main__":
    task.react(main, sys.argv[1:])
