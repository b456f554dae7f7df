"""
Prometheus metrics (L{txgearmand.metrics}): what a scrape says after a
scripted run, parsed with C{prometheus_client}'s own parser; bounded
labels; C{twistd gearmand --metrics} as a process.
"""

from __future__ import annotations

from typing import Any

from twisted.trial.unittest import SkipTest, SynchronousTestCase
from twisted.web.test.requesthelper import DummyRequest

from txgearmand import __version__, metrics
from txgearmand.test.helpers import ServerTestMixin
from txgearmand.wire import PacketType as P


def _parse(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """
    Every sample of an exposition, by name and sorted labels.
    """
    from prometheus_client.parser import text_string_to_metric_families

    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


class MetricsTests(ServerTestMixin, SynchronousTestCase):
    """
    What C{/metrics} says matches what the server did.
    """

    def setUp(self) -> None:
        if not metrics.available():
            raise SkipTest("prometheus-client is not installed")

    def scrape(self) -> dict[Any, float]:
        body, content_type = metrics.exposition(self.server)
        self.assertTrue(content_type.startswith("text/plain"))
        return _parse(body.decode("utf-8"))

    def test_scripted_run(self) -> None:
        """
        Submit 6 (4 in the background), complete 3, fail 1, raise 1, one
        running, one refused: counters, gauges and histograms say so.
        """
        self.make_server(max_queue={b"crop": 1})
        self.server.meters.watch()
        client = self.connect()
        for i in range(4):
            client.submit(b"resize", b"bg%d" % i, ptype=P.SUBMIT_JOB_BG)
        for i in range(2):
            client.submit(b"resize", b"fg%d" % i)
        client.submit(b"crop", b"x", ptype=P.SUBMIT_JOB_BG)
        client.send(P.SUBMIT_JOB_BG, b"crop", b"", b"y")
        worker = self.connect().can_do(b"resize")
        for reply in (P.WORK_COMPLETE, P.WORK_COMPLETE, P.WORK_COMPLETE, P.WORK_FAIL):
            handle = worker.grab()[1][0]
            self.clock.advance(0.2)
            worker.send(reply, *((handle,) if reply == P.WORK_FAIL else (handle, b"ok")))
        handle = worker.grab()[1][0]
        worker.send(P.WORK_EXCEPTION, handle, b"boom")
        worker.grab()
        got = self.scrape()
        resize = (("function", "resize"),)
        self.assertEqual(
            got[("gearman_jobs_submitted_total", (("function", "resize"), ("kind", "bg")))], 4
        )
        self.assertEqual(
            got[("gearman_jobs_submitted_total", (("function", "resize"), ("kind", "fg")))], 2
        )
        self.assertEqual(got[("gearman_jobs_completed_total", resize)], 3)
        self.assertEqual(got[("gearman_jobs_failed_total", resize)], 1)
        self.assertEqual(got[("gearman_jobs_exceptions_total", resize)], 1)
        self.assertEqual(got[("gearman_jobs_refused_total", (("function", "crop"),))], 1)
        self.assertEqual(got[("gearman_jobs_running", resize)], 1)
        self.assertEqual(
            got[("gearman_jobs_queued", (("function", "crop"), ("priority", "normal")))], 1
        )
        self.assertEqual(got[("gearman_workers", resize)], 1)
        self.assertEqual(got[("gearman_connections", ())], 2)
        self.assertEqual(got[("gearman_job_run_seconds_count", ())], 5)
        self.assertAlmostEqual(got[("gearman_job_run_seconds_sum", ())], 0.8)
        self.assertEqual(got[("gearman_job_run_seconds_bucket", (("le", "0.25"),))], 5)
        self.assertEqual(got[("gearman_job_run_seconds_bucket", (("le", "0.1"),))], 1)
        self.assertGreater(got[("gearman_received_packets_total", ())], 10)
        self.assertEqual(got[("gearman_server_info", (("version", __version__),))], 1)

    def test_bounded_labels(self) -> None:
        """
        Past the limit, invented function names count under C{_other}, in
        the counters and in the gauges.
        """
        self.make_server()
        self.server.registry.counts.limit = 3
        client = self.connect()
        for i in range(10):
            client.submit(b"f%d" % i, b"x", ptype=P.SUBMIT_JOB_BG)
        got = self.scrape()
        names = {
            dict(labels)["function"]
            for (name, labels) in got
            if name == "gearman_jobs_submitted_total"
        }
        self.assertEqual(names, {"f0", "f1", "f2", "_other"})
        other = (("function", "_other"), ("kind", "bg"))
        self.assertEqual(got[("gearman_jobs_submitted_total", other)], 7)
        queued = {
            dict(labels)["function"] for (name, labels) in got if name == "gearman_jobs_queued"
        }
        self.assertEqual(len(queued), 4)
        self.assertEqual(
            got[("gearman_jobs_queued", (("function", "_other"), ("priority", "normal")))], 7
        )

    def test_resource(self) -> None:
        """
        C{GET /metrics} answers the exposition, not cached.
        """
        self.make_server()
        request = DummyRequest([b""])
        body = metrics.MetricsResource(self.server).render_GET(request)  # type: ignore[arg-type]
        self.assertIn(b"gearman_connections 0.0", body)
        self.assertEqual(request.responseHeaders.getRawHeaders(b"cache-control"), [b"no-store"])


class MetricsProcessTests(SynchronousTestCase):
    """
    C{twistd gearmand --metrics} as an operator runs it.
    """

    def test_scrape(self) -> None:
        """
        A job submitted over Gearman shows in a scrape of the metrics port.
        """
        import urllib.request
        from pathlib import Path

        from txgearmand.test import _process

        if not metrics.available():
            raise SkipTest("prometheus-client is not installed")
        workdir = Path(self.mktemp()).resolve()
        workdir.mkdir(parents=True)
        port = _process.free_port()
        server = _process.twistd_gearmand(
            workdir, "--queue=memory", f"--metrics=tcp:{port}:interface=127.0.0.1"
        )
        server.start()
        self.addCleanup(server.stop)
        conn = _process.PacketConnection(server.port)
        self.addCleanup(conn.sock.close)
        conn.send(P.SUBMIT_JOB_BG, b"resize", b"", b"x")
        conn.expect(P.JOB_CREATED)
        url = f"http://127.0.0.1:{port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as response:
            got = _parse(response.read().decode("utf-8"))
        self.assertEqual(
            got[("gearman_jobs_submitted_total", (("function", "resize"), ("kind", "bg")))], 1
        )
        self.assertIn(f"Listening on 127.0.0.1:{port} (--metrics", server.log_path.read_text())
