# -*- test-case-name: txgearmand.test.test_metrics -*-
"""
Prometheus metrics: the server's counters, gauges and histograms in the
exposition format, through the C{prometheus-client} package (the
C{metrics} extra), read from the server when scraped.

Names follow Prometheus's conventions: a C{gearman_} prefix, C{_total}
counters, seconds and bytes.  The C{function} label is bounded: counters
keep at most the L{txgearmand.meters.FunctionCounts} limit of names (later
ones count under C{_other}), and gauges list at most as many live
functions (the rest summed under C{_other}), so clients that invent
function names cannot grow a scrape without bound.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from twisted.web.resource import Resource
from twisted.web.server import Request

from txgearmand import _version
from txgearmand.meters import (
    CANCELLED,
    COMPLETED,
    DEAD_LETTERED,
    EXCEPTIONS,
    FAILED,
    OTHER,
    REFUSED,
    RETRIED,
    SUBMITTED_BG,
    SUBMITTED_FG,
    TIMED_OUT,
    Histogram,
)
from txgearmand.server import JobServer

__all__ = ["GearmanCollector", "MetricsResource", "available", "exposition"]

#: Counters by function: (name, help, counter index).
_COUNTERS = (
    ("gearman_jobs_completed", "Jobs that ended with WORK_COMPLETE.", COMPLETED),
    ("gearman_jobs_failed", "Jobs that ended with WORK_FAIL (or ran out of attempts).", FAILED),
    ("gearman_jobs_exceptions", "Jobs that ended with WORK_EXCEPTION.", EXCEPTIONS),
    ("gearman_jobs_retried", "Jobs queued again after a lost worker or timeout.", RETRIED),
    ("gearman_jobs_timed_out", "Jobs whose worker overran CAN_DO_TIMEOUT.", TIMED_OUT),
    ("gearman_jobs_refused", "Submissions refused (max queue, memory, store).", REFUSED),
    ("gearman_jobs_cancelled", "Jobs cancelled by the admin command.", CANCELLED),
    (
        "gearman_jobs_dead_lettered",
        "Background jobs that failed for the last time and landed in the failed list.",
        DEAD_LETTERED,
    ),
)


def available() -> bool:
    """
    Whether C{prometheus-client} is installed (C{pip install
    'txgearmand[metrics]'}).
    """
    try:
        import prometheus_client  # noqa: F401
    except ImportError:
        return False
    return True


def _t(value: bytes) -> str:
    return value.decode("utf-8", "backslashreplace")


def _histogram(family: Any, histogram: Histogram) -> Any:
    buckets = [
        ("+Inf" if bound == float("inf") else repr(float(bound)), float(count))
        for bound, count in histogram.cumulative()
    ]
    family.add_metric([], buckets, histogram.sum)
    return family


class GearmanCollector:
    """
    A C{prometheus_client} collector that reads a L{JobServer} at each
    scrape.
    """

    def __init__(self, server: JobServer) -> None:
        self.server = server

    def collect(self) -> Iterator[Any]:
        """
        Every metric, as C{prometheus_client} metric families.
        """
        from prometheus_client.core import (
            CounterMetricFamily,
            GaugeMetricFamily,
            HistogramMetricFamily,
        )

        server = self.server
        meters = server.meters
        counts = sorted(meters.functions.by_name.items())
        submitted = CounterMetricFamily(
            "gearman_jobs_submitted",
            "Submissions accepted (joining a live job included), by kind.",
            labels=["function", "kind"],
        )
        for name, values in counts:
            submitted.add_metric([_t(name), "fg"], values[SUBMITTED_FG])
            submitted.add_metric([_t(name), "bg"], values[SUBMITTED_BG])
        yield submitted
        for metric, text, index in _COUNTERS:
            family = CounterMetricFamily(metric, text, labels=["function"])
            for name, values in counts:
                family.add_metric([_t(name)], values[index])
            yield family

        queued = GaugeMetricFamily(
            "gearman_jobs_queued",
            "Jobs waiting for a worker (scheduled ones under priority 'scheduled').",
            labels=["function", "priority"],
        )
        running = GaugeMetricFamily(
            "gearman_jobs_running", "Jobs workers hold.", labels=["function"]
        )
        workers = GaugeMetricFamily(
            "gearman_workers", "Workers registered for the function.", labels=["function"]
        )
        limit = meters.functions.limit
        rows: dict[str, list[int]] = {}
        live = sorted(server.registry, key=lambda fq: (-fq.total(), fq.name))
        for i, fq in enumerate(live):
            label = _t(fq.name) if i < limit else _t(OTHER)
            row = rows.setdefault(label, [0, 0, 0, 0, 0, 0])
            for p in range(3):
                row[p] += fq.queued[p]
            row[3] += fq.scheduled
            row[4] += fq.running
            row[5] += len(fq.workers)
        for label, row in sorted(rows.items()):
            for p, priority in enumerate(("high", "normal", "low", "scheduled")):
                queued.add_metric([label, priority], row[p])
            running.add_metric([label], row[4])
            workers.add_metric([label], row[5])
        yield queued
        yield running
        yield workers
        kept = GaugeMetricFamily(
            "gearman_jobs_failed_kept",
            "Background jobs in the failed list (dead-letter) now.",
            labels=["function"],
        )
        failed: dict[str, int] = {}
        by_count = sorted(server.failed.counts().items(), key=lambda item: (-item[1], item[0]))
        for i, (name, n) in enumerate(by_count):
            label = _t(name) if i < limit else _t(OTHER)
            failed[label] = failed.get(label, 0) + n
        for label, n in sorted(failed.items()):
            kept.add_metric([label], n)
        yield kept

        traffic = meters.traffic
        participants = server.clients()
        yield GaugeMetricFamily("gearman_connections", "Open connections.", value=len(participants))
        yield CounterMetricFamily(
            "gearman_connections_accepted", "Connections accepted.", value=traffic.connections
        )
        for metric, text, value in (
            ("gearman_received_bytes", "Bytes read from connections.", traffic.bytes_in),
            ("gearman_sent_bytes", "Bytes written to connections.", traffic.bytes_out),
            ("gearman_received_packets", "Packets and admin lines read.", traffic.packets_in),
            ("gearman_sent_packets", "Packets and admin replies written.", traffic.packets_out),
        ):
            yield CounterMetricFamily(metric, text, value=value)
        yield _histogram(
            HistogramMetricFamily(
                "gearman_store_write_seconds",
                "How long each write (one transaction of job changes) to the store took.",
            ),
            meters.store_latency,
        )
        yield _histogram(
            HistogramMetricFamily(
                "gearman_job_run_seconds",
                "From a job's assignment to its result, failure or exception.",
            ),
            meters.run_time,
        )
        yield GaugeMetricFamily(
            "gearman_store_slow",
            "1 while the store is slow (see --store-slow-seconds).",
            value=1 if server.durability.slow else 0,
        )
        yield GaugeMetricFamily(
            "gearman_jobs_spilled",
            "Queued jobs whose payload waits in the store only (see --spill-after).",
            value=len(server.table.spilled),
        )
        spill = server.durability.spill
        yield CounterMetricFamily(
            "gearman_spill_fetches",
            "Reads of spilled jobs' payloads back from the store.",
            value=spill.fetches if spill is not None else 0,
        )
        yield GaugeMetricFamily(
            "gearman_store_down",
            "1 while the store cannot be reached (background jobs are refused).",
            value=1 if server.durability.down else 0,
        )
        info = GaugeMetricFamily("gearman_server_info", "The server's version.", labels=["version"])
        info.add_metric([_version.__version__], 1)
        yield info
        yield GaugeMetricFamily(
            "gearman_server_start_time_seconds",
            "When the job server started, in seconds since the epoch.",
            value=meters.started,
        )


def exposition(server: JobServer) -> tuple[bytes, str]:
    """
    The server's metrics in Prometheus's text format, and its content
    type.
    """
    from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

    registry = CollectorRegistry(auto_describe=False)
    registry.register(GearmanCollector(server))  # type: ignore[arg-type]
    return generate_latest(registry), CONTENT_TYPE_LATEST


class MetricsResource(Resource):
    """
    C{GET /metrics}: the exposition (a 503 saying what to install when
    C{prometheus-client} is missing).
    """

    isLeaf = True

    def __init__(self, server: JobServer) -> None:
        super().__init__()
        self.job_server = server

    def render_GET(self, request: Request) -> bytes:
        """
        Answer with the metrics as they are now.
        """
        request.setHeader(b"cache-control", b"no-store")
        if not available():
            request.setResponseCode(503)
            request.setHeader(b"content-type", b"text/plain; charset=utf-8")
            return b"prometheus-client is not installed: pip install 'txgearmand[metrics]'\n"
        body, content_type = exposition(self.job_server)
        request.setHeader(b"content-type", content_type.encode("ascii"))
        return body
