# -*- test-case-name: txgearmand.test.test_model -*-
"""
The flow of a job: submitted (or coalesced), queued or scheduled, handed
to a worker, retried, and ended by a result, a failure, a cancel or its
clients leaving; and what the log says about each step.

L{JobFlow} works on the model's records (L{Participant}, L{Job},
L{FunctionQueue}) and never touches bytes or connections: it tells a
participant's L{IPeer} which packet to send.  The L{JobServer} owns one
and offers its steps under Gearman::Server's names.
"""

from __future__ import annotations

import random

from twisted.internet.interfaces import IReactorTime

from txgearmand import _log
from txgearmand.batching import OutputBatch
from txgearmand.deadletter import FailedList
from txgearmand.drain import Drain
from txgearmand.durability import Durability
from txgearmand.failures import FailurePolicy
from txgearmand.functions import FunctionRegistry
from txgearmand.guard import Guard
from txgearmand.interfaces import IJobStore
from txgearmand.job import HIGH, JOB_OVERHEAD, LOW, NORMAL, Job, JobState, JobTable
from txgearmand.meters import (
    CANCELLED,
    FAILED,
    OTHER,
    REFUSED,
    RETRIED,
    SUBMITTED_BG,
    SUBMITTED_FG,
    TIMED_OUT,
    Meters,
)
from txgearmand.records import CLIENT, WORKER, FunctionQueue, Participant
from txgearmand.results import Results
from txgearmand.schedule import Schedule
from txgearmand.settings import Settings
from txgearmand.wire import MAX_UNIQUE_SIZE, GearmanError, PacketType
from txgearmand.workers import Workers

__all__ = ["JobFlow", "text"]

_QUEUED = JobState.QUEUED
_RUNNING = JobState.RUNNING
_SCHEDULED = JobState.SCHEDULED
_DONE = JobState.DONE
_WORK_FAIL = PacketType.WORK_FAIL

#: Each role's name in the log.
_ROLES = ((CLIENT, "client"), (WORKER, "worker"))


#: Bytes from the wire as text for the log (not a Python repr).
text = _log.text


class JobFlow(FailurePolicy, Results):
    """
    Moves jobs through their states and keeps the counts of what it did.
    Its parts: L{FailurePolicy} (failed background jobs and the failed
    list) and L{Results} (what a worker sends about the jobs it holds).

    @ivar durability: the L{Durability} that keeps background jobs.
    @ivar workers: the L{Workers}: abilities, sleep and wake-up.
    @ivar schedule: the L{Schedule} of jobs submitted for a later time.
    @ivar jobs_accepted: jobs made (not coalesced) since the start.
    @ivar jobs_ended: jobs ended since the start.
    @ivar retry_limits: see L{FailurePolicy}.
    @ivar random: see L{FailurePolicy}.
    @ivar failed: the L{FailedList}: background jobs that failed for the
        last time (the dead-letter list).
    """

    log = _log.logger("txgearmand.flow")

    def __init__(
        self,
        reactor: IReactorTime,
        settings: Settings,
        table: JobTable,
        registry: FunctionRegistry,
        output: OutputBatch,
        guard: Guard,
        drain: Drain,
        store: IJobStore | None,
        meters: Meters,
    ) -> None:
        self.reactor = reactor
        self.meters = meters
        self.settings = settings
        self.table = table
        self.registry = registry
        self.guard = guard
        self.drain = drain
        self.durability = Durability(
            store,
            output,
            self.finish,
            reactor,
            settings.store_slow_seconds,
            meters.store_latency,
            self.enqueue,
            self._may_adopt,
            settings.spill_after,
            self._refilled,
            self._records_dropped,
        )
        self.schedule = Schedule(reactor, self.release_due)
        self.workers = Workers(reactor, settings, registry, output, self.take_back)
        self._output = output
        self.jobs_accepted = 0
        self.jobs_ended = 0
        self.retry_limits: dict[bytes, int] = {}
        self.random = random.Random()
        self.failed = FailedList(
            reactor,
            settings.failed_keep,
            settings.failed_max_age,
            self.durability.remove,
            self.table,
        )
        self.durability.failed = self.failed

    def _refilled(self, fq: FunctionQueue) -> None:
        # Spilled jobs came back from the store: wake who sleeps on them.
        if fq.sleepers:
            self.workers.wake_up(fq)

    def _records_dropped(self, fq: FunctionQueue, n: int) -> None:
        # Spilled jobs ended as records, with no job made of them (their
        # rows were gone, or another server took them): as note_finished.
        self.jobs_ended += n
        if not fq.workers:
            self.registry.forget_if_unused(fq)
        if self.drain.draining:
            self.drain.check()

    def _may_adopt(self) -> bool:
        # A server draining to stop takes no more jobs from dead servers.
        return not self.drain.draining

    # -- submit ---------------------------------------------------------

    def submit(
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
        function and unique id, or make, index and queue a new job (see
        L{JobServer.submit_job}).
        """
        if len(unique) > MAX_UNIQUE_SIZE:
            raise GearmanError(b"ARGUMENT_TOO_LARGE", b"Unique value too large")
        if not function:
            raise GearmanError(b"INVALID_ARGUMENT", b"Function name is empty")
        durability = self.durability
        if unique:
            job = self.table.of_unique(function, unique, data)
            if job is not None:
                if background:
                    job.require_listener = False
                    if durability.store is not None and job.store_id is None:
                        durability.keep(job)
                elif client is not None:
                    # One entry per submission, as both peers do.
                    job.add_listener(client)
                if client is not None:
                    self._submitted(client)
                job.queue.counts[SUBMITTED_BG if background else SUBMITTED_FG] += 1
                if _log.debugging:
                    _debug_submit(self, job, client, len(data), background, "joined")
                return job
        table = self.table
        # Fast path: under the guard's alarm, the budget costs one sum.
        guard = self.guard
        size = len(data) + JOB_OVERHEAD
        if table.held_bytes + guard.partial + guard.output + size > guard.alarm:
            if not guard.admit(size):
                guard.refused("submissions")
                # Counted under the function only if it exists: a refused
                # name takes no place among the counted ones.
                known = self.registry.by_name.get(function)
                (known.counts if known else self.registry.counts.of(OTHER))[REFUSED] += 1
                raise GearmanError(
                    b"QUEUE_ERROR",
                    b"Server is over its memory budget; try again later or elsewhere",
                )
        # Fast path: a known function without limits costs two dict lookups.
        registry = self.registry
        fq = registry.by_name.get(function) or registry.function(function)
        if function in registry.limits_by_name:
            registry.check_room(fq, priority)
        job = Job(table.new_handle(), fq, unique, data, priority, background, reducer, when)
        table.by_handle[job.handle] = job
        job.cost = size
        table.held_bytes += size
        self.jobs_accepted += 1
        fq.counts[SUBMITTED_BG if background else SUBMITTED_FG] += 1
        if self.meters.timing:
            job.created = self.reactor.seconds()
        if unique:
            table.index_unique(job)
        if background:
            job.require_listener = False
            if durability.store is not None:
                durability.keep(job)
        elif client is not None:
            job.listeners = [client]
            client.listening[job] = None
        if client is not None:
            # Fast path: _submitted inline (a call per submission).
            client.jobs_submitted += 1
            if not client.roles & CLIENT:
                _new_role(self, client, CLIENT)
        # Fast path: a disabled DEBUG level costs one attribute read.
        if _log.debugging:
            _debug_submit(self, job, client, len(data), background, "submitted")
        if when is not None and when > self.reactor.seconds():
            self.schedule.add(job)
        else:
            # Fast path: enqueue inline (a call per submission); a job
            # that went to the spilled tail wakes nobody (see enqueue).
            fq.push(job)
            if fq.sleepers and fq.ready[priority]:
                self.workers.wake_up(fq)
        return job

    def _submitted(self, client: Participant) -> None:
        # Counted once accepted: a refused submission is not one.
        client.jobs_submitted += 1
        if not client.roles & CLIENT:
            _new_role(self, client, CLIENT)

    def enqueue(self, job: Job) -> None:
        """
        Put a job at the back of its function's queue for its priority and
        wake sleeping workers.
        """
        fq = job.queue
        fq.push(job)
        # A job that went to the spilled tail wakes nobody: a grab would
        # not find it before its payload is back (and that wakes them).
        if fq.sleepers and fq.ready[job.priority]:
            self.workers.wake_up(fq)

    def release_due(self, jobs: list[Job]) -> None:
        """
        Queue the scheduled jobs whose time has come.
        """
        with self._output:
            for job in jobs:
                self.enqueue(job)

    # -- workers --------------------------------------------------------

    def grab(self, worker: Participant) -> Job | None:
        """
        Hand a worker the next job it can do, or C{None} (see
        L{JobServer.grab_job}).
        """
        if worker.sleeping:
            self.workers.unsleep(worker)
        funcs = worker.ability_list
        n = len(funcs)
        if not n:
            return None
        if not worker.roles & WORKER:
            _new_role(self, worker, WORKER)
        start = worker.next_function
        for priority in (HIGH, NORMAL, LOW):
            for i in range(n):
                index = (start + i) % n
                fq = funcs[index]
                if fq.ready[priority]:
                    job = fq.pop(priority)
                    worker.next_function = (index + 1) % n
                    job.state = _RUNNING
                    job.worker = worker
                    fq.running += 1
                    worker.held[job.handle] = job
                    timeout = worker.timeouts.get(fq.name)
                    if timeout:
                        job.timer = self.reactor.callLater(timeout, self._timed_out, job)
                    if self.meters.timing:
                        job.started = self.reactor.seconds()
                    if _log.debugging:
                        self.log.debug(
                            "Job {handle} ({function}) assigned to {worker}",
                            handle=text(job.handle),
                            function=text(fq.name),
                            worker=worker.describe(),
                        )
                    return job
        return None

    def sleep(self, worker: Participant) -> None:
        """
        A worker sent PRE_SLEEP (see L{Workers.sleep}).
        """
        if worker.ability_list and not worker.roles & WORKER:
            _new_role(self, worker, WORKER)
        self.workers.sleep(worker)

    def left(self, participant: Participant) -> None:
        """
        A participant went away: put back the jobs it held and stop waiting
        for the jobs it listened to (dropping queued foreground jobs nobody
        waits for any more).
        """
        for job in list(participant.held.values()):
            self.log.info(
                "Worker {worker} went away holding job {handle} ({function})",
                worker=participant.describe(),
                handle=text(job.handle),
                function=text(job.queue.name),
            )
            self.attempt_failed(job, "worker lost")
        for job in list(participant.listening):
            if job.remove_listener(participant) and not job.listeners:
                if job.require_listener and job.state is _QUEUED:
                    self.log.debug(
                        "Job {handle} ({function}) dropped: its clients left",
                        handle=text(job.handle),
                        function=text(job.queue.name),
                    )
                    self.finish(job)
        if participant.roles:
            kinds = [name for bit, name in _ROLES if participant.roles & bit]
            self.log.info(
                "{kinds} {peer} ({id}) left; jobs submitted: {submitted}, done: {done}",
                kinds=" and ".join(kinds).capitalize(),
                peer=participant.describe(),
                id=text(participant.client_id),
                submitted=participant.jobs_submitted,
                done=participant.jobs_finished,
            )

    # -- retries --------------------------------------------------------

    def take_back(self, job: Job, reason: str = "worker gave it back") -> None:
        """
        Take a running job from its worker, which still works on it (it
        timed out, or the worker sent CANT_DO), and count the attempt as
        failed.
        """
        self.take_away(job)
        self.attempt_failed(job, reason)

    def _timed_out(self, job: Job) -> None:
        job.timer = None
        if job.state is not _RUNNING:
            return
        job.queue.counts[TIMED_OUT] += 1
        self.log.info(
            "Job {handle} ({function}) timed out on {worker}",
            handle=text(job.handle),
            function=text(job.queue.name),
            worker=job.worker.describe() if job.worker else "?",
        )
        with self._output:
            self.take_back(job, "timed out")

    @staticmethod
    def take_away(job: Job) -> None:
        """
        The server ends a worker's hold on a job while the worker still
        works on it: its late results will be dropped without an error.
        """
        worker = job.worker
        if worker is not None and worker.connected:
            worker.remember_released(job.handle)

    @staticmethod
    def _release(job: Job) -> None:
        worker = job.worker
        if worker is not None:
            worker.held.pop(job.handle, None)
            job.worker = None
        job.queue.running -= 1
        if job.timer is not None:
            cancel_timer(job)

    def attempt_failed(self, job: Job, reason: str = "worker lost") -> None:
        """
        A running job's attempt ended without a result: requeue it at the
        back of its priority, or fail it once the retry limit is reached.

        @param reason: why: C{worker lost}, C{timed out}, C{worker gave it
            back} (CANT_DO); the failed list keeps it.
        """
        self._release(job)
        job.retries += 1
        if job.first_failed is None:
            job.first_failed = self.reactor.seconds()
            if job.store_id is not None:
                self.durability.update(job)
        limit = self.settings.job_retries
        if limit and job.retries >= limit:
            self.log.info(
                "Job {handle} ({function}) failed: no result in {retries} of {limit} attempts",
                handle=text(job.handle),
                function=text(job.queue.name),
                retries=job.retries,
                limit=limit,
            )
            job.queue.counts[FAILED] += 1
            job.relay(_WORK_FAIL, job.handle)
            if job.require_listener:
                self._forget(job)
            else:
                self._gave_up(job, reason)
        elif job.require_listener and not job.listeners:
            self._forget(job)
        else:
            self.log.info(
                "Job {handle} ({function}) queued again for attempt {attempt}",
                handle=text(job.handle),
                function=text(job.queue.name),
                attempt=job.retries + 1,
            )
            job.queue.counts[RETRIED] += 1
            job.numerator = job.denominator = b"0"
            self.enqueue(job)

    # -- the end --------------------------------------------------------

    def finish(self, job: Job) -> None:
        """
        End a job wherever it is: it leaves its queue, its worker, the
        schedule and every index.
        """
        state = job.state
        if state is _RUNNING:
            self._release(job)
        elif state is _QUEUED:
            job.queue.discard(job)
        elif state is _SCHEDULED:
            job.queue.scheduled -= 1
        self._forget(job)

    def _forget(self, job: Job) -> None:
        job.state = _DONE
        for listener in job.listeners:
            listener.listening.pop(job, None)
        self.note_finished(job)

    def note_finished(self, job: Job) -> None:
        """
        Drop a finished job from the table, the store and, if it was the
        last thing keeping it, its function.
        """
        # Fast path: skip the calls that would find nothing to do.
        table = self.table
        by_handle = table.by_handle
        if by_handle.get(job.handle) is job:
            del by_handle[job.handle]
            table.held_bytes -= job.cost
            self.jobs_ended += 1
        if job.coalesce_key is not None:
            table.unindex_unique(job)
        if job.store_id is not None:
            self.durability.forget(job)
        if not job.queue.workers:
            self.registry.forget_if_unused(job.queue)
        if self.drain.draining:
            self.drain.check()

    def cancel(self, handle: bytes) -> bool:
        """
        Cancel a live job (admin C{cancel job}): its clients get WORK_FAIL
        and it is forgotten; a worker holding it has its results dropped.

        @return: whether there was such a job.
        """
        job = self.table.get(handle)
        if job is None:
            return False
        self.log.info(
            "Job {handle} ({function}) cancelled",
            handle=text(handle),
            function=text(job.queue.name),
        )
        job.queue.counts[CANCELLED] += 1
        job.relay(_WORK_FAIL, handle)
        self.take_away(job)
        self.finish(job)
        return True


def _debug_submit(
    self: JobFlow, job: Job, client: Participant | None, size: int, background: bool, how: str
) -> None:
    self.log.debug(
        "Job {handle} ({function}) {how} by {client}: unique {unique}, {size} bytes,"
        " {priority} priority, {kind}",
        handle=text(job.handle),
        function=text(job.queue.name),
        how=how,
        client=client.describe() if client is not None else "code",
        unique=text(job.unique) or "-",
        size=size,
        priority=("high", "normal", "low")[job.priority],
        kind="background" if background else "foreground",
    )


def _new_role(self: JobFlow, participant: Participant, role: int) -> None:
    participant.roles |= role
    if role == WORKER:
        self.log.info(
            "Worker {peer} ({id}) can do {functions}",
            peer=participant.describe(),
            id=text(participant.client_id),
            functions=", ".join(text(fq.name) for fq in participant.ability_list),
        )
    else:
        self.log.info(
            "Client {peer} ({id}) submits jobs",
            peer=participant.describe(),
            id=text(participant.client_id),
        )


def cancel_timer(job: Job) -> None:
    """
    Stop a job's timeout timer.
    """
    timer = job.timer
    if timer is not None:
        if timer.active():
            timer.cancel()
        job.timer = None
