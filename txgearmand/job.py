# -*- test-case-name: txgearmand.test.test_model -*-
"""
The job table: every live job by handle, the indexes that coalesce
submissions by unique id, and the handles themselves.
"""

from __future__ import annotations

import socket
from typing import Union

from txgearmand import wire
from txgearmand.interfaces import StoredJob
from txgearmand.records import HIGH, LOW, NORMAL, FunctionQueue, Job, JobState, Priority, Spilled

__all__ = [
    "HIGH",
    "JOB_OVERHEAD",
    "LOW",
    "MAX_HANDLE_PREFIX",
    "NORMAL",
    "SPILLED_COST",
    "Job",
    "JobState",
    "JobTable",
    "Priority",
    "cost",
    "default_handle_prefix",
    "stored_job",
]


#: Bytes a job costs beyond its payload: its record, its handle, its unique
#: id (at most 64 bytes) and its index entries; measured with tracemalloc on
#: CPython 3.11 at about 570 with a short unique id.
JOB_OVERHEAD = 640

#: Bytes a spilled job (L{Spilled}: payload in the store only) costs: its
#: record, its handle, its unique id and its index entries; measured with
#: tracemalloc on CPython 3.11 at about 300 with a short unique id.
SPILLED_COST = 320

#: What the unique index holds: a job, or the record of a spilled one.
Indexed = Union[Job, Spilled]


def stored_job(record: StoredJob, handle: bytes, fq: FunctionQueue) -> Job:
    """
    A background job made whole again from its stored record (replayed,
    adopted, or fetched back after it spilled), under C{handle}.
    """
    job = Job(
        handle,
        fq,
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
    job.first_failed = record.first_failed
    return job


def cost(job: Job) -> int:
    """
    What a job costs in memory, roughly: its payload and L{JOB_OVERHEAD}.
    """
    return len(job.data) + JOB_OVERHEAD


class JobTable:
    """
    Every live job by handle, and the indexes that coalesce submissions:
    by unique id and function, and (for the unique C{-}) by function and
    payload.  It also makes the handles.

    Spilled jobs (L{Spilled}: their payload waits in the store) are kept
    apart, in L{spilled}; a lookup by handle or unique id makes a whole
    L{Job} of one (L{promote}), so callers only ever see jobs.

    @ivar by_handle: every live whole job by its handle, oldest first.
    @ivar spilled: every spilled job's record by its handle.
    @ivar prefix: handles are C{<prefix>:<n>}.
    @ivar held_bytes: what the live jobs cost in memory, as L{cost} and
        L{SPILLED_COST} count it (the memory budget's share for jobs).
    """

    def __init__(self, prefix: bytes | None = None) -> None:
        if prefix is None:
            prefix = default_handle_prefix()
        self.prefix = prefix
        self.by_handle: dict[bytes, Job] = {}
        self.spilled: dict[bytes, Spilled] = {}
        self.held_bytes = 0
        self._counter = 0
        # Unique id -> the job (or spilled record) of the one function that
        # has it, or a dict of them by function when several do: most ids
        # are used by one function, and a dict each would cost ~200 bytes.
        self._uniques: dict[bytes, Union[Indexed, dict[bytes, Indexed]]] = {}
        self._payload_uniques: dict[tuple[bytes, bytes], Job] = {}

    def __len__(self) -> int:
        return len(self.by_handle) + len(self.spilled)

    def new_handle(self) -> bytes:
        """
        A handle no live job has: C{<prefix>:<n>}, n counting from 1.
        """
        self._counter += 1
        handle = b"%s:%d" % (self.prefix, self._counter)
        while handle in self.by_handle or handle in self.spilled:
            self._counter += 1
            handle = b"%s:%d" % (self.prefix, self._counter)
        return handle

    def note_handle(self, handle: bytes) -> None:
        """
        A job came back with this handle (replayed from the store): new
        handles follow it.
        """
        prefix = self.prefix + b":"
        if handle.startswith(prefix):
            suffix = handle[len(prefix) :]
            if suffix.isdigit():
                self._counter = max(self._counter, int(suffix))

    def add(self, job: Job) -> None:
        """
        Index a new job by handle and, if it has one, by unique id.
        """
        self.by_handle[job.handle] = job
        job.cost = cost(job)
        self.held_bytes += job.cost
        if job.unique:
            self.index_unique(job)

    def remove(self, job: Job) -> None:
        """
        Forget a job that ended.
        """
        if self.by_handle.get(job.handle) is job:
            del self.by_handle[job.handle]
            self.held_bytes -= job.cost
        self.unindex_unique(job)

    def get(self, handle: bytes) -> Job | None:
        """
        The live job with this handle, if any (made whole if spilled).
        """
        job = self.by_handle.get(handle)
        if job is None:
            entry = self.spilled.get(handle)
            if entry is not None:
                return self.promote(entry)
        return job

    def of_unique(self, function: bytes, unique: bytes, data: bytes = b"") -> Job | None:
        """
        The live job a submission with this function and unique id would
        coalesce onto, if any (made whole if spilled).  An empty unique
        never coalesces; C{-} coalesces on the payload (and never with an
        empty one).
        """
        if not unique:
            return None
        if unique == b"-":
            if not data:
                return None
            return self._payload_uniques.get((function, data))
        found = self._uniques.get(unique)
        if found is None:
            return None
        if type(found) is dict:
            found = found.get(function)
            if found is None:
                return None
        elif found.queue.name != function:  # type: ignore[union-attr]
            return None
        if type(found) is Spilled:
            return self.promote(found)
        return found  # type: ignore[return-value]

    def of_any_unique(self, unique: bytes) -> Job | None:
        """
        A live job with this unique id, whatever its function (what
        GET_STATUS_UNIQUE looks up).
        """
        found = self._uniques.get(unique)
        if found is None:
            return None
        if type(found) is dict:
            if not found:
                return None
            found = next(iter(found.values()))
        if type(found) is Spilled:
            return self.promote(found)
        return found  # type: ignore[return-value]

    def index_unique(self, job: Job) -> None:
        """
        Index a job by its unique id so that duplicates coalesce onto it.
        """
        unique = job.unique
        if not unique:
            return
        function = job.queue.name
        if unique == b"-":
            if job.data:
                key = (function, job.data)
                self._payload_uniques[key] = job
                job.coalesce_key = key
            return
        self._index(unique, function, job)
        job.coalesce_key = unique

    def unindex_unique(self, job: Job) -> None:
        """
        Stop coalescing onto a job.
        """
        key = job.coalesce_key
        if key is None:
            return
        job.coalesce_key = None
        if isinstance(key, tuple):
            if self._payload_uniques.get(key) is job:
                del self._payload_uniques[key]
            return
        self._unindex(key, job.queue.name, job)

    def _index(self, unique: bytes, function: bytes, item: Indexed) -> None:
        uniques = self._uniques
        current = uniques.get(unique)
        if current is None or current is item:
            uniques[unique] = item
        elif type(current) is dict:
            current[function] = item
        elif current.queue.name == function:  # type: ignore[union-attr]
            uniques[unique] = item
        else:
            other: Indexed = current  # type: ignore[assignment]
            uniques[unique] = {other.queue.name: other, function: item}

    def _unindex(self, unique: bytes, function: bytes, item: Indexed) -> None:
        uniques = self._uniques
        current = uniques.get(unique)
        if current is item:
            del uniques[unique]
        elif type(current) is dict and current.get(function) is item:
            del current[function]
            if len(current) == 1:
                uniques[unique] = next(iter(current.values()))

    # -- spilled jobs (see txgearmand.spill) ------------------------------

    def add_spilled(self, entry: Spilled) -> None:
        """
        Index a spilled job's record by handle and unique id.
        """
        self.spilled[entry.handle] = entry
        self.held_bytes += SPILLED_COST
        if entry.unique:
            self._index(entry.unique, entry.queue.name, entry)

    def remove_spilled(self, entry: Spilled) -> None:
        """
        Forget a spilled job's record (it ended, or became a whole job).
        """
        if self.spilled.get(entry.handle) is entry:
            del self.spilled[entry.handle]
            self.held_bytes -= SPILLED_COST
        if entry.unique:
            self._unindex(entry.unique, entry.queue.name, entry)

    def spill(self, job: Job, entry: Spilled) -> None:
        """
        A whole job leaves memory for its record (its payload is stored):
        the record takes its place in the indexes.
        """
        handle = job.handle
        key = job.coalesce_key
        if key is not None and key != entry.unique:
            # Not the plain case (coalesced on its payload): the long way.
            self.remove(job)
            self.add_spilled(entry)
            return
        # Fast path (every job of a long queue passes): the record replaces
        # the job in place, with no removing and indexing again.
        by_handle = self.by_handle
        if by_handle.get(handle) is job:
            del by_handle[handle]
            self.held_bytes -= job.cost
        self.spilled[handle] = entry
        self.held_bytes += SPILLED_COST
        if key is None:
            if entry.unique:
                self._index(entry.unique, entry.queue.name, entry)
            return
        job.coalesce_key = None
        uniques = self._uniques
        current = uniques.get(key)
        if current is job:
            uniques[key] = entry
            return
        function = job.queue.name
        if type(current) is dict and current.get(function) is job:
            current[function] = entry
        else:
            self._index(key, function, entry)

    def unspill(self, entry: Spilled, job: Job) -> None:
        """
        A spilled job is whole again (its payload came back, or a lookup
        needed it): the job takes its record's place.
        """
        self.remove_spilled(entry)
        self.add(job)

    def promote(self, entry: Spilled) -> Job:
        """
        Make a whole job of a spilled record before its turn (a lookup by
        handle or unique id found it): it stays in its queue's tail, and
        its payload and stored fields come back with its turn.
        """
        job = Job(entry.handle, entry.queue, entry.unique, b"", entry.priority, True)
        job.require_listener = False
        job.store_id = entry.store_id
        job.state = JobState.QUEUED
        job.spill = entry
        entry.job = job
        entry.state = Spilled.PROMOTED
        self.unspill(entry, job)
        return job


def default_handle_prefix() -> bytes:
    """
    C gearmand's default handle prefix: C{H:<hostname>}.
    """
    return b"H:" + socket.gethostname().encode("utf-8", "replace")


#: The longest handle prefix: room for ":" and a 10-digit counter within
#: C gearmand's 63-byte handles.
MAX_HANDLE_PREFIX = wire.MAX_HANDLE_SIZE - 11
