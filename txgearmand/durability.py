# -*- test-case-name: txgearmand.test.test_durability -*-
"""
Durability: the bridge between the job server and its L{IJobStore}.

It opens and loads the store at start (the server replays what it
loaded) and says when the server is ready (L{txgearmand.replay.Replay}, a
part of it).  It hands the store the background jobs accepted and ended
in each reactor turn - one C{add_many} and one C{remove_many} per turn,
when the output batch flushes - and tells each job's commit waiters (the
submitters waiting for JOB_CREATED) once the store has committed it.

With a store several servers share (an L{ISharedJobStore}), it also calls
the store's C{adopt} on a timer (L{txgearmand.takeover.SharedStore}, a part
of it).  It times the store's writes and says when the store is slow
(L{txgearmand.storewatch.StoreWatch}, a part of it).  With a store that
gives payloads back, long queues spill (L{txgearmand.spill}).

Jobs in the failed list (L{txgearmand.deadletter}) keep their rows, with
their failure fields (L{StoredJob.failed_at}): replayed or adopted, they go
back to the failed list, not to a queue.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.python.failure import Failure

from txgearmand import _log
from txgearmand.batching import OutputBatch
from txgearmand.deadletter import FailedList
from txgearmand.functions import FunctionRegistry
from txgearmand.interfaces import (
    IJobStore,
    ISpillStore,
    StoredJob,
)
from txgearmand.job import JobTable
from txgearmand.meters import REFUSED, Histogram
from txgearmand.records import FunctionQueue, Job, JobState
from txgearmand.replay import Replay
from txgearmand.schedule import Schedule
from txgearmand.spill import Spill
from txgearmand.storewatch import StoreWatch
from txgearmand.takeover import SharedStore

__all__ = ["Durability"]

_DONE = JobState.DONE
_QUEUED = JobState.QUEUED


class Durability(Replay, StoreWatch, SharedStore):
    """
    Keeps background jobs in a store (or, with no store, does nothing).

    @ivar store: the L{IJobStore}, or C{None}.
    @ivar ready: False until the store is opened and loaded (see
        L{Replay}, a part of it).
    @ivar slow: a write has taken longer than the slow threshold, and none
        has been quick since (see L{StoreWatch}, a part of it).
    @ivar watch_timer: the timer that looks at the writes still running
        (only while there are some), or C{None}.
    @ivar failed: the L{FailedList} replayed and adopted failed jobs go
        to, or C{None} (they are removed from the store).
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
        enqueue: Callable[[Job], None] | None = None,
        may_adopt: Callable[[], bool] | None = None,
        spill_after: int = 0,
        wake: Callable[[FunctionQueue], None] | None = None,
        dropped: Callable[[FunctionQueue, int], None] | None = None,
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
        @param enqueue: queues a job adopted from a dead server and wakes
            its sleeping workers (without it, the job is only queued).
        @param may_adopt: whether the server may adopt dead servers' jobs
            now (not while it drains to stop); without it, always.
        @param spill_after: with a store that can give payloads back
            (L{ISpillStore}), queued jobs beyond this many per function and
            priority keep only a record in memory (see L{txgearmand.spill});
            0: never.
        @param wake: wakes the sleeping workers of a function whose
            spilled jobs came back.
        @param dropped: told of spilled jobs of a function that ended as
            records, counted out (see L{Spill}).
        """
        self.store = store
        self.ready = store is None
        self._batch = batch
        self._lost = lost
        self._ready_waiters: list[Deferred[None]] = []
        self._seq = 0
        self._to_store: dict[int, Job] = {}
        # What to write for a job of _to_store instead of its fields (a job
        # that landed in the failed list), by id.
        self._records: dict[int, StoredJob] = {}
        self.failed: FailedList | None = None
        self._to_remove: list[int] = []
        # Ids whose first write (an add) is with the store, not yet
        # committed: a change to such a job is an update, after it.
        self._adding: set[int] = set()
        # Updates the store failed (it was down), by id: sent again with
        # the next writes (or once a shared store answers again), unless
        # the job changed again or ended meanwhile.
        self._update_again: dict[int, StoredJob] = {}
        # Removals the store failed (it was down): sent again with the next
        # writes, so that jobs done while it was away do not run again at
        # the next start.
        self._remove_again: list[int] = []
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
        #: The timer of the next L{ISharedJobStore.adopt} call, or C{None}.
        self.adopt_timer: IDelayedCall | None = None
        self._adopting: Deferred[Any] | None = None
        self._closing = False
        # The open and replay under way (see Replay.open), and whether the
        # store opened.
        self._starting: Deferred[Any] | None = None
        self._opened = False
        self._adopt_failing = False
        self._taken_over = False
        self._model: tuple[JobTable, FunctionRegistry, Schedule] | None = None
        self._enqueue = enqueue
        self._may_adopt = may_adopt
        self._spill_after = (
            spill_after if ISpillStore.providedBy(store) and clock is not None else 0
        )
        self._wake = wake
        self._dropped = dropped
        #: The L{Spill} of long queues, once replayed (C{None}: jobs never
        #: spill).
        self.spill: Spill | None = None

    @property
    def down(self) -> bool:
        """
        Whether the store says it cannot be reached (a database that went
        away): background submissions are refused until it is back.
        """
        return bool(getattr(self.store, "down", False))

    # -- stop -----------------------------------------------------------

    def close(self) -> Deferred[None]:
        """
        Commit what is pending and close the store.
        """
        store = self.store
        self._closing = True
        if self.adopt_timer is not None and self.adopt_timer.active():
            self.adopt_timer.cancel()
        self.adopt_timer = None
        if self.spill is not None:
            self.spill.stop()
        if store is None:
            return succeed(None)
        if not self.ready:
            return self._close_when_started(store)
        self.flush()
        if self.watch_timer is not None and self.watch_timer.active():
            self.watch_timer.cancel()
        self.watch_timer = None
        return self._close_store(store)

    def _close_when_started(self, store: IJobStore) -> Deferred[None]:
        # Stopped while the store opens or replays: close it once that
        # ends (its thread would keep the process alive), if it opened.
        starting = self._starting
        if starting is None:
            return succeed(None)
        done: Deferred[None] = Deferred()

        def ended(result: object) -> object:
            if self._opened:
                self._close_store(store).chainDeferred(done)
            else:
                done.callback(None)
            return result

        starting.addBoth(ended)
        return done

    def _close_store(self, store: IJobStore) -> Deferred[None]:
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

    def update(self, job: Job, record: StoredJob | None = None) -> None:
        """
        A stored job changed (its attempts and next run time, after a
        failed attempt; or it was run again from the failed list, under
        the row it had there): store it again under its id, with the others
        of this turn.  It is durable already: submissions that join it are
        answered at once.

        @param record: what to write instead of the job's fields (a job
            that landed in the failed list: its L{FailedJob.stored}).
        """
        store_id = job.store_id
        if store_id is None or self.store is None:
            return
        before = self._to_store.get(store_id)
        if before is not None and before is not job and self._unsent(before, store_id):
            self._not_stored.append(before)
        self._update_again.pop(store_id, None)
        self._to_store[store_id] = job
        if record is None:
            self._records.pop(store_id, None)
        else:
            self._records[store_id] = record
        if not self._batch.depth:
            self._batch.flush()

    def remove(self, store_id: int) -> None:
        """
        Remove a row that no live job holds (a job of the failed list,
        dropped) from the store.
        """
        if self.store is None:
            return
        self._records.pop(store_id, None)
        self._update_again.pop(store_id, None)
        job = self._to_store.pop(store_id, None)
        if job is not None and self._unsent(job, store_id):
            self._not_stored.append(job)
        self._to_remove.append(store_id)
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
        self._records.pop(store_id, None)
        self._update_again.pop(store_id, None)
        if self._to_store.pop(store_id, None) is not None and self._unsent(job, store_id):
            # Ended in the turn it was accepted: never written.
            self._not_stored.append(job)
        else:
            self._to_remove.append(store_id)
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
            ended, self._not_stored = self._not_stored, []
            self._committed(None, ended)
        if self._to_store or self._update_again:
            adding = self._adding
            to_store, self._to_store = self._to_store, {}
            records, self._records = self._records, {}
            jobs: list[Job] = []
            added: list[StoredJob] = []
            updated = [r for i, r in self._update_again.items() if i not in to_store]
            self._update_again = {}
            for store_id, job in to_store.items():
                record = records.get(store_id) or StoredJob(
                    store_id,
                    job.handle,
                    job.queue.name,
                    job.unique,
                    job.data,
                    job.priority,
                    job.when,
                    job.reducer,
                    job.attempts,
                    job.first_failed,
                )
                # As _unsent, inline: every new job passes here.
                if job.commit_waiters is not None and store_id not in adding:
                    jobs.append(job)
                    added.append(record)
                else:
                    updated.append(record)
            if added:
                ids = [record.id for record in added]
                self._adding.update(ids)
                d = store.add_many(added)
                if self._timed:
                    d.addBoth(self._wrote, self._writing_started(), len(added))
                d.addBoth(self._added, ids)
                d.addBoth(self._committed, jobs)
            if updated:
                d = store.update_many(updated)
                if self._timed:
                    d.addBoth(self._wrote, self._writing_started(), len(updated))
                d.addErrback(self._update_failed, updated)
        if self._remove_again:
            self._to_remove.extend(self._remove_again)
            self._remove_again = []
        if self._to_remove:
            ids, self._to_remove = self._to_remove, []
            d = store.remove_many(ids)
            if self._timed:
                d.addBoth(self._wrote, self._writing_started(), len(ids))
            d.addErrback(self._remove_failed, ids)

    def _unsent(self, job: Job, store_id: int) -> bool:
        """
        Whether a job's first write (its add) is yet to be handed to the
        store: it waits for its commit, and is not being added.
        """
        return job.commit_waiters is not None and store_id not in self._adding

    def _added(self, result: object, ids: list[int]) -> object:
        self._adding.difference_update(ids)
        return result

    def _update_failed(self, failure: Failure, records: list[StoredJob]) -> None:
        # The store logged it.  The job goes on (it is stored already, as
        # it was); its change is sent again with the next writes, unless
        # it changed again or ended meanwhile.
        for record in records:
            self._update_again.setdefault(record.id, record)

    def _remove_failed(self, failure: Failure, ids: list[int]) -> None:
        # The store logged it.  The ids go with the next writes (or, with
        # a shared store, once it answers again).
        self._remove_again.extend(ids)

    def _committed(self, result: object, jobs: list[Job]) -> None:
        # The replies go out together, once per connection, next turn.
        self._batch.hold_until_next_turn()
        if isinstance(result, Failure):
            self._refused(result, jobs)
            return
        spilling: list[Job] = []
        # Fast path (every background submission to a durable store passes
        # here): one loop, the waiters called with the job, and the jobs
        # queued behind spilled ones handed to the spill together.
        for job in jobs:
            waiters = job.commit_waiters
            job.commit_waiters = None
            if waiters:
                for waiter in waiters:
                    waiter(job, None)
            if job.spill is not None:
                spilling.append(job)
        if spilling:
            # Queued behind spilled jobs: now they may spill too.
            self.spill.committed(spilling)  # type: ignore[union-attr]

    def _refused(self, failure: Failure, jobs: list[Job]) -> None:
        for job in jobs:
            waiters = job.commit_waiters or []
            job.commit_waiters = None
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
                # job were refused: it is foreground again, and dropped if
                # its clients have left while it waits.
                job.require_listener = True
                if not job.listeners and job.state is _QUEUED:
                    self._lost(job)
            for waiter in waiters:
                waiter(job, failure)
