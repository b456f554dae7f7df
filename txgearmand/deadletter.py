# -*- test-case-name: txgearmand.test.test_deadletter -*-
"""
The failed list (dead-letter list): background jobs that failed for the
last time, kept - durably, in the store, with their payload - so that an
operator can see them, run them again or drop them.

A job lands here when its last attempt failed (WORK_FAIL or
WORK_EXCEPTION past C{--retry-failed}, or no result within
C{--job-retries} attempts: a lost worker, a timeout).  The list is
ordered by when each job landed and bounded: at most C{--failed-keep}
jobs (C{0}: the list is off, and failed jobs end as they always did), none
older than C{--failed-max-age} seconds (C{0}: no age limit).  A job the
bounds drop is logged (the first ten, then one line in a thousand) and
its row leaves the store.

L{JobFlow} lands jobs here and runs them again; the list knows no queue
and no connection.
"""

from __future__ import annotations

import builtins
from collections.abc import Callable, Iterable, Iterator

from twisted.internet.interfaces import IDelayedCall, IReactorTime

from txgearmand import _log
from txgearmand.interfaces import StoredJob
from txgearmand.job import JOB_OVERHEAD, JobTable
from txgearmand.records import Job

__all__ = ["REASON_LENGTH", "FailedJob", "FailedList", "cut_reason"]

#: The longest reason kept, in characters.
REASON_LENGTH = 200

#: Jobs dropped by the bounds that are each logged; then one in 1000.
_LOGGED_DROPS = 10


def cut_reason(reason: str) -> str:
    """
    A reason as kept: at most L{REASON_LENGTH} characters.
    """
    return reason[:REASON_LENGTH]


class FailedJob:
    """
    A job in the failed list: what it was, how it failed.

    @ivar handle: its job handle (unique in the list).
    @ivar function: its function name.
    @ivar unique: its unique id (C{b""} for none).
    @ivar payload: its data.
    @ivar priority: 0 high, 1 normal, 2 low.
    @ivar reducer: its reducer, or C{b""}.
    @ivar attempts: how many attempts it had, all failed (WORK_FAIL and
        WORK_EXCEPTION, lost workers and timeouts alike).
    @ivar first_failed: when its first attempt failed (epoch seconds).
    @ivar last_failed: when its last attempt failed: when it landed here.
    @ivar reason: why its last attempt failed (L{cut_reason}).
    @ivar store_id: its row in the store, or C{None} (no store).
    """

    __slots__ = (
        "attempts",
        "first_failed",
        "function",
        "handle",
        "last_failed",
        "payload",
        "priority",
        "reason",
        "reducer",
        "store_id",
        "unique",
    )

    def __init__(
        self,
        handle: bytes,
        function: bytes,
        unique: bytes,
        payload: bytes,
        priority: int,
        reducer: bytes,
        attempts: int,
        first_failed: float,
        last_failed: float,
        reason: str,
        store_id: int | None = None,
    ) -> None:
        self.handle = handle
        self.function = function
        self.unique = unique
        self.payload = payload
        self.priority = priority
        self.reducer = reducer
        self.attempts = attempts
        self.first_failed = first_failed
        self.last_failed = last_failed
        self.reason = cut_reason(reason)
        self.store_id = store_id

    def __repr__(self) -> str:
        return (
            f"<FailedJob {self.handle!r} {self.function!r} attempts={self.attempts}"
            f" reason={self.reason!r}>"
        )

    @classmethod
    def of(cls, job: Job, reason: str, now: float) -> FailedJob:
        """
        The entry of a job that failed for the last time, now.
        """
        return cls(
            job.handle,
            job.queue.name,
            job.unique,
            job.data,
            job.priority,
            job.reducer,
            job.attempts + job.retries,
            job.first_failed if job.first_failed is not None else now,
            now,
            reason,
            job.store_id,
        )

    @classmethod
    def from_record(cls, record: StoredJob, handle: bytes) -> FailedJob:
        """
        The entry of a stored job that is in the failed list
        (L{StoredJob.failed_at} set), under C{handle}.
        """
        failed_at = record.failed_at if record.failed_at is not None else 0.0
        return cls(
            handle,
            record.function,
            record.unique,
            record.payload,
            record.priority,
            record.reducer,
            record.attempts,
            record.first_failed if record.first_failed is not None else failed_at,
            failed_at,
            record.reason,
            record.id,
        )

    def stored(self) -> StoredJob:
        """
        Its record in the store (under L{store_id}).
        """
        assert self.store_id is not None
        return StoredJob(
            self.store_id,
            self.handle,
            self.function,
            self.unique,
            self.payload,
            self.priority,
            None,
            self.reducer,
            self.attempts,
            self.first_failed,
            self.last_failed,
            self.reason,
        )


class FailedList:
    """
    The failed jobs, oldest landed first, within their bounds.

    @ivar keep: at most this many jobs (C{0}: the list is off).
    @ivar max_age: seconds a job stays at most (C{0}: no limit).
    @ivar dropped: jobs the bounds dropped since the start.
    @ivar timer: the age expiry's timer, only while the list has jobs and
        an age limit; else C{None}.
    """

    log = _log.logger("txgearmand.deadletter")

    def __init__(
        self,
        clock: IReactorTime,
        keep: int,
        max_age: float,
        remove: Callable[[int], None],
        table: JobTable | None = None,
    ) -> None:
        """
        @param clock: the flow's clock: the time, and the expiry timer.
        @param remove: removes a dropped job's row from the store, by id.
        @param table: the job table whose C{held_bytes} (what the memory
            budget counts) the kept jobs count in too.
        """
        self._clock = clock
        self.keep = keep
        self.max_age = max_age
        self._remove = remove
        self._jobs: dict[bytes, FailedJob] = {}
        self._counts: dict[bytes, int] = {}
        self._table = table
        #: What the kept jobs count against the memory budget.
        self.held_bytes = 0
        self.dropped = 0
        self.timer: IDelayedCall | None = None
        self._stopped = False

    @property
    def on(self) -> bool:
        """
        Whether failed background jobs are kept (C{--failed-keep} is not 0).
        """
        return self.keep > 0

    def __len__(self) -> int:
        return len(self._jobs)

    def __iter__(self) -> Iterator[FailedJob]:
        """
        The failed jobs, oldest landed first, as they are (none expired).
        """
        return iter(list(self._jobs.values()))

    def __contains__(self, handle: object) -> bool:
        return handle in self._jobs

    def get(self, handle: bytes) -> FailedJob | None:
        """
        The failed job with this handle, if any (left in the list).
        """
        return self._jobs.get(handle)

    # -- in -------------------------------------------------------------

    def add(self, job: FailedJob) -> None:
        """
        Keep a job that failed; the oldest beyond the bounds are dropped.
        """
        self.add_many([job])

    def add_many(self, jobs: Iterable[FailedJob]) -> None:
        """
        Keep several (replayed from the store, or adopted from a dead
        server): they take their place by when they landed, then the
        bounds are applied once.
        """
        entries = self._jobs
        last = next(reversed(entries.values())).last_failed if entries else None
        ordered = True
        for job in jobs:
            if last is not None and job.last_failed < last:
                ordered = False
            last = job.last_failed
            old = entries.pop(job.handle, None)
            if old is not None:
                self._uncount(old)
            entries[job.handle] = job
            self._counts[job.function] = self._counts.get(job.function, 0) + 1
            self._hold(job, 1)
        if not ordered:
            self._jobs = dict(sorted(entries.items(), key=lambda item: item[1].last_failed))
            # An older job came: the timer waits for the oldest.
            self._cancel()
        self._bound()

    # -- out ------------------------------------------------------------

    def list(self, function: bytes | None = None) -> list[FailedJob]:
        """
        The failed jobs (of one function, or all), oldest landed first.
        """
        self.expire()
        if function is None:
            return list(self._jobs.values())
        return [job for job in self._jobs.values() if job.function == function]

    def counts(self) -> dict[bytes, int]:
        """
        How many failed jobs each function has (functions with none are
        left out).
        """
        return dict(self._counts)

    def take(self, handle: bytes) -> FailedJob | None:
        """
        Remove and return the failed job with this handle, if any (its
        row in the store is the caller's).
        """
        job = self._jobs.pop(handle, None)
        if job is not None:
            self._uncount(job)
            self._changed()
        return job

    def take_function(self, function: bytes) -> builtins.list[FailedJob]:
        """
        Remove and return every failed job of a function, oldest first.
        """
        taken = [job for job in self._jobs.values() if job.function == function]
        for job in taken:
            del self._jobs[job.handle]
            self._hold(job, -1)
        if taken:
            self._counts.pop(function, None)
            self._changed()
        return taken

    def expire(self, now: float | None = None) -> int:
        """
        Drop the jobs older than L{max_age} (logged, their rows removed).

        @return: how many were dropped.
        """
        if not self.max_age or not self._jobs:
            return 0
        if now is None:
            now = self._clock.seconds()
        limit = now - self.max_age
        old = []
        for job in self._jobs.values():
            if job.last_failed > limit:
                break
            old.append(job)
        for job in old:
            self._drop(job, f"older than {self.max_age:g} s (--failed-max-age)")
        self._changed()
        return len(old)

    def stop(self) -> None:
        """
        Stop the expiry timer (the server stops).
        """
        self._stopped = True
        self._cancel()

    # -- the bounds -----------------------------------------------------

    def _bound(self) -> None:
        over = len(self._jobs) - self.keep
        if over > 0:
            for job in list(self._jobs.values())[:over]:
                self._drop(job, f"over --failed-keep {self.keep}")
        self.expire()
        self._changed()

    def _drop(self, job: FailedJob, why: str) -> None:
        del self._jobs[job.handle]
        self._uncount(job)
        self.dropped += 1
        n = self.dropped
        if n <= _LOGGED_DROPS or not n % 1000:
            self.log.info(
                "Failed job {handle} ({function}) dropped from the failed list: {why}{more}",
                handle=_text(job.handle),
                function=_text(job.function),
                why=why,
                dropped=n,
                more=f" ({n} dropped so far; one in 1000 is logged)" if n > _LOGGED_DROPS else "",
            )
        if job.store_id is not None:
            self._remove(job.store_id)

    def _hold(self, job: FailedJob, sign: int) -> None:
        # Kept payloads count against the memory budget, as live jobs do:
        # workers that fail everything cannot park memory here unseen.
        size = sign * (JOB_OVERHEAD + len(job.payload) + len(job.unique) + len(job.reason))
        self.held_bytes += size
        if self._table is not None:
            self._table.held_bytes += size

    def _uncount(self, job: FailedJob) -> None:
        self._hold(job, -1)
        n = self._counts.get(job.function, 0) - 1
        if n > 0:
            self._counts[job.function] = n
        else:
            self._counts.pop(job.function, None)

    # -- the expiry timer -------------------------------------------------

    def _changed(self) -> None:
        """
        The timer runs only while there are jobs to expire: for the
        oldest one's time.
        """
        if not self._jobs or not self.max_age or self._stopped:
            self._cancel()
            return
        if self.timer is None:
            oldest = next(iter(self._jobs.values()))
            delay = max(0.0, oldest.last_failed + self.max_age - self._clock.seconds())
            self.timer = self._clock.callLater(delay, self._due)

    def _due(self) -> None:
        self.timer = None
        self.expire()
        self._changed()

    def _cancel(self) -> None:
        if self.timer is not None:
            if self.timer.active():
                self.timer.cancel()
            self.timer = None


def _text(value: bytes) -> str:
    return value.decode("utf-8", "backslashreplace")
