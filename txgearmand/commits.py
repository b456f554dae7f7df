# -*- test-case-name: txgearmand.test.test_durability,txgearmand.test.test_hotpath -*-
"""
Replies that wait for the store: the part of
L{txgearmand.protocol.GearmanProtocol} that answers a submission with
JOB_CREATED only once the store has committed its job, holds what the
connection is sent meanwhile behind it so replies keep their order, and
stops reading a client that has L{MAX_UNCOMMITTED} submissions waiting.
"""

from __future__ import annotations

import struct
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

from twisted.internet.interfaces import ITransport
from twisted.logger import Logger
from twisted.python.failure import Failure

from txgearmand import wire
from txgearmand.guard import Guard
from txgearmand.job import Job
from txgearmand.server import JobServer
from txgearmand.settings import Settings
from txgearmand.wire import PacketType

__all__ = ["MAX_UNCOMMITTED", "CommitReplies"]

#: Background submissions a connection may have waiting for the store's
#: commit before it stops reading (and reads again once half are
#: answered): a client pipelining faster than the store commits holds at
#: most this many jobs whole in memory, not all it sent.
MAX_UNCOMMITTED = 4096

_encode = wire.encode
_ERROR = PacketType.ERROR
#: JOB_CREATED's header up to its size field.
_JOB_CREATED_HEAD = wire.RESPONSE_MAGIC + struct.pack(">I", PacketType.JOB_CREATED)
_pack_size = struct.Struct(">I").pack


class CommitReplies:
    """
    Replies held behind the store's commits, and the backpressure on
    clients that submit faster than it commits: a part of
    L{GearmanProtocol<txgearmand.protocol.GearmanProtocol>}, which sets
    the attributes it uses.
    """

    log: Logger
    server: JobServer
    transport: ITransport | None
    closed: bool
    paused: bool
    _guard: Guard
    _settings: Settings
    _reserved: int
    #: Output held back behind submissions the store has not committed:
    #: bytes, and the submitted jobs (each stands for its reply).
    _held: deque[bytes | Job] | None
    #: L{_committed}, bound once.
    _on_commit: Callable[[Job, Failure | None], None]
    #: The jobs of the held replies (each once).
    _pending_jobs: set[Job]
    #: Jobs this connection submitted more than once before their commit.
    _twice: set[Job] | None
    #: Submissions waiting for the store.
    _uncommitted: int
    #: Whether waiting for the store stopped reads.
    _commit_paused: bool

    if TYPE_CHECKING:
        # GearmanProtocol's, which this is a part of (and, with
        # check_output, stalled and flush, what makes it the guard's
        # Guarded and the batch's Flushable).
        def describe(self) -> str: ...

        def check_output(self) -> None: ...

        def stalled(self) -> None: ...

        def flush(self) -> None: ...

        def _emit(self, data: bytes) -> None: ...

    def reply_when_committed(self, job: Job) -> None:
        """
        Answer a submission with JOB_CREATED once the store has committed
        its job (or with ERROR if it could not); what this connection is
        sent meanwhile waits behind it, so replies keep their order.
        """
        held = self._held
        if held is None:
            held = self._held = deque()
        # The job itself stands in the held output for its reply.
        held.append(job)
        self._uncommitted += 1
        if self._uncommitted >= MAX_UNCOMMITTED and not self._commit_paused:
            # A client that pipelines faster than the store commits would
            # otherwise have every job it sent held whole in memory.
            self._commit_paused = True
            if self.transport is not None:
                self.transport.pauseProducing()  # type: ignore[attr-defined]
            self._guard.forget_stall(self)
        pending = self._pending_jobs
        if job in pending:
            # Joined again from this connection: if the store fails it,
            # each of its held replies becomes an error at once.
            if self._twice is None:
                self._twice = set()
            self._twice.add(job)
        else:
            pending.add(job)
        assert job.commit_waiters is not None
        job.commit_waiters.append(self._on_commit)

    def _committed(self, job: Job, failure: Failure | None) -> None:
        # Called by Durability once per submission of this connection that
        # joined the job (see reply_when_committed).
        self._uncommitted -= 1
        if self._commit_paused and self._uncommitted <= MAX_UNCOMMITTED // 2:
            self._resume_after_commits()
        held = self._held
        if held is None:
            return
        if failure is not None:
            self._refuse_held(job, failure)
        elif self._twice is not None:
            self._twice.discard(job)
        # Fast path: stores commit in order, so the job is the head of the
        # held output; its JOB_CREATED is encoded inline (a call per reply
        # instead of three).
        while held:
            item = held[0]
            if type(item) is bytes:
                data = item
            elif item.commit_waiters is None:  # type: ignore[union-attr]
                handle = item.handle  # type: ignore[union-attr]
                data = _JOB_CREATED_HEAD + _pack_size(len(handle)) + handle
                self._pending_jobs.discard(item)  # type: ignore[arg-type]
            else:
                return
            held.popleft()
            if not self.closed:
                self._emit(data)
        self._held = None

    def _resume_after_commits(self) -> None:
        self._commit_paused = False
        if self.transport is not None and not self.closed and not self.paused:
            self.transport.resumeProducing()  # type: ignore[attr-defined]
            timeout = self._settings.read_timeout
            if self._reserved and timeout:
                self._guard.watch_stall(self, self.server.reactor.seconds() + timeout)

    def _refuse_held(self, job: Job, failure: Failure) -> None:
        # The store failed to commit the job: its held reply becomes an
        # ERROR.  Stores commit in order, so it is found at the head; a job
        # submitted twice has every reply turned at the first call (later
        # calls for it find none), else the release that follows would
        # take the second for committed.
        held = self._held
        assert held is not None
        text = b"The job store failed: " + _text(failure)
        self._pending_jobs.discard(job)
        twice = self._twice
        if twice is not None and job in twice:
            twice.discard(job)
            places = [i for i, item in enumerate(held) if item is job]
        else:
            places = []
            for i, item in enumerate(held):
                if item is job:
                    places.append(i)
                    break
        for i in places:
            self.log.info(
                "Refused a submission of {function} from {peer}: {code} {text}",
                function=job.queue.name.decode("utf-8", "backslashreplace"),
                peer=self.describe(),
                code="QUEUE_ERROR",
                text=text.decode("utf-8", "replace"),
            )
            held[i] = _encode(_ERROR, b"QUEUE_ERROR", text)


def _text(failure: Failure) -> bytes:
    return failure.getErrorMessage().encode("utf-8", "replace")[:200]
