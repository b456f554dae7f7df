# -*- test-case-name: txgearmand.test.test_durability -*-
"""
Durability: the bridge between the job server and its L{IJobStore}.

It opens and loads the store at start (the server replays what it
loaded), says when the server is ready, hands the store the background
jobs accepted and ended in each reactor turn - one C{add_many} and one
C{remove_many} per turn, when the output batch flushes - and tells each
job's commit waiters (the submitters waiting for JOB_CREATED) once the
store has committed it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.python.failure import Failure

from txgearmand import _log
from txgearmand.batching import OutputBatch
from txgearmand.functions import FunctionRegistry
from txgearmand.interfaces import IJobStore, StoredJob
from txgearmand.job import JobTable
from txgearmand.meters import REFUSED, Histogram
from txgearmand.records import Job, JobState
from txgearmand.schedule import Schedule

__all__ = ["Durability"]

_DONE = JobState.DONE
_QUEUED = JobState.QUEUED


class Durability:
    """
    Keeps background jobs in a store (or, with no store, does nothing).

    @ivar store: the L{IJobStore}, or C{None}.
    @ivar ready: False until the store is opened and loaded.
    @ivar slow: a write has taken longer than the slow threshold, and none
        has been quick since.
    @ivar watch_timer: the timer that looks at the writes still running
        (only while there are some), or C{None}.
    """

    log = _log.logger("txgearmand.durability")

    def __init__(
        self,
        store: IJobStore | None,
        batch: OutputBatch,
        lost: Callable[[Job], None],
        clock: IReactorTime | None = None,
        slow_seconds: float = 0.0,
        latency: Histogram | None = None,
    ) -> None:
        """
        @param batch: the server's output batch: writes go to the store
            when it flushes, and replies to committed submissions wait for
            its next turn.
        @param lost: called with a background job the store refused, to
            end it.
        @param clock: times the store's writes (without it, they are not
            watched).
        @param slow_seconds: a write taking longer makes the store slow
            (logged once, and its recovery too); C{0}: not watched.
        @param latency: where each write's duration is counted.
        """
        self.store = store
        self.ready = store is None
        self._batch = batch
        self._lost = lost
        self._ready_waiters: list[Deferred[None]] = []
        self._seq = 0
        self._to_store: dict[int, Job] = {}
        self._to_remove: list[int] = []
        self._not_stored: list[Job] = []
        self._clock = clock
        self._slow_after = slow_seconds if clock is not None else 0.0
        self._latency = latency
        # Writes are timed when watched for slowness or measured.
        self._timed = clock is not None and (bool(slow_seconds) or latency is not None)
        #: The last write error: its text and when, or C{None}.
        self.last_error: tuple[str, float] | None = None
        self._writing: dict[int, float] = {}
        self._writes = 0
        self.watch_timer: IDelayedCall | None = None
        self.slow = False

    # -- start and stop -------------------------------------------------

    def open(self) -> Deferred[list[StoredJob]]:
        """
        Open the store and load what it kept.

        @return: a Deferred firing with the stored jobs, in order.
        """
        store = self.store
        if store is None:
            return succeed([])
        d: Deferred[Any] = maybeDeferred(store.open)
        d.addCallback(lambda _: store.load())
        return d.addCallback(self._loaded)

    def _loaded(self, records: list[StoredJob]) -> list[StoredJob]:
        for record in records:
            self._seq = max(self._seq, record.id)
        return records

    def replay(
        self,
        records: list[StoredJob],
        table: JobTable,
        registry: FunctionRegistry,
        schedule: Schedule,
    ) -> None:
        """
        Queue again the jobs the store kept, in their order (with new
        handles where a live job has theirs), then say the server is ready.
        """
        now = schedule.now()
        with self._batch:
            for record in records:
                handle = record.handle
                table.note_handle(handle)
                if handle in table.by_handle:
                    handle = table.new_handle()
                job = Job(
                    handle,
                    registry.function(record.function),
                    record.unique,
                    record.payload,
                    record.priority,
                    True,
                    record.reducer,
                    record.when,
                )
                job.require_listener = False
                job.store_id = record.id
                job.attempts = record.attempts
                table.add(job)
                if record.when is not None and record.when > now:
                    schedule.add(job)
                else:
                    job.queue.push(job)
        for fq in registry.over_limit():
            self.log.warn(
                "{function} has {n} stored jobs, over its max queue; all are kept",
                function=fq.name.decode("utf-8", "backslashreplace"),
                n=fq.total(),
            )
        self.log.info("Replayed {n} stored jobs", n=len(records))
        self.set_ready()

    def when_ready(self) -> Deferred[None]:
        """
        A Deferred that fires once the store is replayed (at once if it
        is), or fails if it could not be opened.
        """
        if self.ready:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._ready_waiters.append(d)
        return d

    def set_ready(self, failure: Failure | None = None) -> None:
        """
        The store is replayed (or, with a failure, could not be).
        """
        self.ready = failure is None
        waiters, self._ready_waiters = self._ready_waiters, []
        with self._batch:
            for d in waiters:
                if failure is None:
                    d.callback(None)
                else:
                    d.errback(failure)

    def close(self) -> Deferred[None]:
        """
        Commit what is pending and close the store.
        """
        store = self.store
        if store is None or not self.ready:
            return succeed(None)
        self.flush()
        if self.watch_timer is not None and self.watch_timer.active():
            self.watch_timer.cancel()
        self.watch_timer = None
        d: Deferred[Any] = maybeDeferred(store.close)
        d.addErrback(lambda f: self.log.failure("Closing the job store failed", f))
        return d.addCallback(lambda _: None)

    # -- jobs -----------------------------------------------------------

    def keep(self, job: Job) -> None:
        """
        Store a background job with the others of this turn; its submitters
        (L{Job.commit_waiters}) are answered once it is committed.
        """
        self._seq += 1
        job.store_id = self._seq
        job.commit_waiters = []
        self._to_store[self._seq] = job
        if not self._batch.depth:
            self._batch.flush()

    def update(self, job: Job) -> None:
        """
        A stored job changed (its attempts and next run time, after a
        failed attempt): store it again under its id, with the others of
        this turn.  It is durable already: submissions that join it are
        answered at once.
        """
        store_id = job.store_id
        if store_id is None or self.store is None:
            return
        self._to_store[store_id] = job
        if not self._batch.depth:
            self._batch.flush()

    def forget(self, job: Job) -> None:
        """
        A stored job ended: remove it from the store (or, if it ended in the
        turn it was accepted, never write it).
        """
        store_id = job.store_id
        if store_id is None or self.store is None:
            return
        job.store_id = None
        if self._to_store.pop(store_id, None) is None:
            self._to_remove.append(store_id)
        elif job.attempts:
            # Stored again this turn (see update): its row was written before.
            self._to_remove.append(store_id)
            if job.commit_waiters is not None:
                self._not_stored.append(job)
        else:
            self._not_stored.append(job)
        if not self._batch.depth:
            self._batch.flush()

    def flush(self) -> None:
        """
        Hand the store what this turn accepted and ended (the output
        batch's L{OutputBatch.before_flush}).
        """
        store = self.store
        if store is None:
            return
        if self._not_stored:
            jobs, self._not_stored = self._not_stored, []
            self._committed(None, jobs)
        if self._to_store:
            jobs = list(self._to_store.values())
            self._to_store = {}
            d = store.add_many(
                [
                    StoredJob(
                        job.store_id,  # type: ignore[arg-type]
                        job.handle,
                        job.queue.name,
                        job.unique,
                        job.data,
                        job.priority,
                        job.when,
                        job.reducer,
                        job.attempts,
                    )
                    for job in jobs
                ]
            )
            if self._timed:
                d.addBoth(self._wrote, self._writing_started(), len(jobs))
            d.addBoth(self._committed, jobs)
        if self._to_remove:
            ids, self._to_remove = self._to_remove, []
            d = store.remove_many(ids)
            if self._timed:
                d.addBoth(self._wrote, self._writing_started(), len(ids))
            d.addErrback(_logged_by_the_store)

    # -- is the store slow? ---------------------------------------------

    def _writing_started(self) -> int:
        assert self._clock is not None
        self._writes += 1
        self._writing[self._writes] = self._clock.seconds()
        if self.watch_timer is None and self._slow_after:
            self.watch_timer = self._clock.callLater(self._slow_after, self._check_writes)
        return self._writes

    def _wrote(self, result: object, write: int, changes: int) -> object:
        assert self._clock is not None
        started = self._writing.pop(write, None)
        if started is None:
            return result
        now = self._clock.seconds()
        took = now - started
        if self._latency is not None:
            self._latency.observe(took)
        if isinstance(result, Failure):
            self.last_error = (
                " ".join(str(result.value).split()) or type(result.value).__name__,
                now,
            )
        if not self._slow_after:
            return result
        if took > self._slow_after:
            self._became_slow("writing {changes} job changes took {seconds:.3f} s", changes, took)
        elif self.slow and not isinstance(result, Failure) and not self._waited_too_long():
            self.slow = False
            self.log.info(
                "The job store is quick again: writing {changes} job changes took {seconds:.3f} s",
                changes=changes,
                seconds=took,
            )
        return result

    def _became_slow(self, how: str, changes: int, seconds: float) -> None:
        if self.slow:
            return
        self.slow = True
        self.log.warn(
            "The job store is slow: " + how + " (more than {threshold} s); jobs are"
            " acknowledged only once it has them",
            changes=changes,
            seconds=seconds,
            threshold=self._slow_after,
        )

    def _waited_too_long(self) -> float:
        """
        How long the oldest write still running has waited, if longer than
        the threshold (else 0).
        """
        assert self._clock is not None
        if not self._writing:
            return 0.0
        waited = self._clock.seconds() - next(iter(self._writing.values()))
        return waited if waited > self._slow_after else 0.0

    def _check_writes(self) -> None:
        # Runs only while writes are outstanding: a store that hangs is
        # reported before it fails.
        self.watch_timer = None
        waited = self._waited_too_long()
        if waited:
            self._became_slow(
                "a write has waited {seconds:.3f} s ({changes} writes outstanding)",
                len(self._writing),
                waited,
            )
        if self._writing and self._clock is not None:
            self.watch_timer = self._clock.callLater(self._slow_after, self._check_writes)

    def _committed(self, result: object, jobs: list[Job]) -> None:
        failure = result if isinstance(result, Failure) else None
        # The replies go out together, once per connection, next turn.
        self._batch.hold_until_next_turn()
        for job in jobs:
            waiters = job.commit_waiters or []
            job.commit_waiters = None
            if failure is not None:
                job.store_id = None
                if job.state is _DONE:
                    pass
                elif job.background:
                    job.queue.counts[REFUSED] += 1
                    self.log.warn(
                        "Dropping {handle}: the store did not take it",
                        handle=job.handle.decode("utf-8", "backslashreplace"),
                    )
                    self._lost(job)
                else:
                    # The background submissions that joined this foreground
                    # job were refused: it is foreground again, and dropped
                    # if its clients have left while it waits.
                    job.require_listener = True
                    if not job.listeners and job.state is _QUEUED:
                        self._lost(job)
            for waiter in waiters:
                waiter(failure)


def _logged_by_the_store(failure: Failure) -> None:
    """
    Swallow a failure the store already logged.
    """
