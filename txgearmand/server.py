# -*- test-case-name: txgearmand.test.test_server -*-
"""
The job server: functions, queues, jobs, sleeping workers and their wake-up
policy, limits, and the hand-off of jobs to workers.

Method names follow Perl's Gearman::Server (C{enqueue_job}, C{grab_job},
C{wake_up_sleepers}, C{on_client_sleep}, ...).  The L{JobServer} never
touches bytes: it calls L{GearmanProtocol.send_packet} on the connections
it must tell something, and L{txgearmand.wire} encodes.
"""

from __future__ import annotations

import heapq
import os
import socket
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.python.failure import Failure

from txgearmand import _log, wire
from txgearmand.interfaces import IJobStore, StoredJob
from txgearmand.job import HIGH, LOW, NORMAL, Job, JobState
from txgearmand.wire import PacketType

if TYPE_CHECKING:
    from txgearmand.protocol import GearmanProtocol

__all__ = [
    "ADMIN_SHUTDOWN_POLICIES",
    "TIMEOUT_UNITS",
    "FunctionQueue",
    "GearmanError",
    "JobServer",
]

#: Who may use the admin C{shutdown} command.
ADMIN_SHUTDOWN_POLICIES = ("never", "local", "any")
#: How the timeout of CAN_DO_TIMEOUT is read, and its factor to seconds.
TIMEOUT_UNITS = {"milliseconds": 0.001, "seconds": 1.0}
#: C gearmand raises CAN_DO_TIMEOUT values under a second to one second.
_MIN_MS_TIMEOUT = 1.0

_QUEUED = JobState.QUEUED
_RUNNING = JobState.RUNNING
_SCHEDULED = JobState.SCHEDULED
_DONE = JobState.DONE

_NOT_FOUND_RESULT = b"Job given in work result not found"
_NOOP = PacketType.NOOP
_WORK_FAIL = PacketType.WORK_FAIL
_WORK_EXCEPTION = PacketType.WORK_EXCEPTION

#: Compact a queue when this many removed jobs linger in it (and they
#: outnumber the live ones).
_COMPACT_THRESHOLD = 256


class GearmanError(Exception):
    """
    A request the server refuses; the connection answers it with an ERROR
    packet of this code and text.
    """

    def __init__(self, code: bytes, text: bytes) -> None:
        super().__init__(code, text)
        self.code = code
        self.text = text


class FunctionQueue:
    """
    Everything the server keeps for one function name: its queues (one per
    priority), how many of its jobs run or wait for their time, the
    connections registered for it and those of them that sleep.

    Removed jobs stay in their queue until they reach its head (or the queue
    is compacted), so removing a job from the middle is O(1); L{queued}
    counts only live jobs.

    @ivar name: the function name.
    @ivar queues: the FIFO queues, indexed by priority.
    @ivar queued: live queued jobs per priority.
    @ivar running: jobs of this function held by workers.
    @ivar scheduled: jobs waiting for their epoch time.
    @ivar workers: connections that registered the function, in order.
    @ivar sleepers: registered connections that sent PRE_SLEEP and were
        not woken since, the next to wake first.
    @ivar created: made with the admin C{create function} command, so it is
        listed even with no worker and no job.
    @ivar wake_timer: the pending delayed wake-up, if any.
    """

    __slots__ = (
        "_dead",
        "created",
        "name",
        "queued",
        "queues",
        "running",
        "scheduled",
        "sleepers",
        "wake_timer",
        "workers",
    )

    def __init__(self, name: bytes) -> None:
        self.name = name
        self.queues: list[deque[Job]] = [deque(), deque(), deque()]
        self.queued = [0, 0, 0]
        self._dead = [0, 0, 0]
        self.running = 0
        self.scheduled = 0
        self.workers: dict[GearmanProtocol, None] = {}
        self.sleepers: OrderedDict[GearmanProtocol, None] = OrderedDict()
        self.created = False
        self.wake_timer: IDelayedCall | None = None

    def __repr__(self) -> str:
        return f"<FunctionQueue {self.name!r} queued={self.queued} running={self.running}>"

    def waiting(self) -> int:
        """
        How many jobs wait in the queues for a worker.
        """
        q = self.queued
        return q[0] + q[1] + q[2]

    def total(self) -> int:
        """
        Every job of this function the server knows: queued, running and
        scheduled (C gearmand's count, used by C{status} and max-queue).
        """
        q = self.queued
        return q[0] + q[1] + q[2] + self.running + self.scheduled

    def push(self, job: Job) -> None:
        """
        Queue a job at the back of its priority's queue.
        """
        p = job.priority
        job.state = _QUEUED
        self.queues[p].append(job)
        self.queued[p] += 1

    def pop(self, priority: int) -> Job:
        """
        Take the job at the head of a priority's queue; the caller checked
        L{queued} for that priority.
        """
        q = self.queues[priority]
        while True:
            job = q.popleft()
            if job.state is _QUEUED:
                self.queued[priority] -= 1
                return job
            self._dead[priority] -= 1

    def discard(self, job: Job) -> None:
        """
        Forget a queued job that is now done; it stays in its deque, dead,
        until popped or compacted.
        """
        p = job.priority
        self.queued[p] -= 1
        self._dead[p] += 1
        dead = self._dead[p]
        if dead > _COMPACT_THRESHOLD and dead > self.queued[p]:
            self.queues[p] = deque(j for j in self.queues[p] if j.state is _QUEUED)
            self._dead[p] = 0


class JobServer(Service):
    """
    A Gearman job server, as an L{IService}.

    Connections (L{GearmanProtocol}, built by L{GearmanServerFactory}) turn
    packets into calls on it; it keeps the functions, queues and jobs and
    tells the connections what to send.

    @ivar wakeup: sleepers woken (NOOP) per queued job: C{N}, C{0} for none,
        C{-1} for all.
    @ivar wakeup_delay: seconds between further wake-ups while a function
        still has queued jobs and sleeping workers; C{0} the next reactor
        turn, C{-1} never.
    @ivar job_retries: failed attempts (worker lost, CANT_DO, timeout)
        after which a job fails; C{0} retries forever.
    @ivar exceptions: forward WORK_EXCEPTION to every client, not only to
        those that asked with OPTION_REQ.
    @ivar timeout_unit: how CAN_DO_TIMEOUT values are read, a key of
        L{TIMEOUT_UNITS}.
    @ivar admin_shutdown: who may use the admin C{shutdown} command, one of
        L{ADMIN_SHUTDOWN_POLICIES}.
    @ivar max_packet_size: the largest packet body a connection accepts.
    @ivar store: where background jobs are kept across restarts (L{None}:
        nowhere).  A background job is acknowledged (JOB_CREATED) only once
        the store has committed it; the store is replayed when the service
        starts, before any connection is served.
    @ivar ready: False until the store is replayed; connections made
        before then wait.
    @ivar coalesce_writes: what the connections read in one reactor turn
        is answered at the end of the turn, one write per connection
        however many of its peers' packets caused output for it (else at
        the end of each read: tests on a fake clock want that).
    @ivar jobs_by_handle: every live job by its handle.
    @ivar accepting: False while draining or stopped: the factory builds no
        protocol for new connections.
    @ivar stop_listening: called once when a graceful shutdown begins, to
        close the listening ports; may return a Deferred.
    @ivar on_shutdown: called when an admin C{shutdown} completes, to end
        the process (twistd's service passes C{reactor.stop}); without it
        the admin command is refused.
    """

    log = _log.logger("txgearmand.server.JobServer")

    def __init__(
        self,
        reactor: IReactorTime | None = None,
        *,
        wakeup: int = 3,
        wakeup_delay: float = 0.1,
        job_retries: int = 0,
        job_handle_prefix: bytes | None = None,
        max_packet_size: int = wire.DEFAULT_MAX_PACKET_SIZE,
        max_queue: Mapping[bytes, Iterable[int] | int] | None = None,
        exceptions: bool = False,
        timeout_unit: str = "milliseconds",
        admin_shutdown: str = "local",
        verbose: str = "INFO",
        store: IJobStore | None = None,
        coalesce_writes: bool = True,
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor as _reactor

            reactor = _reactor  # type: ignore[assignment]
        assert reactor is not None
        if wakeup < -1:
            raise ValueError(f"wakeup must be -1 (all), 0 (none) or a count, not {wakeup}")
        if wakeup_delay < 0 and wakeup_delay != -1:
            raise ValueError(
                f"wakeup_delay must be -1 (never) or a number of seconds, not {wakeup_delay}"
            )
        if job_retries < 0:
            raise ValueError(f"job_retries must be 0 (unlimited) or more, not {job_retries}")
        if timeout_unit not in TIMEOUT_UNITS:
            raise ValueError(f"timeout_unit must be one of {sorted(TIMEOUT_UNITS)}")
        if admin_shutdown not in ADMIN_SHUTDOWN_POLICIES:
            raise ValueError(f"admin_shutdown must be one of {ADMIN_SHUTDOWN_POLICIES}")
        if max_packet_size < 1:
            raise ValueError("max_packet_size must be positive")
        if job_handle_prefix is None:
            job_handle_prefix = b"H:" + socket.gethostname().encode("utf-8", "replace")
        # Room for ":" and a 10-digit counter within C's 63-byte handles.
        if len(job_handle_prefix) > wire.MAX_HANDLE_SIZE - 11:
            raise ValueError("job_handle_prefix is too long for a 64-byte job handle")
        self._clock: IReactorTime = reactor
        self.reactor = reactor
        self.wakeup = wakeup
        self.wakeup_delay = wakeup_delay
        self.job_retries = job_retries
        self.job_handle_prefix = job_handle_prefix
        self.max_packet_size = max_packet_size
        self.exceptions = exceptions
        self.timeout_unit = timeout_unit
        self.admin_shutdown = admin_shutdown
        self.verbose = verbose.upper()
        self.started_at = reactor.seconds()
        self.pid = os.getpid()

        self.jobs_by_handle: dict[bytes, Job] = {}
        self._functions: dict[bytes, FunctionQueue] = {}
        self._max_queue: dict[bytes, tuple[int, int, int]] = {}
        self._uniques: dict[bytes, dict[bytes, Job]] = {}
        self._payload_uniques: dict[tuple[bytes, bytes], Job] = {}
        self._clients: dict[GearmanProtocol, None] = {}
        self._schedule: list[tuple[float, int, Job]] = []
        self._schedule_timer: IDelayedCall | None = None
        self._handle_counter = 0
        self._schedule_counter = 0
        self.store = store
        self.coalesce_writes = coalesce_writes
        self._store_seq = 0
        self.ready = store is None
        self._ready_waiters: list[Callable[[], object]] = []

        #: Nesting depth of L{batch}; while above 0, connections buffer
        #: what they are told to send and L{flush} writes it.
        self.batch_depth = 0
        self._dirty: list[GearmanProtocol] = []
        self._flush_pending = False
        self._to_store: list[Job] = []
        self._to_remove: list[int] = []

        self.accepting = True
        self.draining = False
        self._drained: Deferred[None] | None = None
        self.stop_listening: Callable[[], Any] | None = None
        self.on_shutdown: Callable[[], Any] | None = None

        for name, limit in (max_queue or {}).items():
            if isinstance(limit, int):
                self.set_max_queue(name, limit)
            else:
                self.set_max_queue(name, *limit)

    # -- service --------------------------------------------------------

    def startService(self) -> Deferred[None]:  # type: ignore[override]
        """
        Start: open and replay the store, then serve connections (those
        made meanwhile wait).

        @return: a Deferred that fires when the server is ready.
        """
        super().startService()
        self.accepting = True
        self.log.info(
            "txgearmand job server started (wakeup={wakeup}, wakeup_delay={delay},"
            " job_retries={retries}, store={store})",
            wakeup=self.wakeup,
            delay=self.wakeup_delay,
            retries=self.job_retries,
            store=type(self.store).__name__ if self.store is not None else "none",
        )
        store = self.store
        if store is None or self.ready:
            self._set_ready()
            return succeed(None)
        d: Deferred[Any] = maybeDeferred(store.open)
        d.addCallback(lambda _: store.load())
        d.addCallback(self._replay)
        d.addErrback(self._store_failed)
        return d

    def _set_ready(self) -> None:
        self.ready = True
        waiters, self._ready_waiters = self._ready_waiters, []
        with self.batch():
            for waiter in waiters:
                waiter()

    def when_ready(self, callback: Callable[[], object]) -> None:
        """
        Call C{callback} once the store is replayed (at once if it is).
        """
        if self.ready:
            callback()
        else:
            self._ready_waiters.append(callback)

    def _store_failed(self, failure: Failure) -> None:
        self.log.failure("The job store failed to open or load; stopping", failure)
        self.accepting = False
        with self.batch():
            for conn in list(self._clients):
                conn.close()
        if self.on_shutdown is not None:
            self._clock.callLater(0, self.on_shutdown)

    def stopService(self) -> Deferred[None]:
        """
        Stop: refuse new connections, close the open ones, cancel timers,
        then commit and close the store.
        """
        super().stopService()
        self.accepting = False
        with self.batch():
            for conn in list(self._clients):
                conn.close()
        self._cancel_timers()
        if self.store is not None and self.ready:
            d: Deferred[Any] = maybeDeferred(self.store.close)
            d.addErrback(lambda f: self.log.failure("Closing the job store failed", f))
            return d.addCallback(lambda _: None)
        return succeed(None)

    # -- the store ------------------------------------------------------

    def _replay(self, records: list[StoredJob]) -> None:
        """
        Queue again the jobs the store kept, in their order.
        """
        prefix = self.job_handle_prefix + b":"
        now = self._clock.seconds()
        with self.batch():
            for record in records:
                self._store_seq = max(self._store_seq, record.id)
                handle = record.handle
                if handle.startswith(prefix):
                    suffix = handle[len(prefix) :]
                    if suffix.isdigit():
                        self._handle_counter = max(self._handle_counter, int(suffix))
                if handle in self.jobs_by_handle:
                    handle = self.new_job_handle()
                fq = self.function(record.function)
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
                self.jobs_by_handle[handle] = job
                if record.unique:
                    self.set_unique_job(job)
                if record.when is not None and record.when > now:
                    self._schedule_job(job)
                else:
                    fq.push(job)
        for fq in self._functions.values():
            limits = self._max_queue.get(fq.name)
            if limits is not None and any(n and fq.total() > n for n in limits):
                self.log.warn(
                    "{function} has {n} stored jobs, over its max queue; all are kept",
                    function=fq.name,
                    n=fq.total(),
                )
        self.log.info("Replayed {n} stored jobs", n=len(records))
        self._set_ready()

    def _store_job(self, job: Job) -> None:
        """
        Give a job to the store (with the others of this turn, when the
        batch ends); its submitters are answered on commit.
        """
        self._store_seq += 1
        job.store_id = self._store_seq
        job.commit_waiters = []
        self._to_store.append(job)
        if not self.batch_depth:
            self.flush()

    def _send_to_store(self) -> None:
        jobs, self._to_store = self._to_store, []
        assert self.store is not None
        d = self.store.add_many(
            [
                StoredJob(
                    job.store_id,
                    job.handle,
                    job.queue.name,
                    job.unique,
                    job.data,
                    job.priority,
                    job.when,
                    job.reducer,
                )
                for job in jobs
            ]
        )
        d.addBoth(self._jobs_committed, jobs)

    def _jobs_committed(self, result: object, jobs: list[Job]) -> None:
        failure = result if isinstance(result, Failure) else None
        # Replies go out together, once per connection, on the next turn.
        self._flush_soon()
        for job in jobs:
            waiters = job.commit_waiters or []
            job.commit_waiters = None
            if failure is not None:
                job.store_id = None
                if job.background and job.state is not _DONE:
                    self.log.warn("Dropping {handle}: the store did not take it", handle=job.handle)
                    self._finish(job)
            for waiter in waiters:
                waiter(failure)

    def _send_removals(self) -> None:
        ids, self._to_remove = self._to_remove, []
        assert self.store is not None
        self.store.remove_many(ids).addErrback(_ignore)

    def _flush_soon(self) -> None:
        """
        Hold what connections are told to send until the next reactor
        turn, then write it, once per connection.
        """
        if not self._flush_pending:
            self._flush_pending = True
            self.batch_depth += 1
            self._clock.callLater(0, self._end_flush_soon)

    def _end_flush_soon(self) -> None:
        self._flush_pending = False
        self.batch_depth -= 1
        if not self.batch_depth:
            self.flush()

    def _cancel_timers(self) -> None:
        for fq in self._functions.values():
            if fq.wake_timer is not None and fq.wake_timer.active():
                fq.wake_timer.cancel()
            fq.wake_timer = None
        for job in self.jobs_by_handle.values():
            if job.timer is not None and job.timer.active():
                job.timer.cancel()
            job.timer = None
        if self._schedule_timer is not None and self._schedule_timer.active():
            self._schedule_timer.cancel()
        self._schedule_timer = None

    # -- output batching ------------------------------------------------

    def batch(self) -> _Batch:
        """
        A context manager: what connections are told to send inside it is
        written once per connection when the outermost batch ends.
        """
        return _Batch(self)

    def mark_dirty(self, conn: GearmanProtocol) -> None:
        """
        Note that a connection has buffered output to write at the end of
        the current batch.
        """
        self._dirty.append(conn)

    def end_of_input(self) -> None:
        """
        A connection has handled what it read: write the output now, or
        (L{coalesce_writes}) at the end of this reactor turn.
        """
        if self.coalesce_writes:
            self._flush_soon()
        else:
            self.flush()

    def flush(self) -> None:
        """
        Hand the store what this batch accepted and ended, and write out
        every connection's buffered output.
        """
        if self._to_store:
            self._send_to_store()
        if self._to_remove:
            self._send_removals()
        dirty = self._dirty
        if dirty:
            self._dirty = []
            for conn in dirty:
                conn.flush()

    # -- connections ----------------------------------------------------

    def new_client(self, conn: GearmanProtocol) -> None:
        """
        Note a new connection (Gearman::Server's C{new_client}).
        """
        self._clients[conn] = None

    def clients(self) -> list[GearmanProtocol]:
        """
        Every open connection, in the order they arrived.
        """
        return list(self._clients)

    def note_disconnected_client(self, conn: GearmanProtocol) -> None:
        """
        A connection went away: put back the jobs it held, stop waiting for
        the jobs it listened to (dropping queued foreground jobs nobody
        waits for any more) and forget its abilities.
        """
        self._clients.pop(conn, None)
        for job in list(conn.held.values()):
            self.log.info(
                "Worker {worker} went away holding {handle}",
                worker=conn.describe(),
                handle=job.handle,
            )
            self._attempt_failed(job)
        for job in list(conn.listening):
            self._remove_listener(job, conn)
        if conn.sleeping:
            self._unsleep(conn)
        for fq in conn.abilities.values():
            fq.workers.pop(conn, None)
            self._maybe_forget(fq)
        conn.abilities.clear()
        conn.timeouts.clear()
        conn.ability_list = []

    def _remove_listener(self, job: Job, conn: GearmanProtocol) -> None:
        conn.listening.pop(job, None)
        listeners = [listener for listener in job.listeners if listener is not conn]
        if len(listeners) == len(job.listeners):
            return
        job.listeners = listeners
        if not listeners and job.require_listener and job.state is _QUEUED:
            self.log.debug("Dropping {handle}: its clients left", handle=job.handle)
            self._finish(job)

    # -- functions and limits -------------------------------------------

    def function(self, name: bytes) -> FunctionQueue:
        """
        The L{FunctionQueue} of a function, made if new.
        """
        fq = self._functions.get(name)
        if fq is None:
            fq = self._functions[name] = FunctionQueue(name)
        return fq

    def functions(self) -> list[FunctionQueue]:
        """
        The functions worth listing (with a worker, a job, or made with
        C{create function}), sorted by name.
        """
        return [
            fq
            for name, fq in sorted(self._functions.items())
            if fq.workers or fq.created or fq.total()
        ]

    def get_function(self, name: bytes) -> FunctionQueue | None:
        """
        The L{FunctionQueue} of a function, or L{None} if unknown.
        """
        return self._functions.get(name)

    def create_function(self, name: bytes) -> None:
        """
        Make a function known even with no worker and no job.
        """
        self.function(name).created = True

    def drop_function(self, name: bytes) -> FunctionQueue | None:
        """
        Undo L{create_function}: forget a function with no worker and no job.

        @raise GearmanError: if it still has workers or jobs.
        @return: the dropped function, or L{None} if there was none.
        """
        fq = self._functions.get(name)
        if fq is None:
            lowered = name.lower()
            for other, candidate in self._functions.items():
                if other.lower() == lowered:
                    fq = candidate
                    break
        if fq is None or not (fq.created or fq.workers or fq.total()):
            return None
        if fq.workers or fq.total():
            raise GearmanError(b"", b"there are still connected workers or executing clients")
        fq.created = False
        self._maybe_forget(fq)
        return fq

    def _maybe_forget(self, fq: FunctionQueue) -> None:
        if fq.workers or fq.created or fq.total():
            return
        if self._functions.get(fq.name) is fq:
            del self._functions[fq.name]
        if fq.wake_timer is not None and fq.wake_timer.active():
            fq.wake_timer.cancel()
        fq.wake_timer = None

    def set_max_queue(
        self, function: bytes, high: int = 0, normal: int | None = None, low: int | None = None
    ) -> None:
        """
        Limit how many jobs of a function the server holds (queued and
        running, as C gearmand counts).  A submission past the limit of its
        priority is refused with C{QUEUE_ERROR}.  With one number, it limits
        every priority; with two, high and normal (low unlimited); C{0} or
        negative is unlimited.  L{set_max_queue} with no limit resets it.
        """
        if normal is None and low is None:
            limits = (high, high, high)
        else:
            limits = (high, normal or 0, low or 0)
        clean = (max(limits[0], 0), max(limits[1], 0), max(limits[2], 0))
        if any(clean):
            self._max_queue[function] = clean
        else:
            self._max_queue.pop(function, None)

    def max_queue(self, function: bytes) -> tuple[int, int, int] | None:
        """
        The limits set for a function (high, normal, low; 0 = none), if any.
        """
        return self._max_queue.get(function)

    # -- jobs -----------------------------------------------------------

    def new_job_handle(self) -> bytes:
        """
        A handle no live job has: C{<prefix>:<n>}.
        """
        self._handle_counter += 1
        handle = b"%s:%d" % (self.job_handle_prefix, self._handle_counter)
        while handle in self.jobs_by_handle:
            self._handle_counter += 1
            handle = b"%s:%d" % (self.job_handle_prefix, self._handle_counter)
        return handle

    def job_by_handle(self, handle: bytes) -> Job | None:
        """
        The live job with this handle, if any.
        """
        return self.jobs_by_handle.get(handle)

    def jobs(self) -> list[Job]:
        """
        Every live job (queued, running or scheduled), oldest first.
        """
        return list(self.jobs_by_handle.values())

    def jobs_outstanding(self) -> int:
        """
        How many jobs wait in queues for a worker.
        """
        return sum(fq.waiting() for fq in self._functions.values())

    def jobs_running(self) -> int:
        """
        How many jobs workers hold.
        """
        return sum(fq.running for fq in self._functions.values())

    def job_of_unique(self, function: bytes, unique: bytes, data: bytes = b"") -> Job | None:
        """
        The live job a submission with this function and unique id would
        coalesce onto, if any.  An empty unique never coalesces; C{-}
        coalesces on the payload.
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

    def job_of_any_unique(self, unique: bytes) -> Job | None:
        """
        A live job with this unique id, whatever its function (what
        GET_STATUS_UNIQUE looks up).
        """
        by_function = self._uniques.get(unique)
        if not by_function:
            return None
        return next(iter(by_function.values()))

    def set_unique_job(self, job: Job) -> None:
        """
        Index a job by its unique id so that duplicates coalesce onto it.
        """
        unique = job.unique
        if not unique:
            return
        if unique == b"-":
            if job.data:
                key = (job.queue.name, job.data)
                self._payload_uniques[key] = job
                job.coalesce_key = key
            return
        self._uniques.setdefault(unique, {})[job.queue.name] = job
        job.coalesce_key = unique

    def _unset_unique_job(self, job: Job) -> None:
        key = job.coalesce_key
        if key is None:
            return
        job.coalesce_key = None
        if isinstance(key, tuple):
            if self._payload_uniques.get(key) is job:
                del self._payload_uniques[key]
            return
        by_function = self._uniques.get(key)
        if by_function is not None and by_function.get(job.queue.name) is job:
            del by_function[job.queue.name]
            if not by_function:
                del self._uniques[key]

    def submit_job(
        self,
        client: GearmanProtocol | None,
        function: bytes,
        unique: bytes,
        data: bytes,
        priority: int = NORMAL,
        background: bool = False,
        reducer: bytes = b"",
        when: float | None = None,
    ) -> Job:
        """
        Accept a submission: coalesce it onto the live job with the same
        function and unique id, or make, index and queue a new job.

        @param client: the submitting connection, which listens to a
            foreground job; L{None} for a submission from code.
        @param when: for SUBMIT_JOB_EPOCH, the epoch time it may run at.
        @raise GearmanError: C{ARGUMENT_TOO_LARGE} for a unique over 64
            bytes, C{QUEUE_ERROR} when the function's limit is reached.
        @return: the job (its handle goes in JOB_CREATED).
        """
        if len(unique) > wire.MAX_UNIQUE_SIZE:
            raise GearmanError(b"ARGUMENT_TOO_LARGE", b"Unique value too large")
        if not function:
            raise GearmanError(b"INVALID_ARGUMENT", b"Function name is empty")
        if unique:
            job = self.job_of_unique(function, unique, data)
            if job is not None:
                if background:
                    job.require_listener = False
                    if self.store is not None and job.store_id is None:
                        self._store_job(job)
                elif client is not None:
                    # One entry per submission, as both peers do: a client
                    # that submitted twice gets every update twice.
                    if job.listeners:
                        job.listeners.append(client)
                    else:
                        job.listeners = [client]
                    client.listening[job] = None
                return job
        fq = self._functions.get(function)
        if fq is None:
            fq = self._functions[function] = FunctionQueue(function)
        limits = self._max_queue.get(function)
        if limits is not None:
            limit = limits[priority]
            if limit and fq.total() >= limit:
                self._maybe_forget(fq)
                raise GearmanError(b"QUEUE_ERROR", b"Job queue is full")
        job = Job(self.new_job_handle(), fq, unique, data, priority, background, reducer, when)
        self.jobs_by_handle[job.handle] = job
        if unique:
            self.set_unique_job(job)
        if background:
            job.require_listener = False
            if self.store is not None:
                self._store_job(job)
        elif client is not None:
            job.listeners = [client]
            client.listening[job] = None
        if when is not None and when > self._clock.seconds():
            self._schedule_job(job)
        else:
            self.enqueue_job(job)
        return job

    def enqueue_job(self, job: Job) -> None:
        """
        Put a job at the back of its function's queue for its priority and
        wake sleeping workers.
        """
        fq = job.queue
        fq.push(job)
        if fq.sleepers:
            self.wake_up_sleepers(fq)

    def grab_job(self, worker: GearmanProtocol) -> Job | None:
        """
        Hand a worker the next job it can do, or L{None}.

        Priority is global across the worker's functions (every HIGH job
        before any NORMAL one), FIFO within a priority, and the functions
        take turns at equal priority (the search starts after the function
        served last), so none starves.
        """
        if worker.sleeping:
            self._unsleep(worker)
        funcs = worker.ability_list
        n = len(funcs)
        if not n:
            return None
        start = worker.next_function
        for priority in (HIGH, NORMAL, LOW):
            for i in range(n):
                index = (start + i) % n
                fq = funcs[index]
                if fq.queued[priority]:
                    job = fq.pop(priority)
                    worker.next_function = (index + 1) % n
                    self._assign(job, worker)
                    return job
        return None

    def _assign(self, job: Job, worker: GearmanProtocol) -> None:
        fq = job.queue
        job.state = _RUNNING
        job.worker = worker
        fq.running += 1
        worker.held[job.handle] = job
        timeout = worker.timeouts.get(fq.name)
        if timeout:
            job.timer = self._clock.callLater(timeout, self._job_timed_out, job)

    def _job_timed_out(self, job: Job) -> None:
        job.timer = None
        if job.state is not _RUNNING:
            return
        self.log.info(
            "Job {handle} ({function}) timed out on {worker}",
            handle=job.handle,
            function=job.queue.name,
            worker=job.worker.describe() if job.worker else "?",
        )
        with self.batch():
            self._take_away(job)
            self._attempt_failed(job)

    def _take_away(self, job: Job) -> None:
        """
        The server ends a worker's hold on a job while the worker still
        works on it: its late results will be dropped without an error.
        """
        worker = job.worker
        if worker is not None and not worker.closed:
            worker.remember_released(job.handle)

    def _release(self, job: Job) -> None:
        worker = job.worker
        if worker is not None:
            worker.held.pop(job.handle, None)
            job.worker = None
        job.queue.running -= 1
        if job.timer is not None:
            if job.timer.active():
                job.timer.cancel()
            job.timer = None

    def _attempt_failed(self, job: Job) -> None:
        """
        A running job's attempt ended without a result: requeue it at the
        back of its priority, or fail it once the retry limit is reached.
        """
        self._release(job)
        job.retries += 1
        if self.job_retries and job.retries >= self.job_retries:
            self.log.info(
                "Job {handle} failed after {retries} attempts",
                handle=job.handle,
                retries=job.retries,
            )
            for listener in job.listeners:
                listener.send_packet(_WORK_FAIL, job.handle)
            job.state = _DONE
            self._forget(job)
            return
        if job.require_listener and not job.listeners:
            job.state = _DONE
            self._forget(job)
            return
        job.numerator = job.denominator = b"0"
        self.enqueue_job(job)

    def _finish(self, job: Job) -> None:
        """
        End a job wherever it is: it leaves its queue, its worker, the
        schedule and every index.
        """
        state = job.state
        if state is _RUNNING:
            self._release(job)
        elif state is _QUEUED:
            job.queue.discard(job)
        elif state is _SCHEDULED:
            job.queue.scheduled -= 1
        job.state = _DONE
        self._forget(job)

    def _forget(self, job: Job) -> None:
        for listener in job.listeners:
            listener.listening.pop(job, None)
        self.note_job_finished(job)

    def note_job_finished(self, job: Job) -> None:
        """
        Drop a finished job from the handle and unique indexes.
        """
        if self.jobs_by_handle.get(job.handle) is job:
            del self.jobs_by_handle[job.handle]
        if job.store_id is not None and self.store is not None:
            self._to_remove.append(job.store_id)
            job.store_id = None
            if not self.batch_depth:
                self.flush()
        self._unset_unique_job(job)
        self._maybe_forget(job.queue)
        if self.draining:
            self._check_drained()

    def cancel_job(self, handle: bytes) -> bool:
        """
        Cancel a live job (admin C{cancel job}): its clients get WORK_FAIL
        and it is forgotten; a worker holding it gets C{JOB_NOT_FOUND} for
        its results.

        @return: whether there was such a job.
        """
        job = self.jobs_by_handle.get(handle)
        if job is None:
            return False
        for listener in job.listeners:
            listener.send_packet(_WORK_FAIL, job.handle)
        self._take_away(job)
        self._finish(job)
        return True

    # -- scheduled jobs -------------------------------------------------

    def _schedule_job(self, job: Job) -> None:
        assert job.when is not None
        job.state = _SCHEDULED
        job.queue.scheduled += 1
        self._schedule_counter += 1
        heapq.heappush(self._schedule, (job.when, self._schedule_counter, job))
        self._arm_schedule()

    def _arm_schedule(self) -> None:
        heap = self._schedule
        while heap and heap[0][2].state is not _SCHEDULED:
            heapq.heappop(heap)
        timer = self._schedule_timer
        if not heap:
            if timer is not None and timer.active():
                timer.cancel()
            self._schedule_timer = None
            return
        when = heap[0][0]
        delay = max(0.0, when - self._clock.seconds())
        if timer is not None and timer.active():
            if timer.getTime() <= when:
                return
            timer.reset(delay)
        else:
            self._schedule_timer = self._clock.callLater(delay, self._release_due)

    def _release_due(self) -> None:
        self._schedule_timer = None
        now = self._clock.seconds()
        heap = self._schedule
        with self.batch():
            while heap and heap[0][0] <= now:
                job = heapq.heappop(heap)[2]
                if job.state is _SCHEDULED:
                    job.queue.scheduled -= 1
                    self.enqueue_job(job)
            self._arm_schedule()

    # -- workers --------------------------------------------------------

    def can_do(
        self, worker: GearmanProtocol, function: bytes, timeout: float | None = None
    ) -> None:
        """
        Register a worker for a function (CAN_DO, or CAN_DO_TIMEOUT with
        C{timeout} in seconds).  Registering again updates the timeout.
        """
        fq = worker.abilities.get(function)
        if fq is None:
            fq = self.function(function)
            worker.abilities[function] = fq
            worker.ability_list = list(worker.abilities.values())
            fq.workers[worker] = None
        if timeout:
            worker.timeouts[function] = timeout
        else:
            worker.timeouts.pop(function, None)
        if worker.sleeping:
            fq.sleepers[worker] = None
            if fq.waiting():
                self._wake(worker)

    def cant_do(self, worker: GearmanProtocol, function: bytes) -> None:
        """
        Unregister a worker from a function (CANT_DO); the jobs of that
        function it holds are put back for another worker.
        """
        fq = worker.abilities.pop(function, None)
        if fq is None:
            return
        worker.ability_list = list(worker.abilities.values())
        worker.timeouts.pop(function, None)
        fq.workers.pop(worker, None)
        fq.sleepers.pop(worker, None)
        for job in [j for j in worker.held.values() if j.queue is fq]:
            self._take_away(job)
            self._attempt_failed(job)
        self._maybe_forget(fq)

    def reset_abilities(self, worker: GearmanProtocol) -> None:
        """
        Unregister a worker from every function (RESET_ABILITIES); the jobs
        it holds are put back for another worker.
        """
        for function in list(worker.abilities):
            self.cant_do(worker, function)

    def on_client_sleep(self, worker: GearmanProtocol) -> None:
        """
        A worker sent PRE_SLEEP: wake it at once if one of its functions has
        a queued job, else note it as sleeping on each of its functions - at
        the head of the line if it did jobs since it last slept (warm
        workers stay busy, surplus ones stay idle), else at the tail.
        """
        functions = worker.ability_list
        for fq in functions:
            if fq.waiting():
                worker.sleeping = False
                worker.send_packet(_NOOP)
                return
        warm = worker.jobs_done > 0
        worker.jobs_done = 0
        worker.sleeping = True
        for fq in functions:
            sleepers = fq.sleepers
            sleepers[worker] = None
            if warm:
                sleepers.move_to_end(worker, last=False)

    def _unsleep(self, worker: GearmanProtocol) -> None:
        worker.sleeping = False
        for fq in worker.ability_list:
            fq.sleepers.pop(worker, None)

    def _wake(self, worker: GearmanProtocol) -> None:
        self._unsleep(worker)
        worker.send_packet(_NOOP)

    def wake_up_sleepers(self, fq: FunctionQueue) -> None:
        """
        NOOP up to L{wakeup} sleeping workers of a function (all for -1);
        if some still sleep, look again after L{wakeup_delay} while the
        function has queued jobs.
        """
        count = self.wakeup
        if not count:
            return
        sleepers = fq.sleepers
        woken = 0
        while sleepers and woken != count:
            worker = next(iter(sleepers))
            self._wake(worker)
            woken += 1
        if sleepers and self.wakeup_delay >= 0 and fq.wake_timer is None:
            fq.wake_timer = self._clock.callLater(self.wakeup_delay, self._wake_more, fq)

    def _wake_more(self, fq: FunctionQueue) -> None:
        fq.wake_timer = None
        if fq.waiting() and fq.sleepers:
            with self.batch():
                self.wake_up_sleepers(fq)

    # -- results --------------------------------------------------------

    def work_status(
        self, worker: GearmanProtocol, handle: bytes, numerator: bytes, denominator: bytes
    ) -> None:
        """
        WORK_STATUS: remember the progress and tell every listener.
        """
        job = worker.held.get(handle)
        if job is None:
            self._not_held(worker, handle, _NOT_FOUND_RESULT, final=False)
            return
        job.numerator = numerator
        job.denominator = denominator
        for listener in job.listeners:
            listener.send_packet(PacketType.WORK_STATUS, handle, numerator, denominator)

    def work_data(self, worker: GearmanProtocol, ptype: int, handle: bytes, data: bytes) -> None:
        """
        WORK_DATA or WORK_WARNING: relay to every listener.
        """
        job = worker.held.get(handle)
        if job is None:
            self._not_held(worker, handle, b"Job does not exist on server", final=False)
            return
        for listener in job.listeners:
            listener.send_packet(ptype, handle, data)

    def work_complete(self, worker: GearmanProtocol, handle: bytes, data: bytes) -> None:
        """
        WORK_COMPLETE: relay the result to every listener; the job ends.
        """
        job = worker.held.get(handle)
        if job is None:
            self._not_held(worker, handle, _NOT_FOUND_RESULT)
            return
        for listener in job.listeners:
            listener.send_packet(PacketType.WORK_COMPLETE, handle, data)
        worker.jobs_done += 1
        self._finish(job)

    def work_fail(self, worker: GearmanProtocol, handle: bytes) -> None:
        """
        WORK_FAIL: tell every listener; the job ends.
        """
        job = worker.held.get(handle)
        if job is None:
            self._not_held(worker, handle, _NOT_FOUND_RESULT)
            return
        for listener in job.listeners:
            listener.send_packet(_WORK_FAIL, handle)
        worker.jobs_done += 1
        self._finish(job)

    def work_exception(self, worker: GearmanProtocol, handle: bytes, data: bytes) -> None:
        """
        WORK_EXCEPTION ends the job (as in C gearmand): listeners that asked
        for exceptions (or all, with L{exceptions}) get it, the others get
        WORK_FAIL.
        """
        job = worker.held.get(handle)
        if job is None:
            self._not_held(
                worker, handle, b"An exception was received for a job that does not exist"
            )
            return
        forward_all = self.exceptions
        for listener in job.listeners:
            if forward_all or listener.exceptions:
                listener.send_packet(_WORK_EXCEPTION, handle, data)
            else:
                listener.send_packet(_WORK_FAIL, handle)
        worker.jobs_done += 1
        # Perl's Gearman::Worker follows WORK_EXCEPTION with WORK_FAIL.
        worker.remember_released(handle)
        self._finish(job)

    @staticmethod
    def _not_held(worker: GearmanProtocol, handle: bytes, text: bytes, final: bool = True) -> None:
        """
        A result for a job the worker does not hold: dropped quietly if the
        server took that job from it (a final result ends that grace),
        else C{JOB_NOT_FOUND}.
        """
        if handle in worker.released:
            if final:
                del worker.released[handle]
            return
        raise GearmanError(b"JOB_NOT_FOUND", text)

    # -- status ---------------------------------------------------------

    def get_status(self, handle: bytes) -> tuple[bytes, bytes, bytes, bytes, bytes]:
        """
        The fields of STATUS_RES for a handle: handle, known, running,
        numerator, denominator (C{0}s for an unknown job).
        """
        job = self.jobs_by_handle.get(handle)
        if job is None:
            return (handle, b"0", b"0", b"0", b"0")
        return (
            handle,
            b"1",
            b"1" if job.state is _RUNNING else b"0",
            job.numerator,
            job.denominator,
        )

    def get_status_unique(self, unique: bytes) -> tuple[bytes, ...]:
        """
        The fields of STATUS_RES_UNIQUE: unique, known, running, numerator,
        denominator, waiting clients.
        """
        job = self.job_of_any_unique(unique)
        if job is None:
            return (unique, b"0", b"0", b"0", b"0", b"0")
        return (
            unique,
            b"1",
            b"1" if job.state is _RUNNING else b"0",
            job.numerator,
            job.denominator,
            b"%d" % len(job.listeners),
        )

    # -- in-process connections ----------------------------------------

    def to_inprocess_server(self) -> Any:
        """
        A connected, blocking socket to this server for code outside
        Twisted (a thread, a program given the descriptor), as
        Gearman::Server's C{to_inprocess_server}.  The reactor must provide
        C{IReactorSocket}.
        """
        from txgearmand.inprocess import to_inprocess_server

        return to_inprocess_server(self.reactor, self)  # type: ignore[arg-type]

    def start_worker(
        self, argv: Any, env: Mapping[str, str] | None = None
    ) -> tuple[int, GearmanProtocol]:
        """
        Start a worker program as a child speaking Gearman on its standard
        input and output (C{GEARMAN_WORKER_USE_STDIO=1}), as
        Gearman::Server's C{start_worker}; see
        L{txgearmand.inprocess.start_worker}.

        @return: the child's pid and the server's connection to it.
        """
        from txgearmand.inprocess import start_worker

        pid, connection, _ = start_worker(self.reactor, self, argv, env)
        return pid, connection

    # -- shutdown -------------------------------------------------------

    def shutdown(self, graceful: bool = False) -> Deferred[None]:
        """
        End the server (admin C{shutdown}).  At once, or - C{graceful} -
        after closing the listening ports and refusing new connections,
        once every queued and running job has finished.  Then
        L{on_shutdown} is called.

        @return: a Deferred that fires when L{on_shutdown} has been called.
        """
        if not graceful:
            self.accepting = False
            return self._call_on_shutdown()
        if self._drained is None:
            self.draining = True
            self.accepting = False
            self._drained = Deferred()
            self._drained.addCallback(lambda _: self._call_on_shutdown())
            self.log.info("Graceful shutdown: draining {n} jobs", n=len(self.jobs_by_handle))
            if self.stop_listening is not None:
                maybeDeferred(self.stop_listening).addErrback(
                    lambda f: self.log.failure("Stopping the listeners failed", f)
                )
            self._check_drained()
        return self._drained

    def _call_on_shutdown(self) -> Deferred[None]:
        if self.on_shutdown is not None:
            self._clock.callLater(0, self.on_shutdown)
        return succeed(None)

    def _check_drained(self) -> None:
        d = self._drained
        if d is None or d.called:
            return
        if self.jobs_outstanding() or self.jobs_running():
            return
        self.log.info("Graceful shutdown: no job left")
        d.callback(None)


def _ignore(failure: Failure) -> None:
    """
    Swallow a failure the store already logged.
    """


class _Batch:
    """
    The context manager of L{JobServer.batch}.
    """

    __slots__ = ("_server",)

    def __init__(self, server: JobServer) -> None:
        self._server = server

    def __enter__(self) -> None:
        self._server.batch_depth += 1

    def __exit__(self, *exc_info: object) -> None:
        server = self._server
        server.batch_depth -= 1
        if not server.batch_depth:
            server.flush()
