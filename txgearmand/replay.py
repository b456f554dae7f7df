# -*- test-case-name: txgearmand.test.test_durability -*-
"""
The store at start: the part of L{txgearmand.durability.Durability} that
opens the store and loads what it kept (with a store that spills, the
queued jobs only as records, a chunk at a time), replays it - the jobs
queued again in their order, those of the failed list back in it, the
spilled ones as records - and says when the server is ready.  Adopted
jobs are made and queued the same way (L{txgearmand.takeover}).
"""

from __future__ import annotations

import gc
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure

from txgearmand.batching import OutputBatch
from txgearmand.deadletter import FailedJob, FailedList
from txgearmand.functions import FunctionRegistry
from txgearmand.interfaces import IJobStore, SpilledRow, StoredJob
from txgearmand.job import JobTable, stored_job
from txgearmand.records import FunctionQueue, Job
from txgearmand.schedule import Schedule
from txgearmand.spill import Spill

if TYPE_CHECKING:
    from twisted.logger import Logger

__all__ = ["INDEX_CHUNK", "Replay"]

#: Records a replay reads from a store that spills at a time (see
#: L{ISpillStore.load_index}): a chunk is about 10 MiB of rows, held only
#: while it is queued.
INDEX_CHUNK = 50_000


class Replay:
    """
    Opening, loading and replaying the store at start, and readiness: a
    part of L{txgearmand.durability.Durability}, which sets the attributes
    it uses.

    @ivar ready: False until the store is opened and loaded.
    @ivar spill: the L{Spill} of long queues, once replayed (C{None}: jobs
        never spill).
    """

    log: Logger
    store: IJobStore | None
    ready: bool
    failed: FailedList | None
    spill: Spill | None
    _batch: OutputBatch
    _lost: Callable[[Job], None]
    _ready_waiters: list[Deferred[None]]
    _seq: int
    _clock: IReactorTime | None
    _spill_after: int
    _closing: bool
    _starting: Deferred[Any] | None
    _opened: bool
    _wake: Callable[[FunctionQueue], None] | None
    _dropped: Callable[[FunctionQueue, int], None] | None
    _model: tuple[JobTable, FunctionRegistry, Schedule] | None

    if TYPE_CHECKING:
        # Durability's, which this is a part of.
        def remove(self, store_id: int) -> None: ...

        def _schedule_adopt(self) -> None: ...

    def open(self) -> Deferred[list[StoredJob]]:
        """
        Open the store and load what it kept.

        @return: a Deferred firing with the stored jobs, in order.
        """
        store = self.store
        if store is None:
            return succeed([])
        d: Deferred[Any] = maybeDeferred(store.open)
        # (close() waits for this, and the replay chained on it, to end.)
        self._starting = d
        d.addCallback(self._did_open)
        if self._spill_after:
            # The queued jobs come as records after these (see replay).
            spilling: Any = store
            d.addCallback(lambda _: spilling.load_whole())
        else:
            d.addCallback(lambda _: store.load())
        return d.addCallback(self._loaded)

    def _did_open(self, result: object) -> object:
        self._opened = True
        return result

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
    ) -> Deferred[None] | None:
        """
        Queue again the jobs the store kept, in their order (with new
        handles where a live job has theirs), then say the server is ready.
        With spilling, the queued jobs are read as records after these, a
        chunk at a time, and the whole ones due now are queued among them
        by id: the Deferred returned fires once all are.
        """
        due: list[Job] | None = None
        with self._batch:
            if self._spill_after:
                self._start_spill(table, registry)
                due = []
                # Jobs that come due meanwhile queue behind the replayed ones.
                schedule.hold()
            failed = self._queue(records, table, registry, schedule, None, due)
            self._keep_failed(failed, "stored")
        replayed = len(records) - len(failed)
        if due is None:
            self._replayed(replayed, len(failed), table, registry, schedule)
            return None
        return self._replay_index(registry, due).addCallback(
            lambda spilled: self._replayed(
                replayed + spilled, len(failed), table, registry, schedule
            )
        )

    def _replay_index(self, registry: FunctionRegistry, due: list[Job]) -> Deferred[int]:
        """
        Read the queued jobs' records a chunk at a time (the next one is
        read while one is queued), queue them with the whole jobs C{due}
        (in id order) among them, then fetch the first of each queue.

        @return: a Deferred firing with how many records were queued.
        """
        spill = self.spill
        store: Any = self.store
        assert spill is not None
        failed_list = self.failed
        taken: Callable[[bytes], bool] = (
            (lambda handle: handle in failed_list) if failed_list else (lambda handle: False)
        )
        done: Deferred[int] = Deferred()
        total = 0
        whole = iter(due)
        next_whole = next(whole, None)
        # Millions of new records, and no garbage: the cyclic collector
        # would walk them again and again (half the time of a big replay).
        collecting = gc.isenabled()
        gc.disable()

        def restore(result: object) -> object:
            if collecting:
                gc.enable()
            return result

        done.addBoth(restore)

        def place(rows: list[SpilledRow]) -> None:
            # The chunk's records, with the whole jobs whose ids fall among
            # them queued in their places.
            nonlocal next_whole
            start = 0
            while next_whole is not None and next_whole.store_id < rows[-1][0]:  # type: ignore[operator]
                at = _first_above(rows, next_whole.store_id, start)  # type: ignore[arg-type]
                if at > start:
                    spill.replay(rows[start:at], registry, taken)
                next_whole.queue.push(next_whole)
                start = at
                next_whole = next(whole, None)
            spill.replay(rows[start:] if start else rows, registry, taken)

        def queue(rows: list[SpilledRow]) -> None:
            nonlocal total, next_whole
            if self._closing:
                # Stopped meanwhile: read no more (close() waits for this).
                done.callback(total)
                return
            more = len(rows) >= INDEX_CHUNK
            following = store.load_index(rows[-1][0], INDEX_CHUNK) if more else None
            try:
                with self._batch:
                    if rows:
                        self._seq = max(self._seq, rows[-1][0])
                        place(rows)
                        total += len(rows)
                    if following is None:
                        while next_whole is not None:
                            next_whole.queue.push(next_whole)
                            next_whole = next(whole, None)
                        spill.replayed(registry)
            except BaseException:
                if following is not None:
                    # The start fails with this; the next chunk is not read.
                    following.addErrback(lambda _: None)
                raise
            if following is None:
                done.callback(total)
            else:
                following.addCallback(queue).addErrback(fail)

        def fail(failure: Failure) -> None:
            if not done.called:
                done.errback(failure)

        maybeDeferred(store.load_index, 0, INDEX_CHUNK).addCallback(queue).addErrback(fail)
        return done

    def _replayed(
        self,
        replayed: int,
        failed: int,
        table: JobTable,
        registry: FunctionRegistry,
        schedule: Schedule,
    ) -> None:
        if self._closing:
            # Stopped before it was ready: it never serves.
            return
        schedule.resume()
        for fq in registry.over_limit():
            self.log.warn(
                "{function} has {n} stored jobs, over its max queue; all are kept",
                function=fq.name.decode("utf-8", "backslashreplace"),
                n=fq.total(),
            )
        self.log.info(
            "Replayed {n} stored jobs ({failed} of them in the failed list)",
            n=replayed,
            failed=failed,
        )
        self._model = (table, registry, schedule)
        self.set_ready()
        self._schedule_adopt()

    def _queue(
        self,
        records: list[StoredJob],
        table: JobTable,
        registry: FunctionRegistry,
        schedule: Schedule,
        enqueue: Callable[[Job], None] | None,
        due: list[Job] | None = None,
    ) -> list[FailedJob]:
        """
        Make and queue jobs from records: replayed ones (no C{enqueue}: no
        worker is connected yet) under their handles where free, adopted
        ones under new handles, queued with C{enqueue}.  With C{due}, the
        jobs to queue now go there instead, in order, for the caller.

        @return: the records' jobs that are in the failed list, not queued
            (see L{_keep_failed}).
        """
        now = schedule.now()
        adopted = enqueue is not None
        failed_list = self.failed
        failed: list[FailedJob] = []
        for record in records:
            handle = record.handle
            if adopted:
                handle = table.new_handle()
            else:
                table.note_handle(handle)
                if handle in table.by_handle or (failed_list is not None and handle in failed_list):
                    handle = table.new_handle()
            if record.failed_at is not None:
                failed.append(FailedJob.from_record(record, handle))
                continue
            job = stored_job(record, handle, registry.function(record.function))
            table.add(job)
            if record.when is not None and record.when > now:
                schedule.add(job)
            elif enqueue is not None:
                enqueue(job)
            elif due is not None:
                due.append(job)
            else:
                job.queue.push(job)
        return failed

    def _start_spill(self, table: JobTable, registry: FunctionRegistry) -> None:
        assert self._clock is not None
        spill = self.spill = Spill(
            self.store,  # type: ignore[arg-type]
            table,
            self._spill_after,
            self._batch,
            self._clock,
            self._wake or _no_wake,
            self._lost,
            self._dropped or _no_drop,
        )
        registry.on_function = spill.attach
        for fq in registry:
            spill.attach(fq)

    def _keep_failed(self, jobs: list[FailedJob], how: str) -> None:
        """
        Failed jobs replayed or adopted join the failed list, within its
        bounds; with the list off, their rows are removed.
        """
        if not jobs:
            return
        failed = self.failed
        if failed is not None and failed.on:
            failed.add_many(sorted(jobs, key=lambda job: job.last_failed))
            return
        self.log.info(
            "Dropped {n} {how} jobs of the failed list: it is off (--failed-keep 0)",
            n=len(jobs),
            how=how,
        )
        for job in jobs:
            if job.store_id is not None:
                self.remove(job.store_id)

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


def _first_above(rows: list[SpilledRow], store_id: int, lo: int) -> int:
    """
    The index of the first of C{rows} (in id order) from C{lo} on whose id
    is above C{store_id} (C{len(rows)} if none is).
    """
    hi = len(rows)
    while lo < hi:
        mid = (lo + hi) // 2
        if rows[mid][0] <= store_id:
            lo = mid + 1
        else:
            hi = mid
    return lo


def _no_wake(fq: FunctionQueue) -> None:
    pass


def _no_drop(fq: FunctionQueue, n: int) -> None:
    pass
