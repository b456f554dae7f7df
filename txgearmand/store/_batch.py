# -*- test-case-name: txgearmand.test.test_store -*-
"""
Group commit: each write (the job server's writes of one reactor turn)
starts a transaction at once if none runs; the writes that arrive while one
runs go to the database together, in the next.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.internet.threads import deferToThreadPool
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

from txgearmand import _log
from txgearmand.interfaces import StoredJob, StoreUnavailable

log = _log.logger("txgearmand.store")

#: C{(added, updated, removed)}: what one transaction must do.
Batch = tuple[list[StoredJob], list[StoredJob], list[int]]


class BatchWriter:
    """
    Collects L{add_many} and L{remove_many} calls and hands them, a batch
    at a time, to C{commit} (which runs the transaction, off the reactor
    thread, and returns a Deferred).

    A write starts a transaction at once when none runs (the job server
    already gathers a reactor turn's writes into one call); while one runs,
    later writes wait and form the next batch, so the busier the server,
    the bigger the batches.  A job added and removed in the same batch is
    never written; one added and updated in the same batch is written
    once, as updated.  The Deferred of each write fires once its batch is
    committed, or fails with the transaction's error.
    """

    def __init__(self, commit: Callable[[Batch], Deferred[None]]) -> None:
        self._commit = commit
        self._adds: dict[int, StoredJob] = {}
        self._updates: dict[int, StoredJob] = {}
        self._removes: list[int] = []
        self._waiters: list[Deferred[None]] = []
        self._running = False
        self._idle: list[Deferred[None]] = []

    def add_many(self, jobs: Sequence[StoredJob]) -> Deferred[None]:
        """
        Store jobs; fires once they are committed.
        """
        adds = self._adds
        for job in jobs:
            adds[job.id] = job
        return self._wait()

    def update_many(self, jobs: Sequence[StoredJob]) -> Deferred[None]:
        """
        Write stored jobs again, changed (one still waiting to be added is
        added as changed); fires once they are committed.
        """
        adds = self._adds
        updates = self._updates
        for job in jobs:
            if job.id in adds:
                adds[job.id] = job
            else:
                updates[job.id] = job
        return self._wait()

    def remove_many(self, job_ids: Sequence[int]) -> Deferred[None]:
        """
        Forget jobs (one added in the same batch is never written); fires
        once the removals are committed.
        """
        adds = self._adds
        updates = self._updates
        removes = self._removes
        for job_id in job_ids:
            if adds.pop(job_id, None) is None:
                updates.pop(job_id, None)
                removes.append(job_id)
        return self._wait()

    def _wait(self) -> Deferred[None]:
        d: Deferred[None] = Deferred()
        self._waiters.append(d)
        if not self._running:
            self._flush()
        return d

    def pending(self) -> bool:
        """
        Whether writes wait or are being committed.
        """
        return bool(self._waiters) or self._running

    def _flush(self) -> None:
        if self._running or not self._waiters:
            return
        adds, self._adds = self._adds, {}
        updates, self._updates = self._updates, {}
        removes, self._removes = self._removes, []
        waiters, self._waiters = self._waiters, []
        self._running = True
        if adds or updates or removes:
            d = maybeDeferred(self._commit, (list(adds.values()), list(updates.values()), removes))
        else:
            d = succeed(None)
        d.addBoth(self._committed, waiters)

    def _committed(self, result: object, waiters: list[Deferred[None]]) -> None:
        self._running = False
        if isinstance(result, Failure):
            # A store that is down said so once; each refused write is not
            # worth a traceback.
            if not result.check(StoreUnavailable):
                log.failure("Writing {n} job changes to the store failed", result, n=len(waiters))
            for w in waiters:
                w.errback(result)
        else:
            for w in waiters:
                w.callback(None)
        if self._waiters:
            self._flush()
        elif not self._running:
            idle, self._idle = self._idle, []
            for d in idle:
                d.callback(None)

    def drain(self) -> Deferred[None]:
        """
        A Deferred that fires when every write so far is committed.
        """
        if not self.pending():
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._idle.append(d)
        return d


class ThreadedStore:
    """
    What the SQLite and PostgreSQL stores share: one thread of their own
    for the database, and a L{BatchWriter} whose batches run there as one
    transaction each (L{_write}, which subclasses give).
    """

    def __init__(self, reactor: Any, thread_name: str) -> None:
        self._reactor = reactor
        self._pool = ThreadPool(1, 1, name=thread_name)
        self._writer = BatchWriter(self._commit)

    def _run(self, f: Callable[..., Any], *args: Any) -> Deferred[Any]:
        return deferToThreadPool(self._reactor, self._pool, f, *args)

    def _open_in_thread(self, f: Callable[[], object]) -> Deferred[None]:
        """
        Start the thread and run C{f} (which connects) in it; stop the
        thread again if that fails.
        """
        self._pool.start()

        def failed(failure: Failure) -> Failure:
            self._pool.stop()
            return failure

        return self._run(f).addCallbacks(lambda _: None, failed)

    def add_many(self, jobs: Sequence[StoredJob]) -> Deferred[None]:
        return self._writer.add_many(jobs)

    def update_many(self, jobs: Sequence[StoredJob]) -> Deferred[None]:
        return self._writer.update_many(jobs)

    def remove_many(self, job_ids: Sequence[int]) -> Deferred[None]:
        return self._writer.remove_many(job_ids)

    def _commit(self, batch: Batch) -> Deferred[None]:
        return self._run(self._write, batch)

    def _write(self, batch: Batch) -> None:
        raise NotImplementedError

    def _close_connection(self) -> None:
        raise NotImplementedError

    def close(self) -> Deferred[None]:
        """
        Commit what is pending, close the connection, stop the thread.
        """
        d = self._writer.drain().addBoth(lambda _: self._run(self._close_connection))
        return d.addBoth(self._stop_pool)

    def _stop_pool(self, result: object) -> object:
        if self._pool.started:
            self._pool.stop()
        return result
