# -*- test-case-name: txgearmand.test.test_model -*-
"""
What a worker sends about a job it holds: progress, data, warnings, and
the result that ends it (WORK_COMPLETE, WORK_FAIL, WORK_EXCEPTION).
L{Results} is a part of L{txgearmand.flow.JobFlow}, kept here to keep
that class readable; it uses the flow's records and steps, declared below.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from txgearmand import _log
from txgearmand.failures import exception_reason
from txgearmand.job import Job
from txgearmand.meters import COMPLETED, EXCEPTIONS, FAILED, Meters
from txgearmand.records import Participant
from txgearmand.settings import Settings
from txgearmand.wire import GearmanError, PacketType

__all__ = ["Results"]

text = _log.text

_WORK_FAIL = PacketType.WORK_FAIL
_NOT_FOUND_RESULT = b"Job given in work result not found"


class Results:
    """
    A worker's results for the jobs it holds, as a part of
    L{JobFlow<txgearmand.flow.JobFlow>}: relayed to the job's listeners,
    and a final one ends the job (a background job that failed goes to
    the retry policy of L{FailurePolicy<txgearmand.failures.FailurePolicy>}).
    """

    log: Logger
    settings: Settings
    reactor: IReactorTime
    meters: Meters

    # The flow's own steps.

    def finish(self, job: Job) -> None:
        raise NotImplementedError

    if TYPE_CHECKING:
        # FailurePolicy's step: declared for the type checker only, so
        # that it never stands before FailurePolicy's in JobFlow's bases.

        def _failed(self, job: Job, reason: str) -> None: ...

    # -- results --------------------------------------------------------

    def work_status(
        self, worker: Participant, handle: bytes, numerator: bytes, denominator: bytes
    ) -> None:
        """
        WORK_STATUS: remember the progress and tell every listener.
        """
        job = worker.held.get(handle) or _not_held(worker, handle, _NOT_FOUND_RESULT, False)
        if job is not None:
            job.numerator = numerator
            job.denominator = denominator
            job.relay(PacketType.WORK_STATUS, handle, numerator, denominator)

    def work_data(
        self, worker: Participant, handle: bytes, data: bytes, warning: bool = False
    ) -> None:
        """
        WORK_DATA (or, with C{warning}, WORK_WARNING): relay to every
        listener.
        """
        job = worker.held.get(handle) or _not_held(
            worker, handle, b"Job does not exist on server", False
        )
        if job is not None:
            job.relay(PacketType.WORK_WARNING if warning else PacketType.WORK_DATA, handle, data)

    def work_complete(self, worker: Participant, handle: bytes, data: bytes) -> None:
        """
        WORK_COMPLETE: relay the result to every listener; the job ends.
        """
        job = worker.held.get(handle) or _not_held(worker, handle, _NOT_FOUND_RESULT)
        if job is not None:
            job.relay(PacketType.WORK_COMPLETE, handle, data)
            worker.jobs_done += 1
            worker.jobs_finished += 1
            job.queue.counts[COMPLETED] += 1
            if job.started is not None:
                self._ran(job)
            if _log.debugging:
                self.log.debug(
                    "Job {handle} ({function}) completed by {worker}: {size} bytes,"
                    " {clients} clients told",
                    handle=text(handle),
                    function=text(job.queue.name),
                    worker=worker.describe(),
                    size=len(data),
                    clients=len(job.listeners),
                )
            self.finish(job)

    def work_fail(self, worker: Participant, handle: bytes) -> None:
        """
        WORK_FAIL: tell every listener; the job ends.
        """
        job = worker.held.get(handle) or _not_held(worker, handle, _NOT_FOUND_RESULT)
        if job is not None:
            self.log.info(
                "Job {handle} ({function}) failed on {worker} (WORK_FAIL)",
                handle=text(handle),
                function=text(job.queue.name),
                worker=worker.describe(),
            )
            job.relay(_WORK_FAIL, handle)
            worker.jobs_done += 1
            worker.jobs_finished += 1
            job.queue.counts[FAILED] += 1
            if job.started is not None:
                self._ran(job)
            if job.require_listener:
                self.finish(job)
            else:
                self._failed(job, "failed")

    def work_exception(self, worker: Participant, handle: bytes, data: bytes) -> None:
        """
        WORK_EXCEPTION ends the job (as in C gearmand): listeners that asked
        for exceptions (or all, with the C{exceptions} setting) get it, the
        others get WORK_FAIL.
        """
        job = worker.held.get(handle) or _not_held(
            worker, handle, b"An exception was received for a job that does not exist"
        )
        if job is not None:
            self.log.info(
                "Job {handle} ({function}) raised on {worker}: {exception}",
                handle=text(handle),
                function=text(job.queue.name),
                worker=worker.describe(),
                exception=exception_reason(data),
            )
            job.relay_exception(data, self.settings.exceptions)
            worker.jobs_done += 1
            worker.jobs_finished += 1
            job.queue.counts[EXCEPTIONS] += 1
            if job.started is not None:
                self._ran(job)
            # Perl's Gearman::Worker follows WORK_EXCEPTION with WORK_FAIL.
            worker.remember_released(handle)
            if job.require_listener:
                self.finish(job)
            else:
                self._failed(job, "exception: " + exception_reason(data))

    def _ran(self, job: Job) -> None:
        assert job.started is not None
        self.meters.run_time.observe(self.reactor.seconds() - job.started)


def _not_held(worker: Participant, handle: bytes, message: bytes, final: bool = True) -> Job | None:
    """
    A worker's result for a job it does not hold: dropped quietly (C{None})
    if the server took that job from it (a final result ends that grace).

    @raise GearmanError: C{JOB_NOT_FOUND} for a job it never held.
    """
    if handle in worker.released:
        if final:
            del worker.released[handle]
        return None
    raise GearmanError(b"JOB_NOT_FOUND", message)
