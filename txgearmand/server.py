# -*- test-case-name: txgearmand.test.test_model -*-
"""
The job server: the service's life cycle, its participants, and the flow
of a job - submit, grab, retry, finish, wake-up, schedule, shutdown - under
Perl's Gearman::Server's names (C{enqueue_job}, C{grab_job},
C{wake_up_sleepers}, C{on_client_sleep}, ...).

The L{JobServer} works on the model's records (L{Participant},
L{Job<txgearmand.records.Job>}, L{FunctionQueue}) and never touches bytes
or connections: it tells a participant's L{IPeer} which packet to send.
The parts it is made of: L{JobSteps} (Gearman::Server's names for a job's
steps), L{JobFlow} (a job's steps), L{JobTable} (handles, uniques),
L{FunctionRegistry} (functions, queues, limits), L{Durability} (the store),
L{OutputBatch} (one write per peer per turn), L{Schedule} (epoch jobs),
L{Guard} (limits), L{Doors} (ways in without a port).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Mapping, Sequence
from typing import Any

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
from txgearmand.job import JobTable
from txgearmand.meters import Meters
from txgearmand.records import FunctionQueue, Participant
from txgearmand.settings import Settings
from txgearmand.stats import StatsReporter
from txgearmand.steps import JobSteps
from txgearmand.wire import GearmanError

__all__ = ["FunctionQueue", "GearmanError", "JobServer", "Participant", "Settings"]

#: The protocol factory of a job server, named rather than imported: the
#: protocol sits above the server (it drives it), as twistd's
#: C{ServiceMaker} names its tap module.
DEFAULT_FACTORY = "txgearmand.protocol.GearmanServerFactory"


class JobServer(JobSteps, Service):
    """
    A Gearman job server, as an C{IService}.

    Participants (a L{GearmanProtocol} per connection, or any L{IPeer})
    call it; it keeps the functions, queues and jobs and tells the
    participants what to send.

    Its job methods, from L{JobSteps} (L{submit_job<JobSteps.submit_job>},
    L{grab_job<JobSteps.grab_job>}, L{work_complete<JobSteps.work_complete>}
    ...), are entry points for code that drives the server, not hooks: the
    protocol calls its L{JobFlow} directly, and overriding them in a
    subclass does not change what connections get.

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
