# -*- test-case-name: txgearmand.test.test_client -*-
"""
A Deferred-based Gearman client and worker for Twisted programs.

Both work over any C{IStreamClientEndpoint}: TCP, UNIX sockets, TLS, or
L{txgearmand.inprocess.InProcessEndpoint} to a L{JobServer} in the same
process; and against any Gearman server (txgearmand, C gearmand,
Gearman::Server for what it supports).  Neither imports the global reactor
at import time: pass one in, or it is looked up when first needed.

    client = GearmanClient([endpoint], reactor)
    result = await client.submit("reverse", b"abc")

    worker = GearmanWorker([endpoint], reactor)
    worker.register("reverse", lambda job: job.payload[::-1])
    worker.startService()
"""

from __future__ import annotations

import os
import socket
import zlib
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, Union, cast

import attrs
from twisted.application.internet import ClientService, backoffPolicy
from twisted.application.service import MultiService
from twisted.internet.defer import Deferred, DeferredList, fail, maybeDeferred, succeed
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import (
    IAddress,
    IProtocol,
    IProtocolFactory,
    IStreamClientEndpoint,
)
from twisted.internet.protocol import Factory, Protocol, ServerFactory, connectionDone
from twisted.python.failure import Failure
from zope.interface import implementer

from txgearmand import _log, wire
from txgearmand.wire import PacketType

__all__ = [
    "HIGH",
    "LOW",
    "NORMAL",
    "GearmanClient",
    "GearmanWorker",
    "JobException",
    "JobFailed",
    "JobStatus",
    "NoServerAvailable",
    "ServerError",
    "WorkFailed",
    "WorkerJob",
    "stdio_endpoint",
]

log = _log.logger("txgearmand.client")

HIGH = "high"
NORMAL = "normal"
LOW = "low"

_SUBMIT_TYPES = {
    (HIGH, False): PacketType.SUBMIT_JOB_HIGH,
    (NORMAL, False): PacketType.SUBMIT_JOB,
    (LOW, False): PacketType.SUBMIT_JOB_LOW,
    (HIGH, True): PacketType.SUBMIT_JOB_HIGH_BG,
    (NORMAL, True): PacketType.SUBMIT_JOB_BG,
    (LOW, True): PacketType.SUBMIT_JOB_LOW_BG,
}

Text = Union[str, bytes]


def _b(value: Text) -> bytes:
    return value.encode("utf-8") if isinstance(value, str) else bytes(value)


class ServerError(Exception):
    """
    The server answered a request with an ERROR packet.

    @ivar code: its code, e.g. C{b"QUEUE_ERROR"}.
    @ivar text: its text.
    """

    def __init__(self, code: bytes, text: bytes) -> None:
        super().__init__(f"{code.decode('ascii', 'replace')}: {text.decode('utf-8', 'replace')}")
        self.code = code
        self.text = text


class JobFailed(Exception):
    """
    The job failed (WORK_FAIL), or was lost with its connection.

    @ivar handle: the job's handle, if it got one.
    """

    def __init__(self, handle: bytes | None, message: str = "the job failed") -> None:
        super().__init__(message)
        self.handle = handle


class JobException(JobFailed):
    """
    The worker ended the job with WORK_EXCEPTION.

    @ivar data: what the worker said.
    """

    def __init__(self, handle: bytes, data: bytes) -> None:
        super().__init__(handle, data.decode("utf-8", "replace"))
        self.data = data


class NoServerAvailable(Exception):
    """
    None of the client's servers could be reached.
    """


class WorkFailed(Exception):
    """
    Raise this from a worker function to fail the job with a plain
    WORK_FAIL; any other exception also sends WORK_EXCEPTION with its text.
    """


@attrs.frozen
class JobStatus:
    """
    A job's status, as GET_STATUS answers it.
    """

    handle: bytes
    known: bool
    running: bool
    numerator: int
    denominator: int


def _int(value: bytes) -> int:
    try:
        return int(value)
    except ValueError:
        return 0


@attrs.define(eq=False)
class _Task:
    """
    A foreground submission waiting for its result.
    """

    deferred: Deferred[bytes]
    on_data: Callable[[bytes], object] | None = None
    on_warning: Callable[[bytes], object] | None = None
    on_status: Callable[[int, int], object] | None = None
    on_created: Callable[[bytes], object] | None = None
    background: bool = False
    handle: bytes | None = None


class _ClientProtocol(Protocol):
    """
    One connection of a L{GearmanClient}.

    Requests that get an immediate answer (submissions, GET_STATUS, ECHO,
    OPTION_REQ) are answered in order, so they wait in one FIFO; results of
    running jobs arrive by handle.
    """

    def __init__(
        self,
        index: int = 0,
        exceptions: bool = False,
        on_ready: Callable[[_ClientProtocol], None] | None = None,
        on_lost: Callable[[_ClientProtocol], None] | None = None,
    ) -> None:
        self._parser = wire.PacketParser(magic=wire.RESPONSE_MAGIC)
        self._pending: deque[tuple[int, Any]] = deque()
        self._jobs: dict[bytes, deque[_Task]] = {}
        self.index = index
        self._exceptions = exceptions
        self._on_ready = on_ready
        self._on_lost = on_lost
        self.lost = False
        #: Fires when the connection is set up (options sent), or fails if
        #: it is lost first.
        self.ready: Deferred[None] = Deferred()

    def connectionMade(self) -> None:
        if not self._exceptions:
            self._set_ready(None)
            return
        d = self.request(PacketType.OPTION_REQ, b"exceptions")

        def refused(failure: Failure) -> None:
            failure.trap(ServerError)
            log.info("The server refused the exceptions option: {f}", f=failure.value)

        d.addErrback(refused).addCallbacks(self._set_ready, self._not_ready)

    def _set_ready(self, _: object) -> None:
        if self.lost or self.ready.called:
            return
        if self._on_ready is not None:
            self._on_ready(self)
        self.ready.callback(None)

    def _not_ready(self, failure: Failure) -> None:
        if not self.ready.called:
            self.ready.errback(failure)

    def request(self, ptype: int, *args: bytes) -> Deferred[Any]:
        if self.lost or self.transport is None:
            return fail(JobFailed(None, "the connection is closed"))
        d: Deferred[Any] = Deferred()
        self._pending.append((ptype, d))
        self.transport.write(wire.encode_request(ptype, *args))
        return d

    def submit(
        self, ptype: int, function: bytes, unique: bytes, payload: bytes, task: _Task
    ) -> None:
        if self.lost or self.transport is None:
            task.deferred.errback(JobFailed(None, "the connection is closed"))
            return
        self._pending.append((ptype, task))
        self.transport.write(wire.encode_request(ptype, function, unique, payload))

    def dataReceived(self, data: bytes) -> None:
        for ptype, body in self._parser.feed(data):
            args = wire.split_body(ptype, body) if ptype > 0 else None
            if args is None:
                log.warn("Malformed packet {ptype} from the server", ptype=ptype)
                continue
            handler = _CLIENT_HANDLERS.get(ptype)
            if handler is None:
                log.warn("Unexpected packet {ptype} from the server", ptype=ptype)
                continue
            handler(self, args)
        if self._parser.error is not None and self.transport is not None:
            self.transport.loseConnection()

    def _reply(self) -> tuple[int, Any] | None:
        if not self._pending:
            log.warn("A reply from the server that no request waits for")
            return None
        return self._pending.popleft()

    def _on_created(self, args: tuple[bytes, ...]) -> None:
        entry = self._reply()
        if entry is None:
            return
        task = entry[1]
        if not isinstance(task, _Task):
            task.errback(ServerError(b"UNEXPECTED", b"JOB_CREATED for another request"))
            return
        handle = args[0]
        task.handle = handle
        if task.on_created is not None:
            task.on_created(handle)
        if task.background:
            task.deferred.callback(handle)
        else:
            self._jobs.setdefault(handle, deque()).append(task)

    def _on_error(self, args: tuple[bytes, ...]) -> None:
        entry = self._reply()
        if entry is None:
            log.warn("ERROR from the server: {code} {text}", code=args[0], text=args[1])
            return
        waiter = entry[1]
        error = ServerError(args[0], args[1])
        if isinstance(waiter, _Task):
            waiter.deferred.errback(error)
        else:
            waiter.errback(error)

    def _on_simple_reply(self, args: tuple[bytes, ...]) -> None:
        entry = self._reply()
        if entry is not None:
            entry[1].callback(args)

    def _next_task(self, handle: bytes) -> _Task | None:
        # One copy of each update arrives per submission: deal them out in
        # turn (the server sends them in submission order).
        tasks = self._jobs.get(handle)
        if not tasks:
            return None
        task = tasks[0]
        tasks.rotate(-1)
        return task

    def _finish_task(self, handle: bytes) -> _Task | None:
        tasks = self._jobs.get(handle)
        if not tasks:
            return None
        task = tasks.popleft()
        if not tasks:
            del self._jobs[handle]
        return task

    def _on_status(self, args: tuple[bytes, ...]) -> None:
        task = self._next_task(args[0])
        if task is not None and task.on_status is not None:
            task.on_status(_int(args[1]), _int(args[2]))

    def _on_data(self, args: tuple[bytes, ...]) -> None:
        task = self._next_task(args[0])
        if task is not None and task.on_data is not None:
            task.on_data(args[1])

    def _on_warning(self, args: tuple[bytes, ...]) -> None:
        task = self._next_task(args[0])
        if task is not None and task.on_warning is not None:
            task.on_warning(args[1])

    def _on_complete(self, args: tuple[bytes, ...]) -> None:
        task = self._finish_task(args[0])
        if task is not None:
            task.deferred.callback(args[1])

    def _on_fail(self, args: tuple[bytes, ...]) -> None:
        task = self._finish_task(args[0])
        if task is not None:
            task.deferred.errback(JobFailed(args[0]))

    def _on_exception(self, args: tuple[bytes, ...]) -> None:
        task = self._finish_task(args[0])
        if task is not None:
            task.deferred.errback(JobException(args[0], args[1]))

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.lost = True
        if self._on_lost is not None:
            self._on_lost(self)
        pending, self._pending = self._pending, deque()
        jobs, self._jobs = self._jobs, {}
        for _, waiter in pending:
            error = JobFailed(None, f"connection lost: {reason.getErrorMessage()}")
            if isinstance(waiter, _Task):
                waiter.deferred.errback(error)
            else:
                waiter.errback(error)
        for handle, tasks in jobs.items():
            for task in tasks:
                task.deferred.errback(
                    JobFailed(handle, f"connection lost: {reason.getErrorMessage()}")
                )


_CLIENT_HANDLERS: dict[int, Callable[[_ClientProtocol, tuple[bytes, ...]], None]] = {
    PacketType.JOB_CREATED: _ClientProtocol._on_created,
    PacketType.ERROR: _ClientProtocol._on_error,
    PacketType.ECHO_RES: _ClientProtocol._on_simple_reply,
    PacketType.STATUS_RES: _ClientProtocol._on_simple_reply,
    PacketType.STATUS_RES_UNIQUE: _ClientProtocol._on_simple_reply,
    PacketType.OPTION_RES: _ClientProtocol._on_simple_reply,
    PacketType.WORK_STATUS: _ClientProtocol._on_status,
    PacketType.WORK_DATA: _ClientProtocol._on_data,
    PacketType.WORK_WARNING: _ClientProtocol._on_warning,
    PacketType.WORK_COMPLETE: _ClientProtocol._on_complete,
    PacketType.WORK_FAIL: _ClientProtocol._on_fail,
    PacketType.WORK_EXCEPTION: _ClientProtocol._on_exception,
}


class _ProtocolFactory(Factory):
    def __init__(self, build: Callable[[], Protocol]) -> None:
        self._build = build

    def buildProtocol(self, addr: IAddress | None) -> Protocol:
        protocol = self._build()
        protocol.factory = self
        return protocol


def _as_list(endpoints: Sequence[IStreamClientEndpoint] | IStreamClientEndpoint) -> list[Any]:
    if IStreamClientEndpoint.providedBy(endpoints):
        return [endpoints]
    result = list(endpoints)  # type: ignore[arg-type]
    if not result:
        raise ValueError("at least one endpoint is needed")
    return result


class GearmanClient(MultiService):
    """
    Submits jobs to one or more Gearman servers.

    Each server gets one connection, made when first needed (or when the
    service starts) and remade with back-off after it is lost.  A job with
    a unique id goes to the server chosen by the CRC32 of that id (so that
    duplicates meet on one server, as Perl's Gearman::Client does); others
    go round the servers.  When the chosen server cannot be reached the next
    ones are tried.

    @param endpoints: where the servers are.
    @param reactor: the reactor (or a clock, for its time); the global one
        when first needed if L{None}.
    @param exceptions: ask the servers for WORK_EXCEPTION (OPTION_REQ), so
        that a job's exception text reaches L{JobException}.
    """

    def __init__(
        self,
        endpoints: Sequence[IStreamClientEndpoint] | IStreamClientEndpoint,
        reactor: Any = None,
        *,
        exceptions: bool = True,
        retry_policy: Callable[[int], float] | None = None,
    ) -> None:
        super().__init__()
        self._exceptions = exceptions
        self._next = 0
        self._services: list[ClientService] = []
        #: Connections that are up and prepared, by server index.
        self._live: dict[int, _ClientProtocol] = {}
        for index, endpoint in enumerate(_as_list(endpoints)):
            service = ClientService(
                endpoint,
                _ProtocolFactory(self._protocol_maker(index)),
                retryPolicy=retry_policy or backoffPolicy(initialDelay=0.2, maxDelay=10.0),
                clock=reactor,
                prepareConnection=self._prepare,
            )
            service.setServiceParent(self)
            self._services.append(service)

    def _protocol_maker(self, index: int) -> Callable[[], _ClientProtocol]:
        return lambda: _ClientProtocol(index, self._exceptions, self._ready, self._lost)

    def _ready(self, protocol: _ClientProtocol) -> None:
        self._live[protocol.index] = protocol

    def _lost(self, protocol: _ClientProtocol) -> None:
        if self._live.get(protocol.index) is protocol:
            del self._live[protocol.index]

    @staticmethod
    def _prepare(connected: IProtocol) -> Deferred[None]:
        # ClientService passes a proxy, which forwards attribute access.
        return cast(_ClientProtocol, connected).ready

    def _connection(self, key: bytes | None) -> Deferred[_ClientProtocol]:
        if not self.running:
            self.startService()
        n = len(self._services)
        if key:
            first = zlib.crc32(key) % n
        else:
            first = self._next % n
            self._next += 1
        order = [(first + i) % n for i in range(n)]
        for index in order:
            live = self._live.get(index)
            if live is not None:
                return succeed(live)

        if key:
            # Duplicates should meet on one server: wait for its attempt.
            d = cast(
                "Deferred[_ClientProtocol]",
                self._services[first].whenConnected(failAfterFailures=1),
            )
            return d.addErrback(lambda f: self._first_connected(order[1:]))
        return self._first_connected(order)

    def _first_connected(self, indexes: list[int]) -> Deferred[_ClientProtocol]:
        """
        The first of these servers to connect, or L{NoServerAvailable} once
        each has failed an attempt.
        """
        result: Deferred[_ClientProtocol] = Deferred()
        remaining = [len(indexes)]

        def connected(protocol: _ClientProtocol) -> None:
            if not result.called:
                result.callback(protocol)

        def failed(_: Failure) -> None:
            remaining[0] -= 1
            if remaining[0] <= 0 and not result.called:
                result.errback(NoServerAvailable("no Gearman server could be reached"))

        if not indexes:
            failed(Failure(NoServerAvailable()))
        for index in indexes:
            self._services[index].whenConnected(failAfterFailures=1).addCallbacks(connected, failed)
        return result

    def submit(
        self,
        function: Text,
        payload: Text = b"",
        unique: Text | None = None,
        priority: str = NORMAL,
        background: bool = False,
        *,
        on_data: Callable[[bytes], object] | None = None,
        on_warning: Callable[[bytes], object] | None = None,
        on_status: Callable[[int, int], object] | None = None,
        on_created: Callable[[bytes], object] | None = None,
    ) -> Deferred[bytes]:
        """
        Submit a job.

        @param priority: L{HIGH}, L{NORMAL} or L{LOW}.
        @param background: if true, the Deferred fires with the job's handle
            as soon as the server has it; nobody waits for its result.
        @param on_data: called with each WORK_DATA chunk.
        @param on_warning: called with each WORK_WARNING.
        @param on_status: called with each WORK_STATUS (numerator,
            denominator).
        @param on_created: called with the job's handle.
        @return: a Deferred firing with the result (WORK_COMPLETE's data),
            or failing with L{JobFailed}, L{JobException}, L{ServerError}
            (the server refused it) or L{NoServerAvailable}.
        """
        ptype = _SUBMIT_TYPES.get((priority, bool(background)))
        if ptype is None:
            return fail(ValueError(f"priority must be {HIGH!r}, {NORMAL!r} or {LOW!r}"))
        function_b = _b(function)
        payload_b = _b(payload)
        unique_b = _b(unique) if unique is not None else b""
        task = _Task(Deferred(), on_data, on_warning, on_status, on_created, bool(background))

        def send(protocol: _ClientProtocol) -> Deferred[bytes]:
            protocol.submit(ptype, function_b, unique_b, payload_b, task)
            return task.deferred

        key = unique_b if unique_b and unique_b != b"-" else None
        return self._connection(key).addCallback(send)

    def get_status(self, handle: Text) -> Deferred[JobStatus]:
        """
        Ask for a job's status (GET_STATUS).  With several servers, each is
        asked in turn until one knows the job.
        """
        handle_b = _b(handle)

        def ask(index: int, best: JobStatus | None) -> Deferred[JobStatus]:
            if index == len(self._services):
                if best is None:
                    return fail(NoServerAvailable("no Gearman server could be reached"))
                return succeed(best)
            connected = cast(
                "Deferred[_ClientProtocol]",
                self._services[index].whenConnected(failAfterFailures=1),
            )
            d: Deferred[Any] = connected.addCallback(
                lambda p: p.request(PacketType.GET_STATUS, handle_b)
            )

            def got(args: tuple[bytes, ...]) -> Deferred[JobStatus] | JobStatus:
                status = JobStatus(
                    handle_b, args[1] == b"1", args[2] == b"1", _int(args[3]), _int(args[4])
                )
                if status.known:
                    return status
                return ask(index + 1, status)

            d.addCallbacks(got, lambda f: ask(index + 1, best))
            return d

        if not self.running:
            self.startService()
        return ask(0, None)

    def echo(self, data: Text = b"") -> Deferred[bytes]:
        """
        ECHO_REQ to a server; fires with what it echoed.
        """
        return (
            self._connection(None)
            .addCallback(lambda p: p.request(PacketType.ECHO_REQ, _b(data)))
            .addCallback(lambda args: args[0])
        )

    def close(self) -> Deferred[None]:
        """
        Close the connections (the same as C{stopService}).
        """
        d = self.stopService() if self.running else succeed(None)
        return d.addCallback(lambda _: None)


@attrs.define(eq=False)
class WorkerJob:
    """
    A job handed to a worker function.

    @ivar handle: the server's handle for it.
    @ivar function: the function name.
    @ivar unique: its unique id (C{b""} when none).
    @ivar payload: its data.
    @ivar reducer: its reducer (JOB_ASSIGN_ALL), or C{b""}.
    """

    handle: bytes
    function: bytes
    unique: bytes
    payload: bytes
    reducer: bytes
    _protocol: _WorkerProtocol

    def send_data(self, data: Text) -> None:
        """
        Send a chunk of data to the clients (WORK_DATA).
        """
        self._protocol.send(PacketType.WORK_DATA, self.handle, _b(data))

    def send_warning(self, data: Text) -> None:
        """
        Send a warning to the clients (WORK_WARNING).
        """
        self._protocol.send(PacketType.WORK_WARNING, self.handle, _b(data))

    def send_status(self, numerator: int, denominator: int) -> None:
        """
        Tell the clients how far it is (WORK_STATUS).
        """
        self._protocol.send(
            PacketType.WORK_STATUS, self.handle, b"%d" % numerator, b"%d" % denominator
        )


_ASSIGN_TYPES = (PacketType.JOB_ASSIGN, PacketType.JOB_ASSIGN_UNIQ, PacketType.JOB_ASSIGN_ALL)


class _WorkerProtocol(Protocol):
    """
    One connection of a L{GearmanWorker}: registers, then loops
    GRAB_JOB_UNIQ / work / GRAB_JOB_UNIQ, sleeping (PRE_SLEEP) when the
    server has nothing and grabbing again when it sends NOOP.
    """

    def __init__(self, worker: GearmanWorker) -> None:
        self.worker = worker
        self._parser = wire.PacketParser(magic=wire.RESPONSE_MAGIC)
        self.busy = False
        self.grabbing = False
        self.sleeping = False
        self.connected = False

    def connectionMade(self) -> None:
        self.connected = True
        self.worker._protocols.add(self)
        if self.worker.client_id:
            self.send(PacketType.SET_CLIENT_ID, self.worker.client_id)
        for function, timeout in self.worker._timeouts().items():
            self.send_can_do(function, timeout)
        self.grab()

    def send(self, ptype: int, *args: bytes) -> None:
        if self.connected and self.transport is not None:
            self.transport.write(wire.encode_request(ptype, *args))

    def send_can_do(self, function: bytes, timeout: float | None) -> None:
        if timeout:
            ms = max(1, round(timeout * 1000))
            self.send(PacketType.CAN_DO_TIMEOUT, function, b"%d" % ms)
        else:
            self.send(PacketType.CAN_DO, function)

    def grab(self) -> None:
        if self.busy or self.grabbing or not self.connected or self.worker.stopping:
            return
        self.grabbing = True
        self.sleeping = False
        self.send(PacketType.GRAB_JOB_UNIQ)

    def dataReceived(self, data: bytes) -> None:
        for ptype, body in self._parser.feed(data):
            if ptype == PacketType.NOOP:
                if self.sleeping:
                    self.grab()
            elif ptype == PacketType.NO_JOB:
                self.grabbing = False
                if not self.worker.stopping:
                    self.sleeping = True
                    self.send(PacketType.PRE_SLEEP)
            elif ptype in _ASSIGN_TYPES:
                self.grabbing = False
                args = wire.split_body(ptype, body)
                if args is None:
                    log.warn("Malformed job assignment from the server")
                    continue
                if ptype == PacketType.JOB_ASSIGN:
                    job = WorkerJob(args[0], args[1], b"", args[2], b"", self)
                elif ptype == PacketType.JOB_ASSIGN_UNIQ:
                    job = WorkerJob(args[0], args[1], args[2], args[3], b"", self)
                else:
                    job = WorkerJob(args[0], args[1], args[2], args[4], args[3], self)
                self.run(job)
            elif ptype == PacketType.ERROR:
                args = wire.split_body(ptype, body) or (b"", b"")
                # A late result for a job the server took back; harmless.
                log.debug("ERROR from the server: {code} {text}", code=args[0], text=args[1])
            else:
                log.warn("Unexpected packet {ptype} from the server", ptype=ptype)
        if self._parser.error is not None and self.transport is not None:
            self.transport.loseConnection()

    def run(self, job: WorkerJob) -> None:
        entry = self.worker._functions.get(job.function)
        if entry is None:
            log.warn("Got a job for {function}, which is not registered", function=job.function)
            self.send(PacketType.WORK_FAIL, job.handle)
            self.grab()
            return
        self.busy = True
        d = maybeDeferred(entry[0], job)

        def done(result: object) -> None:
            if result is None:
                data = b""
            elif isinstance(result, (bytes, bytearray, memoryview)):
                data = bytes(result)
            elif isinstance(result, str):
                data = result.encode("utf-8")
            else:
                raise TypeError(
                    f"a worker function must return bytes, str or None, not {type(result)!r}"
                )
            self.send(PacketType.WORK_COMPLETE, job.handle, data)

        def failed(failure: Failure) -> None:
            if not failure.check(WorkFailed):
                log.failure(
                    "Job {handle} ({function}) failed",
                    failure,
                    handle=job.handle,
                    function=job.function,
                )
                name = failure.type.__name__ if failure.type is not None else "Error"
                text = f"{name}: {failure.getErrorMessage()}"
                self.send(PacketType.WORK_EXCEPTION, job.handle, text.encode("utf-8", "replace"))
            # After WORK_EXCEPTION too, for servers where it is not final.
            self.send(PacketType.WORK_FAIL, job.handle)

        def next_job(_: object) -> None:
            self.busy = False
            self.worker._job_done()
            self.grab()

        d.addCallback(done)
        d.addErrback(failed)
        d.addBoth(next_job)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.connected = False
        self.worker._protocols.discard(self)
        self.worker._connection_lost(self, reason)


class GearmanWorker(MultiService):
    """
    Does jobs for one or more Gearman servers.

    L{register} functions, then start it (it is an C{IService}: put it in
    your service tree, or call L{start}).  Each function receives a
    L{WorkerJob} and returns the result (bytes, str or None) or a Deferred
    of it; raising fails the job (WORK_EXCEPTION with the error's text,
    then WORK_FAIL; raise L{WorkFailed} for a plain WORK_FAIL).

    It grabs with GRAB_JOB_UNIQ (so C{job.unique} is set), sleeps with
    PRE_SLEEP when there is nothing to do, and keeps C{concurrency}
    connections to each server, each running one job at a time.  Lost
    connections are remade with back-off, unless C{reconnect} is false:
    then L{finished} fires when the last connection is gone (what a worker
    started with L{txgearmand.inprocess.start_worker} wants).

    @ivar finished: fires when the worker has stopped.
    """

    def __init__(
        self,
        endpoints: Sequence[IStreamClientEndpoint] | IStreamClientEndpoint,
        reactor: Any = None,
        *,
        client_id: Text | None = None,
        concurrency: int = 1,
        reconnect: bool = True,
        retry_policy: Callable[[int], float] | None = None,
    ) -> None:
        super().__init__()
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self._endpoints = _as_list(endpoints) * concurrency
        self._reactor = reactor
        self._reconnect = reconnect
        self._retry_policy = retry_policy or backoffPolicy(initialDelay=0.2, maxDelay=10.0)
        self.client_id = _b(client_id) if client_id is not None else b""
        self._functions: dict[bytes, tuple[Callable[[WorkerJob], Any], float | None]] = {}
        self._protocols: set[_WorkerProtocol] = set()
        self._open = 0
        self.stopping = False
        self.finished: Deferred[None] = Deferred()
        self._idle: list[Deferred[None]] = []
        if reconnect:
            for endpoint in self._endpoints:
                ClientService(
                    endpoint,
                    _ProtocolFactory(lambda: _WorkerProtocol(self)),
                    retryPolicy=self._retry_policy,
                    clock=reactor,
                ).setServiceParent(self)

    def _timeouts(self) -> dict[bytes, float | None]:
        return {name: entry[1] for name, entry in self._functions.items()}

    def register(
        self, function: Text, work: Callable[[WorkerJob], Any], timeout: float | None = None
    ) -> None:
        """
        Do jobs of C{function} with C{work}.

        @param timeout: seconds the server gives each job before handing it
            to another worker (CAN_DO_TIMEOUT, sent in milliseconds as C
            gearmand and libgearman expect them).
        """
        name = _b(function)
        self._functions[name] = (work, timeout)
        for protocol in list(self._protocols):
            protocol.send_can_do(name, timeout)
            if protocol.sleeping:
                protocol.grab()

    def unregister(self, function: Text) -> None:
        """
        Stop doing jobs of C{function} (CANT_DO).
        """
        name = _b(function)
        if self._functions.pop(name, None) is not None:
            for protocol in list(self._protocols):
                protocol.send(PacketType.CANT_DO, name)

    def start(self) -> None:
        """
        Start working (the same as C{startService}).
        """
        if not self.running:
            self.startService()

    def startService(self) -> None:
        """
        Connect to the servers and start working.
        """
        self.stopping = False
        super().startService()
        if not self._reconnect:
            for endpoint in self._endpoints:
                self._open += 1
                d = endpoint.connect(_ProtocolFactory(lambda: _WorkerProtocol(self)))
                d.addErrback(self._connect_failed)

    def _connect_failed(self, failure: Failure) -> None:
        log.failure("A worker connection failed", failure)
        self._open -= 1
        self._check_finished()

    def _connection_lost(self, protocol: _WorkerProtocol, reason: Failure) -> None:
        if not reason.check(ConnectionDone):
            log.info("Worker connection lost: {why}", why=reason.getErrorMessage())
        if not self._reconnect:
            self._open -= 1
            self._check_finished()

    def _check_finished(self) -> None:
        if not self._reconnect and self._open <= 0 and not self.finished.called:
            self.finished.callback(None)

    def _job_done(self) -> None:
        if not any(p.busy for p in self._protocols):
            idle, self._idle = self._idle, []
            for d in idle:
                d.callback(None)

    def stop(self) -> Deferred[None]:
        """
        Stop (the same as C{stopService}).
        """
        if not self.running:
            return succeed(None)
        return self.stopService()

    def stopService(self) -> Deferred[None]:
        """
        Take no new job, let running ones finish, then disconnect.
        """
        self.stopping = True
        busy = [p for p in self._protocols if p.busy]
        waiting: Deferred[Any]
        if busy:
            idle: Deferred[None] = Deferred()
            self._idle.append(idle)
            waiting = idle
        else:
            waiting = succeed(None)

        def disconnect(_: object) -> Deferred[Any]:
            MultiService.stopService(self)
            results: list[Deferred[Any]] = []
            for service in list(self):
                if service.running:
                    results.append(maybeDeferred(service.stopService))
            for protocol in list(self._protocols):
                if protocol.transport is not None:
                    protocol.transport.loseConnection()
            return DeferredList(results)

        def finish(_: object) -> None:
            if not self.finished.called:
                self.finished.callback(None)

        return waiting.addCallback(disconnect).addCallback(finish)

    @classmethod
    def from_stdio(cls, reactor: Any, **kwargs: Any) -> GearmanWorker:
        """
        A worker for a child started by L{txgearmand.inprocess.start_worker}
        (or Gearman::Server's C{start_worker}): it talks to its parent over
        its standard input and output, and finishes when the parent goes.
        """
        return cls([stdio_endpoint(reactor)], reactor, reconnect=False, **kwargs)


@implementer(IStreamClientEndpoint)
class _AdoptedEndpoint:
    """
    Connects once, over an already connected UNIX socket descriptor.
    """

    def __init__(self, reactor: Any, fd: int) -> None:
        self._reactor = reactor
        self._fd = fd
        self._used = False

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[IProtocol]:
        if self._used:
            return fail(ConnectionDone("the standard input socket was already used"))
        self._used = True
        fd = os.dup(self._fd)
        os.set_blocking(fd, False)
        built: list[IProtocol | None] = []

        class Recorder(ServerFactory):
            def buildProtocol(self, addr: IAddress | None) -> Any:
                built.append(protocolFactory.buildProtocol(addr))  # type: ignore[arg-type]
                return built[-1]

        try:
            self._reactor.adoptStreamConnection(fd, socket.AF_UNIX, Recorder())
        finally:
            os.close(fd)
        if not built or built[0] is None:
            return fail(ConnectionDone("no protocol was built"))
        return succeed(built[0])


def stdio_endpoint(reactor: Any, fd: int = 0) -> IStreamClientEndpoint:
    """
    An endpoint for the socket a parent job server gave this process on its
    standard input (C{GEARMAN_WORKER_USE_STDIO}); it connects once.
    """
    return _AdoptedEndpoint(reactor, fd)
