"""
What watching the server costs: the foreground 10 clients x 10 workers
benchmark against C{twistd gearmand} plain, and with the status site
(C{--web}) and the metrics port (C{--metrics}) on while a poller asks for
C{/status.json} every 2 s (what the page does) and C{/metrics} every 5 s
(a Prometheus scrape), in alternating rounds.

    python -m benchmarks.watched              # 5 rounds each, 4 s runs
    python -m benchmarks.watched --rounds 9 --seconds 8
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

from benchmarks import loadgen
from txgearmand.test import _process


class Poller(threading.Thread):
    """
    Fetches URLs, each at its own interval, until stopped; counts them.
    """

    def __init__(self, urls: list[tuple[str, float]]) -> None:
        super().__init__(daemon=True)
        self.urls = urls
        self.stopped = threading.Event()
        self.fetched = 0
        self.failed = 0

    def run(self) -> None:
        due = [time.monotonic()] * len(self.urls)
        while not self.stopped.is_set():
            now = time.monotonic()
            for i, (url, every) in enumerate(self.urls):
                if now >= due[i]:
                    due[i] = now + every
                    try:
                        with urllib.request.urlopen(url, timeout=5) as response:
                            response.read()
                        self.fetched += 1
                    except OSError:
                        self.failed += 1
            self.stopped.wait(0.1)


def one_run(watched: bool, seconds: float, warm: float) -> tuple[float, int]:
    """
    Foreground jobs per second in one run on a fresh server, and how many
    pages the poller fetched.
    """
    with tempfile.TemporaryDirectory(prefix="txgearmand-watched-") as tmp:
        options = ["--queue=memory", "--verbose=ERROR"]
        web = metrics = 0
        if watched:
            web, metrics = _process.free_port(), _process.free_port()
            options += [
                f"--web=tcp:{web}:interface=127.0.0.1",
                f"--metrics=tcp:{metrics}:interface=127.0.0.1",
            ]
        server = _process.twistd_gearmand(Path(tmp), *options)
        server.start()
        poller = None
        try:
            if watched:
                poller = Poller(
                    [
                        (f"http://127.0.0.1:{web}/status.json", 2.0),
                        (f"http://127.0.0.1:{metrics}/metrics", 5.0),
                    ]
                )
                poller.start()
            result = loadgen.foreground(server.port, 10, 10, 100, 8, seconds, warm)
        finally:
            if poller is not None:
                poller.stopped.set()
                poller.join(10)
            server.stop()
        fetched = poller.fetched if poller is not None else 0
        if poller is not None and poller.failed:
            raise RuntimeError(f"{poller.failed} polls failed")
        return result["jobs_per_s"], fetched


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.watched", description=__doc__)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=4.0)
    args = parser.parse_args(argv)
    plain: list[float] = []
    watched: list[float] = []
    polls = 0
    for _ in range(args.rounds):
        plain.append(one_run(False, args.seconds, 1.0)[0])
        rate, fetched = one_run(True, args.seconds, 1.0)
        watched.append(rate)
        polls += fetched
    print("fg 10x10 100 B, jobs/s, alternating rounds:")
    print("  plain   ", " ".join(f"{r:.0f}" for r in plain))
    print("  watched ", " ".join(f"{r:.0f}" for r in watched), f"({polls} polls answered)")
    ratio = statistics.median(watched) / statistics.median(plain)
    print(
        f"  medians  plain {statistics.median(plain):.0f}, watched"
        f" {statistics.median(watched):.0f}: {ratio:.3f}x"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
