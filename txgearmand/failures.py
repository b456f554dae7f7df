# -*- test-case-name: txgearmand.test.test_retry,txgearmand.test.test_deadletter -*-
"""
What happens to background jobs that fail: the retry policy
(C{--retry-failed}, C{--retry-backoff}) and the failed list's steps (run
a failed job again, drop it).  L{FailurePolicy} is a part of
L{txgearmand.flow.JobFlow}, kept here to keep that class readable; it
uses the flow's records and steps, declared below.
"""

from __future__ import annotations

import random

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from txgearmand import _log
from txgearmand.batching import OutputBatch
from txgearmand.deadletter import REASON_LENGTH, FailedJob, FailedList, cut_reason
from txgearmand.durability import Durability
from txgearmand.functions import FunctionRegistry
from txgearmand.job import Job, JobTable
from txgearmand.meters import DEAD_LETTERED, RETRIED
from txgearmand.schedule import Schedule
from txgearmand.settings import Settings

__all__ = ["FailurePolicy", "exception_reason"]

text = _log.text

#: Perl's Gearman::Worker sends a dying function's error frozen with
#: Storable (C{nfreeze}): a header, then one scalar.
_STORABLE_SCALARS = {0x0A: 1, 0x01: 4, 0x17: 1, 0x18: 4}


def exception_reason(data: bytes) -> str:
    """
    A WORK_EXCEPTION's data as text for the log and the failed list: a
    Perl worker's frozen error unwrapped, control characters escaped (so
    that a line stays one line), cut to L{REASON_LENGTH} characters
    (and C{...}).
    """
    if len(data) > 3 and data[0] == 0x05 and data[1] < 0x20:
        size = _STORABLE_SCALARS.get(data[2])
        if size is not None and len(data) >= 3 + size:
            n = int.from_bytes(data[3 : 3 + size], "big")
            if len(data) == 3 + size + n:
                data = data[3 + size :]
    reason = _log.printable(text(data).strip())
    return reason if len(reason) <= REASON_LENGTH else reason[:REASON_LENGTH] + "..."


class FailurePolicy:
    """
    The retry policy and the failed list's steps, as a part of
    L{JobFlow<txgearmand.flow.JobFlow>}.

    @ivar retry_limits: the retry policy's limits set at run time by
        function (admin C{retryfailed}), over L{Settings.retry_failed}.
    @ivar random: where the jitter of retry delays comes from (tests
        replace it).
    """

    log: Logger
    settings: Settings
    reactor: IReactorTime
    durability: Durability
    schedule: Schedule
    table: JobTable
    registry: FunctionRegistry
    failed: FailedList
    jobs_accepted: int
    _output: OutputBatch
    retry_limits: dict[bytes, int]
    random: random.Random

    # The flow's own steps.

    def _release(self, job: Job) -> None:
        raise NotImplementedError

    def _forget(self, job: Job) -> None:
        raise NotImplementedError

    def enqueue(self, job: Job) -> None:
        raise NotImplementedError

    # -- the retry policy (--retry-failed) -------------------------------

    def retry_limit(self, function: bytes) -> int:
        """
        How many times a background job of C{function} that failed is
        tried again: its run-time limit, else L{Settings.retry_failed}.
        """
        return self.retry_limits.get(function, self.settings.retry_failed)

    def set_retry_limit(self, function: bytes, limit: int | None) -> None:
        """
        Set (or, with C{None}, clear) a function's run-time retry limit.
        """
        if limit is None:
            self.retry_limits.pop(function, None)
        else:
            self.retry_limits[function] = max(limit, 0)
        self.log.info(
            "Failed background jobs of {function} are now tried again {limit} times{how}",
            function=text(function),
            limit=self.retry_limit(function),
            how="" if limit is not None else " (the --retry-failed default)",
        )

    def backoff(self, attempts: int) -> float:
        """
        The delay before the next attempt of a job that failed C{attempts}
        times: L{Settings.retry_backoff}'s first delay, doubled for each
        further failure, at most its cap, and drawn between half and all
        of that (jitter from L{random}).
        """
        first, cap = self.settings.retry_backoff
        delay = min(cap, first * 2.0 ** min(attempts - 1, 1000))
        return delay * (0.5 + 0.5 * self.random.random())

    def _failed(self, job: Job, reason: str) -> None:
        """
        A background job's attempt ended in WORK_FAIL or WORK_EXCEPTION
        (its listeners were told): try it again later, keeping its handle,
        unique id and priority, or give up once it has failed one time
        more than its function's retry limit.
        """
        self._release(job)
        job.attempts += 1
        if job.first_failed is None:
            job.first_failed = self.reactor.seconds()
        limit = self.retry_limits.get(job.queue.name, self.settings.retry_failed)
        if job.attempts > limit:
            self._gave_up(job, reason)
            return
        delay = self.backoff(job.attempts)
        job.when = self.reactor.seconds() + delay
        job.numerator = job.denominator = b"0"
        # Its foreground submitters were told it failed: they are done.
        for listener in job.listeners:
            listener.listening.pop(job, None)
        job.listeners = ()  # type: ignore[assignment]
        job.queue.counts[RETRIED] += 1
        self.log.info(
            "Job {handle} ({function}) attempt {attempt} of {attempts} failed ({reason});"
            " tried again in {delay:.3f} s",
            handle=text(job.handle),
            function=text(job.queue.name),
            delay=delay,
            attempt=job.attempts,
            attempts=limit + 1,
            reason=reason,
        )
        if job.store_id is not None:
            self.durability.update(job)
        self.schedule.add(job)

    def _gave_up(self, job: Job, reason: str) -> None:
        """
        A background job failed for the last time (WORK_FAIL or
        WORK_EXCEPTION past the retry limit, or no result within
        C{--job-retries} attempts); it is out of its queue and off its
        worker, and ends here: kept in the failed list (its row stays in
        the store, with its failure fields) while the list is on, else
        forgotten.

        @param reason: why its last attempt failed, for the log and the
            failed list.
        """
        failed = self.failed
        if failed.on:
            entry = FailedJob.of(job, cut_reason(reason), self.reactor.seconds())
            if job.store_id is not None:
                self.durability.update(job, entry.stored())
                job.store_id = None
            job.queue.counts[DEAD_LETTERED] += 1
            self.log.info(
                "Job {handle} ({function}) kept in the failed list: unique {unique},"
                " {attempts} failed attempts, {reason}",
                handle=text(job.handle),
                function=text(job.queue.name),
                unique=text(job.unique) or "-",
                attempts=entry.attempts,
                reason=entry.reason,
            )
            self._forget(job)
            failed.add(entry)
            return
        if job.attempts > 1:
            self.log.info(
                "Job {handle} ({function}) ended after {attempts} failed attempts: {reason}",
                handle=text(job.handle),
                function=text(job.queue.name),
                attempts=job.attempts,
                reason=reason,
            )
        self._forget(job)

    # -- the failed list (dead-letter) -----------------------------------

    def retry_failed_job(self, handle: bytes) -> bool:
        """
        Run a job of the failed list again (admin C{failed retry}), with a
        fresh attempt count; see L{_rerun}.

        @return: whether the list had it.
        """
        entry = self.failed.take(handle)
        if entry is not None:
            with self._output:
                self._rerun(entry)
        return entry is not None

    def retry_failed_function(self, function: bytes) -> int:
        """
        Run every job of a function in the failed list again, oldest first.

        @return: how many.
        """
        entries = self.failed.take_function(function)
        with self._output:
            for entry in entries:
                self._rerun(entry)
        return len(entries)

    def drop_failed_job(self, handle: bytes) -> bool:
        """
        Forget a job of the failed list (admin C{failed drop}): its row
        leaves the store.

        @return: whether the list had it.
        """
        entry = self.failed.take(handle)
        if entry is not None:
            self._dropped(entry)
        return entry is not None

    def drop_failed_function(self, function: bytes) -> int:
        """
        Forget every job of a function in the failed list.

        @return: how many.
        """
        entries = self.failed.take_function(function)
        for entry in entries:
            self._dropped(entry)
        return len(entries)

    def _dropped(self, entry: FailedJob) -> None:
        self.log.info(
            "Failed job {handle} ({function}) dropped from the failed list",
            handle=text(entry.handle),
            function=text(entry.function),
        )
        if entry.store_id is not None:
            self.durability.remove(entry.store_id)

    def _rerun(self, entry: FailedJob) -> None:
        """
        A new job from a failed one, queued now: its handle if free, its
        unique id, priority, payload and row in the store (written again,
        attempts 0), its first failure time kept.  If a live job has its
        unique id, it joins that one instead, as a submission would: the
        work is pending already, and runs once.
        """
        table = self.table
        live = (
            table.of_unique(entry.function, entry.unique, entry.payload) if entry.unique else None
        )
        if live is not None:
            self.log.info(
                "Failed job {handle} ({function}) run again: joined live job {live}"
                " (same unique id)",
                handle=text(entry.handle),
                function=text(entry.function),
                live=text(live.handle),
            )
            if entry.store_id is not None:
                self.durability.remove(entry.store_id)
            live.require_listener = False
            if self.durability.store is not None and live.store_id is None:
                self.durability.keep(live)
            return
        handle = entry.handle if entry.handle not in table.by_handle else table.new_handle()
        job = Job(
            handle,
            self.registry.function(entry.function),
            entry.unique,
            entry.payload,
            entry.priority,
            True,
            entry.reducer,
        )
        job.require_listener = False
        job.first_failed = entry.first_failed
        table.add(job)
        self.jobs_accepted += 1
        self.log.info(
            "Failed job {handle} ({function}) run again as {new} after {attempts} failed attempts",
            handle=text(entry.handle),
            function=text(entry.function),
            new=text(handle),
            attempts=entry.attempts,
        )
        if self.durability.store is not None:
            if entry.store_id is not None:
                job.store_id = entry.store_id
                self.durability.update(job)
            else:
                self.durability.keep(job)
        self.enqueue(job)
