# -*- test-case-name: txgearmand.test.test_store -*-
"""
Interfaces where users plug things into txgearmand.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, NamedTuple, Optional

from zope.interface import Interface

if TYPE_CHECKING:
    from twisted.internet.defer import Deferred

__all__ = ["IJobStore", "StoredJob"]


class StoredJob(NamedTuple):
    """
    What a job store keeps of a job: enough to queue it again after a
    restart.

    @ivar id: the server's sequence number for it, unique for ever in one
        store; replay goes in this order.
    @ivar handle: its job handle.
    @ivar function: its function name.
    @ivar unique: its unique id (C{b""} for none).
    @ivar payload: its data.
    @ivar priority: 0 high, 1 normal, 2 low.
    @ivar when: the epoch time it may run at (SUBMIT_JOB_EPOCH), or L{None}.
    @ivar reducer: its reducer (SUBMIT_REDUCE_JOB_BACKGROUND), or C{b""}.
    """

    id: int
    handle: bytes
    function: bytes
    unique: bytes
    payload: bytes
    priority: int
    when: Optional[float]
    reducer: bytes


class IJobStore(Interface):
    """
    Durable storage for background jobs.

    The job server calls L{add_many} with the background jobs it accepted
    in a reactor turn and only acknowledges them (JOB_CREATED) once the
    returned Deferred has fired, L{remove_many} with the jobs that ended,
    and L{load} once at start-up.  Every
    method returns a Deferred and none may block the reactor thread.  A
    store should batch writes (many L{add} and L{remove} calls of one
    reactor turn in one transaction): durability must cost little.
    """

    def open() -> Deferred[None]:
        """
        Open (and create if needed) the storage.

        @return: a Deferred that fires when it is ready, or fails with an
            error that says why it cannot be opened.
        """

    def load() -> Deferred[list[StoredJob]]:
        """
        Every stored job.

        @return: a Deferred firing with a list of L{StoredJob}, in L{StoredJob.id}
            order.
        """

    def add(job: StoredJob) -> Deferred[None]:
        """
        Store a job.

        @return: a Deferred that fires once the job is durable (committed):
            a crash after that does not lose it.
        """

    def remove(job_id: int) -> Deferred[None]:
        """
        Forget a job that has ended.

        @return: a Deferred that fires once the removal is committed.
        """

    def add_many(jobs: Sequence[StoredJob]) -> Deferred[None]:
        """
        Store several jobs (what the server accepted in one reactor turn).

        @return: a Deferred that fires once all of them are durable.
        """

    def remove_many(job_ids: Sequence[int]) -> Deferred[None]:
        """
        Forget several jobs.

        @return: a Deferred that fires once the removals are committed.
        """

    def close() -> Deferred[None]:
        """
        Commit what is pending and close the storage.

        @return: a Deferred that fires when it is closed.
        """
