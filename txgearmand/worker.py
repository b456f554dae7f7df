# -*- test-case-name: txgearmand.test.test_client -*-
"""
A Deferred-based Gearman worker for Twisted programs.

It works over any C{IStreamClientEndpoint}: TCP, UNIX sockets, TLS,
L{txgearmand.inprocess.InProcessEndpoint} to a L{JobServer} in the same
process, or L{txgearmand.endpoints.stdio_endpoint} in a child started by
a job server; and against any Gearman server (txgearmand, C gearmand,
Gearman::Server for what it supports).  It does not import the global
reactor at import time: pass one in, or it is looked up when first needed.
For example::

    worker = GearmanWorker([endpoint], reactor)
    worker.register("reverse", lambda job: job.payload[::-1])
    worker.startService()
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import attrs
from twisted.application.internet import ClientService, backoffPolicy
from twisted.application.service import MultiService
from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.protocol import Protocol, connectionDone
from twisted.python.failure import Failure

from txgearmand import _log, wire
from txgearmand.endpoints import Text, _as_list, _b, _ProtocolFactory, stdio_endpoint
from txgearmand.wire import PacketType

__all__ = ["GearmanWorker", "WorkFailed", "WorkerJob"]

log = _log.logger("txgearmand.worker")


class WorkFailed(Exception):
    """
    Raise this from a worker function to fail the job with a plain
    WORK_FAIL; any other exception also sends WORK_EXCEPTION with its text.
    """


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
                log.debug(
                    "ERROR from the server: {code} {text}",
                    code=_text(args[0]),
                    text=_text(args[1]),
                )
            else:
                log.warn("Unexpected packet {ptype} from the server", ptype=ptype)
        if self._parser.error is not None and self.transport is not None:
            self.transport.loseConnection()

    def run(self, job: WorkerJob) -> None:
        entry = self.worker._functions.get(job.function)
        if entry is None:
            log.warn(
                "Got a job for {function}, which is not registered", function=_text(job.function)
            )
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
                    handle=_text(job.handle),
                    function=_text(job.function),
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
        return Deferred.fromCoroutine(self._stop())

    async def _stop(self) -> None:
        if any(p.busy for p in self._protocols):
            idle: Deferred[None] = Deferred()
            self._idle.append(idle)
            await idle
        # The reconnecting services drop their connections and the others
        # are dropped here; neither disconnection is waited for.
        MultiService.stopService(self)
        for protocol in list(self._protocols):
            if protocol.transport is not None:
                protocol.transport.loseConnection()
        if not self.finished.called:
            self.finished.callback(None)

    @classmethod
    def from_stdio(cls, reactor: Any, **kwargs: Any) -> GearmanWorker:
        """
        A worker for a child started by L{txgearmand.inprocess.start_worker}
        (or Gearman::Server's C{start_worker}): it talks to its parent over
        its standard input and output, and finishes when the parent goes.
        """
        return cls([stdio_endpoint(reactor)], reactor, reconnect=False, **kwargs)


def _text(value: bytes) -> str:
    """
    Bytes from the server as text for the log (not a Python repr).
    """
    return value.decode("utf-8", "backslashreplace")
