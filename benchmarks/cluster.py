"""
Several txgearmand servers on one PostgreSQL database (see README.rst,
"Running several servers"):

  - background-submit rate with 1, 2 and 3 servers: on each server, some
    connections (from a load process of its own) keep a window of
    SUBMIT_JOB_BG in flight for a set time, counting JOB_CREATED; jobs/s
    per server and in all. No workers; a fresh database for each row.
  - takeover time: two servers A and B, jobs queued on A, a worker on B
    only, A killed (SIGKILL): the time from the kill to the first adopted
    job reaching the worker on B (JOB_ASSIGN), and to the last, for each
    C{--takeover-after}. A server beats and looks for dead ones every
    C{min(1, takeover_after / 3)} s, so the first job comes between about
    C{takeover_after - 1} and C{takeover_after + 1} s after the kill,
    depending on where in its beat A died.

    python -m benchmarks.cluster                 # 3 rounds, 5 s per row
    python -m benchmarks.cluster --short         # a smoke run, under a minute
    python -m benchmarks.cluster --servers 1,3 --takeover-after 3 --rounds 5

The PostgreSQL server is the one C{txgearmand.test._postgres} gives
(C{TXGEARMAND_TEST_POSTGRESQL}, or a private one started from Debian's
package). Everything runs on one machine: the servers, PostgreSQL and the
load share its cores, so more servers mean less CPU for each.
"""

from __future__ import annotations

import argparse
import multiprocessing
import selectors
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks import loadgen
from benchmarks.loadgen import (
    CAN_DO,
    ERROR,
    GRAB_JOB,
    JOB_ASSIGN,
    JOB_CREATED,
    NO_JOB,
    NOOP,
    PRE_SLEEP,
    SUBMIT_JOB_BG,
    WORK_COMPLETE,
    packet,
)
from txgearmand.test import _postgres, _process

PAYLOAD = b"x" * 100


def drop_database(url: str) -> None:
    """
    Drop a database that L{_postgres.fresh_database} made.
    """
    import psycopg

    base, name = url.rsplit("/", 1)
    with psycopg.connect(base + "/postgres", autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def start_servers(
    workdir: Path, url: str, count: int, takeover_after: float = 10.0
) -> list[_process.Server]:
    """
    Start C{count} servers (nodes C{s0}, C{s1}, ...) on one database.
    """
    servers = []
    try:
        for i in range(count):
            d = workdir / f"s{i}-{time.monotonic_ns()}"
            d.mkdir()
            server = _process.twistd_gearmand(
                d,
                f"--queue={url}",
                f"--node=s{i}",
                f"--takeover-after={takeover_after:g}",
                "--verbose=WARNING",
            )
            servers.append(server)
            server.start()
    except BaseException:
        for server in servers:
            server.kill()
        raise
    return servers


# -- the submit rate -------------------------------------------------------


def _submitter(
    port: int,
    connections: int,
    window: int,
    function: bytes,
    start_at: float,
    measure_from: float,
    stop_at: float,
    results: Any,
) -> None:
    """
    A load process: C{connections} connections to one server, each with
    C{window} background submissions in flight until C{stop_at}; report
    the JOB_CREATED between C{measure_from} and C{stop_at}, and errors.
    """
    sel = selectors.DefaultSelector()
    conns = [loadgen.Conn(port) for _ in range(connections)]
    submit = packet(SUBMIT_JOB_BG, function, b"", PAYLOAD)
    while time.time() < start_at:
        time.sleep(0.001)
    for c in conns:
        sel.register(c.sock, selectors.EVENT_READ, c)
        c.send(submit * window)
        c.flush()
    created = errors = 0
    while True:
        now = time.time()
        if now >= stop_at:
            break
        for key, _ in sel.select(timeout=0.05):
            c = key.data
            more = 0
            for ptype, _ in c.packets():
                if ptype == JOB_CREATED:
                    if time.time() >= measure_from:
                        created += 1
                elif ptype == ERROR:
                    errors += 1
                more += 1
            if more:
                c.send(submit * more)
                c.flush()
            if c.closed:
                raise RuntimeError("the server closed a submitting connection")
    results.put((port, created, errors))
    for c in conns:
        c.sock.close()


def submit_rates(
    servers: list[_process.Server], connections: int, window: int, seconds: float, warmup: float
) -> list[float]:
    """
    Background submissions per second on each server, all at once.
    """
    ctx = multiprocessing.get_context("fork")
    results: Any = ctx.Queue()
    function = b"cluster%d" % time.monotonic_ns()
    start_at = time.time() + 0.5
    measure_from = start_at + warmup
    stop_at = measure_from + seconds
    procs = [
        ctx.Process(
            target=_submitter,
            args=(
                s.port,
                connections,
                window,
                function,
                start_at,
                measure_from,
                stop_at,
                results,
            ),
        )
        for s in servers
    ]
    for p in procs:
        p.start()
    by_port: dict[int, tuple[int, int]] = {}
    try:
        for _ in procs:
            port, created, errors = results.get(timeout=warmup + seconds + 60)
            by_port[port] = (created, errors)
    finally:
        for p in procs:
            p.join(30)
            if p.is_alive():
                p.kill()
    errors = sum(e for _, e in by_port.values())
    if errors:
        raise RuntimeError(f"{errors} submissions answered ERROR")
    return [by_port[s.port][0] / seconds for s in servers]


# -- the takeover time -----------------------------------------------------


def takeover(workdir: Path, takeover_after: float, jobs: int) -> tuple[float, float]:
    """
    Two servers on a fresh database; C{jobs} background jobs queued on A,
    a sleeping worker on B; A killed. Seconds from the kill to the first
    and to the last adopted job assigned to the worker on B.
    """
    url = _postgres.fresh_database()
    servers = start_servers(workdir, url, 2, takeover_after)
    a, b = servers
    try:
        function = b"takeover%d" % time.monotonic_ns()
        loadgen.submit_background(a.port, jobs, function, PAYLOAD)
        worker = loadgen.Conn(b.port)
        sel = selectors.DefaultSelector()
        sel.register(worker.sock, selectors.EVENT_READ)
        worker.send(packet(CAN_DO, function) + packet(GRAB_JOB))
        worker.flush()
        asleep = False
        deadline = time.monotonic() + 30
        while not asleep and time.monotonic() < deadline:
            sel.select(timeout=0.5)
            for ptype, _ in worker.packets():
                if ptype == NO_JOB:
                    worker.send(packet(PRE_SLEEP))
                    worker.flush()
                    asleep = True
                elif ptype == JOB_ASSIGN:
                    raise RuntimeError("B had a job before the kill")
        if not asleep:
            raise RuntimeError("the worker on B got no NO_JOB")
        assert a.process is not None
        a.process.kill()
        killed = time.perf_counter()
        a.process.wait(_process.STOP_TIMEOUT)
        first = last = 0.0
        done = 0
        deadline = time.monotonic() + takeover_after + 60
        while done < jobs and time.monotonic() < deadline:
            sel.select(timeout=0.5)
            for ptype, body in worker.packets():
                if ptype == JOB_ASSIGN:
                    last = time.perf_counter() - killed
                    if not done:
                        first = last
                    done += 1
                    handle = body.split(b"\0", 1)[0]
                    worker.send(packet(WORK_COMPLETE, handle, b"") + packet(GRAB_JOB))
                elif ptype == NO_JOB:
                    worker.send(packet(PRE_SLEEP))
                elif ptype == NOOP:
                    worker.send(packet(GRAB_JOB))
            worker.flush()
            if worker.closed:
                raise RuntimeError("B closed the worker's connection")
        worker.sock.close()
        if done < jobs:
            raise RuntimeError(f"only {done} of {jobs} jobs reached B\n{b.log()[-2000:]}")
        return first, last
    finally:
        for server in servers:
            server.kill()
        drop_database(url)


# -- the run ---------------------------------------------------------------


@dataclass
class Results:
    """
    Every round's numbers, by row.
    """

    #: Servers -> rounds -> jobs/s of each server.
    rates: dict[int, list[list[float]]] = field(default_factory=dict)
    #: --takeover-after -> rounds -> (first, last) seconds.
    takeovers: dict[float, list[tuple[float, float]]] = field(default_factory=dict)


def _number(value: float) -> str:
    return f"{value:,.0f}"


def _table(header: list[str], rows: list[list[str]]) -> str:
    """
    A reStructuredText simple table.
    """
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    rule = "  ".join("=" * w for w in widths)

    def line(cells: list[str]) -> str:
        return "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()

    return "\n".join([rule, line(header), rule, *map(line, rows), rule])


def report(results: Results, args: argparse.Namespace, rounds: int) -> str:
    """
    The tables: medians of the rounds, and every round's figure.
    """
    out = []
    if results.rates:
        out.append(
            f"Background submits on one PostgreSQL database: {args.connections} connections"
            f" per server x {args.window} in flight, {args.seconds:g} s after"
            f" {args.warmup:g} s of warm-up, no workers; median of {rounds} round(s)."
        )
        out.append("")
        rows = []
        for count, per_round in sorted(results.rates.items()):
            per_server = [statistics.median(r[i] for r in per_round) for i in range(count)]
            totals = [sum(r) for r in per_round]
            rows.append(
                [
                    str(count),
                    " / ".join(_number(v) for v in per_server),
                    _number(statistics.median(totals)),
                    " ".join(_number(t) for t in totals),
                ]
            )
        out.append(
            _table(["servers", "jobs/s per server", "jobs/s in all", "in all, each round"], rows)
        )
        out.append("")
    if results.takeovers:
        out.append(
            f"Takeover: {args.jobs} jobs queued on A, a worker on B only, A killed (SIGKILL);"
            f" seconds from the kill to the first and the last adopted job assigned on B;"
            f" median of {rounds} round(s)."
        )
        out.append("")
        takeover_rows = []
        for after, timings in results.takeovers.items():
            takeover_rows.append(
                [
                    f"{after:g} s",
                    f"{statistics.median(f for f, _ in timings):.2f}",
                    f"{statistics.median(last for _, last in timings):.2f}",
                    " ".join(f"{f:.2f}-{last:.2f}" for f, last in timings),
                ]
            )
        out.append(
            _table(["--takeover-after", "to first job", "to last job", "each round"], takeover_rows)
        )
        out.append("")
    return "\n".join(out)


def _commit() -> str:
    try:
        return (
            subprocess.run(
                ["git", "-C", str(Path(__file__).parent), "rev-parse", "--short", "HEAD"],
                capture_output=True,
                text=True,
                check=False,
            ).stdout.strip()
            or "unknown"
        )
    except OSError:
        return "unknown"


def _counts(text: str, kind: type[int] | type[float]) -> list[Any]:
    return [kind(v) for v in text.split(",") if v]


def main(argv: list[str] | None = None) -> int:
    """
    Run the rows, rounds taking turns, and print the tables.
    """
    parser = argparse.ArgumentParser(prog="python -m benchmarks.cluster", description=__doc__)
    parser.add_argument("--rounds", type=int, default=None, help="rounds (default 3; --short 1)")
    parser.add_argument(
        "--seconds", type=float, default=None, help="measured seconds per row (default 5)"
    )
    parser.add_argument("--warmup", type=float, default=None, help="seconds (default 1)")
    parser.add_argument("--servers", default="1,2,3", help="server counts for the submit rate")
    parser.add_argument("--connections", type=int, default=4, help="per server")
    parser.add_argument("--window", type=int, default=100, help="submissions in flight each")
    parser.add_argument("--jobs", type=int, default=None, help="takeover jobs (default 1000)")
    parser.add_argument("--takeover-after", default="10,3", help="seconds, comma-separated")
    parser.add_argument("--no-rate", action="store_true", help="skip the submit rate")
    parser.add_argument("--no-takeover", action="store_true", help="skip the takeover time")
    parser.add_argument("--short", action="store_true", help="a smoke run, under a minute")
    args = parser.parse_args(argv)
    rounds = args.rounds or (1 if args.short else 3)
    args.seconds = args.seconds or (2.0 if args.short else 5.0)
    args.warmup = args.warmup if args.warmup is not None else (0.5 if args.short else 1.0)
    args.jobs = args.jobs or (300 if args.short else 1000)
    counts = [] if args.no_rate else _counts(args.servers, int)
    afters = [] if args.no_takeover else _counts(args.takeover_after, float)
    try:
        _postgres.server_url()
    except _postgres.Unavailable as e:
        print(f"no PostgreSQL: {e}", file=sys.stderr)
        return 1
    started = time.monotonic()
    results = Results()
    with tempfile.TemporaryDirectory(prefix="txgearmand-bench-") as tmp:
        workdir = Path(tmp)
        for round_ in range(rounds):
            for count in counts:
                url = _postgres.fresh_database()
                servers = start_servers(workdir, url, count)
                try:
                    rates = submit_rates(
                        servers, args.connections, args.window, args.seconds, args.warmup
                    )
                finally:
                    for server in servers:
                        server.stop()
                    drop_database(url)
                results.rates.setdefault(count, []).append(rates)
                print(
                    f"round {round_ + 1} {count} server(s): "
                    + " ".join(_number(r) for r in rates)
                    + f" = {_number(sum(rates))} jobs/s",
                    file=sys.stderr,
                    flush=True,
                )
            for after in afters:
                first, last = takeover(workdir, after, args.jobs)
                results.takeovers.setdefault(after, []).append((first, last))
                print(
                    f"round {round_ + 1} takeover after {after:g} s: first {first:.2f} s,"
                    f" last {last:.2f} s",
                    file=sys.stderr,
                    flush=True,
                )
    print(report(results, args, rounds))
    print(
        f"(one 2-core machine: servers, PostgreSQL and load share it; took"
        f" {time.monotonic() - started:.0f} s; commit {_commit()})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
