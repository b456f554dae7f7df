# -*- test-case-name: txgearmand.test.test_client -*-
"""
A Deferred-based Gearman client for Twisted programs (the worker is
L{txgearmand.worker.GearmanWorker}).

It works over any C{IStreamClientEndpoint}: TCP, UNIX sockets, TLS, or
L{txgearmand.inprocess.InProcessEndpoint} to a L{JobServer} in the same
process; and against any Gearman server (txgearmand, C gearmand,
Gearman::Server for what it supports).  It does not import the global
reactor at import time: pass one in, or it is looked up when first needed.
For example::

    client = GearmanClient([endpoint], reactor)
    result = await client.submit("reverse", b"abc", priority=HIGH)
"""

from __future__ import annotations

import zlib
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, cast

import attrs
from twisted.application.internet import ClientService, backoffPolicy
from twisted.application.service import MultiService
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IProtocol, IProtocolFactory, IStreamClientEndpoint
from twisted.internet.protocol import Protocol, connectionDone
from twisted.python.failure import Failure
from zope.interface import implementer

from txgearmand import _log, wire
from txgearmand.endpoints import Text, _as_list, _b, _ProtocolFactory
from txgearmand.wire import PacketType, Priority

__all__ = [
    "HIGH",
    "LOW",
    "NORMAL",
    "GearmanClient",
    "JobException",
    "JobFailed",
    "JobStatus",
    "NoServerAvailable",
    "ServerError",
]

log = _log.logger("txgearmand.client")

#: The priorities L{GearmanClient.submit} takes (L{txgearmand.wire.Priority}).
HIGH = Priority.HIGH
NORMAL = Priority.NORMAL
LOW = Priority.LOW

_SUBMIT_TYPES = {
    (HIGH, False): PacketType.SUBMIT_JOB_HIGH,
    (NORMAL, False): PacketType.SUBMIT_JOB,
    (LOW, False): PacketType.SUBMIT_JOB_LOW,
    (HIGH, True): PacketType.SUBMIT_JOB_HIGH_BG,
    (NORMAL, True): PacketType.SUBMIT_JOB_BG,
    (LOW, True): PacketType.SUBMIT_JOB_LOW_BG,
}


def _priority(value: Priority | str) -> Priority:
    """
    A L{Priority}, or its name in any case (C{"high"}, C{"normal"},
    C{"low"}, as this module's constants were strings once), as a
    L{Priority}.

    @raise ValueError: for anything else.
    """
    if isinstance(value, Priority):
        return value
    if isinstance(value, str) and value.upper() in Priority.__members__:
        return Priority[value.upper()]
    raise ValueError(
        "priority must be a txgearmand.wire.Priority (HIGH, NORMAL or LOW)"
        f' or "high", "normal" or "low", not {value!r}'
    )


class ServerError(wire.GearmanError):
    """
    The server answered a request with an ERROR packet.

    @ivar code: its code, e.g. C{b"QUEUE_ERROR"}.
    @ivar text: its text.
    """

    def __str__(self) -> str:
        code = self.code.decode("ascii", "replace")
        return f"{code}: {self.text.decode('utf-8', 'replace')}"


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


def _server_hash(unique: bytes, payload: bytes) -> int | None:
    """
    The number that chooses a job's server, as Perl's Gearman::Client
    computes it (C{Gearman::Task::hash}): C{(crc32(key) >> 16) & 0x7fff},
    where the key is the unique id, or the payload if the unique id is
    C{"-"}; C{None} without a unique id.

    Perl treats a key of C{"0"} or C{""} (C{"-"} with an empty payload),
    and a hash of 0, as "no unique id" and picks a server at random; these
    hash here all the same, so that our clients at least agree among
    themselves.
    """
    if not unique:
        return None
    key = payload if unique == b"-" else unique
    return (zlib.crc32(key) >> 16) & 0x7FFF


@implementer(IStreamClientEndpoint)
class _WatchedEndpoint:
    """
    An endpoint that reports its failed connection attempts (before the
    C{ClientService} that uses it hears of them).
    """

    def __init__(self, endpoint: IStreamClientEndpoint, failed: Callable[[], None]) -> None:
        self._endpoint = endpoint
        self._failed = failed

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[IProtocol]:
        def failed(failure: Failure) -> Failure:
            self._failed()
            return failure

        return self._endpoint.connect(protocolFactory).addErrback(failed)


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
            log.warn(
                "ERROR from the server: {code} {text}",
                code=args[0].decode("utf-8", "backslashreplace"),
                text=args[1].decode("utf-8", "backslashreplace"),
            )
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


class GearmanClient(MultiService):
    """
    Submits jobs to one or more Gearman servers.

    Each server gets one connection, made when the service starts (or the
    first request starts it) and remade with back-off after it is lost.

    With several servers, a job with a unique id goes to the server Perl's
    Gearman::Client picks for it: C{(crc32(key) >> 16) & 0x7fff}, modulo
    the number of servers, where the key is the unique id, or the payload
    when the unique id is C{"-"} (the servers coalesce those on their
    payload).  So duplicates meet on one server, also with Perl clients
    given the same servers in the same order.  Jobs without a unique id go
    round the servers.

    When the chosen server is down, the job goes to the next one in that
    order (index + 1, + 2, ... modulo the number of servers) that is up;
    L{NoServerAvailable} only when none is.  A server is down when its
    connection is lost or an attempt to connect fails; it is passed over at
    once while it is retried in the background, and gets its jobs again
    when it is back.  Only a server that is still making its first attempt
    (just after start-up) is waited for, for that one attempt.  When all
    are down, a request waits for the next attempt of each and goes to the
    first that connects, or fails with L{NoServerAvailable} when each of
    those attempts fails.

    @param endpoints: where the servers are, in the order that chooses
        among them (give every client the same list).
    @param reactor: the reactor (or a clock, for its time); the global one
        when first needed if C{None}.
    @param exceptions: ask the servers for WORK_EXCEPTION (OPTION_REQ), so
        that a job's exception text reaches L{JobException}.
    @param retry_policy: the delay before each reconnection attempt, given
        the number of failed attempts (as C{ClientService} takes it).
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
        #: Servers whose connection was lost or whose last attempt failed,
        #: and that have not connected since.
        self._down: set[int] = set()
        for index, endpoint in enumerate(_as_list(endpoints)):
            service = ClientService(
                _WatchedEndpoint(endpoint, self._attempt_failed(index)),
                _ProtocolFactory(self._protocol_maker(index)),
                retryPolicy=retry_policy or backoffPolicy(initialDelay=0.2, maxDelay=10.0),
                clock=reactor,
                prepareConnection=self._prepare,
            )
            service.setServiceParent(self)
            self._services.append(service)

    def _protocol_maker(self, index: int) -> Callable[[], _ClientProtocol]:
        return lambda: _ClientProtocol(index, self._exceptions, self._ready, self._lost)

    def _attempt_failed(self, index: int) -> Callable[[], None]:
        return lambda: self._down.add(index)

    def _ready(self, protocol: _ClientProtocol) -> None:
        self._live[protocol.index] = protocol
        self._down.discard(protocol.index)

    def _lost(self, protocol: _ClientProtocol) -> None:
        if self._live.get(protocol.index) is protocol:
            del self._live[protocol.index]
        if protocol.index not in self._live:
            self._down.add(protocol.index)

    def startService(self) -> None:
        """
        Connect to the servers; none is known to be down yet.
        """
        self._down.clear()
        super().startService()

    @staticmethod
    def _prepare(connected: IProtocol) -> Deferred[None]:
        # ClientService passes a proxy, which forwards attribute access.
        return cast(_ClientProtocol, connected).ready

    def _connection(self, key: int | None) -> Deferred[_ClientProtocol]:
        """
        A connection for a request: to the server C{key} modulo their
        number, or the next one up after it; round the servers if C{key} is
        C{None}.
        """
        if not self.running:
            self.startService()
        n = len(self._services)
        if key is not None:
            return self._hashed([(key + i) % n for i in range(n)])
        first = self._next % n
        self._next += 1
        order = [(first + i) % n for i in range(n)]
        for index in order:
            live = self._live.get(index)
            if live is not None:
                return succeed(live)
        return self._first_connected(order)

    def _hashed(self, order: list[int]) -> Deferred[_ClientProtocol]:
        """
        The first of these servers that is up.  A server still making its
        attempt to connect (neither up nor down) is waited for, for that
        attempt; then the choice is made again.  Each wait ends with that
        server up or down, so this ends.  When all are down, the first to
        connect at its next attempt.
        """
        for index in order:
            live = self._live.get(index)
            if live is not None:
                return succeed(live)
            if index in self._down:
                continue
            attempt = cast(
                "Deferred[_ClientProtocol]",
                self._services[index].whenConnected(failAfterFailures=1),
            )
            return attempt.addErrback(self._attempt_over, index, order)
        return self._first_connected(order)

    def _attempt_over(
        self, failure: Failure, index: int, order: list[int]
    ) -> Deferred[_ClientProtocol]:
        """
        The attempt of server C{index} that L{_hashed} waited for failed (or
        the client is stopping): choose again, with that server down.
        """
        if not self.running:
            return fail(NoServerAvailable("the client is closed"))
        if index not in self._live:
            self._down.add(index)
        return self._hashed(order)

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

        for index in indexes:
            self._services[index].whenConnected(failAfterFailures=1).addCallbacks(connected, failed)
        return result

    def submit(
        self,
        function: Text,
        payload: Text = b"",
        unique: Text | None = None,
        priority: Priority | str = NORMAL,
        background: bool = False,
        *,
        on_data: Callable[[bytes], object] | None = None,
        on_warning: Callable[[bytes], object] | None = None,
        on_status: Callable[[int, int], object] | None = None,
        on_created: Callable[[bytes], object] | None = None,
    ) -> Deferred[bytes]:
        """
        Submit a job.

        @param priority: L{HIGH}, L{NORMAL} or L{LOW} (a
            L{txgearmand.wire.Priority}), or the name of one in any case
            (C{"high"}, C{"normal"}, C{"low"}).
        @param background: if true, the Deferred fires with the job's handle
            as soon as the server has it; nobody waits for its result.
        @param on_data: called with each WORK_DATA chunk.
        @param on_warning: called with each WORK_WARNING.
        @param on_status: called with each WORK_STATUS (numerator,
            denominator).
        @param on_created: called with the job's handle.
        @return: a Deferred firing with the result (WORK_COMPLETE's data),
            or failing with L{JobFailed}, L{JobException}, L{ServerError}
            (the server refused it) or L{NoServerAvailable}; or failing
            at once with C{ValueError} for an unknown priority.
        """
        try:
            ptype = _SUBMIT_TYPES[_priority(priority), bool(background)]
        except ValueError as e:
            return fail(e)
        function_b = _b(function)
        payload_b = _b(payload)
        unique_b = _b(unique) if unique is not None else b""
        task = _Task(Deferred(), on_data, on_warning, on_status, on_created, bool(background))

        def send(protocol: _ClientProtocol) -> Deferred[bytes]:
            protocol.submit(ptype, function_b, unique_b, payload_b, task)
            return task.deferred

        return self._connection(_server_hash(unique_b, payload_b)).addCallback(send)

    def get_status(self, handle: Text) -> Deferred[JobStatus]:
        """
        Ask for a job's status (GET_STATUS).  With several servers, each is
        asked in turn until one knows the job.
        """
        handle_b = _b(handle)
        if not self.running:
            self.startService()
        return Deferred.fromCoroutine(self._get_status(handle_b))

    async def _get_status(self, handle: bytes) -> JobStatus:
        best: JobStatus | None = None
        for service in self._services:
            try:
                protocol = cast(_ClientProtocol, await service.whenConnected(failAfterFailures=1))
                args = await protocol.request(PacketType.GET_STATUS, handle)
            except Exception:
                continue
            best = JobStatus(handle, args[1] == b"1", args[2] == b"1", _int(args[3]), _int(args[4]))
            if best.known:
                break
        if best is None:
            raise NoServerAvailable("no Gearman server could be reached")
        return best

    def echo(self, data: Text = b"") -> Deferred[bytes]:
        """
        ECHO_REQ to a server; fires with what it echoed.
        """
        return Deferred.fromCoroutine(self._echo(_b(data)))

    async def _echo(self, data: bytes) -> bytes:
        protocol = await self._connection(None)
        args = await protocol.request(PacketType.ECHO_REQ, data)
        return cast(bytes, args[0])

    def close(self) -> Deferred[None]:
        """
        Close the connections (the same as C{stopService}).
        """
        d = self.stopService() if self.running else succeed(None)
        return d.addCallback(lambda _: None)
