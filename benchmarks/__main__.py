"""
Run the benchmark scenarios against txgearmand (CPython and PyPy) and its
peers (C gearmand with one and with its default I/O threads, Perl
Gearman::Server), each on a free loopback port, taking turns, and print
one table of medians with the ratios txgearmand / peer.

    python -m benchmarks            # short: under two minutes
    python -m benchmarks --full     # real numbers: longer runs, 100k jobs
    python -m benchmarks --servers txgearmand,c-t1 --rounds 5
    python -m benchmarks --cpu --full   # only the server-CPU-per-job rows

Servers that are not installed are skipped, saying so; scenarios a server
cannot run are marked n/a.

The CPU scenarios (cpu_fg_10x10, cpu_bg; --cpu runs only these)
measure the server process's own CPU time per job, in microseconds (user,
system and their total; lower is better): the utime and stime of
/proc/PID/stat (all threads of the process together, so C gearmand's I/O
threads count) read just before and just after a fixed number of jobs
(40,000 with --full, 10,000 without), after an untimed warm-up run of
the same size. cpu_fg_10x10 is the fg_10x10_100B load (10 clients x
10 workers, 100 B, 8 in flight per client) run to a count; cpu_bg
submits the jobs in the background, pipelined on one connection, and
drains them with 10 workers. The kernel counts CPU time in clock ticks
(10 ms), so a figure is good to about 10 ms / jobs.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from benchmarks import loadgen
from benchmarks._load import cpu_seconds, rss_kib, status_total
from txgearmand.test import _process

PYPY_VENV = Path(
    os.environ.get("TXGEARMAND_PYPY_VENV", Path.home() / ".cache/txgearmand/pypy-venv")
)


def pypy_python() -> str | None:
    """
    A PyPy with Twisted installed (a venv made on first use), or None.
    """
    pypy = shutil.which("pypy3")
    if pypy is None:
        return None
    python = PYPY_VENV / "bin" / "python"
    if not python.exists():
        print(f"(making a PyPy venv in {PYPY_VENV} ...)", file=sys.stderr)
        try:
            subprocess.run([pypy, "-m", "venv", str(PYPY_VENV)], check=True, capture_output=True)
            subprocess.run(
                [
                    str(python),
                    "-m",
                    "pip",
                    "install",
                    "-q",
                    "Twisted<=26.4",
                    "attrs",
                    "zope.interface",
                ],
                check=True,
                capture_output=True,
                timeout=600,
            )
        except (OSError, subprocess.SubprocessError) as e:
            print(f"(no PyPy venv: {e})", file=sys.stderr)
            shutil.rmtree(PYPY_VENV, ignore_errors=True)
            return None
    return str(python)


def make_server(kind: str, workdir: Path) -> _process.Server | None:
    """
    A server of one kind, not started; None when it is not installed.
    """
    d = workdir / f"{kind}-{time.monotonic_ns()}"
    d.mkdir()
    if kind == "txgearmand":
        return _process.twistd_gearmand(d, "--queue=memory", "--verbose=ERROR")
    if kind == "txgearmand-fast":
        return _process.twistd_gearmand(
            d, "--queue=memory", "--verbose=ERROR", twistd=("-r", "txgearmand-epoll")
        )
    if kind in ("txgearmand-pypy", "txgearmand-pypy-fast"):
        python = pypy_python()
        if python is None:
            return None
        reactor = ("-r", "txgearmand-epoll") if kind.endswith("-fast") else ()
        return _process.twistd_gearmand(
            d, "--queue=memory", "--verbose=ERROR", python=python, twistd=reactor
        )
    if kind == "c-t1":
        return _process.c_gearmand(d, "--threads=1")
    if kind == "c":
        return _process.c_gearmand(d)
    if kind == "perl":
        if not Path("/usr/bin/gearmand").exists() or not _process.has_perl_module(
            "Gearman::Server"
        ):
            return None
        port = _process.free_port()
        return _process.Server(
            ["/usr/bin/gearmand", f"--port={port}", "--listen=127.0.0.1"],
            port,
            d / "perl.log",
            d,
        )
    raise ValueError(kind)


SERVER_NAMES = {
    "txgearmand": "txgearmand (CPython)",
    "txgearmand-pypy": "txgearmand (PyPy)",
    "txgearmand-fast": "CPython, txgearmand-epoll",
    "txgearmand-pypy-fast": "PyPy, txgearmand-epoll",
    "c-t1": "C gearmand -t 1",
    "c": "C gearmand (4 threads)",
    "perl": "Perl gearmand",
}

#: What each server cannot do, by scenario.
UNSUPPORTED = {("perl", "bg_priorities_drain"): "no LOW priority, no GRAB_JOB_UNIQ"}


#: A scenario: (name, description, needs a fresh server, run(server) -> metrics).
Scenario = tuple[str, str, bool, Callable[[_process.Server], dict[str, float]]]

#: The scenarios C{--cpu} runs.
CPU_SCENARIOS = ("cpu_fg_10x10", "cpu_bg")


def scenarios(full: bool) -> list[Scenario]:
    """
    The scenarios, short or C{full}.
    """
    secs = 8.0 if full else 2.0
    warm = 2.0 if full else 0.5
    jobs = 100_000 if full else 20_000
    herd = 500 if full else 200
    herd_jobs = 10 if full else 3
    cpu_jobs = 40_000 if full else 10_000

    def fg(
        clients: int, workers: int, size: int, window: int
    ) -> Callable[[_process.Server], dict[str, float]]:
        return lambda server: loadgen.foreground(
            server.port, clients, workers, size, window, secs, warm
        )

    def bg(priorities: bool) -> Callable[[_process.Server], dict[str, float]]:
        def run(server: _process.Server) -> dict[str, float]:
            function = b"bg%d" % time.monotonic_ns()
            port = server.port
            submit = loadgen.submit_background(port, jobs, function, b"x" * 100, priorities)
            grab = loadgen.GRAB_JOB_UNIQ if priorities else loadgen.GRAB_JOB
            drain = loadgen.drain(port, 10, function, jobs, grab)
            return {"submit_per_s": jobs / submit, "drain_per_s": jobs / drain}

        return run

    return [
        (
            "fg_1x1_100B",
            "foreground, 1 client x 1 worker, 100 B, 1 in flight",
            False,
            fg(1, 1, 100, 1),
        ),
        (
            "fg_10x10_100B",
            "foreground, 10 clients x 10 workers, 100 B, 8 in flight each",
            False,
            fg(10, 10, 100, 8),
        ),
        (
            "fg_10x10_64KiB",
            "foreground, 10 clients x 10 workers, 64 KiB, 2 in flight each",
            False,
            fg(10, 10, 65536, 2),
        ),
        (
            "bg_submit_drain",
            f"background: submit {jobs} x 100 B on one connection, drain with 10 workers",
            True,
            bg(False),
        ),
        (
            "bg_priorities_drain",
            f"background HIGH/NORMAL/LOW: submit {jobs}, drain with GRAB_JOB_UNIQ",
            True,
            bg(True),
        ),
        (
            "rss_queued",
            f"server RSS with {jobs} queued 100 B background jobs",
            True,
            lambda server: rss_scenario(server, jobs),
        ),
        (
            "idle_herd",
            f"{herd} sleeping workers, {herd_jobs} jobs 1 s apart: NOOPs per job",
            False,
            lambda server: {
                "noops_per_job": loadgen.idle_herd(
                    server.port, herd, herd_jobs, 1.0 if full else 0.5
                )
            },
        ),
        (
            "cpu_fg_10x10",
            f"server CPU us per job: {cpu_jobs} foreground jobs, 10 clients x 10 workers, "
            "100 B, 8 in flight each (after a warm-up run)",
            False,
            lambda server: cpu_foreground(server, cpu_jobs),
        ),
        (
            "cpu_bg",
            f"server CPU us per job: submit {cpu_jobs} x 100 B background, pipelined, "
            "drain with 10 workers (after a warm-up run)",
            False,
            lambda server: cpu_background(server, cpu_jobs),
        ),
    ]


def rss_scenario(server: _process.Server, jobs: int) -> dict[str, float]:
    """
    The server's RSS idle and with C{jobs} background jobs queued.
    """
    function = b"rss%d" % time.monotonic_ns()
    assert server.process is not None
    before = rss_kib(server.process.pid)
    loadgen.submit_background(server.port, jobs, function, b"x" * 100)
    time.sleep(0.5)
    return {"rss_mib": rss_kib(server.process.pid) / 1024, "idle_rss_mib": before / 1024}


def _cpu_per_job(
    before: tuple[float, float], after: tuple[float, float], jobs: int
) -> dict[str, float]:
    user = (after[0] - before[0]) * 1e6 / jobs
    system = (after[1] - before[1]) * 1e6 / jobs
    return {"cpu_user_us": user, "cpu_sys_us": system, "cpu_total_us": user + system}


def _pid(server: _process.Server) -> int:
    assert server.process is not None and server.process.poll() is None, "the server is not running"
    return server.process.pid


def cpu_foreground(server: _process.Server, jobs: int) -> dict[str, float]:
    """
    The server process's CPU time per foreground job (10 clients x 10
    workers, 100 B, 8 in flight per client), over exactly C{jobs} jobs
    after a warm-up run of as many.
    """
    pid = _pid(server)
    loadgen.foreground_fixed(server.port, 10, 10, 100, 8, jobs, lambda: None)
    _, before, after = loadgen.foreground_fixed(
        server.port, 10, 10, 100, 8, jobs, lambda: cpu_seconds(pid)
    )
    return _cpu_per_job(before, after, jobs)


def cpu_background(server: _process.Server, jobs: int) -> dict[str, float]:
    """
    The server process's CPU time per background job: C{jobs} submitted
    pipelined on one connection, then drained by 10 workers; after a
    warm-up run of as many.
    """
    pid = _pid(server)
    payload = b"x" * 100
    warm = b"cpuw%d" % time.monotonic_ns()
    loadgen.submit_background(server.port, jobs, warm, payload)
    loadgen.drain(server.port, 10, warm, jobs)
    function = b"cpu%d" % time.monotonic_ns()
    before = cpu_seconds(pid)
    loadgen.submit_background(server.port, jobs, function, payload)
    loadgen.drain(server.port, 10, function, jobs)
    _wait_empty(server.port, function)
    after = cpu_seconds(pid)
    return _cpu_per_job(before, after, jobs)


def _wait_empty(port: int, function: bytes, timeout: float = 10.0) -> None:
    """
    Wait until the server has taken the last WORK_COMPLETE of a function
    (admin status shows no job of it), at most C{timeout} seconds.
    """
    deadline = time.monotonic() + timeout
    while status_total(port, function) and time.monotonic() < deadline:
        time.sleep(0.02)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--full", action="store_true", help="longer runs, 100k jobs")
    parser.add_argument("--rounds", type=int, default=None, help="rounds (default 1, --full 3)")
    parser.add_argument("--servers", default=",".join(SERVER_NAMES))
    parser.add_argument("--scenarios", default=None, help="comma-separated scenario names")
    parser.add_argument(
        "--cpu", action="store_true", help="only the server-CPU-per-job scenarios (cpu_*)"
    )
    args = parser.parse_args(argv)
    rounds = args.rounds or (3 if args.full else 1)
    kinds = [k for k in args.servers.split(",") if k]
    chosen = scenarios(args.full)
    if args.scenarios:
        wanted = set(args.scenarios.split(","))
        chosen = [s for s in chosen if s[0] in wanted]
    if args.cpu:
        chosen = [s for s in chosen if s[0] in CPU_SCENARIOS]
    started = time.monotonic()
    results: dict[tuple[str, str, str], list[float]] = {}
    skipped: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="txgearmand-bench-") as tmp:
        workdir = Path(tmp)
        shared: dict[str, _process.Server] = {}
        for kind in kinds:
            server = make_server(kind, workdir)
            if server is None:
                skipped[kind] = "not installed"
                continue
            server.start()
            shared[kind] = server
        try:
            for round_ in range(rounds):
                for name, _, fresh, run in chosen:
                    for kind in list(shared):
                        if (kind, name) in UNSUPPORTED:
                            continue
                        if fresh:
                            server = make_server(kind, workdir)
                            assert server is not None
                            server.start()
                            try:
                                metrics = run(server)
                            finally:
                                server.stop()
                        else:
                            metrics = run(shared[kind])
                        for metric, value in metrics.items():
                            results.setdefault((name, metric, kind), []).append(value)
                        print(
                            f"round {round_ + 1} {name:20s} {kind:16s} "
                            + " ".join(f"{m}={v:.2f}" for m, v in metrics.items()),
                            file=sys.stderr,
                            flush=True,
                        )
        finally:
            for server in shared.values():
                server.stop()
    report(results, chosen, [k for k in kinds if k not in skipped], skipped, rounds)
    print(f"\n(took {time.monotonic() - started:.0f} s; commit {_commit()})")
    return 0


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


def report(
    results: dict[tuple[str, str, str], list[float]],
    chosen: list[Scenario],
    kinds: list[str],
    skipped: dict[str, str],
    rounds: int,
) -> None:
    print(
        f"\nMedians of {rounds} round(s); one 2-core machine; load generator in separate processes."
    )
    for kind, why in skipped.items():
        print(f"  {SERVER_NAMES[kind]}: skipped ({why})")
    width = 16
    header = f"{'scenario / metric':42s}" + "".join(
        f"{SERVER_NAMES[k][:width]:>{width + 2}s}" for k in kinds
    )
    print()
    print(header)
    print("-" * len(header))
    rows = []
    for name, description, _, _ in chosen:
        metrics = sorted({m for (n, m, _) in results if n == name})
        if not metrics and any((k, name) in UNSUPPORTED for k in kinds):
            metrics = []
        print(f"{name}: {description}")
        for metric in metrics:
            cells = []
            for kind in kinds:
                if (kind, name) in UNSUPPORTED:
                    cells.append("n/a")
                    continue
                values = results.get((name, metric, kind))
                cells.append(f"{statistics.median(values):.1f}" if values else "-")
            print(f"  {metric:40s}" + "".join(f"{c:>{width + 2}s}" for c in cells))
            rows.append((name, metric))
        for kind in kinds:
            if (kind, name) in UNSUPPORTED:
                print(f"  ({SERVER_NAMES[kind]}: n/a, {UNSUPPORTED[(kind, name)]})")
    print(
        "\nRatios txgearmand / peer (higher is better for rates; lower for ms, MiB, "
        "NOOPs and CPU us per job):"
    )
    ours = [
        k
        for k in ("txgearmand", "txgearmand-pypy", "txgearmand-fast", "txgearmand-pypy-fast")
        if k in kinds
    ]
    peers = [k for k in kinds if k not in ours]
    for name, metric in rows:
        for mine in ours:
            mv = results.get((name, metric, mine))
            if not mv:
                continue
            parts = []
            for peer in peers:
                pv = results.get((name, metric, peer))
                if pv and statistics.median(pv):
                    parts.append(
                        f"{SERVER_NAMES[peer]} {statistics.median(mv) / statistics.median(pv):.2f}x"
                    )
            if parts:
                print(f"  {name}.{metric} {SERVER_NAMES[mine]}: " + ", ".join(parts))


if __name__ == "__main__":
    sys.exit(main())
