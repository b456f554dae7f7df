# -*- test-case-name: txgearmand.test.test_model -*-
"""
Jobs that wait for their time (SUBMIT_JOB_EPOCH): a heap and one timer.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable

from twisted.internet.interfaces import IDelayedCall, IReactorTime

from txgearmand.records import Job, JobState

__all__ = ["Schedule"]

_SCHEDULED = JobState.SCHEDULED


class Schedule:
    """
    Holds scheduled jobs until their time, then hands them, in time order,
    to C{release}.  A job whose state changes meanwhile (cancelled) is
    skipped.  One timer is armed, for the earliest job.
    """

    def __init__(self, clock: IReactorTime, release: Callable[[list[Job]], None]) -> None:
        self._clock = clock
        self._release = release
        self._heap: list[tuple[float, int, Job]] = []
        self._counter = 0
        self._timer: IDelayedCall | None = None
        self._holding = False

    def now(self) -> float:
        """
        The time on its clock.
        """
        return self._clock.seconds()

    def add(self, job: Job) -> None:
        """
        Hold a job until its L{Job.when}.
        """
        assert job.when is not None
        job.state = _SCHEDULED
        job.queue.scheduled += 1
        self._counter += 1
        heapq.heappush(self._heap, (job.when, self._counter, job))
        self._arm()

    def hold(self) -> None:
        """
        Release no job until L{resume} (a replay is still queueing the
        jobs that were queued before them).
        """
        self._holding = True
        self.stop()

    def resume(self) -> None:
        """
        Release jobs again, those due meanwhile first.
        """
        self._holding = False
        self._arm()

    def _arm(self) -> None:
        if self._holding:
            return
        heap = self._heap
        while heap and heap[0][2].state is not _SCHEDULED:
            heapq.heappop(heap)
        timer = self._timer
        if not heap:
            self.stop()
            return
        when = heap[0][0]
        delay = max(0.0, when - self._clock.seconds())
        if timer is not None and timer.active():
            if timer.getTime() <= when:
                return
            timer.reset(delay)
        else:
            self._timer = self._clock.callLater(delay, self._due)

    def _due(self) -> None:
        self._timer = None
        now = self._clock.seconds()
        heap = self._heap
        due = []
        while heap and heap[0][0] <= now:
            job = heapq.heappop(heap)[2]
            if job.state is _SCHEDULED:
                job.queue.scheduled -= 1
                due.append(job)
        self._release(due)
        self._arm()

    def stop(self) -> None:
        """
        Cancel the timer (the jobs stay held).
        """
        timer = self._timer
        if timer is not None and timer.active():
            timer.cancel()
        self._timer = None
