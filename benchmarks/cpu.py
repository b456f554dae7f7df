"""
Server CPU per job by twistd reactor: user and system microseconds the
server process spends per foreground job (read from C{/proc/PID/stat} over
the measured window of C{loadgen.foreground}), its rate and page faults.
C{python -m benchmarks --cpu} gives the same figure for every server of
the peers' table, over a count of jobs; this one times a window and
crosses servers with reactors.

    python -m benchmarks.cpu --servers txgearmand,c-t1 --rounds 3
    python -m benchmarks.cpu --servers txgearmand --reactor epoll,poll,asyncio
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

from benchmarks import loadgen
from benchmarks.__main__ import pypy_python
from benchmarks._load import cpu_seconds, minor_faults
from txgearmand.test import _process

_UVLOOP = (
    "import asyncio, uvloop; from twisted.internet import asyncioreactor; "
    "asyncioreactor.install(uvloop.new_event_loop()); "
)


def _sample(pid: int) -> tuple[float, float, int]:
    user, system = cpu_seconds(pid)
    return user, system, minor_faults(pid)


def make(kind: str, reactor: str, workdir: Path) -> _process.Server | None:
    """
    A server of one kind (C{txgearmand}, C{txgearmand-pypy}, C{c-t1}),
    not started; None when it is not installed.
    """
    d = workdir / f"{kind}-{reactor}-{time.monotonic_ns()}"
    d.mkdir()
    twistd = (f"--reactor={reactor}",) if reactor and reactor != "uvloop" else ()
    if kind == "txgearmand" and reactor == "uvloop":
        # Twisted's asyncio reactor on a uvloop event loop (measured only:
        # uvloop is not a dependency).
        server = _process.twistd_gearmand(d, "--queue=memory", "--verbose=ERROR")
        server.argv[2] = _UVLOOP + server.argv[2]
        return server
    if kind == "txgearmand":
        return _process.twistd_gearmand(d, "--queue=memory", "--verbose=ERROR", twistd=twistd)
    if kind == "txgearmand-pypy":
        python = pypy_python()
        if python is None:
            return None
        return _process.twistd_gearmand(
            d, "--queue=memory", "--verbose=ERROR", python=python, twistd=twistd
        )
    if kind == "c-t1":
        return _process.c_gearmand(d, "--threads=1")
    raise ValueError(kind)


def measure(
    pid: int, port: int, clients: int, workers: int, size: int, seconds: float, warm: float
) -> dict[str, float]:
    """
    Run C{loadgen.foreground} against C{port}; the server's CPU per job
    over the measured window.
    """
    samples: list[tuple[float, float, int]] = []
    t0 = time.time()

    def sample() -> None:
        # foreground() measures from about 1 s + warm-up after it is called.
        time.sleep(max(0.0, t0 + 1.0 + warm - time.time()))
        samples.append(_sample(pid))
        time.sleep(max(0.0, t0 + 1.0 + warm + seconds - time.time()))
        samples.append(_sample(pid))

    thread = threading.Thread(target=sample)
    thread.start()
    result = loadgen.foreground(port, clients, workers, size, 8, seconds, warm)
    thread.join()
    jobs = result["jobs_per_s"] * seconds
    user = samples[1][0] - samples[0][0]
    system = samples[1][1] - samples[0][1]
    return {
        "jobs_per_s": result["jobs_per_s"],
        "user_us": user / jobs * 1e6,
        "sys_us": system / jobs * 1e6,
        "cpu_us": (user + system) / jobs * 1e6,
        "faults": (samples[1][2] - samples[0][2]) / jobs,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.cpu", description=__doc__)
    parser.add_argument("--servers", default="txgearmand,c-t1")
    parser.add_argument("--reactor", default="", help="comma-separated twistd -r names")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--warm", type=float, default=0.5)
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--workers", type=int, default=10)
    parser.add_argument("--size", type=int, default=100)
    args = parser.parse_args(argv)
    runs = [
        (kind, reactor if kind.startswith("txgearmand") else "")
        for kind in args.servers.split(",")
        for reactor in (args.reactor.split(",") if args.reactor else [""])
    ]
    runs = list(dict.fromkeys(runs))
    results: dict[tuple[str, str], list[dict[str, float]]] = {}
    with tempfile.TemporaryDirectory(prefix="txgearmand-cpu-") as tmp:
        for round_ in range(args.rounds):
            for kind, reactor in runs:
                server = make(kind, reactor, Path(tmp))
                if server is None:
                    print(f"{kind}: not installed", file=sys.stderr)
                    continue
                server.start()
                try:
                    assert server.process is not None
                    m = measure(
                        server.process.pid,
                        server.port,
                        args.clients,
                        args.workers,
                        args.size,
                        args.seconds,
                        args.warm,
                    )
                finally:
                    server.stop()
                results.setdefault((kind, reactor), []).append(m)
                print(
                    f"round {round_ + 1} {kind:16s} {reactor or '-':16s} "
                    + " ".join(f"{k}={v:.2f}" for k, v in m.items()),
                    file=sys.stderr,
                    flush=True,
                )
    print(
        f"{'server':16s} {'reactor':16s} {'jobs/s':>9s} {'user µs':>8s} {'sys µs':>7s}"
        f" {'cpu µs':>7s} {'faults':>7s}"
    )
    for (kind, reactor), ms in results.items():
        med = {k: statistics.median(m[k] for m in ms) for k in ms[0]}
        print(
            f"{kind:16s} {reactor or '-':16s} {med['jobs_per_s']:9.0f} {med['user_us']:8.1f}"
            f" {med['sys_us']:7.1f} {med['cpu_us']:7.1f} {med['faults']:7.2f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
