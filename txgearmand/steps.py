# -*- test-case-name: txgearmand.test.test_server,txgearmand.test.test_model -*-
"""
Gearman::Server's names for a job's steps - C{set_max_queue},
C{job_of_unique}, C{submit_job}, C{enqueue_job}, C{grab_job},
C{on_client_sleep}, C{wake_up_sleepers}, C{work_complete}, ... - as entry
points for code that drives a job server.  L{JobSteps} is a part of
L{txgearmand.server.JobServer}, kept here to keep that class readable;
L{JobFlow} does the steps.
"""

from __future__ import annotations

from typing import Union

from txgearmand.flow import JobFlow
from txgearmand.functions import FunctionRegistry
from txgearmand.job import NORMAL, Job, JobTable
from txgearmand.records import FunctionQueue, Participant
from txgearmand.settings import limits_of
from txgearmand.workers import Workers

__all__ = ["JobSteps"]


def _b(value: Union[str, bytes]) -> bytes:
    return value.encode("utf-8") if isinstance(value, str) else value


class JobSteps:
    """
    The limits, jobs, workers and results of a job server under
    Gearman::Server's names, as a part of
    L{JobServer<txgearmand.server.JobServer>}, which sets the attributes
    it uses.

    These methods are entry points for code that drives the server, not
    hooks: the protocol calls the server's L{JobFlow} directly, and
    overriding them in a subclass does not change what connections get.
    """

    flow: JobFlow
    table: JobTable
    registry: FunctionRegistry
    workers: Workers

    # -- limits ---------------------------------------------------------

    def set_max_queue(
        self,
        function: Union[str, bytes],
        max: Union[int, str, None] = None,
        normal: int | None = None,
        low: int | None = None,
    ) -> None:
        """
        Limit how many jobs of a function the server holds (queued and
        running, as C gearmand counts); a submission past the limit of its
        priority gets C{QUEUE_ERROR}.  One number limits every priority;
        with C{normal} (and C{low}), C{max} is the high limit and the rest
        are unlimited unless given.  C{0}, negative, C{None} or C{""}
        removes the limit.
        """
        high = int(max) if max not in (None, "") else 0
        if normal is None and low is None:
            limits = limits_of(high)
        else:
            limits = limits_of((high, normal or 0, low or 0))
        self.registry.set_limits(_b(function), limits)

    def max_queue(self, function: bytes) -> tuple[int, int, int] | None:
        """
        The limits set for a function (high, normal, low; 0 = none), if any.
        """
        return self.registry.limits(function)

    def set_retry_failed(self, function: Union[str, bytes], limit: int | None) -> None:
        """
        How many times background jobs of a function that fail (WORK_FAIL,
        WORK_EXCEPTION) are tried again, over C{--retry-failed}; C{None}
        goes back to it.
        """
        self.flow.set_retry_limit(_b(function), limit)

    def retry_failed(self, function: Union[str, bytes]) -> int:
        """
        How many times a failed background job of a function is tried
        again (see L{set_retry_failed}).
        """
        return self.flow.retry_limit(_b(function))

    # -- jobs -----------------------------------------------------------

    def new_job_handle(self) -> bytes:
        """
        A handle no live job has: C{<prefix>:<n>}.
        """
        return self.table.new_handle()

    def job_by_handle(self, handle: bytes) -> Job | None:
        """
        The live job with this handle, if any.
        """
        return self.table.get(handle)

    jobs_by_handle = job_by_handle

    def jobs(self) -> list[Job]:
        """
        Every live job (queued, running or scheduled), oldest first.
        """
        return list(self.table.by_handle.values())

    def jobs_outstanding(self) -> int:
        """
        How many jobs wait in queues for a worker.
        """
        return sum(fq.waiting() for fq in self.registry)

    def jobs_running(self) -> int:
        """
        How many jobs workers hold.
        """
        return sum(fq.running for fq in self.registry)

    def job_of_unique(
        self, function: Union[str, bytes], unique: Union[str, bytes], data: bytes = b""
    ) -> Job | None:
        """
        The live job a submission with this function and unique id would
        coalesce onto, if any (C{-} coalesces on C{data}).
        """
        return self.table.of_unique(_b(function), _b(unique), data)

    def set_unique_job(
        self, function: Union[str, bytes], unique: Union[str, bytes], job: Job
    ) -> None:
        """
        Make submissions of C{function} with C{unique} coalesce onto C{job}.
        """
        if _b(function) != job.queue.name or _b(unique) != job.unique:
            raise ValueError("set_unique_job: the job has another function or unique id")
        self.table.index_unique(job)

    def submit_job(
        self,
        client: Participant | None,
        function: bytes,
        unique: bytes,
        data: bytes,
        priority: int = NORMAL,
        background: bool = False,
        reducer: bytes = b"",
        when: float | None = None,
    ) -> Job:
        """
        Accept a submission: coalesce it onto the live job with the same
        function and unique id, or make, index and queue a new job.

        @param client: the submitting participant, which listens to a
            foreground job; C{None} for a submission from code.
        @param when: for SUBMIT_JOB_EPOCH, the epoch time it may run at.
        @raise GearmanError: C{ARGUMENT_TOO_LARGE} for a unique over 64
            bytes, C{QUEUE_ERROR} when the function's limit is reached.
        @return: the job (its handle goes in JOB_CREATED).
        """
        return self.flow.submit(client, function, unique, data, priority, background, reducer, when)

    def enqueue_job(self, job: Job) -> None:
        """
        Put a job at the back of its function's queue for its priority and
        wake sleeping workers.
        """
        self.flow.enqueue(job)

    def grab_job(self, worker: Participant) -> Job | None:
        """
        Hand a worker the next job it can do, or C{None}.

        Priority is global across the worker's functions (every HIGH job
        before any NORMAL one), FIFO within a priority, and the functions
        take turns at equal priority (the search starts after the function
        served last), so none starves.
        """
        return self.flow.grab(worker)

    def note_job_finished(self, job: Job) -> None:
        """
        Drop a finished job from the table, the store and, if it was the
        last thing keeping it, its function.
        """
        self.flow.note_finished(job)

    def cancel_job(self, handle: bytes) -> bool:
        """
        Cancel a live job (admin C{cancel job}): its clients get WORK_FAIL
        and it is forgotten; a worker holding it has its results dropped.

        @return: whether there was such a job.
        """
        return self.flow.cancel(handle)

    # -- workers --------------------------------------------------------

    def on_client_sleep(self, worker: Participant) -> None:
        """
        A worker sent PRE_SLEEP: NOOP it at once if one of its functions
        has a queued job, else it sleeps (see L{Workers.sleep}).
        """
        self.flow.sleep(worker)

    def wake_up_sleepers(self, fq: FunctionQueue) -> None:
        """
        NOOP up to C{wakeup} sleeping workers of a function (all for -1),
        more every C{wakeup_delay} while it has queued jobs.
        """
        self.workers.wake_up(fq)

    # -- results --------------------------------------------------------

    def work_status(
        self, worker: Participant, handle: bytes, numerator: bytes, denominator: bytes
    ) -> None:
        """
        WORK_STATUS: remember the progress and tell every listener.
        """
        self.flow.work_status(worker, handle, numerator, denominator)

    def work_data(
        self, worker: Participant, handle: bytes, data: bytes, warning: bool = False
    ) -> None:
        """
        WORK_DATA (or, with C{warning}, WORK_WARNING): relay to every
        listener.
        """
        self.flow.work_data(worker, handle, data, warning)

    def work_complete(self, worker: Participant, handle: bytes, data: bytes) -> None:
        """
        WORK_COMPLETE: relay the result to every listener; the job ends.
        """
        self.flow.work_complete(worker, handle, data)

    def work_fail(self, worker: Participant, handle: bytes) -> None:
        """
        WORK_FAIL: tell every listener; the job ends.
        """
        self.flow.work_fail(worker, handle)

    def work_exception(self, worker: Participant, handle: bytes, data: bytes) -> None:
        """
        WORK_EXCEPTION ends the job (as in C gearmand): listeners that asked
        for exceptions (or all, with the C{exceptions} setting) get it, the
        others get WORK_FAIL.
        """
        self.flow.work_exception(worker, handle, data)
