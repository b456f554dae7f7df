# -*- test-case-name: txgearmand.test.test_shared_store -*-
"""
Several servers, one store: the part of L{txgearmand.durability.Durability}
that, with a store several servers share (an L{ISharedJobStore}), calls
the store's C{adopt} on a timer, queues the jobs adopted from dead servers
(with new handles) and, when this server finds it was taken over, drops
the jobs no longer its own without touching the store.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.python.failure import Failure

from txgearmand.batching import OutputBatch
from txgearmand.deadletter import FailedJob, FailedList
from txgearmand.functions import FunctionRegistry
from txgearmand.interfaces import Adoption, IJobStore, ISharedJobStore, StoredJob, StoreUnavailable
from txgearmand.job import JobTable
from txgearmand.records import Job, JobState
from txgearmand.schedule import Schedule
from txgearmand.spill import Spill
from txgearmand.wire import PacketType

if TYPE_CHECKING:
    from twisted.logger import Logger

__all__ = ["SharedStore"]

_RUNNING = JobState.RUNNING


class SharedStore:
    """
    Adoption and takeover with a shared store: a part of
    L{txgearmand.durability.Durability}, which sets the attributes it
    uses.

    @ivar adopt_timer: the timer of the next L{ISharedJobStore.adopt}
        call, or C{None}.
    """

    log: Logger
    store: IJobStore | None
    failed: FailedList | None
    adopt_timer: IDelayedCall | None
    _adopting: Deferred[Any] | None
    _adopt_failing: bool
    _taken_over: bool
    _closing: bool
    _clock: IReactorTime | None
    _batch: OutputBatch
    _lost: Callable[[Job], None]
    spill: Spill | None
    _enqueue: Callable[[Job], None] | None
    _may_adopt: Callable[[], bool] | None
    _model: tuple[JobTable, FunctionRegistry, Schedule] | None
    _remove_again: list[int]
    _update_again: dict[int, StoredJob]

    if TYPE_CHECKING:
        # Durability's, which this is a part of (_queue and _keep_failed
        # are its part Replay's).
        def flush(self) -> None: ...

        def _queue(
            self,
            records: list[StoredJob],
            table: JobTable,
            registry: FunctionRegistry,
            schedule: Schedule,
            enqueue: Callable[[Job], None] | None,
            due: list[Job] | None = None,
        ) -> list[FailedJob]: ...

        def _keep_failed(self, jobs: list[FailedJob], how: str) -> None: ...

    def _schedule_adopt(self) -> None:
        store: Any = self.store
        if self._clock is None or self._closing or not ISharedJobStore.providedBy(store):
            return
        self.adopt_timer = self._clock.callLater(store.poll_interval, self._adopt)

    def _adopt(self) -> None:
        self.adopt_timer = None
        store: Any = self.store
        take = self._may_adopt is None or self._may_adopt()
        d: Deferred[Any] = maybeDeferred(store.adopt, take)
        self._adopting = d
        d.addCallback(self._adopted)
        d.addBoth(self._adopt_done)

    def _adopt_done(self, result: object) -> None:
        self._adopting = None
        if isinstance(result, Failure):
            # Once per streak of failures: the store may be down a while
            # (and one that says it is down has logged it).
            if not self._adopt_failing and not result.check(StoreUnavailable):
                self.log.failure(
                    "Proving this server alive in the job store (and looking for dead"
                    " servers) failed; trying again every {seconds} s",
                    result,
                    seconds=self.store.poll_interval,  # type: ignore[union-attr]
                )
            self._adopt_failing = True
        else:
            if self._adopt_failing:
                self._adopt_failing = False
                self.log.info("This server proves it is alive in the job store again")
            if (self._remove_again or self._update_again) and not self._closing:
                self.flush()
        self._schedule_adopt()

    def _adopted(self, adoption: Adoption) -> None:
        if self._closing or self._model is None:
            # Adopted while stopping: they stay this node's in the store,
            # found again at the next start (or adopted by another).
            return
        table, registry, schedule = self._model
        with self._batch:
            if adoption.kept is not None:
                self._drop_lost(set(adoption.kept), table)
            if adoption.adopted:
                enqueue = self._enqueue or _push
                failed = self._queue(adoption.adopted, table, registry, schedule, enqueue)
                self._keep_failed(failed, "adopted")
                self.log.info(
                    "Queued {n} jobs adopted from dead servers ({failed} more in the failed list)",
                    n=len(adoption.adopted) - len(failed),
                    failed=len(failed),
                )

    def _drop_lost(self, kept: set[int], table: JobTable) -> None:
        """
        This server was taken over: drop the stored jobs it holds that are
        no longer its own (those committed before the adoption, not kept),
        without removing them from the store.  Running ones are taken from
        their workers (their results are dropped).
        """
        lost = [
            job
            for job in table.by_handle.values()
            if job.store_id is not None and job.commit_waiters is None and job.store_id not in kept
        ]
        failed = self.failed
        lost_failed = (
            [job for job in failed if job.store_id is not None and job.store_id not in kept]
            if failed is not None
            else []
        )
        # Spilled jobs (records only) are lost as well.
        lost_spilled = [e for e in table.spilled.values() if e.store_id not in kept]
        if not lost and not lost_failed and not lost_spilled and self._taken_over:
            # Again, with nothing more to drop (two servers under one
            # node name: the store says so).
            return
        self._taken_over = True
        if failed is not None:
            # Their rows are the adopter's now, and its failed list's.
            for entry in lost_failed:
                failed.take(entry.handle)
        if self.spill is not None:
            # Those being fetched are skipped when their fetch ends.
            self.spill.drop_records(lost_spilled)
        for job in lost:
            job.store_id = None
            if job.state is _RUNNING:
                worker = job.worker
                if worker is not None and worker.connected:
                    worker.remember_released(job.handle)
            if job.listeners:
                # Foreground submissions that joined it: its result comes
                # on another server now, never here.
                job.relay(PacketType.WORK_FAIL, job.handle)
            self._lost(job)
        self.log.warn(
            "This server (node {node}) was taken over: another server adopted its stored"
            " jobs while it seemed dead; {n} jobs dropped here (they run there), {kept} kept",
            node=getattr(self.store, "node", "?"),
            n=len(lost) + len(lost_failed) + len(lost_spilled),
            kept=len(kept),
        )


def _push(job: Job) -> None:
    job.queue.push(job)
