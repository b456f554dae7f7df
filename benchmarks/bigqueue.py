"""
Big queues: how each server holds up with many queued background jobs.

    python -m benchmarks.bigqueue                      # 1,000,000 jobs
    python -m benchmarks.bigqueue --jobs 10000000
    python -m benchmarks.bigqueue --servers txgearmand --tx-args="--spill-after 1000"
    python -m benchmarks.bigqueue --jobs 20000 --small-jobs 5000   # a quick check

Servers (--servers, taking turns, each started fresh): txgearmand with
its default SQLite store in a temporary directory (txgearmand), the same
on PyPy when the PyPy venv of python -m benchmarks exists
(txgearmand-pypy), and C gearmand -t 1 with its memory queue (c-t1).
For each:

- submit: --jobs background jobs of 100 B with distinct unique ids,
  pipelined on --connections connections (a load process each, sending a
  chunk at a time); the rate until the last JOB_CREATED.
- memory: after --settle seconds, the server's VmRSS, VmHWM (its peak) and
  VmSwap, and the machine's swap in use (SwapTotal - SwapFree) before the
  server started and now.
- replay (txgearmand only; --no-replay skips it): kill -9, start again on
  the same store; the seconds from starting the process until admin status
  shows all the jobs and a GRAB_JOB gets a JOB_ASSIGN (that job is then
  completed), and the RSS after --settle seconds more.
- drain (--skip-drain skips it): 10 worker connections (GRAB_JOB,
  WORK_COMPLETE); the rate over the first --drain-sample jobs. With the
  replay, txgearmand's big queue is drained on the restarted server.
- small (--skip-small or --skip-drain skips it): the same submit and drain of
  --small-jobs jobs on a fresh server of the same kind, for the ratio
  big-queue drain / small-queue drain.

One table at the end: per server the submit rate, RSS, peak and swap, the
drain rates and their ratio, the replay, and txgearmand's RSS / C
gearmand's RSS.

The drain workers are Python processes: on a small machine they, not
the server, may set the drain rate (about 15,000-20,000 jobs/s on two
cores), so a big/small ratio near 1 says only that the server kept up.
Print the stderr progress lines too: they give the RSS idle and the bytes
per queued job.

Memory: before starting, the run compares about 2 KiB per queued job with
MemAvailable and warns; a thread watches the server and kills one whose
RSS + swap passes --max-rss (default 80% of MemTotal), and the table says
so, rather than letting it swap the machine to death.
"""

from __future__ import annotations

import argparse
import shlex
import shutil
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks import loadgen
from benchmarks.__main__ import PYPY_VENV, SERVER_NAMES
from benchmarks._load import (
    meminfo_kib,
    pipelined_background_submits,
    proc_status_kib,
    status_total,
)
from txgearmand.test import _process
from txgearmand.wire import PacketType as P

KINDS = ("txgearmand", "txgearmand-pypy", "c-t1")
FUNCTION = b"bigqueue"
PAYLOAD = b"x" * 100
WORKERS = 10

#: The rough cost of one queued 100 B job in a server, for the warning: at
#: 20,000 jobs txgearmand with SQLite grew by about 1.7 KB per job on
#: CPython, 1.3 KB on PyPy, C gearmand 1 KB.
KIB_PER_JOB = 2


@dataclass
class Row:
    """
    What was measured on one kind of server; L{None} where not measured.
    """

    kind: str
    submit_per_s: float | None = None
    rss_mib: float | None = None
    peak_mib: float | None = None
    swap_mib: float | None = None
    system_swap_before_mib: float | None = None
    system_swap_after_mib: float | None = None
    drain_big_per_s: float | None = None
    drain_small_per_s: float | None = None
    replay_s: float | None = None
    replay_rss_mib: float | None = None
    notes: list[str] = field(default_factory=list)


class RssGuard:
    """
    A thread that kills (SIGKILL) the watched server when its RSS + swap
    passes a limit.

    @ivar tripped: what happened, once it killed one; else empty.
    """

    def __init__(self, limit_kib: int, interval: float = 0.2) -> None:
        self.limit_kib = limit_kib
        self.interval = interval
        self.tripped = ""
        self._server: _process.Server | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def watch(self, server: _process.Server | None) -> None:
        """
        Watch this server from now on (L{None}: none).
        """
        self.tripped = ""
        self._server = server

    def close(self) -> None:
        """
        Stop the thread.
        """
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            server = self._server
            process = server.process if server is not None else None
            if process is None or process.poll() is not None:
                continue
            try:
                sizes = proc_status_kib(process.pid)
            except OSError:
                continue
            used = sizes.get("VmRSS", 0) + sizes.get("VmSwap", 0)
            if used > self.limit_kib:
                process.kill()
                self.tripped = (
                    f"killed: RSS + swap {used / 1024:.0f} MiB passed "
                    f"--max-rss {self.limit_kib / 1024:.0f} MiB"
                )
                print(f"  ({self.tripped})", file=sys.stderr, flush=True)


def available_kinds() -> list[str]:
    """
    The default servers: PyPy only when its venv exists.
    """
    pypy = (PYPY_VENV / "bin" / "python").exists()
    return [k for k in KINDS if k != "txgearmand-pypy" or pypy]


def make_server(kind: str, workdir: Path, tx_args: list[str]) -> _process.Server | None:
    """
    A server of one kind in a fresh directory, not started; L{None} when it
    is not installed.
    """
    d = workdir / f"{kind}-{time.monotonic_ns()}"
    d.mkdir()
    if kind == "txgearmand":
        return _process.twistd_gearmand(d, "--verbose=ERROR", *tx_args)
    if kind == "txgearmand-pypy":
        python = PYPY_VENV / "bin" / "python"
        if not python.exists():
            return None
        return _process.twistd_gearmand(d, "--verbose=ERROR", *tx_args, python=str(python))
    if kind == "c-t1":
        return _process.c_gearmand(d, "--threads=1")
    raise ValueError(f"unknown server {kind!r}; known: {', '.join(KINDS)}")


def system_swap_mib() -> float:
    """
    The machine's swap in use, in MiB.
    """
    info = meminfo_kib()
    return (info.get("SwapTotal", 0) - info.get("SwapFree", 0)) / 1024


def drain_rate(port: int, sample: int) -> float:
    """
    Jobs per second of L{WORKERS} workers over the first C{sample} queued
    jobs.
    """
    return sample / loadgen.drain(port, WORKERS, FUNCTION, sample)


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _pid(server: _process.Server) -> int:
    assert server.process is not None
    return server.process.pid


def grab_one(port: int, timeout: float) -> bool:
    """
    Whether a GRAB_JOB gets a JOB_ASSIGN within C{timeout} seconds (the
    job is completed).
    """
    deadline = time.monotonic() + timeout
    conn = _process.PacketConnection(port, timeout=max(10.0, timeout))
    try:
        conn.send(P.CAN_DO, FUNCTION)
        while time.monotonic() < deadline:
            conn.send(P.GRAB_JOB)
            got, body = conn.recv()
            while got == P.NOOP:
                got, body = conn.recv()
            if got == P.JOB_ASSIGN:
                conn.send(P.WORK_COMPLETE, body.split(b"\0", 1)[0], b"")
                conn.round_trip()
                return True
            time.sleep(0.05)
        return False
    finally:
        conn.close()


def replay(
    server: _process.Server, jobs: int, row: Row, guard: RssGuard, settle: float, timeout: float
) -> _process.Server:
    """
    kill -9 the server and start it again on the same store; note how long
    until it serves the C{jobs} queued jobs, and its RSS then.

    @return: the restarted server.
    """
    server.kill()
    again = _process.Server(server.argv, server.port, server.cwd / "again.log", server.cwd)
    guard.watch(again)
    try:
        _serving(again, jobs, row, settle, timeout)
    except BaseException:
        again.kill()
        raise
    return again


def _serving(server: _process.Server, jobs: int, row: Row, settle: float, timeout: float) -> None:
    start = time.monotonic()
    deadline = start + timeout
    again = server.start(timeout=timeout)
    seen = -1
    while time.monotonic() < deadline:
        try:
            seen = status_total(again.port, FUNCTION)
        except OSError:
            seen = -1
        if seen >= jobs:
            break
        time.sleep(0.1)
    else:
        row.notes.append(f"replay: status showed {seen} of {jobs} jobs after {timeout:.0f} s")
        return
    if not grab_one(again.port, max(1.0, deadline - time.monotonic())):
        row.notes.append("replay: status showed the jobs but GRAB_JOB got none")
        return
    row.replay_s = time.monotonic() - start
    _log(f"  replay until serving: {row.replay_s:.1f} s (status showed {seen})")
    time.sleep(settle)
    row.replay_rss_mib = proc_status_kib(_pid(again))["VmRSS"] / 1024


def big_run(kind: str, args: argparse.Namespace, workdir: Path, guard: RssGuard) -> Row:
    """
    Queue C{args.jobs} jobs on a fresh server; memory, replay, drain.
    """
    row = Row(kind)
    server = make_server(kind, workdir, shlex.split(args.tx_args))
    if server is None:
        row.notes.append("not installed")
        return row
    row.system_swap_before_mib = system_swap_mib()
    step = "start"
    try:
        server.start()
        guard.watch(server)
        idle_kib = proc_status_kib(_pid(server))["VmRSS"]
        step = "submit"
        _log(f"{kind}: submitting {args.jobs} jobs on {args.connections} connections")
        row.submit_per_s = pipelined_background_submits(
            server.port, args.jobs, FUNCTION, PAYLOAD, args.connections
        )
        _log(f"  submit: {row.submit_per_s:.0f} jobs/s")
        step = "memory"
        time.sleep(args.settle)
        sizes = proc_status_kib(_pid(server))
        row.rss_mib = sizes["VmRSS"] / 1024
        row.peak_mib = sizes["VmHWM"] / 1024
        row.swap_mib = sizes.get("VmSwap", 0) / 1024
        row.system_swap_after_mib = system_swap_mib()
        per_job = (sizes["VmRSS"] - idle_kib) * 1024 / args.jobs
        _log(
            f"  RSS {row.rss_mib:.0f} MiB (idle {idle_kib / 1024:.0f}, {per_job:.0f} B per job), "
            f"peak {row.peak_mib:.0f} MiB, swap {row.swap_mib:.0f} MiB"
        )
        queued = args.jobs
        if not args.no_replay and kind.startswith("txgearmand"):
            step = "replay"
            timeout = max(120.0, args.jobs / 2000)
            server = replay(server, args.jobs, row, guard, args.settle, timeout)
            queued = args.jobs - 1 if row.replay_s is not None else 0
        if not args.skip_drain and queued > 0:
            step = "drain"
            sample = min(args.drain_sample, queued)
            row.drain_big_per_s = drain_rate(server.port, sample)
            _log(f"  drain, first {sample} of {queued}: {row.drain_big_per_s:.0f} jobs/s")
    except Exception as e:
        row.notes.append(guard.tripped or f"{step} failed: {type(e).__name__}: {e}"[:300])
        _log(f"  {row.notes[-1]}")
    finally:
        if guard.tripped and guard.tripped not in row.notes:
            row.notes.append(guard.tripped)
        guard.watch(None)
        server.kill()
    return row


def small_run(
    kind: str, args: argparse.Namespace, workdir: Path, guard: RssGuard, row: Row
) -> None:
    """
    The same submit and drain with C{args.small_jobs} jobs on a fresh
    server.
    """
    server = make_server(kind, workdir, shlex.split(args.tx_args))
    if server is None:
        return
    try:
        server.start()
        guard.watch(server)
        pipelined_background_submits(
            server.port, args.small_jobs, FUNCTION, PAYLOAD, args.connections
        )
        row.drain_small_per_s = drain_rate(server.port, min(args.drain_sample, args.small_jobs))
        _log(f"  small queue ({args.small_jobs}): drain {row.drain_small_per_s:.0f} jobs/s")
    except Exception as e:
        row.notes.append(guard.tripped or f"small queue failed: {type(e).__name__}: {e}"[:300])
        _log(f"  {row.notes[-1]}")
    finally:
        guard.watch(None)
        server.kill()


def _cell(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def report(rows: list[Row], args: argparse.Namespace) -> None:
    """
    The table.
    """
    c_rss = next((r.rss_mib for r in rows if r.kind == "c-t1"), None)
    print(
        f"\nBig queue: {args.jobs} background jobs of 100 B (drain: {WORKERS} workers, "
        f"first {args.drain_sample} jobs; small queue {args.small_jobs} jobs)"
    )
    if args.tx_args:
        print(f"txgearmand options: {args.tx_args}")
    columns = [
        ("server", 22),
        ("submit/s", 10),
        ("RSS MiB", 8),
        ("peak MiB", 9),
        ("VmSwap", 7),
        ("sys swap", 11),
        ("drain big/s", 12),
        ("small/s", 9),
        ("big/small", 10),
        ("replay s", 9),
        ("replay RSS", 11),
        ("RSS / C", 8),
    ]
    header = "".join(
        f"{name:>{w}s}" if i else f"{name:{w}s}" for i, (name, w) in enumerate(columns)
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        ratio = (
            r.drain_big_per_s / r.drain_small_per_s
            if r.drain_big_per_s and r.drain_small_per_s
            else None
        )
        vs_c = r.rss_mib / c_rss if r.rss_mib and c_rss and r.kind != "c-t1" else None
        swap = (
            f"{r.system_swap_before_mib:.0f}->{r.system_swap_after_mib:.0f}"
            if r.system_swap_before_mib is not None and r.system_swap_after_mib is not None
            else "-"
        )
        cells = [
            SERVER_NAMES.get(r.kind, r.kind)[:21],
            _cell(r.submit_per_s),
            _cell(r.rss_mib),
            _cell(r.peak_mib),
            _cell(r.swap_mib),
            swap,
            _cell(r.drain_big_per_s),
            _cell(r.drain_small_per_s),
            _cell(ratio, 2),
            _cell(r.replay_s, 1),
            _cell(r.replay_rss_mib),
            _cell(vs_c, 2),
        ]
        print(
            "".join(
                f"{c:>{w}s}" if i else f"{c:{w}s}"
                for i, (c, (_, w)) in enumerate(zip(cells, columns))
            )
        )
    for r in rows:
        for note in r.notes:
            print(f"  {SERVER_NAMES.get(r.kind, r.kind)}: {note}")
    print(
        "(MiB of the server process after settling; sys swap: the machine's swap in use "
        "before -> after, MiB; replay: seconds from starting the process until serving)"
    )


def memory_warnings(args: argparse.Namespace, kinds: list[str]) -> None:
    """
    Warn when the queued jobs may not fit in memory, or their store on disk.
    """
    info = meminfo_kib()
    estimate = args.jobs * KIB_PER_JOB
    if estimate > info["MemAvailable"]:
        print(
            f"WARNING: about {estimate // 1024} MiB per server for {args.jobs} jobs, "
            f"but only {info['MemAvailable'] // 1024} MiB available; servers passing "
            f"--max-rss {args.max_rss} MiB are killed",
            file=sys.stderr,
        )
    if estimate > args.max_rss * 1024:
        print(
            f"WARNING: the estimate ({estimate // 1024} MiB) is above --max-rss {args.max_rss} MiB",
            file=sys.stderr,
        )
    if any(k.startswith("txgearmand") for k in kinds):
        free = shutil.disk_usage(tempfile.gettempdir()).free
        need = args.jobs * 512
        if need > free:
            print(
                f"WARNING: the SQLite store may need about {need >> 20} MiB in "
                f"{tempfile.gettempdir()}, {free >> 20} MiB free (set TMPDIR)",
                file=sys.stderr,
            )


def main(argv: list[str] | None = None) -> int:
    """
    Run it; print the table.
    """
    mem_total = meminfo_kib()["MemTotal"]
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.bigqueue",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--jobs", type=int, default=1_000_000, help="jobs in the big queue (1,000,000)"
    )
    parser.add_argument(
        "--servers",
        default=",".join(available_kinds()),
        help=f"comma-separated, of {', '.join(KINDS)} (default: those installed)",
    )
    parser.add_argument(
        "--tx-args",
        default="",
        help='extra options for txgearmand, as one string: --tx-args="--opt value"',
    )
    parser.add_argument("--connections", type=int, default=4, help="submitting connections (4)")
    parser.add_argument(
        "--drain-sample", type=int, default=200_000, help="jobs drained, timed (200,000)"
    )
    parser.add_argument(
        "--small-jobs", type=int, default=20_000, help="jobs in the small queue (20,000)"
    )
    parser.add_argument("--settle", type=float, default=3.0, help="seconds before reading RSS (3)")
    parser.add_argument(
        "--max-rss",
        type=int,
        default=mem_total * 8 // 10 // 1024,
        help="MiB of RSS + swap at which a server is killed (default: 80%% of MemTotal)",
    )
    parser.add_argument("--no-replay", action="store_true", help="no kill -9 and replay")
    parser.add_argument("--skip-drain", action="store_true", help="no big-queue drain")
    parser.add_argument("--skip-small", action="store_true", help="no small-queue run")
    args = parser.parse_args(argv)
    kinds = [k for k in args.servers.split(",") if k]
    for kind in kinds:
        if kind not in KINDS:
            parser.error(f"unknown server {kind!r}; known: {', '.join(KINDS)}")
    memory_warnings(args, kinds)
    started = time.monotonic()
    guard = RssGuard(args.max_rss * 1024)
    rows = []
    try:
        with tempfile.TemporaryDirectory(prefix="txgearmand-bigqueue-") as tmp:
            workdir = Path(tmp)
            for kind in kinds:
                row = big_run(kind, args, workdir, guard)
                rows.append(row)
                if not (args.skip_small or args.skip_drain) and row.submit_per_s is not None:
                    small_run(kind, args, workdir, guard, row)
    finally:
        guard.close()
    report(rows, args)
    print(f"(took {time.monotonic() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
