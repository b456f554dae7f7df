# -*- test-case-name: txgearmand.test.test_spill -*-
"""
Queues bigger than memory: a queued background job whose payload is in
the store need not be held whole in memory.

Each priority of a function's queue (L{FunctionQueue}) keeps up to
C{keep} whole jobs ready for its workers (C{--spill-after}).  Jobs queued
behind those go to the priority's I{tail}, as L{Spilled} records: once a
background job nobody waits on is committed to the store, its record is
all that stays in memory (its handle, unique id, row id, about 300 bytes
instead of its payload and a whole L{Job}).  Other jobs queued behind
(foreground, still being written, tried before) wait in the tail whole,
so the order of the queue is kept.

When a priority's ready jobs fall under half of C{keep}, the next records
of its tail are fetched from the store (L{ISpillStore.fetch}, in the
store's thread) and queued whole, ahead of the workers: one fetch at a
time per queue, and the workers that slept meanwhile are woken.  A lookup
by handle or unique id (a status query, a coalescing submission) makes a
whole job of a record at once (L{JobTable.promote}); its payload comes
with its turn.

Replay at start reads the queued jobs as records, a chunk at a time
(L{ISpillStore.load_index}), and fetches the first of each queue back.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.python.failure import Failure

from txgearmand import _log
from txgearmand.batching import OutputBatch
from txgearmand.functions import FunctionRegistry
from txgearmand.interfaces import ISpillStore, SpilledRow, StoredJob
from txgearmand.job import SPILLED_COST, JobTable, stored_job
from txgearmand.records import FunctionQueue, Job, JobState, Spilled
from txgearmand.wire import PacketType

__all__ = ["Spill", "spillable"]


def _tails(fq: FunctionQueue) -> list[deque[Spilled]]:
    tails = fq.tails
    if tails is None:
        tails = fq.tails = [deque(), deque(), deque()]
    return tails


def _count(fq: FunctionQueue, queued: list[int]) -> None:
    q = fq.queued
    q[0] += queued[0]
    q[1] += queued[1]
    q[2] += queued[2]


_QUEUED = JobState.QUEUED
_DONE = JobState.DONE
_WHOLE = Spilled.WHOLE
_STORED = Spilled.STORED
_PROMOTED = Spilled.PROMOTED
_GONE = Spilled.GONE
_WORK_FAIL = PacketType.WORK_FAIL
#: A whole job taken from its tail with a fetch, on its way to the ready
#: deque: it no longer spills when committed.
_TAKEN = 4

#: Seconds before a failed fetch is tried again.
RETRY_SECONDS = 1.0

#: Records of ended jobs a tail holds before it may be compacted (when
#: they are also most of it).
COMPACT_AFTER = 256


def spillable(job: Job) -> bool:
    """
    Whether a queued job may leave memory for a record: a background job
    nobody waits on, committed to the store, on its first attempt (its
    retry counts live in memory only), due now, and not coalesced on its
    payload (the unique C{-}).
    """
    return (
        job.state is _QUEUED
        and job.store_id is not None
        and job.commit_waiters is None
        and not job.listeners
        and not job.require_listener
        and not job.retries
        and not job.attempts
        and job.first_failed is None
        and job.when is None
        and job.unique != b"-"
    )


class Spill:
    """
    Takes queued jobs to their queues' tails and brings them back, for a
    store that can give payloads back (L{ISpillStore}).

    @ivar keep: ready jobs each priority of a function holds before new
        jobs go to its tail (C{--spill-after}).
    @ivar fetches: fetches made since the start.
    @ivar fetched: jobs fetched back since the start.
    """

    log = _log.logger("txgearmand.spill")

    def __init__(
        self,
        store: ISpillStore,
        table: JobTable,
        keep: int,
        batch: OutputBatch,
        clock: IReactorTime,
        wake: Callable[[FunctionQueue], None],
        lost: Callable[[Job], None],
        dropped: Callable[[FunctionQueue, int], None],
    ) -> None:
        """
        @param wake: called with a function whose jobs came back from the
            store, to wake its sleeping workers.
        @param lost: called with a job made whole before its turn whose
            row the store no longer has, to end it.
        @param dropped: called with a function and how many of its spilled
            jobs ended as records (their rows were gone, or another server
            took them), once they are counted out.
        """
        self.store = store
        self.table = table
        self.keep = keep
        # Fetch again once at most half of keep is ready.
        self._low = keep // 2 + 1
        self._batch = batch
        self._clock = clock
        self._wake = wake
        self._lost = lost
        self._dropped = dropped
        self._fetching: set[tuple[FunctionQueue, int]] = set()
        self._retry: dict[tuple[FunctionQueue, int], IDelayedCall] = {}
        self._failing = False
        self._stopped = False
        self.fetches = 0
        self.fetched = 0

    def attach(self, fq: FunctionQueue) -> None:
        """
        Let a function's queues spill.
        """
        fq.spill = self
        fq.spill_at = self.keep

    def stop(self) -> None:
        """
        Fetch nothing more (the server stops).
        """
        self._stopped = True
        for call in self._retry.values():
            if call.active():
                call.cancel()
        self._retry.clear()

    # -- to the tail ------------------------------------------------------

    def park(self, fq: FunctionQueue, job: Job) -> None:
        """
        Queue a job in its priority's tail (L{FunctionQueue.push} calls
        this once the ready deque is full or the tail has begun; the job
        is counted in L{FunctionQueue.queued} already).
        """
        p = job.priority
        tails = fq.tails or _tails(fq)
        # Fast path: a new job is being written (it spills once committed),
        # so most need no spillable() call here.
        if job.commit_waiters is None and spillable(job):
            entry = self._record(job)
        else:
            entry = Spilled(job.handle, job.unique, job.store_id, fq, p, job, _WHOLE)
            job.spill = entry
        tails[p].append(entry)
        if fq.ready[p] < self._low:
            self.refill(fq, p)

    def gone(self, fq: FunctionQueue, p: int) -> None:
        """
        A job waiting in a tail ended (its record, marked gone, is skipped
        when read): compact the tail once such records are most of it, so
        that jobs that keep ending there (foreground clients that leave,
        cancels) do not grow it while nothing is read from it.
        """
        dead = fq.tail_dead
        n = dead[p] + 1
        dead[p] = n
        tails = fq.tails
        if n > COMPACT_AFTER and tails is not None and n * 2 > len(tails[p]):
            tails[p] = deque(e for e in tails[p] if e.state != _GONE)
            dead[p] = 0

    def drop_records(self, entries: list[Spilled]) -> None:
        """
        Spilled jobs end without a turn, as records (another server took
        them over): count them out, forget them and compact their tails.
        """
        if not entries:
            return
        table = self.table
        by_queue: dict[FunctionQueue, int] = {}
        for entry in entries:
            fq = entry.queue
            entry.state = _GONE
            fq.queued[entry.priority] -= 1
            table.remove_spilled(entry)
            by_queue[fq] = by_queue.get(fq, 0) + 1
        for fq, n in by_queue.items():
            tails = fq.tails
            if tails is not None:
                fq.tails = [deque(e for e in tail if e.state != _GONE) for tail in tails]
                fq.tail_dead = [0, 0, 0]
            self._dropped(fq, n)

    def committed(self, jobs: list[Job]) -> None:
        """
        Jobs waiting whole in their tails were committed: keep only the
        records of those that may spill now.
        """
        table = self.table
        for job in jobs:
            entry = job.spill
            if entry is not None and entry.state == _WHOLE and spillable(job):
                job.spill = None
                entry.job = None
                entry.state = _STORED
                entry.store_id = job.store_id
                table.spill(job, entry)
                # As _drop_whole, inline: every job of a long queue passes.
                job.state = _DONE
                job.store_id = None

    def _record(self, job: Job) -> Spilled:
        entry = Spilled(
            job.handle, job.unique, job.store_id, job.queue, job.priority, None, _STORED
        )
        self._drop_whole(job, entry)
        return entry

    def _drop_whole(self, job: Job, entry: Spilled) -> None:
        self.table.spill(job, entry)
        # The job object is dropped; one still referenced somewhere must
        # not end the record's job (or remove its row) if ended itself.
        job.state = _DONE
        job.store_id = None

    def replay(
        self,
        rows: list[SpilledRow],
        registry: FunctionRegistry,
        taken: Callable[[bytes], bool],
    ) -> None:
        """
        Queue the records of replayed jobs (a chunk of them, in id order)
        at the back of their tails, behind the whole jobs queued before;
        L{replayed} once all are.

        @param taken: whether a handle is in use elsewhere (the failed
            list): such a record gets a new handle.
        """
        self._replay(rows, registry, taken)
        if rows:
            # New handles follow the last replayed one (new_handle skips any
            # other that is live).
            self.table.note_handle(rows[-1][1])
        self.table.held_bytes += SPILLED_COST * len(rows)

    def replayed(self, registry: FunctionRegistry) -> None:
        """
        Every replayed record is queued: fetch the first of each queue.
        """
        for fq in list(registry):
            for p in range(3):
                self.refill(fq, p)

    def _replay(
        self,
        rows: list[SpilledRow],
        registry: FunctionRegistry,
        taken: Callable[[bytes], bool],
    ) -> None:
        table = self.table
        by_handle = table.by_handle
        spilled = table.spilled
        uniques = table._uniques
        index = table._index
        function = registry.function
        tails: list[deque[Spilled]] | None = None
        fq: FunctionQueue | None = None
        name = None
        queued = [0, 0, 0]
        # Fast path: everything for one row inline (a million rows are
        # queued before the server serves), the function looked up once per
        # run of rows of one function.
        for store_id, handle, fname, unique, p in rows:
            if fname != name:
                if fq is not None:
                    _count(fq, queued)
                fq = function(fname)
                name = fname
                tails = _tails(fq)
                queued = [0, 0, 0]
            if handle in spilled or handle in by_handle or taken(handle):
                handle = table.new_handle()
            entry = Spilled(handle, unique, store_id, fq, p, None, _STORED)  # type: ignore[arg-type]
            tails[p].append(entry)  # type: ignore[index]
            queued[p] += 1
            spilled[handle] = entry
            if unique:
                if uniques.setdefault(unique, entry) is not entry:
                    index(unique, fname, entry)
        if fq is not None:
            _count(fq, queued)

    # -- back from the store ------------------------------------------------

    def refill(self, fq: FunctionQueue, p: int) -> None:
        """
        If a priority's ready jobs are few and its tail is not empty, bring
        the next of the tail back (one fetch at a time per queue).
        """
        key = (fq, p)
        if self._stopped or fq.ready[p] >= self._low or key in self._fetching:
            return
        tails = fq.tails
        if not tails:
            return
        tail = tails[p]
        want = self.keep - fq.ready[p]
        entries: list[Spilled] = []
        ids: list[int] = []
        dead = fq.tail_dead
        while tail and len(entries) < want:
            entry = tail.popleft()
            state = entry.state
            if state == _GONE:
                if dead[p]:
                    dead[p] -= 1
                continue
            entries.append(entry)
            if state == _WHOLE:
                entry.state = _TAKEN
            else:
                ids.append(entry.store_id)  # type: ignore[arg-type]
        if not entries:
            return
        if not ids:
            self._place(fq, p, entries, {})
            return
        self._fetching.add(key)
        self.fetches += 1
        d = self.store.fetch(ids)
        d.addCallbacks(
            self._fetched,
            self._fetch_failed,
            callbackArgs=(fq, p, entries),
            errbackArgs=(fq, p, entries),
        )
        d.addErrback(lambda f: self.log.failure("Queueing jobs fetched from the store failed", f))

    def _fetched(
        self, records: list[StoredJob], fq: FunctionQueue, p: int, entries: list[Spilled]
    ) -> None:
        self._fetching.discard((fq, p))
        if self._failing:
            self._failing = False
            self.log.info("Fetching spilled jobs from the store works again")
        with self._batch:
            self._place(fq, p, entries, {r.id: r for r in records})

    def _place(
        self, fq: FunctionQueue, p: int, entries: list[Spilled], records: dict[int, StoredJob]
    ) -> None:
        """
        Queue whole, in order, the jobs of entries taken from a tail.
        """
        table = self.table
        ready = fq.queues[p]
        placed = 0
        for entry in entries:
            state = entry.state
            if state == _GONE:
                # Ended while it was fetched: counted out then.
                continue
            if state == _TAKEN:
                job = entry.job
                assert job is not None
            else:
                record = records.get(entry.store_id)  # type: ignore[arg-type]
                if record is None:
                    self._row_gone(fq, p, entry)
                    continue
                if state == _STORED:
                    job = stored_job(record, entry.handle, fq)
                    table.unspill(entry, job)
                else:
                    job = entry.job  # type: ignore[assignment]
                    assert job is not None
                    job.data = record.payload
                    job.reducer = record.reducer
                    job.attempts = record.attempts
                    job.first_failed = record.first_failed
                    grown = len(record.payload)
                    job.cost += grown
                    table.held_bytes += grown
            entry.state = _GONE
            entry.job = None
            job.spill = None
            ready.append(job)
            placed += 1
        fq.ready[p] += placed
        self.fetched += placed
        if placed:
            self._wake(fq)
        self.refill(fq, p)

    def _row_gone(self, fq: FunctionQueue, p: int, entry: Spilled) -> None:
        self.log.warn(
            "Job {handle} is no longer in the store; dropped",
            handle=_log.text(entry.handle),
        )
        if entry.state == _PROMOTED and entry.job is not None:
            job = entry.job
            job.store_id = None
            if job.listeners:
                # Foreground submissions joined it: it will never run here.
                job.relay(_WORK_FAIL, job.handle)
            self._lost(job)
            return
        entry.state = _GONE
        fq.queued[p] -= 1
        self.table.remove_spilled(entry)
        self._dropped(fq, 1)

    def _fetch_failed(
        self, failure: Failure, fq: FunctionQueue, p: int, entries: list[Spilled]
    ) -> None:
        key = (fq, p)
        self._fetching.discard(key)
        tails = fq.tails
        assert tails is not None
        if self._stopped:
            # The store closed under it: the rows are still there for the
            # next start.
            return
        for entry in entries:
            if entry.state == _TAKEN:
                entry.state = _WHOLE
        tails[p].extendleft(reversed(entries))
        if not self._failing:
            self._failing = True
            self.log.failure(
                "Fetching spilled jobs from the store failed; trying again every {seconds} s",
                failure,
                seconds=RETRY_SECONDS,
            )
        if not self._stopped and key not in self._retry:
            self._retry[key] = self._clock.callLater(RETRY_SECONDS, self._again, fq, p)

    def _again(self, fq: FunctionQueue, p: int) -> None:
        del self._retry[(fq, p)]
        with self._batch:
            self.refill(fq, p)


def counts(fq: FunctionQueue) -> list[int]:
    """
    How many jobs of each priority wait in a function's tails (spilled,
    or being fetched back).
    """
    return [fq.queued[p] - fq.ready[p] for p in range(3)]
