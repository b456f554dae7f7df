# -*- test-case-name: txgearmand.test.test_meters -*-
"""
What the server counts about itself, for the status site and the metrics:
per-function job counters (bounded in number), histograms of job run time
and store write latency, traffic, and the recent jobs-per-second history.

Counting is always on and costs a list increment per event; timing jobs
(two clock reads per job) is on only while something watches
(L{Meters.watch}).
"""

from __future__ import annotations

from bisect import bisect_left
from collections import deque
from collections.abc import Callable, Sequence

from twisted.internet.interfaces import IDelayedCall, IReactorTime

__all__ = [
    "CANCELLED",
    "COMPLETED",
    "COUNTS",
    "DEAD_LETTERED",
    "EXCEPTIONS",
    "FAILED",
    "MAX_COUNTED_NAME",
    "OTHER",
    "REFUSED",
    "RETRIED",
    "SUBMITTED_BG",
    "SUBMITTED_FG",
    "TIMED_OUT",
    "FunctionCounts",
    "Histogram",
    "Meters",
    "Traffic",
]

#: Indexes into a function's counters (L{FunctionCounts}).
SUBMITTED_FG = 0
SUBMITTED_BG = 1
COMPLETED = 2
FAILED = 3
EXCEPTIONS = 4
RETRIED = 5
TIMED_OUT = 6
REFUSED = 7
CANCELLED = 8
#: Background jobs that landed in the failed list (dead-letter).
DEAD_LETTERED = 9

#: The counters' names, by index.
COUNTS = (
    "submitted_fg",
    "submitted_bg",
    "completed",
    "failed",
    "exceptions",
    "retried",
    "timed_out",
    "refused",
    "cancelled",
    "dead_lettered",
)

#: The name the functions past L{FunctionCounts}'s limit are counted under.
OTHER = b"_other"

#: Seconds: job run time and store write latency buckets.
TIME_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    300.0,
)


#: Names longer than this are counted under L{OTHER}: a client may send
#: names up to the packet size, and counted names are kept for good.
MAX_COUNTED_NAME = 128


class FunctionCounts:
    """
    A list of counters per function name, kept after the function is
    forgotten (counters only go up).  Clients may invent names without
    end: past C{limit} names, new ones share the counters of L{OTHER}, as
    do names over L{MAX_COUNTED_NAME} bytes or with control characters.

    @ivar by_name: the counters, by function name.
    """

    def __init__(self, limit: int = 1000) -> None:
        self.limit = limit
        self.by_name: dict[bytes, list[int]] = {}

    def of(self, name: bytes) -> list[int]:
        """
        The counters of a function (indexed by L{SUBMITTED_FG}...).
        """
        counts = self.by_name.get(name)
        if counts is None:
            if (
                len(self.by_name) >= self.limit
                or len(name) > MAX_COUNTED_NAME
                or any(c < 32 or c == 127 for c in name)
            ):
                name = OTHER
                counts = self.by_name.get(name)
            if counts is None:
                counts = self.by_name[name] = [0] * len(COUNTS)
        return counts

    def totals(self) -> list[int]:
        """
        Every counter summed over the functions.
        """
        totals = [0] * len(COUNTS)
        for counts in self.by_name.values():
            for i, n in enumerate(counts):
                totals[i] += n
        return totals


class Histogram:
    """
    Counts of observations per bucket (upper bounds, as Prometheus's
    cumulative buckets are built from them), their sum, the last one.
    """

    def __init__(self, bounds: Sequence[float] = TIME_BUCKETS) -> None:
        self.bounds = tuple(bounds)
        #: One count per bound, and one more for what is above the last.
        self.buckets = [0] * (len(self.bounds) + 1)
        self.count = 0
        self.sum = 0.0
        self.last: float | None = None

    def observe(self, value: float) -> None:
        """
        Count one observation (a negative one, from a clock set back, as 0).
        """
        if value < 0:
            value = 0.0
        self.buckets[bisect_left(self.bounds, value)] += 1
        self.count += 1
        self.sum += value
        self.last = value

    def cumulative(self) -> list[tuple[float, int]]:
        """
        C{(upper bound, observations at or under it)}, the last bound being
        infinity.
        """
        out = []
        running = 0
        for bound, n in zip((*self.bounds, float("inf")), self.buckets):
            running += n
            out.append((bound, running))
        return out

    def mean(self) -> float | None:
        """
        The mean observation, or C{None} before the first.
        """
        return self.sum / self.count if self.count else None


class Traffic:
    """
    Bytes and packets (or admin lines, or write chunks) in and out, over
    every connection since the start.
    """

    __slots__ = ("bytes_in", "bytes_out", "connections", "packets_in", "packets_out")

    def __init__(self) -> None:
        self.bytes_in = 0
        self.bytes_out = 0
        self.packets_in = 0
        self.packets_out = 0
        #: Connections accepted.
        self.connections = 0


class Meters:
    """
    Everything counted, and while watched, the jobs-per-second history.

    @ivar functions: the L{FunctionCounts}.
    @ivar run_time: seconds from assignment to result (while timing).
    @ivar store_latency: seconds a store write took.
    @ivar traffic: the L{Traffic}.
    @ivar timing: whether jobs are timed (set by L{watch}).
    @ivar history: C{(time, jobs in, jobs out)} samples, oldest first.
    """

    def __init__(
        self,
        clock: IReactorTime,
        totals: Callable[[], tuple[int, int]],
        functions: FunctionCounts | None = None,
        interval: float = 5.0,
        keep: int = 120,
    ) -> None:
        """
        @param totals: jobs accepted and ended since the start.
        @param functions: the functions' counters (the registry's).
        @param interval: seconds between history samples.
        @param keep: samples kept (the default: ten minutes).
        """
        self._clock = clock
        self._totals = totals
        self.functions = functions if functions is not None else FunctionCounts()
        self.run_time = Histogram()
        self.store_latency = Histogram()
        self.traffic = Traffic()
        self.timing = False
        self.interval = interval
        self.history: deque[tuple[float, int, int]] = deque(maxlen=keep)
        self._timer: IDelayedCall | None = None
        self.started = clock.seconds()

    def watch(self) -> None:
        """
        Time jobs and keep the history from now on (a status site or a
        metrics endpoint is on).
        """
        self.timing = True
        if self._timer is None:
            self._sample()

    def stop(self) -> None:
        """
        Stop sampling (the server stops).
        """
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _sample(self) -> None:
        accepted, ended = self._totals()
        self.history.append((self._clock.seconds(), accepted, ended))
        self._timer = self._clock.callLater(self.interval, self._sample)

    def rates(self) -> list[tuple[float, float, float]]:
        """
        C{(time, jobs/s in, jobs/s out)} between successive samples, and
        from the last sample to now; oldest first.
        """
        now = self._clock.seconds()
        accepted, ended = self._totals()
        points = [*self.history, (now, accepted, ended)]
        out = []
        for (t0, in0, out0), (t1, in1, out1) in zip(points, points[1:]):
            span = t1 - t0
            if span > 0:
                out.append((t1, (in1 - in0) / span, (out1 - out0) / span))
        return out
