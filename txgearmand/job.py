# -*- test-case-name: txgearmand.test.test_server -*-
"""
What a job is, and who waits on it.
"""

from __future__ import annotations

from enum import IntEnum
from typing import TYPE_CHECKING, Any

import attrs

if TYPE_CHECKING:
    from twisted.internet.interfaces import IDelayedCall

    from txgearmand.protocol import GearmanProtocol
    from txgearmand.server import FunctionQueue

__all__ = ["HIGH", "LOW", "NORMAL", "PRIORITY_NAMES", "Job", "JobState"]

#: Priorities, as indexes into a function's queues.
HIGH = 0
NORMAL = 1
LOW = 2
PRIORITY_NAMES = ("high", "normal", "low")


class JobState(IntEnum):
    """
    Where a job is in its life.
    """

    #: Waiting for its time (SUBMIT_JOB_EPOCH); in no queue yet.
    SCHEDULED = 0
    #: In its function's queue, waiting for a worker.
    QUEUED = 1
    #: Handed to a worker.
    RUNNING = 2
    #: Finished, failed, cancelled or dropped; known to nobody any more.
    DONE = 3


@attrs.define(eq=False, slots=True)
class Job:
    """
    One job known to the server.

    Jobs compare and hash by identity.

    @ivar handle: the handle the server gave it.
    @ivar queue: the L{FunctionQueue} of its function.
    @ivar unique: the unique id it was submitted with (C{b""} when none).
    @ivar data: the payload handed to the worker.
    @ivar priority: L{HIGH}, L{NORMAL} or L{LOW}.
    @ivar background: True if no client waits on it.
    @ivar reducer: the reducer of a SUBMIT_REDUCE_JOB (C{b""} when none).
    @ivar when: the epoch time before which it must not run, or L{None}.
    @ivar listeners: the connections that wait on its results, in order,
        once per submission (a connection that submitted it twice is here
        twice and gets every update twice, as from both peers); an empty
        tuple, not a list, while there are none (most jobs: background).
    @ivar require_listener: a foreground job that loses all its listeners
        before a worker takes it is dropped; a background submission that
        coalesces onto it clears this.
    @ivar worker: the connection working on it, when running.
    @ivar numerator: the last WORK_STATUS numerator.
    @ivar denominator: the last WORK_STATUS denominator.
    @ivar retries: how many attempts failed (worker lost, timed out).
    @ivar state: a L{JobState}.
    @ivar timer: the pending CAN_DO_TIMEOUT expiry while running.
    @ivar coalesce_key: the key it is indexed under for coalescing, if any.
    @ivar store_id: what the job store knows it by, if it was stored.
    @ivar commit_waiters: while the store has not yet committed the job,
        what to call (with L{None}, or the failure) once it has; else
        L{None}.
    """

    handle: bytes
    queue: FunctionQueue
    unique: bytes
    data: bytes
    priority: int = NORMAL
    background: bool = False
    reducer: bytes = b""
    when: float | None = None
    listeners: list[GearmanProtocol] = ()  # type: ignore[assignment]
    require_listener: bool = True
    worker: GearmanProtocol | None = None
    numerator: bytes = b"0"
    denominator: bytes = b"0"
    retries: int = 0
    state: JobState = JobState.QUEUED
    timer: IDelayedCall | None = None
    coalesce_key: Any = None
    store_id: Any = None
    commit_waiters: Any = None

    @property
    def function(self) -> bytes:
        """
        The name of the job's function.
        """
        return self.queue.name

    @property
    def running(self) -> bool:
        """
        Whether a worker holds the job.
        """
        return self.state is JobState.RUNNING
