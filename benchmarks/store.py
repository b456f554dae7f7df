"""
Durable store benchmark: background submit throughput with the memory,
SQLite and PostgreSQL stores, against C gearmand with its libsqlite3 queue,
in one run; then a restart with many stored jobs (replay time and memory).

    python -m benchmarks.store [--jobs 5000] [--replay-jobs 100000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

from benchmarks._load import pipelined_background_submits, rss_kib, status_total
from txgearmand.test import _postgres, _process


def _servers(workdir: Path) -> list[tuple[str, _process.Server | None]]:
    servers: list[tuple[str, _process.Server | None]] = []

    def tx(name: str, queue: str) -> None:
        d = workdir / name
        d.mkdir()
        servers.append((name, _process.twistd_gearmand(d, f"--queue={queue}", "--verbose=ERROR")))

    tx("txgearmand memory", "memory")
    tx("txgearmand sqlite", f"sqlite:{workdir / 'tx.sqlite'}")
    try:
        tx("txgearmand postgresql", _postgres.fresh_database())
    except _postgres.Unavailable as e:
        print(f"(no PostgreSQL: {e})", file=sys.stderr)
        servers.append(("txgearmand postgresql", None))
    for name, options in (
        (
            "C gearmand libsqlite3",
            ["-t", "1", "-q", "libsqlite3", f"--libsqlite3-db={workdir / 'c.sqlite'}"],
        ),
        ("C gearmand memory", ["-t", "1"]),
    ):
        d = workdir / name.replace(" ", "-")
        d.mkdir()
        servers.append((name, _process.c_gearmand(d, *options)))
    return servers


def submit_rates(jobs: int, rounds: int, workdir: Path) -> dict[str, float]:
    """
    Median background-submit rate per server, servers taking turns.
    """
    servers = _servers(workdir)
    rates: dict[str, list[float]] = {name: [] for name, _ in servers}
    for _, server in servers:
        if server is not None:
            server.start()
    try:
        for r in range(rounds):
            for name, server in servers:
                if server is None:
                    continue
                rates[name].append(pipelined_background_submits(server.port, jobs, b"bench%d" % r))
    finally:
        for _, server in servers:
            if server is not None:
                server.stop()
    return {name: statistics.median(v) for name, v in rates.items() if v}


def replay(jobs: int, workdir: Path, queue_kind: str) -> dict[str, float]:
    """
    Submit C{jobs} background jobs live, note the time and the server's
    memory; restart on the same store, note how long until it answers and
    its memory.
    """
    d = workdir / f"replay-{queue_kind}"
    d.mkdir()
    queue = f"sqlite:{d / 'jobs.sqlite'}" if queue_kind == "sqlite" else _postgres.fresh_database()
    server = _process.twistd_gearmand(d, f"--queue={queue}", "--verbose=ERROR")
    server.start()
    start = time.perf_counter()
    for i in range(0, jobs, 10000):
        pipelined_background_submits(server.port, min(10000, jobs - i), b"replay")
    live_seconds = time.perf_counter() - start
    assert server.process is not None
    live_rss = rss_kib(server.process.pid)
    server.stop()
    again = _process.Server(server.argv, server.port, d / "again.log", d)
    start = time.perf_counter()
    again.start()
    total = status_total(again.port, b"replay")
    replay_seconds = time.perf_counter() - start
    assert again.process is not None
    replay_rss = rss_kib(again.process.pid)
    again.stop()
    if total != jobs:
        raise RuntimeError(f"replayed {total} of {jobs} jobs")
    return {
        "live_seconds": live_seconds,
        "replay_seconds": replay_seconds,
        "live_rss_mib": live_rss / 1024,
        "replay_rss_mib": replay_rss / 1024,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--replay-jobs", type=int, default=100000)
    parser.add_argument("--no-replay", action="store_true")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="txgearmand-bench-") as tmp:
        workdir = Path(tmp)
        rates = submit_rates(args.jobs, args.rounds, workdir)
        print(
            f"Background submit rate, {args.jobs} pipelined jobs, one connection "
            f"(median of {args.rounds}):"
        )
        for name, rate in rates.items():
            print(f"  {name:26s} {rate:10.0f} jobs/s")
        c_sqlite = rates.get("C gearmand libsqlite3")
        memory = rates.get("txgearmand memory")
        print("Ratios:")
        for name in ("txgearmand sqlite", "txgearmand postgresql"):
            if name in rates and c_sqlite:
                print(f"  {name} / C gearmand libsqlite3 = {rates[name] / c_sqlite:6.1f}x")
        if "txgearmand sqlite" in rates and memory:
            ratio = rates["txgearmand sqlite"] / memory
            print(f"  txgearmand sqlite / txgearmand memory = {ratio:6.2f}x")
        if not args.no_replay:
            for kind in ("sqlite", "postgresql"):
                try:
                    r = replay(args.replay_jobs, workdir, kind)
                except _postgres.Unavailable as e:
                    print(f"(no {kind} replay: {e})")
                    continue
                print(
                    f"Restart with {args.replay_jobs} stored jobs ({kind}): "
                    f"submitting them live took {r['live_seconds']:.1f} s, "
                    f"replay until serving {r['replay_seconds']:.1f} s "
                    f"(ratio {r['replay_seconds'] / r['live_seconds']:.2f}); RSS live "
                    f"{r['live_rss_mib']:.0f} MiB, after replay {r['replay_rss_mib']:.0f} MiB "
                    f"(ratio {r['replay_rss_mib'] / r['live_rss_mib']:.2f})"
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
