# -*- test-case-name: txgearmand.test.test_model -*-
"""
The job table: every live job by handle, the indexes that coalesce
submissions by unique id, and the handles themselves.
"""

from __future__ import annotations

import socket

from txgearmand import wire
from txgearmand.records import HIGH, LOW, NORMAL, Job, JobState, Priority

__all__ = [
    "HIGH",
    "JOB_OVERHEAD",
    "LOW",
    "MAX_HANDLE_PREFIX",
    "NORMAL",
    "Job",
    "JobState",
    "JobTable",
    "Priority",
    "cost",
    "default_handle_prefix",
]


#: Bytes a job costs beyond its payload: its record, its handle, its unique
#: id (at most 64 bytes) and its index entries; measured with tracemalloc on
#: CPython 3.11 at about 570 with a short unique id.
JOB_OVERHEAD = 640


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

    @ivar by_handle: every live job by its handle, oldest first.
    @ivar prefix: handles are C{<prefix>:<n>}.
    @ivar held_bytes: what the live jobs cost in memory, as L{cost}
        counts it (the memory budget's share for jobs).
    """

    def __init__(self, prefix: bytes | None = None) -> None:
        if prefix is None:
            prefix = default_handle_prefix()
        self.prefix = prefix
        self.by_handle: dict[bytes, Job] = {}
        self.held_bytes = 0
        self._counter = 0
        self._uniques: dict[bytes, dict[bytes, Job]] = {}
        self._payload_uniques: dict[tuple[bytes, bytes], Job] = {}

    def __len__(self) -> int:
        return len(self.by_handle)

    def new_handle(self) -> bytes:
        """
        A handle no live job has: C{<prefix>:<n>}, n counting from 1.
        """
        self._counter += 1
        handle = b"%s:%d" % (self.prefix, self._counter)
        while handle in self.by_handle:
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
        The live job with this handle, if any.
        """
        return self.by_handle.get(handle)

    def of_unique(self, function: bytes, unique: bytes, data: bytes = b"") -> Job | None:
        """
        The live job a submission with this function and unique id would
        coalesce onto, if any.  An empty unique never coalesces; C{-}
        coalesces on the payload (and never with an empty one).
        """
        if not unique:
            return None
        if unique == b"-":
            if not data:
                return None
            return self._payload_uniques.get((function, data))
        by_function = self._uniques.get(unique)
        if by_function is None:
            return None
        return by_function.get(function)

    def of_any_unique(self, unique: bytes) -> Job | None:
        """
        A live job with this unique id, whatever its function (what
        GET_STATUS_UNIQUE looks up).
        """
        by_function = self._uniques.get(unique)
        if not by_function:
            return None
        return next(iter(by_function.values()))

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
        self._uniques.setdefault(unique, {})[function] = job
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
        by_function = self._uniques.get(key)
        function = job.queue.name
        if by_function is not None and by_function.get(function) is job:
            del by_function[function]
            if not by_function:
                del self._uniques[key]


def default_handle_prefix() -> bytes:
    """
    C gearmand's default handle prefix: C{H:<hostname>}.
    """
    return b"H:" + socket.gethostname().encode("utf-8", "replace")


#: The longest handle prefix: room for ":" and a 10-digit counter within
#: C gearmand's 63-byte handles.
MAX_HANDLE_PREFIX = wire.MAX_HANDLE_SIZE - 11
