# -*- test-case-name: txgearmand.test.test_store -*-
"""
Interfaces where users plug things into txgearmand: job stores, and the
peers that take part in the job server.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, NamedTuple, Optional

from zope.interface import Attribute, Interface

if TYPE_CHECKING:
    from twisted.internet.defer import Deferred

__all__ = [
    "Adoption",
    "IJobStore",
    "IPeer",
    "ISharedJobStore",
    "ISpillStore",
    "SpilledRow",
    "StoreUnavailable",
    "StoredJob",
]


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
    @ivar when: the epoch time it may run at (SUBMIT_JOB_EPOCH), or C{None}.
    @ivar reducer: its reducer (SUBMIT_REDUCE_JOB_BACKGROUND), or C{b""}.
    @ivar attempts: how many of its attempts failed (WORK_FAIL or
        WORK_EXCEPTION) under the retry policy (C{--retry-failed}); while
        it waits to be tried again, L{when} is the time of its next
        attempt.  A job in the failed list keeps the count of its failed
        attempts here.
    @ivar first_failed: when its first attempt failed (epoch seconds), or
        C{None}.
    @ivar failed_at: for a job in the failed list (dead-letter: it failed
        for the last time), when it landed there; else C{None}.  Such a job
        is not queued again at replay: it goes back to the failed list.
    @ivar reason: for a job in the failed list, why its last attempt
        failed (C{failed}, C{exception: TEXT}, C{timed out}, ...); else
        C{""}.
    """

    id: int
    handle: bytes
    function: bytes
    unique: bytes
    payload: bytes
    priority: int
    when: Optional[float]
    reducer: bytes
    attempts: int = 0
    first_failed: Optional[float] = None
    failed_at: Optional[float] = None
    reason: str = ""


class IPeer(Interface):
    """
    The far side of a participant of the job server, as the model sees it:
    a Gearman connection (L{txgearmand.protocol.GearmanProtocol}), or
    anything else that takes part - an HTTP request waiting for a result,
    a recording fake in a test.

    The job server never touches bytes: it tells a peer which packet to
    send, and the peer encodes it (or not) and delivers it.
    """

    def send_packet(ptype: int, *args: bytes) -> None:
        """
        Deliver a response packet: its type (a L{txgearmand.wire.PacketType})
        and its arguments, the last of which may be opaque data.
        """

    def close() -> None:
        """
        End the participation (close the connection) once what was sent so
        far is delivered.
        """

    def describe() -> str:
        """
        The peer for logs and admin output, e.g. C{127.0.0.1:40312}.
        """

    def peer_host() -> str:
        """
        The peer's address without a port (C{unix} for a UNIX socket, or a
        label such as C{in-process}), as the admin C{workers} command shows.
        """

    def fileno() -> int:
        """
        A number for the admin C{workers} command: the connection's file
        descriptor where it has one.
        """

    def is_local() -> bool:
        """
        Whether the peer is on this host (loopback or a UNIX socket).
        """


class IJobStore(Interface):
    """
    Durable storage for background jobs: exactly the calls the job server
    makes.

    The server calls L{open}, then L{load} once at start-up; then, at most
    once per reactor turn, L{add_many} with the background jobs it accepted
    in that turn (it answers their submitters only once the returned
    Deferred has fired) and L{remove_many} with the stored jobs that ended;
    L{close} when it stops.  No method may block the reactor thread.  The
    server already gathers a turn's writes into one call: a store commits
    each call as one transaction, and may group the calls that arrive while
    a transaction runs into the next one.
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

        @return: a Deferred firing with a list of L{StoredJob}, in
            L{StoredJob.id} order.
        """

    def add_many(jobs: Sequence[StoredJob]) -> Deferred[None]:
        """
        Store new jobs (never the id of a stored one).

        @return: a Deferred that fires once all of them are durable
            (committed): a crash after that does not lose them.
        """

    def update_many(jobs: Sequence[StoredJob]) -> Deferred[None]:
        """
        Write stored jobs again, changed (by id): a job that failed and
        waits to be tried again (its L{StoredJob.attempts}, L{StoredJob.when},
        L{StoredJob.first_failed}), one that landed in the failed list (its
        failure fields), or one run again from it (its handle and priority
        too).  A job whose row is gone (removed, never committed, or no
        longer this server's) is not written: an update never inserts.

        @return: a Deferred that fires once the changes are committed.
        """

    def remove_many(job_ids: Sequence[int]) -> Deferred[None]:
        """
        Forget jobs that ended (unknown ids are ignored).

        @return: a Deferred that fires once the removals are committed.
        """

    def close() -> Deferred[None]:
        """
        Commit what is pending and close the storage.

        @return: a Deferred that fires when it is closed.
        """


#: What L{ISpillStore.load_index} gives for a queued job whose payload
#: stays in the store: its id, handle, function, unique id (C{b""} for
#: none) and priority (0 high, 1 normal, 2 low), as a plain tuple (a
#: million of them are made at a replay).
SpilledRow = tuple[int, bytes, bytes, bytes, int]


class ISpillStore(IJobStore):
    """
    An L{IJobStore} that can give back stored jobs' payloads on demand, so
    that a long queue need not hold them in memory: the server keeps only
    a small record of each queued background job beyond the first few of
    its function and priority (see L{txgearmand.spill}), and fetches the
    payloads a few thousand at a time, ahead of the workers.

    A replay reads the stored jobs as L{load_whole} and then L{load_index}
    a chunk at a time, instead of L{IJobStore.load}.
    """

    def load_whole() -> Deferred[list[StoredJob]]:
        """
        The stored jobs that come back whole at a replay: the jobs to run
        at a later time, the jobs of the failed list and the jobs with the
        unique C{-} (they coalesce on their payload).

        @return: a Deferred firing with them, in id order.
        """

    def load_index(after: int, limit: int) -> Deferred[list[SpilledRow]]:
        """
        The other stored jobs, without their payloads: at most C{limit}
        rows of those whose id is above C{after}, in id order (a replay
        reads them a chunk at a time, and never holds them all).
        """

    def fetch(job_ids: Sequence[int]) -> Deferred[list[StoredJob]]:
        """
        The stored jobs with these ids (those that are gone are left out),
        in any order.
        """


class StoreUnavailable(Exception):
    """
    The store cannot be reached (its database is down or unreachable) and
    is waiting to try again: the write was refused at once, without an
    attempt.  A store raises (or fails with) it instead of hanging; it has
    logged the outage already, once, and logs its end.
    """


class Adoption(NamedTuple):
    """
    What one L{ISharedJobStore.adopt} call found.

    @ivar adopted: the jobs this node adopted from dead nodes, now its own
        (in the store already, under new ids): queue them.
    @ivar kept: C{None}, unless this node was found taken over (another
        node adopted its jobs while it seemed dead): then the ids of the
        stored jobs that are still its own.  Any other job it holds as
        stored is no longer its to run or remove.
    """

    adopted: list[StoredJob]
    kept: Optional[list[int]]


class ISharedJobStore(IJobStore):
    """
    An L{IJobStore} that several job servers (nodes) share: each owns the
    jobs it stored, proves it is alive, and adopts the jobs of the nodes
    that have died.

    The server calls L{adopt} every L{poll_interval} seconds once it has
    loaded the store (one call at a time), queues the jobs adopted, and
    drops the ones it lost.
    """

    node = Attribute("This server's node name (C{str}).")
    poll_interval = Attribute("Seconds between L{adopt} calls (C{float}).")

    def adopt(take: bool = True) -> Deferred[Adoption]:
        """
        Say this node is alive; see whether it was taken over; adopt the
        jobs of dead nodes, each job by exactly one node.

        @param take: C{False}: adopt nothing (the server is draining to
            stop), only say it is alive and see whether it was taken over.
        @return: a Deferred firing with an L{Adoption}.
        """
