# -*- test-case-name: txgearmand.test.test_store -*-
"""
A job store in memory: nothing survives the process, but the store
survives a L{JobServer} (restart a server on the same store in tests).
"""

from __future__ import annotations

from collections.abc import Sequence

from twisted.internet.defer import Deferred, succeed
from zope.interface import implementer

from txgearmand.interfaces import IJobStore, StoredJob

__all__ = ["MemoryStore"]


@implementer(IJobStore)
class MemoryStore:
    """
    An L{IJobStore} in a dict.  Every method answers at once.
    """

    def __init__(self) -> None:
        self.jobs: dict[int, StoredJob] = {}
        self.opened = False

    def open(self) -> Deferred[None]:
        self.opened = True
        return succeed(None)

    def load(self) -> Deferred[list[StoredJob]]:
        return succeed([self.jobs[k] for k in sorted(self.jobs)])

    def add_many(self, jobs: Sequence[StoredJob]) -> Deferred[None]:
        for job in jobs:
            self.jobs[job.id] = job
        return succeed(None)

    def update_many(self, jobs: Sequence[StoredJob]) -> Deferred[None]:
        for job in jobs:
            if job.id in self.jobs:
                self.jobs[job.id] = job
        return succeed(None)

    def remove_many(self, job_ids: Sequence[int]) -> Deferred[None]:
        for job_id in job_ids:
            self.jobs.pop(job_id, None)
        return succeed(None)

    def close(self) -> Deferred[None]:
        self.opened = False
        return succeed(None)
