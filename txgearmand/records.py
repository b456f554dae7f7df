# -*- test-case-name: txgearmand.test.test_model -*-
"""
The model's records: a L{Job}, the L{FunctionQueue} of a function, and the
L{Participant} each connection (or other peer) is to the job server.

They point at each other (a job at its queue, its listeners and its
worker; a participant at the jobs it holds and waits on and the queues it
registered for; a queue at its jobs, workers and sleepers), so they live in
one module.  None of them knows a connection: a participant reaches its
peer only through L{txgearmand.interfaces.IPeer}.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from enum import IntEnum
from typing import TYPE_CHECKING, Any, Optional, Union

import attrs

from txgearmand.wire import PacketType, Priority

if TYPE_CHECKING:
    from twisted.internet.interfaces import IDelayedCall

    from txgearmand.interfaces import IPeer

__all__ = [
    "CLIENT",
    "HIGH",
    "LOW",
    "NORMAL",
    "WORKER",
    "FunctionQueue",
    "Job",
    "JobState",
    "Participant",
    "Priority",
    "Spilled",
]

#: Priorities, as indexes into a function's queues.
HIGH = Priority.HIGH
NORMAL = Priority.NORMAL
LOW = Priority.LOW

_WORK_FAIL = PacketType.WORK_FAIL
_WORK_EXCEPTION = PacketType.WORK_EXCEPTION


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


#: What a job is indexed under for coalescing: its unique id, or (for the
#: unique C{-}) its function and payload.
CoalesceKey = Union[bytes, tuple[bytes, bytes]]


@attrs.define(eq=False, slots=True)
class Job:
    """
    One job known to the server.

    Jobs compare and hash by identity.

    @ivar handle: the handle the server gave it.
    @ivar queue: the L{FunctionQueue} of its function.
    @ivar unique: the unique id it was submitted with (C{b""} when none).
    @ivar data: the payload handed to the worker.
    @ivar priority: a L{Priority}.
    @ivar background: True if no client waits on it.
    @ivar reducer: the reducer of a SUBMIT_REDUCE_JOB (C{b""} when none).
    @ivar when: the epoch time before which it must not run, or C{None}.
    @ivar listeners: the participants that wait on its results, in order,
        once per submission (one that submitted it twice is here twice and
        gets every update twice, as from both peers); an empty tuple, not a
        list, while there are none (most jobs: background).
    @ivar require_listener: a foreground job that loses all its listeners
        before a worker takes it is dropped; a background submission that
        coalesces onto it clears this.
    @ivar worker: the participant working on it, when running.
    @ivar numerator: the last WORK_STATUS numerator.
    @ivar denominator: the last WORK_STATUS denominator.
    @ivar retries: how many attempts failed (worker lost, timed out).
    @ivar attempts: how many attempts of a background job its workers
        answered with WORK_FAIL or WORK_EXCEPTION (the retry policy's
        count, kept in the store).
    @ivar state: a L{JobState}.
    @ivar timer: the pending CAN_DO_TIMEOUT expiry while running.
    @ivar coalesce_key: the key it is indexed under for coalescing, if any.
    @ivar store_id: what the job store knows it by, if it was stored.
    @ivar commit_waiters: while the store has not yet committed the job,
        what to call (with the job, and C{None} or the failure) once it
        has; else C{None}.
    @ivar cost: what it counts against the memory budget while in the job
        table (see L{txgearmand.job.cost}).
    @ivar created: when it was submitted, while the server times jobs
        (else C{None}).
    @ivar started: when a worker last took it, while the server times jobs
        (else C{None}).
    @ivar spill: its place in its queue's spilled tail (see L{Spilled}),
        while it waits there; else C{None} (it is in the ready deque, or
        not queued).
    @ivar first_failed: when its first attempt failed (WORK_FAIL,
        WORK_EXCEPTION, a lost worker or a timeout), epoch seconds, kept in
        the store; C{None} while none has.  A job run again from the failed
        list keeps it.
    """

    handle: bytes
    queue: FunctionQueue
    unique: bytes
    data: bytes
    priority: int = NORMAL
    background: bool = False
    reducer: bytes = b""
    when: Optional[float] = None
    listeners: list[Participant] = ()  # type: ignore[assignment]
    require_listener: bool = True
    worker: Optional[Participant] = None
    numerator: bytes = b"0"
    denominator: bytes = b"0"
    retries: int = 0
    attempts: int = 0
    state: JobState = JobState.QUEUED
    timer: Optional[IDelayedCall] = None
    coalesce_key: Optional[CoalesceKey] = None
    store_id: Optional[int] = None
    commit_waiters: Optional[list[Any]] = None
    cost: int = 0
    created: Optional[float] = None
    started: Optional[float] = None
    first_failed: Optional[float] = None
    spill: Optional[Spilled] = None

    def relay(self, ptype: int, *args: bytes) -> None:
        """
        Tell every listener (as Gearman::Server's C{Job} relays to its
        listeners): one packet each, once per submission.
        """
        for listener in self.listeners:
            listener.send_packet(ptype, *args)

    def relay_exception(self, data: bytes, forward_all: bool) -> None:
        """
        Relay a WORK_EXCEPTION to the listeners that asked for exceptions
        (all of them with C{forward_all}); the others get WORK_FAIL, as from
        C gearmand.
        """
        handle = self.handle
        for listener in self.listeners:
            if forward_all or listener.exceptions:
                listener.send_packet(_WORK_EXCEPTION, handle, data)
            else:
                listener.send_packet(_WORK_FAIL, handle)

    def add_listener(self, listener: Participant) -> None:
        """
        One more submission waits on this job.
        """
        if self.listeners:
            self.listeners.append(listener)
        else:
            self.listeners = [listener]
        listener.listening[self] = None

    def remove_listener(self, listener: Participant) -> bool:
        """
        A participant stops waiting on this job (every submission of it).

        @return: whether it was listening.
        """
        listener.listening.pop(self, None)
        kept = [other for other in self.listeners if other is not listener]
        if len(kept) == len(self.listeners):
            return False
        self.listeners = kept
        return True


_QUEUED = JobState.QUEUED

#: Compact a queue when this many removed jobs linger in it (and they
#: outnumber the live ones).
_COMPACT_THRESHOLD = 256


class Spilled:
    """
    A queued job's place in its queue's spilled tail: what the server keeps
    of a queued background job whose payload waits in the store only (see
    L{txgearmand.spill}), or the wrapper of a whole job queued behind such
    ones.

    @ivar handle: its handle.
    @ivar unique: its unique id.
    @ivar store_id: its row in the store.
    @ivar queue: its function's L{FunctionQueue}.
    @ivar priority: its priority.
    @ivar job: the whole L{Job}, while it has one: a job queued behind
        spilled ones (state L{WHOLE}), or one a lookup made of it before its
        payload came back (state L{PROMOTED}); C{None} for one in the
        store only (L{STORED}).
    @ivar state: L{WHOLE}, L{STORED}, L{PROMOTED} or L{GONE} (it ended;
        skipped when its turn comes).
    """

    __slots__ = ("handle", "job", "priority", "queue", "state", "store_id", "unique")

    #: A whole job (with its payload) in the tail.
    WHOLE = 0
    #: Only this record is in memory; the payload is in the store.
    STORED = 1
    #: A job made of a stored record before its turn (a lookup by handle
    #: or unique id needed one); its payload is still in the store.
    PROMOTED = 2
    #: Ended (cancelled, or the store lost it): skipped.
    GONE = 3

    def __init__(
        self,
        handle: bytes,
        unique: bytes,
        store_id: Optional[int],
        queue: FunctionQueue,
        priority: int,
        job: Optional[Job],
        state: int,
    ) -> None:
        self.handle = handle
        self.unique = unique
        self.store_id = store_id
        self.queue = queue
        self.priority = priority
        self.job = job
        self.state = state

    def __repr__(self) -> str:
        return f"<Spilled {self.handle!r} state={self.state}>"


class FunctionQueue:
    """
    Everything the server keeps for one function name: its queues (one per
    priority), how many of its jobs run or wait for their time, the
    participants registered for it and those of them that sleep.

    Each priority's queue is a deque of whole jobs ready to hand out,
    followed, once the queue is long and the store can hold payloads
    alone, by a tail of L{Spilled} records (see L{txgearmand.spill}).
    Removed jobs stay in their deque until they reach its head (or the
    queue is compacted), so removing a job from the middle is O(1);
    L{queued} counts only live jobs.

    @ivar name: the function name.
    @ivar queues: the FIFO queues of ready jobs, indexed by priority.
    @ivar queued: live queued jobs per priority, ready or spilled.
    @ivar ready: live jobs in L{queues} per priority (what a grab can take
        now).
    @ivar tails: the spilled tail of each priority (L{Spilled} records,
        oldest first), or C{None} while nothing was spilled.
    @ivar tail_dead: about how many records of each tail are of jobs
        that ended (skipped when read; the tail is compacted when they are
        most of it).
    @ivar spill: what takes jobs to the tail and brings them back (a
        L{txgearmand.spill.Spill}), or C{None} when jobs never spill.
    @ivar spill_at: ready jobs a priority holds before new ones go to its
        tail (0: never).
    @ivar running: jobs of this function held by workers.
    @ivar scheduled: jobs waiting for their epoch time.
    @ivar workers: participants that registered the function, in order.
    @ivar sleepers: registered participants that sent PRE_SLEEP and were
        not woken since, the next to wake first.
    @ivar created: made with the admin C{create function} command, so it is
        listed even with no worker and no job.
    @ivar wake_timer: the pending delayed wake-up, if any.
    @ivar counts: its counters (see L{txgearmand.meters}), kept by name
        after it is forgotten.
    """

    __slots__ = (
        "_dead",
        "counts",
        "created",
        "name",
        "queued",
        "queues",
        "ready",
        "running",
        "scheduled",
        "sleepers",
        "spill",
        "spill_at",
        "tail_dead",
        "tails",
        "wake_timer",
        "workers",
    )

    def __init__(self, name: bytes) -> None:
        self.name = name
        self.queues: list[deque[Job]] = [deque(), deque(), deque()]
        self.queued = [0, 0, 0]
        self.ready = [0, 0, 0]
        self._dead = [0, 0, 0]
        self.tails: Optional[list[deque[Spilled]]] = None
        self.tail_dead: list[int] = [0, 0, 0]
        self.spill: Any = None
        self.spill_at = 0
        self.running = 0
        self.scheduled = 0
        self.workers: dict[Participant, None] = {}
        self.sleepers: OrderedDict[Participant, None] = OrderedDict()
        self.created = False
        self.counts: list[int] = [0] * 9
        self.wake_timer: IDelayedCall | None = None

    def __repr__(self) -> str:
        return f"<FunctionQueue {self.name!r} queued={self.queued} running={self.running}>"

    def waiting(self) -> int:
        """
        How many jobs wait in the queues for a worker (ready or spilled).
        """
        q = self.queued
        return q[0] + q[1] + q[2]

    def has_ready(self) -> bool:
        """
        Whether a grab would find a job now (a spilled job is not ready
        until its payload is back from the store).
        """
        r = self.ready
        return bool(r[0] or r[1] or r[2])

    def total(self) -> int:
        """
        Every job of this function the server knows: queued, running and
        scheduled (C gearmand's count, used by C{status} and max-queue).
        """
        q = self.queued
        return q[0] + q[1] + q[2] + self.running + self.scheduled

    def in_use(self) -> bool:
        """
        Whether the function is worth keeping: it has a worker or a job, or
        was made with C{create function}.
        """
        return bool(self.workers or self.created or self.total())

    def push(self, job: Job) -> None:
        """
        Queue a job at the back of its priority's queue: the ready deque,
        or the spilled tail once that has begun or the deque is full.
        """
        p = job.priority
        job.state = _QUEUED
        self.queued[p] += 1
        # Fast path: while the queue is short, one int test more than a
        # plain append.
        at = self.spill_at
        if at and (self.queued[p] > self.ready[p] + 1 or self.ready[p] >= at):
            self.spill.park(self, job)
            return
        self.queues[p].append(job)
        self.ready[p] += 1

    def pop(self, priority: int) -> Job:
        """
        Take the ready job at the head of a priority's queue; the caller
        checked L{ready} for that priority.
        """
        q = self.queues[priority]
        while True:
            job = q.popleft()
            if job.state is _QUEUED:
                self.queued[priority] -= 1
                ready = self.ready[priority] - 1
                self.ready[priority] = ready
                # Fast path: with nothing spilled, one comparison.
                if self.queued[priority] > ready and ready < self.spill_at:
                    self.spill.refill(self, priority)
                return job
            self._dead[priority] -= 1

    def discard(self, job: Job) -> None:
        """
        Forget a queued job that is now done; in the ready deque it stays,
        dead, until popped or compacted; in the tail its record is marked
        gone.
        """
        p = job.priority
        self.queued[p] -= 1
        entry = job.spill
        if entry is not None:
            job.spill = None
            entry.job = None
            entry.state = Spilled.GONE
            self.spill.gone(self, p)
            return
        ready = self.ready[p] - 1
        self.ready[p] = ready
        self._dead[p] += 1
        dead = self._dead[p]
        if dead > _COMPACT_THRESHOLD and dead > ready:
            self.queues[p] = deque(j for j in self.queues[p] if j.state is _QUEUED)
            self._dead[p] = 0
        if self.queued[p] > ready and ready < self.spill_at:
            # Ready jobs ended without a grab (cancelled, their clients
            # left): the spilled ones behind them must come forward.
            self.spill.refill(self, p)

    def cancel_wake_timer(self) -> None:
        """
        Cancel the pending delayed wake-up, if any.
        """
        timer = self.wake_timer
        if timer is not None and timer.active():
            timer.cancel()
        self.wake_timer = None


#: How many released handles a participant remembers.
MAX_RELEASED = 256

#: A participant's roles (L{Participant.roles} bits): it submitted a job;
#: it asked for one.
CLIENT = 1
WORKER = 2


class Participant:
    """
    What the job server keeps for each participant - a connection, or any
    other L{IPeer}: a client, a worker, an admin console or all of them at
    once (Gearman::Server's "client").

    @ivar peer: where packets for it go.
    @ivar send_packet: C{peer.send_packet}, bound once: the fan-out of
        results calls it per listener.
    @ivar number: a number unique among this process's participants.
    @ivar connected: False once the server was told it went away.
    @ivar abilities: the functions it registered, by name.
    @ivar ability_list: the same L{FunctionQueue}s, in registration order.
    @ivar timeouts: CAN_DO_TIMEOUT limits in seconds, by function name.
    @ivar next_function: where in L{ability_list} the next grab starts.
    @ivar sleeping: sent PRE_SLEEP and was not woken since.
    @ivar jobs_done: jobs it finished since it last slept.
    @ivar jobs_finished: jobs it finished (result, failure or exception).
    @ivar jobs_submitted: submissions it made.
    @ivar roles: the roles it took (L{CLIENT}, L{WORKER}), each logged
        once.
    @ivar held: the jobs it works on, by handle.
    @ivar listening: the jobs it waits on (an ordered set).
    @ivar exceptions: it asked for WORK_EXCEPTION with OPTION_REQ.
    @ivar released: handles of jobs the server took from this worker while
        it still worked on them (timed out, CANT_DO, cancelled) or that it
        ended with WORK_EXCEPTION: results it still sends for them are
        dropped without an ERROR (the last L{MAX_RELEASED} are kept).
    @ivar client_id: set with SET_CLIENT_ID (C{-} by default).
    """

    __slots__ = (
        "abilities",
        "ability_list",
        "client_id",
        "connected",
        "exceptions",
        "held",
        "jobs_done",
        "jobs_finished",
        "jobs_submitted",
        "listening",
        "next_function",
        "number",
        "peer",
        "released",
        "roles",
        "send_packet",
        "sleeping",
        "timeouts",
    )

    _count = 0

    def __init__(self, peer: IPeer) -> None:
        self.peer = peer
        self.send_packet = peer.send_packet
        Participant._count += 1
        self.number = Participant._count
        self.connected = True
        self.abilities: dict[bytes, FunctionQueue] = {}
        self.ability_list: list[FunctionQueue] = []
        self.timeouts: dict[bytes, float] = {}
        self.next_function = 0
        self.sleeping = False
        self.jobs_done = 0
        self.jobs_finished = 0
        self.jobs_submitted = 0
        self.roles = 0
        self.held: dict[bytes, Job] = {}
        self.listening: dict[Job, None] = {}
        self.exceptions = False
        self.released: dict[bytes, None] = {}
        self.client_id = b"-"

    def __repr__(self) -> str:
        return f"<Participant #{self.number} {self.describe()}>"

    def describe(self) -> str:
        """
        Its peer, for logs and admin output.
        """
        return self.peer.describe()

    def is_worker(self) -> bool:
        """
        Whether it registered any function.
        """
        return bool(self.abilities)

    def remember_released(self, handle: bytes) -> None:
        """
        Drop, without an ERROR, results this worker still sends for a job
        the server ended for it.
        """
        released = self.released
        released[handle] = None
        if len(released) > MAX_RELEASED:
            del released[next(iter(released))]
