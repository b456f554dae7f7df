# -*- test-case-name: txgearmand.test.test_http -*-
"""
HTTP job submission (C{twistd gearmand --http ENDPOINT}), compatible with
C gearmand's HTTP protocol (C{gearmand -r http}).

C{POST /FUNCTION} (or C{PUT}, C{GET}, C{HEAD}) submits a job whose
workload is the request's body; the headers C{X-Gearman-Unique},
C{X-Gearman-Background: true} and C{X-Gearman-Priority: high|low} choose
the unique id (default C{-}: identical workloads share one job, as in C),
the kind and the priority.  A foreground request is answered with the
job's result, its handle in C{X-Gearman-Job-Handle} and the packet that
ended it in C{X-Gearman-Command}; a background one at once (once the store
has it) with its handle and C{X-Gearman-Command: JOB_CREATED}.

Each request that submits becomes a L{Participant} of the L{JobServer}
through its L{IPeer} (the L{SubmitRequest}), exactly as a Gearman
connection does: a client that goes away stops waiting for its job, and
a queued foreground job nobody waits for any more is dropped.  What C
gearmand does and where this differs: C{docs/guide/http.rst}.

Nothing a peer sends grows the server without bound: a body larger than
C{--max-packet-size} is refused with 413 on its headers, before it is
read; a large one that would pass the memory budget with 503; header
lines and counts have twisted.web's limits; the connections count against
C{--max-connections}; a connection idle or stalled for C{--read-timeout}
is closed.
"""

from __future__ import annotations

from typing import Any, Optional
from urllib.parse import unquote_to_bytes

from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.interfaces import IAddress, IDelayedCall
from twisted.internet.protocol import Protocol, ServerFactory, connectionDone
from twisted.python.failure import Failure
from twisted.web import http
from twisted.web.iweb import INonQueuedRequestFactory
from zope.interface import implementer, provider

from txgearmand import _direct, _log
from txgearmand._version import __version__
from txgearmand.access import is_local_address
from txgearmand.guard import SMALL_PARTIAL
from txgearmand.interfaces import IPeer
from txgearmand.job import HIGH, LOW, NORMAL
from txgearmand.protocol import _keep_alive
from txgearmand.records import Job, Participant
from txgearmand.server import JobServer
from txgearmand.wire import GearmanError, PacketType

__all__ = ["HTTPSubmitChannel", "HTTPSubmitFactory", "SubmitRequest"]

#: How long a connection whose request was refused before its body was
#: read is still read (and what arrives dropped) so that its client sees
#: the answer rather than a reset, as nginx's lingering close.
LINGER_SECONDS = 5.0

#: The methods that submit a job; any other gets 405.
ALLOWED_METHODS = (b"GET", b"HEAD", b"POST", b"PUT")
_ALLOW = b", ".join(ALLOWED_METHODS)
_VERSIONS = (b"HTTP/1.0", b"HTTP/1.1")
_SERVER = b"txgearmand/" + __version__.encode("ascii")
_BINARY = b"application/octet-stream"
_TEXT = b"text/plain; charset=utf-8"

#: The HTTP status of a submission the job server refuses, by its error
#: code: the limits (max queue, memory budget, the store) say "try again
#: later", the rest is the request's fault.
ERROR_STATUS = {b"QUEUE_ERROR": 503}
_PRIORITIES = {b"high": HIGH, b"low": LOW}

_WORK_COMPLETE = PacketType.WORK_COMPLETE
_WORK_FAIL = PacketType.WORK_FAIL
_WORK_EXCEPTION = PacketType.WORK_EXCEPTION
_WORK_DATA = PacketType.WORK_DATA

#: A response waiting for the end of the server's batch: status, body,
#: headers, and whether the connection closes after it.
_Answer = tuple[int, bytes, list[tuple[bytes, bytes]], bool]


def _text(value: bytes) -> str:
    """
    Bytes from a peer as text for the log (not a Python repr).
    """
    return value.decode("utf-8", "backslashreplace")


@provider(INonQueuedRequestFactory)
@implementer(IPeer)
class SubmitRequest(http.Request):
    """
    One HTTP request: parsed, turned into a submission, and - as the
    L{IPeer} of the L{Participant} it becomes - answered with what the job
    server tells it.

    It keeps its body itself (in memory, counted against the memory
    budget while it arrives), and answers at the end of the server's batch
    (L{flush}), never in the middle of the model's work.

    @ivar job_server: the L{JobServer}.
    @ivar participant: what the job server keeps for it, once it submitted.
    @ivar handle: its job's handle, once it has one.
    """

    log = _log.logger("txgearmand.httpsubmit")
    channel: HTTPSubmitChannel

    def __init__(self, channel: HTTPSubmitChannel) -> None:
        super().__init__(channel)
        self.job_server: JobServer = channel.job_server
        self.participant: Participant | None = None
        self.handle = b""
        self._body: list[bytes] = []
        self._received = 0
        self._reserved = 0
        #: Answered before its body was read: the rest is dropped.
        self._refused = False
        self._pending: _Answer | None = None
        self._dirty = False
        self._answered = False
        #: WORK_DATA received for its job, sent before the result.
        self._data: list[bytes] = []
        self._data_size = 0

    # -- the request body ------------------------------------------------

    def gotLength(self, length: Optional[int]) -> None:
        """
        The headers are in and say how long the body is (C{None}: chunked):
        refuse a body over C{--max-packet-size} (413) or, if large, over
        the memory budget (503) now, before it is read.
        """
        self.content = None
        if length is None or not length:
            return
        if length > self.job_server.settings.max_packet_size:
            self._refuse_early(413, f"body of {length} bytes is over the limit")
        elif not self._reserve(length):
            self._refuse_early(503, f"body of {length} bytes refused")

    def _reserve(self, size: int) -> bool:
        guard = self.job_server.guard
        if not guard.reserve(self.channel, size, refusable=True):
            return False
        self._reserved += size
        return True

    def _unreserve(self) -> None:
        if self._reserved:
            self.job_server.guard.unreserve(self._reserved)
            self._reserved = 0

    def handleContentChunk(self, data: bytes) -> None:
        """
        Keep a piece of the body (a chunked one is checked as it grows).
        """
        if self._refused:
            return
        self._received += len(data)
        # (A chunked body's length is known only as it arrives.)
        if self._received > self.job_server.settings.max_packet_size:
            self._refuse_early(413, "chunked body over the limit")
            return
        if self._received > self._reserved:
            if not self._reserve(max(self._received - self._reserved, SMALL_PARTIAL)):
                self._refuse_early(503, "chunked body refused")
                return
        self._body.append(data)

    def _refuse_early(self, code: int, what: str) -> None:
        """
        Answer before the body is read, and close: the client may still be
        sending it.
        """
        self._refused = self._answered = True
        self._body = []
        self._unreserve()
        # No "100 Continue" after this answer.
        self.requestHeaders.removeHeader(b"Expect")
        limit = self.job_server.settings.max_packet_size
        if code == 413:
            text = f"The request body is larger than this server accepts ({limit} bytes).\n"
        else:
            text = "The server is over its memory budget; try again later.\n"
        body = text.encode("utf-8")
        self.log.info(
            "Refused an HTTP request from {peer}: {status} ({what})",
            peer=self.describe(),
            status=code,
            what=what,
        )
        response = b"HTTP/1.1 %d %s\r\n" % (code, http.RESPONSES.get(code, b"Error"))
        response += b"".join(
            b"%s: %s\r\n" % header
            for header in (
                (b"Server", _SERVER),
                (b"Date", http.datetimeToString(self.job_server.reactor.seconds())),
                (b"Content-Type", _TEXT),
                (b"Content-Length", b"%d" % len(body)),
                (b"Connection", b"close"),
            )
        )
        channel = self.channel
        if channel.transport is not None:
            channel.transport.write(response + b"\r\n" + body)
        channel.linger()

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        """
        The whole request is in: handle it (no form parsing, no query
        arguments: the body is the workload, whatever its type).
        """
        self.method, self.uri, self.clientproto = command, path, version
        self.path = path.split(b"?", 1)[0]
        self.args = {}
        # From here on the body counts as the job it becomes.
        self._unreserve()
        if self._refused:
            return
        self.process()

    # -- the request ----------------------------------------------------

    def process(self) -> None:
        """
        Submit the job the request asks for, or answer why not.
        """
        try:
            self._process()
        except Exception:
            self.log.failure(
                "Handling HTTP {method} from {peer} failed",
                method=_text(self.method),
                peer=self.describe(),
            )
            self._answer_text(500, "Internal server error.")

    def _process(self) -> None:
        method = self.method
        if self.clientproto not in _VERSIONS:
            self._answer_text(505, "Only HTTP/1.0 and HTTP/1.1 are served.", close=True)
            return
        if method not in ALLOWED_METHODS:
            self._refuse(405, f"Method {_text(method)} is not allowed: use POST /FUNCTION.")
            return
        function = unquote_to_bytes(self.path).lstrip(b"/")
        server = self.job_server
        if not function:
            if method == b"HEAD":
                # C gearmand's ping; here also a health check.
                serving = server.accepting and server.ready
                self._answer(200 if serving else 503, b"", [], False)
            else:
                self._refuse(404, "No function name: submit with POST /FUNCTION.")
            return
        if b"\0" in function:
            self._refuse(400, "A function name cannot hold a NUL byte.")
            return
        unique = self.getHeader(b"X-Gearman-Unique") or b"-"
        background = (self.getHeader(b"X-Gearman-Background") or b"").lower() == b"true"
        priority = _PRIORITIES.get((self.getHeader(b"X-Gearman-Priority") or b"").lower(), NORMAL)
        data = b"".join(self._body)
        self._body = []
        if not server.accepting:
            self._answer_text(503, "The job server is shutting down.", close=True)
        elif server.ready:
            self._submit(function, unique, data, priority, background)
        else:
            # Not before the store is replayed: its jobs are queued first.
            server.when_ready().addCallbacks(
                lambda _: self._submit(function, unique, data, priority, background),
                lambda _: self._answer_text(503, "The job store failed to open.", close=True),
            )

    def _submit(
        self, function: bytes, unique: bytes, data: bytes, priority: int, background: bool
    ) -> None:
        if self._disconnected or self._answered:
            return
        server = self.job_server
        batch = server.output
        batch.depth += 1
        try:
            participant = server.new_client(self)
            # The exception's text is a better answer than a bare failure.
            participant.exceptions = True
            self.participant = participant
            try:
                job = server.submit_job(participant, function, unique, data, priority, background)
            except GearmanError as e:
                self.log.info(
                    "Refused HTTP {method} of {function} from {peer}: {code} {text}",
                    method=_text(self.method),
                    function=_text(function),
                    peer=self.describe(),
                    code=_text(e.code),
                    text=_text(e.text),
                )
                headers = [(b"X-Gearman-Command", b"ERROR"), (b"X-Gearman-Error", e.code)]
                self._answer(ERROR_STATUS.get(e.code, 400), e.text + b"\n", headers, False, _TEXT)
                return
            self.handle = job.handle
            if background:
                if job.commit_waiters is None:
                    self._created()
                else:
                    job.commit_waiters.append(self._committed)
        finally:
            batch.depth -= 1
            if not batch.depth:
                batch.hold_until_next_turn()

    def _committed(self, job: Job, failure: Failure | None) -> None:
        if failure is None:
            self._created()
            return
        text = b"The job store failed: " + failure.getErrorMessage().encode("utf-8", "replace")
        self.log.info(
            "Refused a submission from {peer}: QUEUE_ERROR {text}",
            peer=self.describe(),
            text=_text(text),
        )
        headers = [(b"X-Gearman-Command", b"ERROR"), (b"X-Gearman-Error", b"QUEUE_ERROR")]
        self._answer(503, text[:300] + b"\n", headers, False, _TEXT)

    def _created(self) -> None:
        self._answer(200, b"", self._job_headers(b"JOB_CREATED"), False)

    def _job_headers(self, command: bytes) -> list[tuple[bytes, bytes]]:
        return [(b"X-Gearman-Job-Handle", self.handle), (b"X-Gearman-Command", command)]

    # -- answering ------------------------------------------------------

    def _refuse(self, code: int, text: str) -> None:
        self.log.info(
            "Refused HTTP {method} {path} from {peer}: {status} {text}",
            method=_text(self.method),
            path=_text(self.path),
            peer=self.describe(),
            status=code,
            text=text,
        )
        headers = [(b"Allow", _ALLOW)] if code == 405 else []
        self._answer(code, text.encode("utf-8") + b"\n", headers, False, _TEXT)

    def _answer_text(self, code: int, text: str, close: bool = False) -> None:
        self._answer(code, text.encode("utf-8") + b"\n", [], close, _TEXT)

    def _answer(
        self,
        code: int,
        body: bytes,
        headers: list[tuple[bytes, bytes]],
        close: bool,
        content_type: bytes = _BINARY,
    ) -> None:
        """
        Answer once, at the end of the server's batch (or now, outside one).
        """
        if self._answered or self._pending is not None:
            return
        self._pending = (code, body, [*headers, (b"Content-Type", content_type)], close)
        batch = self.job_server.output
        if batch.depth:
            if not self._dirty:
                self._dirty = True
                batch.mark_dirty(self)
        else:
            self.flush()

    def flush(self) -> None:
        """
        Leave the job server, and write the answer (the output batch calls
        this once its work is done).
        """
        self._dirty = False
        pending, self._pending = self._pending, None
        if pending is None or self._answered:
            return
        self._answered = True
        self._leave()
        self._data = []
        self._note_data(0)
        if self._disconnected:
            return
        code, body, headers, close = pending
        self.setResponseCode(code)
        out = self.responseHeaders
        out.setRawHeaders(b"Server", [_SERVER])
        out.setRawHeaders(b"Date", [http.datetimeToString(self.job_server.reactor.seconds())])
        for name, value in headers:
            out.setRawHeaders(name, [value])
        out.setRawHeaders(b"Content-Length", [b"%d" % len(body)])
        if close:
            out.setRawHeaders(b"Connection", [b"close"])
            self.channel.persistent = False
        if _log.debugging:
            self.log.debug(
                "HTTP {method} {path} from {peer}: {status}, {size} bytes",
                method=_text(self.method),
                path=_text(self.path),
                peer=self.describe(),
                status=code,
                size=len(body),
            )
        channel = self.channel
        self.write(body)
        self.finish()
        if len(body) >= SMALL_PARTIAL:
            # Counted against the budget until the client has read it.
            channel.check_output()

    def _leave(self) -> None:
        """
        Stop taking part: the job server forgets this participant (and, if
        its job is queued and nobody else waits for it, the job).
        """
        participant = self.participant
        if participant is not None and participant.connected:
            with self.job_server.output:
                self.job_server.note_disconnected_client(participant)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        """
        The client went away: it no longer waits for its job, as a Gearman
        client that disconnects.
        """
        self._unreserve()
        self._body = []
        self._data = []
        self._note_data(0)
        self._leave()
        super().connectionLost(reason)

    def _note_data(self, size: int) -> None:
        if size != self._data_size:
            self._data_size = size
            if self.channel is not None:
                self.channel.collected = size
                self.channel.check_output()

    # -- IPeer ----------------------------------------------------------

    def send_packet(self, ptype: int, *args: bytes) -> None:
        """
        What the job server sends about the job: its result, failure or
        exception answers the request; WORK_DATA is kept and sent before
        the result; WORK_STATUS and WORK_WARNING are not part of an answer.
        """
        if self._answered or self._pending is not None:
            return
        if ptype == _WORK_COMPLETE:
            data = args[1] if len(args) > 1 else b""
            if self._data:
                data = b"".join([*self._data, data])
            self._answer(200, data, self._job_headers(b"WORK_COMPLETE"), False)
        elif ptype == _WORK_FAIL:
            self._answer(500, b"", self._job_headers(b"WORK_FAIL"), False)
        elif ptype == _WORK_EXCEPTION:
            data = args[1] if len(args) > 1 else b""
            self._answer(500, data, self._job_headers(b"WORK_EXCEPTION"), False)
        elif ptype == _WORK_DATA:
            data = args[1] if len(args) > 1 else b""
            size = self._data_size + len(data)
            limit = self.job_server.settings.max_packet_size
            if size > limit:
                self._data = []
                self.log.info(
                    "Job {handle} sent more WORK_DATA than {peer} may be answered with"
                    " ({limit} bytes); it no longer waits for the job",
                    handle=_text(self.handle),
                    peer=self.describe(),
                    limit=limit,
                )
                text = f"The job's WORK_DATA passed the largest answer ({limit} bytes).\n"
                headers = [*self._job_headers(b"WORK_DATA")]
                self._answer(502, text.encode("utf-8"), headers, False, _TEXT)
                return
            self._data.append(data)
            self._note_data(size)

    def close(self) -> None:
        """
        The job server stops: answer 503 if not answered yet, and close.
        """
        self._answer_text(503, "The job server is stopping.", close=True)

    def describe(self) -> str:
        """
        The client for logs and admin output: C{http:HOST:PORT}.
        """
        return self.channel.describe() if self.channel is not None else "http:-"

    def peer_host(self) -> str:
        """
        The client's IP address (C{unix} for a UNIX socket).
        """
        return _host_of(self.client)

    def fileno(self) -> int:
        """
        The connection's file descriptor, or the participant's number.
        """
        sock = _direct.socket_of(self.transport)
        if sock is not None:
            fd = sock.fileno()
            if fd >= 0:
                return fd
        return self.participant.number if self.participant is not None else -1

    def is_local(self) -> bool:
        """
        Whether the client is on this host: loopback or a UNIX socket.
        """
        return is_local_address(self.client)

    def __repr__(self) -> str:
        return f"<SubmitRequest {self.describe()} {_text(self.method)} {_text(self.uri)}>"


def _host_of(address: IAddress | None) -> str:
    if isinstance(address, (IPv4Address, IPv6Address)):
        return address.host
    if isinstance(address, UNIXAddress):
        return "unix"
    return "-"


#: Bytes of later requests a connection may send while one waits for its
#: job (they wait, unparsed, in memory).
PIPELINED_LIMIT = 256 * 1024


class HTTPSubmitChannel(http.HTTPChannel):
    """
    One HTTP connection (HTTP/1.0, or 1.1 with keep-alive and pipelining:
    twisted.web answers its requests in order, one at a time).

    It counts in the guard's connections and memory budget, and closes
    after a refused request without reading the rest of it (lingering a
    little, dropping what arrives, so that the client reads the answer).

    @ivar job_server: the L{JobServer}.
    @ivar collected: bytes of WORK_DATA its request holds for its answer.
    """

    requestFactory = SubmitRequest  # type: ignore[assignment]
    log = _log.logger("txgearmand.httpsubmit")

    def __init__(self, job_server: JobServer) -> None:
        super().__init__()
        self.job_server = job_server
        self.collected = 0
        self._lingering = False
        self._linger_call: IDelayedCall | None = None
        self._label = "http:-"

    def connectionMade(self) -> None:
        """
        Count the connection, and turn TCP keep-alive on.
        """
        self.job_server.guard.connected()
        assert self.transport is not None
        peer = self.transport.getPeer()
        if isinstance(peer, (IPv4Address, IPv6Address)):
            self._label = f"http:{peer.host}:{peer.port}"
            if self.job_server.settings.tcp_keepalive:
                _keep_alive(self.transport, self.job_server.settings.tcp_keepalive)
        elif isinstance(peer, UNIXAddress):
            self._label = "http:unix"
        super().connectionMade()

    #: Twisted pauses reading once this much of later requests waits
    #: behind the one being answered, and a paused connection's close goes
    #: unnoticed: it is set past L{PIPELINED_LIMIT}, which closes instead.
    _optimisticEagerReadSize = 1 << 30

    def dataReceived(self, data: bytes) -> None:
        """
        Parse requests; after a refusal, drop what arrives.  A client that
        pipelines more than L{PIPELINED_LIMIT} bytes behind a request still
        waiting for its job is closed (its job loses it as a listener).
        """
        if self._lingering:
            return
        waiting = getattr(self, "_dataBuffer", None)
        if (
            getattr(self, "_handlingRequest", False)
            and waiting is not None
            and sum(map(len, waiting)) + len(data) > PIPELINED_LIMIT
        ):
            self.log.info(
                "Closing {peer}: more than {limit} bytes pipelined behind a request",
                peer=self._label,
                limit=PIPELINED_LIMIT,
            )
            self._abort()
            return
        super().dataReceived(data)

    def linger(self) -> None:
        """
        Close after a refusal: stop sending (the answer is written), drop
        what the client still sends for L{LINGER_SECONDS}, then close.
        """
        if self._lingering:
            return
        self._lingering = True
        self.setTimeout(None)
        transport = self.transport
        if transport is None:
            return
        half_close = getattr(transport, "loseWriteConnection", None)
        if half_close is None:
            transport.loseConnection()
            return
        half_close()
        self._linger_call = self.job_server.reactor.callLater(LINGER_SECONDS, self._abort)

    def _abort(self) -> None:
        self._linger_call = None
        transport = self.transport
        if transport is not None:
            abort = getattr(transport, "abortConnection", None)
            if abort is not None:
                abort()
            else:
                transport.loseConnection()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        """
        Forget the connection; its request, if any, stops waiting.
        """
        if self._linger_call is not None and self._linger_call.active():
            self._linger_call.cancel()
        self._linger_call = None
        self.job_server.guard.disconnected(self, 0)
        super().connectionLost(reason)

    # -- the guard (Guarded) --------------------------------------------

    def check_output(self) -> None:
        """
        Tell the guard what this connection holds unsent (and in WORK_DATA
        for an answer); close it past the hard output limit.
        """
        transport = self.transport
        if transport is None:
            self.job_server.guard.note_output(self, 0)
            return
        pending = _direct.buffered(transport) + self.collected
        self.job_server.guard.note_output(self, pending)
        hard = self.job_server.settings.output_hard_limit
        if hard and pending > hard:
            self.job_server.guard.closed_for_output("hard")
            self.log.warn(
                "Closing {peer}: it does not read what it is sent ({pending} bytes unsent,"
                " over the hard output limit of {limit})",
                peer=self.describe(),
                pending=pending,
                limit=hard,
            )
            self.job_server.guard.note_output(self, 0)
            self._abort()

    def stalled(self) -> None:
        """
        Not watched for stalls (twisted.web's idle timeout is); close.
        """
        self._abort()

    def describe(self) -> str:
        """
        The client: C{http:HOST:PORT} (or C{http:unix}).
        """
        return self._label


_TOO_MANY_TEXT = b"The server is at its connection limit; try again later.\n"
_TOO_MANY = (
    b"HTTP/1.1 503 Service Unavailable\r\nServer: %s\r\nContent-Type: %s\r\n"
    b"Content-Length: %d\r\nConnection: close\r\n\r\n%s"
    % (_SERVER, _TEXT, len(_TOO_MANY_TEXT), _TOO_MANY_TEXT)
)


class _Refused(Protocol):
    """
    A connection past the connection limit: told so, and closed.
    """

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.write(_TOO_MANY)
        self.transport.loseConnection()


class HTTPSubmitFactory(ServerFactory):
    """
    Builds an L{HTTPSubmitChannel} for each connection to a L{JobServer}:
    listen with it on any server endpoint to accept jobs over HTTP.

    While the job server does not accept connections (stopped, draining)
    new ones are closed; past C{--max-connections} they are answered 503
    and closed.
    """

    noisy = False

    def __init__(self, job_server: JobServer) -> None:
        """
        @param job_server: the server the jobs go to; its reactor times the
            connections.
        """
        self.job_server = job_server

    def buildProtocol(self, addr: IAddress | None) -> Protocol | None:  # type: ignore[override]
        """
        A new connection's channel, or C{None} / a refusal (see above).
        """
        server = self.job_server
        if not server.accepting:
            return None
        if not server.guard.room_for_connection():
            return _Refused()
        channel = HTTPSubmitChannel(server)
        channel.factory = self
        # The idle timeout (and the header and body timeouts) on the job
        # server's reactor, as twisted.web's own HTTPFactory sets it.
        channel.callLater = server.reactor.callLater  # type: ignore[assignment]
        channel.timeOut = server.settings.read_timeout or None  # type: ignore[assignment]
        return channel

    def log(self, request: Any) -> None:
        """
        twisted.web's access log: not kept (C{--verbose=DEBUG} logs each
        answer).
        """
