# -*- test-case-name: txgearmand.test.test_model -*-
"""
The job server: the service's life cycle, its participants, and the flow
of a job - submit, grab, retry, finish, wake-up, schedule, shutdown - under
Perl's Gearman::Server's names (C{enqueue_job}, C{grab_job},
C{wake_up_sleepers}, C{on_client_sleep}, ...).

The L{JobServer} works on the model's records (L{Participant}, L{Job},
L{FunctionQueue}) and never touches bytes or connections: it tells a
participant's L{IPeer} which packet to send.  The parts it is made of:
L{JobFlow} (a job's steps), L{JobTable} (handles, uniques),
L{FunctionRegistry} (functions, queues, limits), L{Durability} (the store),
L{OutputBatch} (one write per peer per turn), L{Schedule} (epoch jobs),
L{Guard} (limits), L{Doors} (ways in without a port).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Union

from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IListeningPort, IProtocol, IProtocolFactory, IReactorTime
from twisted.python.failure import Failure
from twisted.python.reflect import namedAny

from txgearmand import _log
from txgearmand.batching import OutputBatch
from txgearmand.deadletter import FailedList
from txgearmand.doors import Doors
from txgearmand.drain import Drain
from txgearmand.flow import JobFlow, cancel_timer
from txgearmand.functions import FunctionRegistry
from txgearmand.guard import Guard
from txgearmand.interfaces import IJobStore, IPeer
from txgearmand.job import NORMAL, Job, JobTable
from txgearmand.meters import Meters
from txgearmand.records import FunctionQueue, Participant
from txgearmand.settings import Settings, limits_of
from txgearmand.stats import StatsReporter
from txgearmand.wire import GearmanError

__all__ = ["FunctionQueue", "GearmanError", "JobServer", "Participant", "Settings"]

#: The protocol factory of a job server, named rather than imported: the
#: protocol sits above the server (it drives it), as twistd's
#: C{ServiceMaker} names its tap module.
DEFAULT_FACTORY = "txgearmand.protocol.GearmanServerFactory"


def _b(value: Union[str, bytes]) -> bytes:
    return value.encode("utf-8") if isinstance(value, str) else value


class JobServer(Service):
    """
    A Gearman job server, as an C{IService}.

    Participants (a L{GearmanProtocol} per connection, or any L{IPeer})
    call it; it keeps the functions, queues and jobs and tells the
    participants what to send.

    Its job methods (L{submit_job}, L{grab_job}, L{work_complete}...) are
    entry points for code that drives the server, not hooks: the protocol
    calls its L{JobFlow} directly, and overriding them in a subclass does
    not change what connections get.

    @ivar settings: its L{Settings}.
    @ivar table: the L{JobTable}.
    @ivar registry: the L{FunctionRegistry}.
    @ivar durability: its L{Durability}: the store, and readiness.
    @ivar output: the L{OutputBatch} its peers buffer their output in.
    @ivar accepting: False while draining or stopped: no new participants.
    @ivar drain: the graceful shutdown (L{Drain}).
    @ivar stop_listening: called once when a graceful shutdown begins, to
        close the listening ports; may return a Deferred.
    @ivar on_shutdown: called when an admin C{shutdown} completes, to end
        the process (twistd's service passes C{reactor.stop}); without it
        the admin command is refused.
    @ivar doors: the L{Doors} it opens itself (port, socket, child worker).
    @ivar children: the workers it started that still run, by pid.
    @ivar guard: the L{Guard}: memory budget, read timeouts, output and
        connection limits.
    @ivar meters: the L{Meters}: what it counts about itself.
    """

    log = _log.logger("txgearmand.server.JobServer")

    def __init__(
        self,
        reactor: IReactorTime | None = None,
        settings: Settings | None = None,
        *,
        store: IJobStore | None = None,
        factory: IProtocolFactory | None = None,
        **options: Any,
    ) -> None:
        """
        @param reactor: the reactor (or a C{Clock} in tests); the global one
            if not given.
        @param settings: a L{Settings}; or give its fields as keyword
            arguments (C{wakeup=3, job_retries=2, ...}).
        @param store: where background jobs are kept across restarts.
        @param factory: the protocol factory for the connections that
            L{create_listening_sock}, L{to_inprocess_server} and
            L{start_worker} make (default: a L{GearmanServerFactory}).
        @raise txgearmand.settings.SettingsError: for a bad setting.
        """
        if reactor is None:
            from twisted.internet import reactor as _reactor

            reactor = _reactor  # type: ignore[assignment]
        assert reactor is not None
        self._settings = settings if settings is not None else Settings(**options)
        self.reactor = reactor
        self._pid: int | None = None
        self.table = JobTable(self.settings.job_handle_prefix)
        self.registry = FunctionRegistry(self.settings.max_queue)
        self.output = OutputBatch(reactor)
        self.guard = Guard(reactor, self.settings, self.table)
        self.drain = Drain(lambda: self.jobs_outstanding() + self.jobs_running())
        self.meters = Meters(
            reactor,
            lambda: (self.flow.jobs_accepted, self.flow.jobs_ended),
            self.registry.counts,
        )
        self.flow = JobFlow(
            reactor,
            self.settings,
            self.table,
            self.registry,
            self.output,
            self.guard,
            self.drain,
            store,
            self.meters,
        )
        self.durability = self.flow.durability
        self.output.before_flush = self.durability.flush
        self.workers = self.flow.workers
        self._schedule = self.flow.schedule
        self._stats = StatsReporter(reactor, self.settings.stats_interval, self._stats_sample)
        self._participants: dict[Participant, None] = {}
        self.doors = Doors(reactor, lambda: self.factory, lambda: self.accepting)
        self.children = self.doors.children
        self._factory = factory
        self.accepting = True
        self.stop_listening: Callable[[], Any] | None = None
        self.on_shutdown: Callable[[], Any] | None = None

    @property
    def jobs_accepted(self) -> int:
        """
        Jobs made (not coalesced) since the start.
        """
        return self.flow.jobs_accepted

    @property
    def jobs_ended(self) -> int:
        """
        Jobs ended since the start.
        """
        return self.flow.jobs_ended

    @property
    def settings(self) -> Settings:
        """
        Its L{Settings}; setting new ones takes effect for what follows.
        """
        return self._settings

    @settings.setter
    def settings(self, value: Settings) -> None:
        self._settings = value
        self.flow.settings = value

    @property
    def pid(self) -> int:
        """
        The process id C{getpid} reports: the serving process's, read when
        asked (a daemon forks after the server is built), unless set.
        """
        return os.getpid() if self._pid is None else self._pid

    @pid.setter
    def pid(self, value: int) -> None:
        self._pid = value

    @property
    def store(self) -> IJobStore | None:
        """
        Where background jobs are kept (C{None}: nowhere).
        """
        return self.durability.store

    @property
    def failed(self) -> FailedList:
        """
        The failed list (dead-letter): background jobs that failed for the
        last time; L{JobFlow.retry_failed_job} and its kin act on it.
        """
        return self.flow.failed

    @property
    def ready(self) -> bool:
        """
        Whether the store is replayed: connections are served from then on.
        """
        return self.durability.ready

    # -- service --------------------------------------------------------

    def startService(self) -> None:
        """
        Start: open and replay the store, then serve (participants that
        arrive meanwhile wait: see L{when_ready}).
        """
        super().startService()
        self.accepting = True
        self.guard.start()
        self._stats.start()
        _log.set_level(self.settings.verbose)
        _log_start(self)
        if self.durability.ready:
            self.durability.set_ready()
            return
        d = self.durability.open()
        d.addCallback(self.durability.replay, self.table, self.registry, self._schedule)
        d.addErrback(self._store_failed)

    def when_ready(self) -> Deferred[None]:
        """
        A Deferred that fires once the store is replayed and the server
        serves, or fails if the store could not be opened.
        """
        return self.durability.when_ready()

    def _store_failed(self, failure: Failure) -> None:
        self.log.failure("The job store failed to open or load; stopping", failure)
        self.accepting = False
        self._close_all()
        self.durability.set_ready(failure)
        if self.on_shutdown is not None:
            self.reactor.callLater(0, self.on_shutdown)

    def _close_all(self) -> None:
        with self.output:
            for participant in list(self._participants):
                participant.peer.close()

    def stopService(self) -> Deferred[None]:
        """
        Stop: refuse new participants, close the open ones, cancel timers,
        then commit and close the store.
        """
        super().stopService()
        self.accepting = False
        self._close_all()
        for fq in self.registry:
            fq.cancel_wake_timer()
        for job in self.table.by_handle.values():
            cancel_timer(job)
        self._schedule.stop()
        self.flow.failed.stop()
        self.guard.stop()
        self._stats.stop()
        self.meters.stop()
        return self.durability.close()

    # -- participants (Gearman::Server's "clients") ---------------------

    def new_client(self, peer: IPeer) -> Participant:
        """
        A new participant - a connection, or any L{IPeer} - joins
        (Gearman::Server's C{new_client}).
        """
        participant = Participant(peer)
        self._participants[participant] = None
        return participant

    def clients(self) -> list[Participant]:
        """
        Every participant, in the order they arrived.
        """
        return list(self._participants)

    def _stats_sample(self) -> tuple[int, int, int, int, int, int]:
        running = self.jobs_running()
        workers = sum(1 for p in self._participants if p.abilities)
        return (
            self.jobs_outstanding(),
            running,
            workers,
            len(self._participants) - workers,
            self.jobs_accepted,
            self.jobs_ended,
        )

    def note_disconnected_client(self, participant: Participant) -> None:
        """
        A participant went away: put back the jobs it held, stop waiting
        for the jobs it listened to (dropping queued foreground jobs nobody
        waits for any more) and forget its abilities.
        """
        self._participants.pop(participant, None)
        participant.connected = False
        if participant.sleeping:
            # Before its jobs go back: their wake-ups are for others.
            self.workers.unsleep(participant)
        self.flow.left(participant)
        self.workers.reset_abilities(participant)

    # -- limits ---------------------------------------------------------

    def set_max_queue(
        self,
        function: Union[str, bytes],
        max: Union[int, str, None] = None,
        normal: int | None = None,
        low: int | None = None,
    ) -> None:
        """
        Limit how many jobs of a function the server holds (queued and
        running, as C gearmand counts); a submission past the limit of its
        priority gets C{QUEUE_ERROR}.  One number limits every priority;
        with C{normal} (and C{low}), C{max} is the high limit and the rest
        are unlimited unless given.  C{0}, negative, C{None} or C{""}
        removes the limit.
        """
        high = int(max) if max not in (None, "") else 0
        if normal is None and low is None:
            limits = limits_of(high)
        else:
            limits = limits_of((high, normal or 0, low or 0))
        self.registry.set_limits(_b(function), limits)

    def max_queue(self, function: bytes) -> tuple[int, int, int] | None:
        """
        The limits set for a function (high, normal, low; 0 = none), if any.
        """
        return self.registry.limits(function)

    def set_retry_failed(self, function: Union[str, bytes], limit: int | None) -> None:
        """
        How many times background jobs of a function that fail (WORK_FAIL,
        WORK_EXCEPTION) are tried again, over C{--retry-failed}; C{None}
        goes back to it.
        """
        self.flow.set_retry_limit(_b(function), limit)

    def retry_failed(self, function: Union[str, bytes]) -> int:
        """
        How many times a failed background job of a function is tried
        again (see L{set_retry_failed}).
        """
        return self.flow.retry_limit(_b(function))

    # -- jobs -----------------------------------------------------------

    def new_job_handle(self) -> bytes:
        """
        A handle no live job has: C{<prefix>:<n>}.
        """
        return self.table.new_handle()

    def job_by_handle(self, handle: bytes) -> Job | None:
        """
        The live job with this handle, if any.
        """
        return self.table.get(handle)

    jobs_by_handle = job_by_handle

    def jobs(self) -> list[Job]:
        """
        Every live job (queued, running or scheduled), oldest first.
        """
        return list(self.table.by_handle.values())

    def jobs_outstanding(self) -> int:
        """
        How many jobs wait in queues for a worker.
        """
        return sum(fq.waiting() for fq in self.registry)

    def jobs_running(self) -> int:
        """
        How many jobs workers hold.
        """
        return sum(fq.running for fq in self.registry)

    def job_of_unique(
        self, function: Union[str, bytes], unique: Union[str, bytes], data: bytes = b""
    ) -> Job | None:
        """
        The live job a submission with this function and unique id would
        coalesce onto, if any (C{-} coalesces on C{data}).
        """
        return self.table.of_unique(_b(function), _b(unique), data)

    def set_unique_job(
        self, function: Union[str, bytes], unique: Union[str, bytes], job: Job
    ) -> None:
        """
        Make submissions of C{function} with C{unique} coalesce onto C{job}.
        """
        if _b(function) != job.queue.name or _b(unique) != job.unique:
            raise ValueError("set_unique_job: the job has another function or unique id")
        self.table.index_unique(job)

    def submit_job(
        self,
        client: Participant | None,
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

        @param client: the submitting participant, which listens to a
            foreground job; C{None} for a submission from code.
        @param when: for SUBMIT_JOB_EPOCH, the epoch time it may run at.
        @raise GearmanError: C{ARGUMENT_TOO_LARGE} for a unique over 64
            bytes, C{QUEUE_ERROR} when the function's limit is reached.
        @return: the job (its handle goes in JOB_CREATED).
        """
        return self.flow.submit(client, function, unique, data, priority, background, reducer, when)

    def enqueue_job(self, job: Job) -> None:
        """
        Put a job at the back of its function's queue for its priority and
        wake sleeping workers.
        """
        self.flow.enqueue(job)

    def grab_job(self, worker: Participant) -> Job | None:
        """
        Hand a worker the next job it can do, or C{None}.

        Priority is global across the worker's functions (every HIGH job
        before any NORMAL one), FIFO within a priority, and the functions
        take turns at equal priority (the search starts after the function
        served last), so none starves.
        """
        return self.flow.grab(worker)

    def note_job_finished(self, job: Job) -> None:
        """
        Drop a finished job from the table, the store and, if it was the
        last thing keeping it, its function.
        """
        self.flow.note_finished(job)

    def cancel_job(self, handle: bytes) -> bool:
        """
        Cancel a live job (admin C{cancel job}): its clients get WORK_FAIL
        and it is forgotten; a worker holding it has its results dropped.

        @return: whether there was such a job.
        """
        return self.flow.cancel(handle)

    # -- workers --------------------------------------------------------

    def on_client_sleep(self, worker: Participant) -> None:
        """
        A worker sent PRE_SLEEP: NOOP it at once if one of its functions
        has a queued job, else it sleeps (see L{Workers.sleep}).
        """
        self.flow.sleep(worker)

    def wake_up_sleepers(self, fq: FunctionQueue) -> None:
        """
        NOOP up to C{wakeup} sleeping workers of a function (all for -1),
        more every C{wakeup_delay} while it has queued jobs.
        """
        self.workers.wake_up(fq)

    # -- results --------------------------------------------------------

    def work_status(
        self, worker: Participant, handle: bytes, numerator: bytes, denominator: bytes
    ) -> None:
        """
        WORK_STATUS: remember the progress and tell every listener.
        """
        self.flow.work_status(worker, handle, numerator, denominator)

    def work_data(
        self, worker: Participant, handle: bytes, data: bytes, warning: bool = False
    ) -> None:
        """
        WORK_DATA (or, with C{warning}, WORK_WARNING): relay to every
        listener.
        """
        self.flow.work_data(worker, handle, data, warning)

    def work_complete(self, worker: Participant, handle: bytes, data: bytes) -> None:
        """
        WORK_COMPLETE: relay the result to every listener; the job ends.
        """
        self.flow.work_complete(worker, handle, data)

    def work_fail(self, worker: Participant, handle: bytes) -> None:
        """
        WORK_FAIL: tell every listener; the job ends.
        """
        self.flow.work_fail(worker, handle)

    def work_exception(self, worker: Participant, handle: bytes, data: bytes) -> None:
        """
        WORK_EXCEPTION ends the job (as in C gearmand): listeners that asked
        for exceptions (or all, with the C{exceptions} setting) get it, the
        others get WORK_FAIL.
        """
        self.flow.work_exception(worker, handle, data)

    # -- connections without a port --------------------------------------

    @property
    def factory(self) -> IProtocolFactory:
        """
        The protocol factory for this server's connections.
        """
        if self._factory is None:
            self._factory = namedAny(DEFAULT_FACTORY)(self)
        return self._factory

    def create_listening_sock(
        self, port: int, local_addr: str | None = None, backlog: int = 1024
    ) -> Deferred[IListeningPort]:
        """
        Listen on a TCP port, as Gearman::Server's C{create_listening_sock}
        (callable several times; for other endpoints, listen with
        L{factory}).  A Deferred fires with the listening port.
        """
        return self.doors.listen_tcp(port, local_addr, backlog)

    def to_inprocess_server(self) -> socket.socket:
        """
        A connected, blocking socket to this server for code outside
        Twisted, as Gearman::Server's C{to_inprocess_server}.
        """
        return self.doors.socket()

    def start_worker(
        self, argv: Sequence[str] | str, env: Mapping[str, str] | None = None
    ) -> tuple[int, IProtocol]:
        """
        Start a worker program as a child speaking Gearman on its standard
        input and output (C{GEARMAN_WORKER_USE_STDIO=1}), as
        Gearman::Server's C{start_worker}: its pid and connection.
        """
        pid, connection, _ = self.doors.start_worker(argv, env)
        return pid, connection

    # -- shutdown -------------------------------------------------------

    def shutdown(self, graceful: bool = False) -> Deferred[None]:
        """
        End the server (admin C{shutdown}): at once, or - C{graceful} -
        after closing the listening ports and refusing new connections,
        once every queued and running job has finished.  Then
        L{on_shutdown} is called; the Deferred fires when it has been.
        """
        self.accepting = False
        if not graceful:
            return self._call_on_shutdown()
        return self.drain.begin(len(self.table), self.stop_listening, self._call_on_shutdown)

    def _call_on_shutdown(self) -> Deferred[None]:
        if self.on_shutdown is not None:
            self.reactor.callLater(0, self.on_shutdown)
        return succeed(None)


def _log_start(server: JobServer) -> None:
    """
    Say how the server starts: its policies and its limits.
    """
    s = server.settings
    server.log.info(
        "txgearmand job server started (wakeup={wakeup}, wakeup_delay={delay},"
        " job_retries={retries}, store={store})",
        wakeup=s.wakeup,
        delay=s.wakeup_delay,
        retries=s.job_retries,
        store=type(server.store).__name__ if server.store is not None else "none",
    )
    server.log.info(
        "Limits: memory budget {memory}, output hard {hard} / soft {soft} for {soft_s} s,"
        " read timeout {read} s, keep-alive {keepalive} s, connections {connections}"
        " (0: none)",
        memory=s.max_memory,
        hard=s.output_hard_limit,
        soft=s.output_soft_limit,
        soft_s=s.output_soft_seconds,
        read=s.read_timeout,
        keepalive=s.tcp_keepalive,
        connections=s.max_connections,
    )
