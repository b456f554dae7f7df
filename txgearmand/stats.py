# -*- test-case-name: txgearmand.test.test_logs -*-
"""
The periodic one-line summary (C{--stats-interval}): jobs queued and
running, workers, clients, and jobs per second in and out since the last
line.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet.interfaces import IDelayedCall, IReactorTime

from txgearmand import _log

__all__ = ["Sample", "StatsReporter"]

#: What the server is counted at: (queued, running, workers, clients,
#: jobs accepted so far, jobs finished so far).
Sample = tuple[int, int, int, int, int, int]


class StatsReporter:
    """
    Logs a summary line at INFO every C{interval} seconds while started.
    """

    log = _log.logger("txgearmand.stats.StatsReporter")

    def __init__(self, clock: IReactorTime, interval: float, sample: Callable[[], Sample]) -> None:
        self._clock = clock
        self._interval = interval
        self._sample = sample
        self._timer: IDelayedCall | None = None
        self._last: tuple[float, int, int] | None = None

    def start(self) -> None:
        """
        Start (nothing happens with an interval of 0).
        """
        if self._interval > 0 and self._timer is None:
            _, _, _, _, accepted, finished = self._sample()
            self._last = (self._clock.seconds(), accepted, finished)
            self._timer = self._clock.callLater(self._interval, self.report)

    def stop(self) -> None:
        """
        Stop.
        """
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def report(self) -> None:
        """
        Log one summary line, and schedule the next.
        """
        queued, running, workers, clients, accepted, finished = self._sample()
        now = self._clock.seconds()
        then, accepted_then, finished_then = self._last or (now, accepted, finished)
        elapsed = max(now - then, 1e-9)
        self.log.info(
            "Stats: {queued} queued, {running} running, {workers} workers, {clients} clients;"
            " {jobs_in:.1f} jobs/s in, {jobs_out:.1f} jobs/s out",
            queued=queued,
            running=running,
            workers=workers,
            clients=clients,
            jobs_in=(accepted - accepted_then) / elapsed,
            jobs_out=(finished - finished_then) / elapsed,
        )
        self._last = (now, accepted, finished)
        self._timer = self._clock.callLater(self._interval, self.report)
