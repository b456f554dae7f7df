# -*- test-case-name: txgearmand.test.test_status -*-
"""
The server's state as plain data (C{/status.json}; the status page reads
it): functions, workers, clients, jobs, the store, traffic
and recent throughput.  Every name, handle and id is text.

The shape, version 1 (times are seconds since the epoch, durations in
seconds)::

    {"version": 1,
     "server": {"version", "pid", "started", "now", "uptime",
                "connections", "connections_total", "workers", "clients",
                "bytes_in", "bytes_out", "packets_in", "packets_out"},
     "totals": {"queued", "running", "scheduled", "accepted", "ended",
                "submitted_fg", "submitted_bg", "completed", "failed",
                "exceptions", "retried", "timed_out", "refused",
                "cancelled", "dead_lettered", "failed_kept"},
     "functions": [{"name", "queued": {"high", "normal", "low"},
                    "scheduled", "running", "workers", "sleeping",
                    "max_queue": [high, normal, low] or null,
                    "failed_kept",
                    "submitted_fg", ... (every counter of "totals")}],
     "rates": {"interval", "samples": [{"t", "in", "out"}]},
     "run_time": {"count", "mean", "last"},
     "workers": [{"peer", "id", "functions", "jobs", "sleeping",
                  "done"}],
     "clients": [{"peer", "id", "waiting", "submitted"}],
     "jobs": {"total", "shown", "list": [{"handle", "function", "unique",
              "state", "priority", "background", "age", "worker",
              "clients", "retries"}]},
     "store": {"kind", "location", "slow", "down", "writes", "latency_last",
               "latency_mean", "last_error": {"text", "at"} or null}}

C{rates.samples} are jobs per second submitted (new jobs) and ended,
oldest first, over the last ten minutes once something watches the server
(L{Meters.watch}); C{age} and C{run_time} are known only then too
(C{null} before).  Functions, workers, clients and jobs are listed up to
C{limit} each (the totals count them all).  C{failed_kept} is how many
jobs of the function are in the failed list (dead-letter) now, and
C{dead_lettered} how many landed there since the start; a function with
jobs in the failed list is listed even when nothing else keeps it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from txgearmand import _version
from txgearmand.meters import COUNTS
from txgearmand.records import Job, JobState, Participant
from txgearmand.server import JobServer
from txgearmand.store import describe

__all__ = ["PRIORITIES", "snapshot"]

#: Priority names, by priority number.
PRIORITIES = ("high", "normal", "low")

_STATES = {
    JobState.QUEUED: "queued",
    JobState.RUNNING: "running",
    JobState.SCHEDULED: "scheduled",
    JobState.DONE: "done",
}


def _t(value: bytes) -> str:
    return value.decode("utf-8", "backslashreplace")


def snapshot(server: JobServer, limit: int = 1000) -> dict[str, Any]:
    """
    The server's state now, as JSON-ready data (see the module's
    docstring for its shape).

    @param limit: at most this many functions, workers, clients and jobs
        are listed.
    """
    meters = server.meters
    now = server.reactor.seconds()
    participants = server.clients()
    workers = [p for p in participants if p.abilities]
    clients = [p for p in participants if not p.abilities]
    traffic = meters.traffic
    functions = sorted(server.registry, key=lambda fq: fq.name)
    kept = server.failed.counts()
    totals = dict(zip(COUNTS, meters.functions.totals()))
    queued = sum(sum(fq.queued) for fq in functions)
    totals.update(
        queued=queued,
        running=sum(fq.running for fq in functions),
        scheduled=sum(fq.scheduled for fq in functions),
        accepted=server.jobs_accepted,
        ended=server.jobs_ended,
        failed_kept=sum(kept.values()),
        spilled=len(server.table.spilled),
    )
    names = sorted({fq.name for fq in functions} | kept.keys())
    listed = [_function(server, name, kept.get(name, 0)) for name in names[:limit]]
    jobs = server.table.by_handle
    kind, location = describe(server.store)
    durability = server.durability
    latency = meters.store_latency
    error = durability.last_error
    return {
        "version": 1,
        "server": {
            "version": _version.__version__,
            "pid": server.pid if server.running else os.getpid(),
            "started": meters.started,
            "now": now,
            "uptime": now - meters.started,
            "connections": len(participants),
            "connections_total": traffic.connections,
            "workers": len(workers),
            "clients": len(clients),
            "bytes_in": traffic.bytes_in,
            "bytes_out": traffic.bytes_out,
            "packets_in": traffic.packets_in,
            "packets_out": traffic.packets_out,
        },
        "totals": totals,
        "functions": listed,
        "rates": {
            "interval": meters.interval,
            "samples": [{"t": t, "in": i, "out": o} for t, i, o in meters.rates()],
        },
        "run_time": {
            "count": meters.run_time.count,
            "mean": meters.run_time.mean(),
            "last": meters.run_time.last,
        },
        "workers": [_worker(p) for p in workers[:limit]],
        "clients": [_client(p) for p in clients[:limit]],
        "jobs": {
            "total": len(server.table),
            "shown": min(len(jobs), limit),
            "list": [_job(job, now) for job, _ in zip(jobs.values(), range(limit))],
        },
        "store": {
            "kind": kind,
            "location": location,
            "slow": durability.slow,
            "down": durability.down,
            "writes": latency.count,
            "latency_last": latency.last,
            "latency_mean": latency.mean(),
            "last_error": {"text": error[0], "at": error[1]} if error else None,
        },
    }


def _function(server: JobServer, name: bytes, kept: int) -> dict[str, Any]:
    fq = server.registry.get(name)
    if fq is None:
        # Only its failed jobs are left.
        counts = server.meters.functions.by_name.get(name) or [0] * len(COUNTS)
        queued: Sequence[int] = (0, 0, 0)
        scheduled = running = workers = sleeping = 0
    else:
        counts = fq.counts
        queued, scheduled, running = fq.queued, fq.scheduled, fq.running
        workers, sleeping = len(fq.workers), len(fq.sleepers)
    row: dict[str, Any] = {
        "name": _t(name),
        "queued": dict(zip(PRIORITIES, queued)),
        "scheduled": scheduled,
        "running": running,
        "workers": workers,
        "sleeping": sleeping,
        "max_queue": list(server.max_queue(name) or ()) or None,
        "failed_kept": kept,
    }
    row.update(zip(COUNTS, counts))
    return row


def _worker(p: Participant) -> dict[str, Any]:
    return {
        "peer": p.describe(),
        "id": _t(p.client_id),
        "functions": [_t(name) for name in p.abilities],
        "jobs": [_t(handle) for handle in p.held],
        "sleeping": p.sleeping,
        "done": p.jobs_finished,
    }


def _client(p: Participant) -> dict[str, Any]:
    return {
        "peer": p.describe(),
        "id": _t(p.client_id),
        "waiting": len(p.listening),
        "submitted": p.jobs_submitted,
    }


def _job(job: Job, now: float) -> dict[str, Any]:
    return {
        "handle": _t(job.handle),
        "function": _t(job.queue.name),
        "unique": _t(job.unique),
        "state": _STATES.get(job.state, str(job.state)),
        "priority": PRIORITIES[job.priority],
        "background": job.background,
        "age": now - job.created if job.created is not None else None,
        "worker": job.worker.describe() if job.worker is not None else None,
        "clients": len(job.listeners),
        "retries": job.retries,
    }
