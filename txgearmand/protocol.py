# -*- test-case-name: txgearmand.test.test_protocol -*-
"""
One Gearman connection, a thin translator: bytes in, calls on the
L{JobServer} for the connection's L{Participant}; what the server tells
the participant, bytes out.
"""

from __future__ import annotations

import re
import socket
from collections import deque
from collections.abc import Callable

from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.interfaces import IAddress, IPushProducer
from twisted.internet.protocol import Protocol, ServerFactory, connectionDone
from twisted.python.failure import Failure
from zope.interface import implementer

from txgearmand import _direct, _log, admin, wire
from txgearmand.access import IIdentifiedPeer, PeerIdentity, identity_of, is_local_address
from txgearmand.commits import _JOB_CREATED_HEAD, CommitReplies, _pack_size
from txgearmand.interfaces import IPeer
from txgearmand.job import HIGH, LOW, NORMAL, Job, JobState
from txgearmand.records import Participant
from txgearmand.server import JobServer
from txgearmand.wire import GearmanError, PacketType

__all__ = ["GearmanProtocol", "GearmanServerFactory"]

_encode = wire.encode
_READ_SIZE = 256 * 1024

_ERROR = PacketType.ERROR
_JOB_CREATED = PacketType.JOB_CREATED
_RUNNING = JobState.RUNNING
_WHITESPACE = re.compile(rb"\s+")
_MAX_CLIENT_ID = 127
_CLOSED = wire.WireError(b"CLOSED", b"The connection is closed")


@implementer(IPushProducer, IPeer, IIdentifiedPeer)
class GearmanProtocol(CommitReplies, Protocol):
    """
    A connection to the job server: a client, a worker, an admin console or
    all of them at once.  It is the L{IPeer} of its L{Participant}.

    Incoming bytes go through a L{wire.PacketParser}; each message is
    dispatched with one dict lookup to a handler that translates it into a
    call on the L{JobServer}; a L{GearmanError} the server raises becomes
    an ERROR packet, here and nowhere else.  What the connection must send
    while the server works in a batch is buffered and written once when
    the batch ends.  The protocol is its transport's push producer: when
    the peer stops reading and the transport's buffer fills, the
    connection stops reading the peer's requests too.  Replies that wait
    for the store's commit are its part L{CommitReplies}.

    @ivar server: the L{JobServer}.
    @ivar participant: what the server keeps for this connection, from
        C{connectionMade} on.
    @ivar label: shown instead of the peer's address (in-process and child
        connections), or C{None}.
    @ivar paused: its peer does not read what it is sent, so it does not
        read the peer's requests either.
    """

    log = _log.logger("txgearmand.protocol.GearmanProtocol")
    participant: Participant
    #: Read by L{txgearmand.fastreactor}: its events skip Twisted's legacy
    #: log context (the protocol logs with twisted.logger).
    fastDispatch = True

    def __init__(self, server: JobServer) -> None:
        self.server = server
        self._batch = server.output
        self._parser = wire.PacketParser(server.settings.max_packet_size)
        self._out: list[bytes] = []
        self.closed = False
        self._closing = False
        self.paused = False
        #: Output held back behind submissions the store has not committed:
        #: bytes, and the submitted jobs (each stands for its reply).
        self._held: deque[bytes | Job] | None = None
        self._on_commit = self._committed
        self._pending_jobs: set[Job] = set()
        self._twice: set[Job] | None = None
        # Submissions waiting for the store, and whether that stopped reads.
        self._uncommitted = 0
        self._commit_paused = False
        self._socket: socket.socket | None = None
        self._peer: IAddress | None = None
        self.label: str | None = None
        self._guard = server.guard
        self._settings = server.settings
        # Fast path: the hot requests (submit, grab, results) go straight to
        # the server's JobFlow, a call fewer per request than through the
        # JobServer's Gearman::Server-named methods.
        self._flow = server.flow
        self._traffic = server.meters.traffic
        #: Requests refused on this connection (see L{_refused}).
        self._refusals = 0
        #: Bytes the incomplete message holds against the memory budget.
        self._reserved = 0
        #: When the unsent output went over the soft limit, if it is.
        self._soft_since: float | None = None
        self._soft_last = 0
        self._measurable = False

    def __repr__(self) -> str:
        return f"<GearmanProtocol {self.describe()}>"

    # -- Twisted interfaces ---------------------------------------------

    def connectionMade(self) -> None:
        """
        Join the job server, and register as the transport's producer.
        """
        transport = self.transport
        assert transport is not None
        self._guard.connected()
        self._peer = transport.getPeer()
        if isinstance(self._peer, (IPv4Address, IPv6Address)):
            # Small request/reply packets: Nagle's algorithm would hold
            # replies back for the peer's delayed ACK (as Gearman::Server
            # and C gearmand, set TCP_NODELAY).
            try:
                transport.setTcpNoDelay(True)  # type: ignore[attr-defined]
            except (AttributeError, OSError):
                pass
            if self._settings.tcp_keepalive:
                _keep_alive(transport, self._settings.tcp_keepalive)
        transport.registerProducer(self, True)  # type: ignore[attr-defined]
        self._socket = _direct.direct_socket(transport)
        # Output limits apply where the transport's buffer can be measured;
        # elsewhere (test and null transports) writes skip the check.
        self._measurable = _direct.measurable(transport)
        if self._socket is not None:
            # Read up to 256 KiB at a time (Twisted's default is 64 KiB): a
            # 64 KiB job arrives in one read, not two.
            transport.bufferSize = _READ_SIZE  # type: ignore[attr-defined]
        self.participant = self.server.new_client(self)
        self._traffic.connections += 1
        self.log.debug("Connection from {peer}", peer=self.describe())
        if not self.server.ready:
            # Not before the store is replayed: its jobs must be queued first.
            transport.pauseProducing()  # type: ignore[attr-defined]
            self.server.when_ready().addCallbacks(self._server_ready, _ignore)

    def _server_ready(self, _: object) -> None:
        if not self.closed and not self.paused and self.transport is not None:
            self.transport.resumeProducing()  # type: ignore[attr-defined]

    def dataReceived(self, data: bytes) -> None:
        """
        Parse and handle every message C{data} completes.
        """
        batch = self._batch
        batch.depth += 1
        try:
            parser = self._parser
            messages = parser.feed(data)
            traffic = self._traffic
            traffic.bytes_in += len(data)
            traffic.packets_in += len(messages)
            if messages and self._reserved:
                # The packet it reserved for is whole: it is counted as what
                # it becomes (a job), not twice, and it is not stalled.
                self._guard.unreserve(self._reserved)
                self._guard.forget_stall(self)
                self._reserved = 0
            for ptype, body in messages:
                if self.closed:
                    break
                try:
                    _HANDLERS[ptype](self, body)
                except GearmanError as e:
                    _refused(self, ptype, e)
                except Exception:
                    _internal_error(self, ptype)
            if parser.error is not None:
                if not self.closed:
                    _framing_error(self, parser.error)
            elif self._reserved or parser.held:
                # Fast path: a read that ends where a message ends, after
                # one that did too, never reaches the guard.
                self._incomplete(bool(messages))
        finally:
            batch.depth -= 1
            # Fast path: after the turn's first read, a read costs no call
            # to hold the batch open.
            if not batch.depth and not batch.turn_pending:
                batch.hold_until_next_turn()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        """
        Leave the job server, which puts back the jobs this worker held.
        """
        self.closed = True
        self._out = []
        self._held = None
        self._pending_jobs.clear()
        # The participant and the protocol point at each other, so only the
        # cyclic collector frees them: drop a partial packet now.
        self._parser.stop(_CLOSED)
        self._guard.disconnected(self, self._reserved)
        self._reserved = 0
        self.log.debug("Connection from {peer} closed", peer=self.describe())
        with self._batch:
            self.server.note_disconnected_client(self.participant)
        # And its transport, which may hold unsent output up to the limits.
        self.transport = None

    def pauseProducing(self) -> None:
        """
        The peer does not read what we send: stop reading what it sends.
        """
        self.paused = True
        if self.transport is not None:
            self.transport.pauseProducing()  # type: ignore[attr-defined]
        # While we do not read, an incomplete packet is not the peer's stall.
        self._guard.forget_stall(self)

    def resumeProducing(self) -> None:
        """
        The peer reads again: so do we.
        """
        self.paused = False
        if (
            self.transport is not None
            and not self.closed
            and self.server.ready
            and not self._commit_paused
        ):
            self.transport.resumeProducing()  # type: ignore[attr-defined]
            self.check_output()
            timeout = self._settings.read_timeout
            if self._reserved and timeout:
                self._guard.watch_stall(self, self.server.reactor.seconds() + timeout)

    def stopProducing(self) -> None:
        """
        The transport is going away; L{connectionLost} does the rest.
        """

    # -- output (IPeer) -------------------------------------------------

    def send_packet(self, ptype: int, *args: bytes) -> None:
        """
        Send a response packet now, or at the end of the server's batch.
        """
        if self.closed:
            return
        data = _encode(ptype, *args)
        batch = self._batch
        if batch.depth and self._held is None:
            # Fast path (most packets: results relayed while a read is
            # handled): L{_emit}'s buffering inline, two calls fewer.
            self._traffic.packets_out += 1
            out = self._out
            if not out:
                batch.mark_dirty(self)
            out.append(data)
            return
        self.send_raw(data)

    def send_raw(self, data: bytes) -> None:
        """
        Send already encoded bytes now, or at the end of the server's batch.
        """
        if self.closed:
            return
        if self._held is not None:
            self._held.append(data)
            return
        batch = self._batch
        if batch.depth:
            # Fast path (JOB_ASSIGN, NO_JOB): L{_emit}'s buffering inline.
            self._traffic.packets_out += 1
            out = self._out
            if not out:
                batch.mark_dirty(self)
            out.append(data)
            return
        self._emit(data)

    def _emit(self, data: bytes) -> None:
        self._traffic.packets_out += 1
        batch = self._batch
        if batch.depth:
            # Fast path: bytes out are counted once per flush, not per packet.
            out = self._out
            if not out:
                batch.mark_dirty(self)
            out.append(data)
            return
        self._traffic.bytes_out += len(data)
        if _direct.write(self.transport, self._socket, data) and self._measurable:
            self.check_output()

    def send_error(self, code: bytes, text: bytes) -> None:
        """
        Send an ERROR packet.
        """
        self.send_raw(_encode(_ERROR, code, text))

    def flush(self) -> None:
        """
        Write what was buffered during the batch, in one write.
        """
        out = self._out
        if not out:
            return
        self._out = []
        if self.closed or self.transport is None:
            return
        data = out[0] if len(out) == 1 else b"".join(out)
        self._traffic.bytes_out += len(data)
        if _direct.write(self.transport, self._socket, data) and self._measurable:
            self.check_output()

    def close(self) -> None:
        """
        Close the connection once what is buffered has been written.
        """
        if self.closed or self._closing or self.transport is None:
            return
        self._closing = True
        self.flush()
        self.transport.unregisterProducer()  # type: ignore[attr-defined]
        self.transport.loseConnection()

    # -- the guard (Guarded) --------------------------------------------

    def _incomplete(self, completed: bool) -> None:
        """
        An incomplete message is held (or was, before this read): reserve
        what it declares against the memory budget, and watch it for the
        read timeout.

        @param completed: whether this read completed a message, so that
            what is held now is a new one.
        """
        parser = self._parser
        guard = self._guard
        size, in_body = parser.incomplete()
        old = self._reserved
        if size > old:
            # Only submissions are refused: results and status finish jobs
            # and free memory, and refusing them could stall every job.
            refusable = parser.incomplete_type() in _SUBMIT_TYPES
            if not guard.reserve(self, size - old, refusable):
                guard.unreserve(old)
                self._reserved = 0
                guard.forget_stall(self)
                parser.stop(
                    wire.WireError(
                        b"QUEUE_ERROR",
                        b"Server is over its memory budget: packet of %d bytes refused" % size,
                    )
                )
                assert parser.error is not None
                _framing_error(self, parser.error)
                return
        else:
            guard.unreserve(old - size)
        self._reserved = size
        if not size:
            guard.forget_stall(self)
            return
        timeout = self._settings.read_timeout
        if self.paused or self._commit_paused:
            # Not read from now: what it sent incomplete is not its stall
            # (watched again when reading resumes).
            guard.forget_stall(self)
        elif timeout and (in_body or completed or not old):
            # A header or a line must be whole within the timeout of its
            # first byte; a body must not go that long without a byte.
            guard.watch_stall(self, self.server.reactor.seconds() + timeout)

    def stalled(self) -> None:
        """
        What the peer began to send stayed incomplete past the read
        timeout (the guard logs it): close the connection.
        """
        self._abort()

    def check_output(self) -> None:
        """
        Measure the unsent output, tell the guard, and close the
        connection if it is over the hard output limit, or has stayed over
        the soft one for its time.
        """
        if self.closed or self.transport is None:
            self._guard.note_output(self, 0)
            return
        pending = _direct.buffered(self.transport)
        self._guard.note_output(self, pending)
        settings = self._settings
        hard = settings.output_hard_limit
        if hard and pending > hard:
            self._over_output_limit("hard", hard, pending)
            return
        soft = settings.output_soft_limit
        if soft and pending > soft:
            now = self.server.reactor.seconds()
            if self._soft_since is None or pending < self._soft_last:
                # Over the soft limit, or still over it but reading: the
                # time starts (again) now.
                self._soft_since = now
            elif now - self._soft_since >= settings.output_soft_seconds:
                self._over_output_limit("soft", soft, pending)
                return
            self._soft_last = pending
        else:
            self._soft_since = None

    def _over_output_limit(self, kind: str, limit: int, pending: int) -> None:
        self._guard.closed_for_output(kind)
        self.log.warn(
            "Closing {peer}: it does not read what it is sent ({pending} bytes unsent,"
            " over the {kind} output limit of {limit}); it no longer waits for its jobs",
            peer=self.describe(),
            pending=pending,
            kind=kind,
            limit=limit,
        )
        self._abort()

    def _abort(self) -> None:
        """
        Close now, dropping what is unsent (the peer is not reading it).
        """
        transport = self.transport
        if self.closed or transport is None:
            return
        # Closed from now on: nothing more is written to it, or counted,
        # before the transport reports the connection lost.
        self.closed = self._closing = True
        self._out = []
        self._held = None
        self._pending_jobs.clear()
        self._guard.note_output(self, 0)
        self._guard.forget_stall(self)
        abort = getattr(transport, "abortConnection", None)
        if abort is not None:
            abort()
        else:
            transport.loseConnection()

    # -- describing the peer (IPeer) ------------------------------------

    def fileno(self) -> int:
        """
        The connection's file descriptor, or its participant's number when
        it has none.
        """
        getter = getattr(self.transport, "fileno", None)
        if getter is not None:
            try:
                fd = getter()
            except Exception:
                fd = -1
            if isinstance(fd, int) and fd >= 0:
                return fd
        return self.participant.number

    def peer_host(self) -> str:
        """
        The peer's IP address (C{unix} for a UNIX socket), or the label.
        """
        if self.label is not None:
            return self.label
        peer = self._peer
        if isinstance(peer, (IPv4Address, IPv6Address)):
            return peer.host
        if isinstance(peer, UNIXAddress):
            return "unix"
        return "-"

    def describe(self) -> str:
        """
        The peer as C{host:port} (or C{unix}, or the label), for logs and
        admin output.
        """
        if self.label is not None:
            return self.label
        peer = self._peer
        if isinstance(peer, (IPv4Address, IPv6Address)):
            return f"{peer.host}:{peer.port}"
        return self.peer_host()

    def is_local(self) -> bool:
        """
        Whether the peer is on this host: loopback or a UNIX socket.
        """
        return is_local_address(self._peer)

    def identity(self) -> PeerIdentity:
        """
        Who the peer is for the C{--admin-allow} rules: its address, or a
        UNIX socket (in-process and child connections too), and its TLS
        client certificate if it sent one.
        """
        return identity_of(self.transport, self._peer)

    # -- errors ---------------------------------------------------------

    def _submit(
        self,
        function: bytes,
        unique: bytes,
        data: bytes,
        priority: int,
        background: bool,
        reducer: bytes = b"",
        when: float | None = None,
    ) -> None:
        job = self._flow.submit(
            self.participant, function, unique, data, priority, background, reducer, when
        )
        _created(self, job)


_SPLIT_IS_FAST = wire.SPLIT_IS_FAST


def _created(self: GearmanProtocol, job: Job) -> None:
    """
    Answer a submission: JOB_CREATED now, or once the store commits.
    """
    if job.commit_waiters is not None:
        self.reply_when_committed(job)
    elif self._held is None and not self.closed:
        # Fast path: the reply every submission gets, encoded inline and
        # buffered without the send_packet -> send_raw -> encode -> _emit
        # calls (a third of a background submission's calls).
        handle = job.handle
        data = _JOB_CREATED_HEAD + _pack_size(len(handle)) + handle
        batch = self._batch
        if not batch.depth:
            self._emit(data)
            return
        self._traffic.packets_out += 1
        out = self._out
        if not out:
            batch.mark_dirty(self)
        out.append(data)
    else:
        self.send_raw(_encode(_JOB_CREATED, job.handle))


def _refused(self: GearmanProtocol, ptype: int, error: GearmanError) -> None:
    self._refusals += 1
    n = self._refusals
    # A peer that keeps sending what is refused gets the first lines,
    # then one per thousand: the log does not grow a line per packet.
    if n <= _LOGGED_REFUSALS or not n % 1000:
        self.log.info(
            "Refused {request} from {peer}: {code} {text}{more}",
            request=_name(ptype),
            peer=self.describe(),
            code=error.code.decode("ascii", "replace"),
            text=error.text.decode("utf-8", "replace"),
            refusals=n,
            more=(
                f" ({n} refusals on this connection; one in 1000 is logged)"
                if n > _LOGGED_REFUSALS
                else ""
            ),
        )
    self.send_error(error.code, error.text)


def _internal_error(self: GearmanProtocol, ptype: int) -> None:
    self.log.failure(
        "Handling packet type {ptype} from {peer} failed", ptype=ptype, peer=self.describe()
    )
    self.send_error(b"SERVER_ERROR", b"Internal server error")


def _framing_error(self: GearmanProtocol, error: wire.WireError) -> None:
    self.log.info(
        "Closing {peer}: {code} {text}",
        peer=self.describe(),
        code=error.code.decode("ascii", "replace"),
        text=error.text.decode("ascii", "replace"),
    )
    if error.text_line:
        self.send_raw(b"ERR %s %s\r\n" % (error.code, error.text.replace(b" ", b"+")))
    else:
        self.send_error(error.code, error.text)
    self.close()


#: Refusals logged per connection before only every 1000th is.
_LOGGED_REFUSALS = 10


def _name(ptype: int) -> str:
    """
    A request's name for the log.
    """
    try:
        return PacketType(ptype).name
    except ValueError:
        return "admin command" if ptype == wire.TEXT_LINE else str(ptype)


def _keep_alive(transport: object, seconds: float) -> None:
    """
    Turn on TCP keep-alive: after C{seconds} of silence, probe the peer
    (every C{seconds} up to 30 s, four times) so a dead one is found.
    """
    sock = _direct.socket_of(transport)
    if sock is None:
        return
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        idle = max(1, int(seconds))
        for name, value in (
            ("TCP_KEEPIDLE", idle),
            ("TCP_KEEPINTVL", min(idle, 30)),
            ("TCP_KEEPCNT", 4),
        ):
            option = getattr(socket, name, None)
            if option is not None:
                sock.setsockopt(socket.IPPROTO_TCP, option, value)
    except OSError:
        pass


def _ignore(failure: Failure) -> None:
    """
    The store failed to open: the server closes every connection itself.
    """


def _malformed(ptype: int, want: int) -> GearmanError:
    return GearmanError(
        b"INVALID_ARGUMENT",
        b"%s needs %d NUL-separated arguments" % (PacketType(ptype).name.encode("ascii"), want),
    )


def _args(ptype: int, body: bytes, count: int) -> list[bytes]:
    """
    The first C{count} NUL-separated fields of a body (the last one the
    rest of it).

    @raise GearmanError: C{INVALID_ARGUMENT} if there are fewer.
    """
    args = body.split(b"\0", count - 1) if _SPLIT_IS_FAST else wire.split_fields(body, count)
    if len(args) != count:
        raise _malformed(ptype, count)
    return args


# -- handlers: each takes the protocol and the packet's body -------------

_Handler = Callable[[GearmanProtocol, bytes], None]
_P = PacketType
_NO_JOB_PACKET = _encode(_P.NO_JOB)
_INVALID_MAGIC_PACKET = _encode(_ERROR, b"INVALID_MAGIC", b"Request magic expected")
_NOT_EXPECTED_PACKET = _encode(_ERROR, b"INVALID_COMMAND", b"Command not expected")


def _can_do(self: GearmanProtocol, body: bytes) -> None:
    if not body:
        raise GearmanError(b"INVALID_ARGUMENT", b"Function name is empty")
    self.server.workers.can_do(self.participant, body)


def _can_do_timeout(self: GearmanProtocol, body: bytes) -> None:
    function, sep, value = body.partition(b"\0")
    if not sep or not function:
        raise _malformed(_P.CAN_DO_TIMEOUT, 2)
    try:
        timeout = float(value) if value.strip() else 0.0
    except ValueError:
        timeout = float("nan")
    if timeout != timeout or timeout in (float("inf"), float("-inf")):
        raise GearmanError(b"INVALID_ARGUMENT", b"CAN_DO_TIMEOUT needs a number")
    self.server.workers.can_do_timeout(self.participant, function, timeout)


def _cant_do(self: GearmanProtocol, body: bytes) -> None:
    self.server.workers.cant_do(self.participant, body)


def _reset_abilities(self: GearmanProtocol, body: bytes) -> None:
    self.server.workers.reset_abilities(self.participant)


def _pre_sleep(self: GearmanProtocol, body: bytes) -> None:
    self.server.on_client_sleep(self.participant)


#: How each grab is answered: JOB_ASSIGN, JOB_ASSIGN_UNIQ, or (GRAB_JOB_ALL)
#: JOB_ASSIGN_ALL for a job with a reducer and JOB_ASSIGN_UNIQ otherwise.
_ASSIGN: dict[int, Callable[[Job], bytes]] = {
    _P.GRAB_JOB: lambda job: _encode(_P.JOB_ASSIGN, job.handle, job.queue.name, job.data),
    _P.GRAB_JOB_UNIQ: lambda job: _encode(
        _P.JOB_ASSIGN_UNIQ, job.handle, job.queue.name, job.unique, job.data
    ),
    _P.GRAB_JOB_ALL: lambda job: (
        _encode(_P.JOB_ASSIGN_ALL, job.handle, job.queue.name, job.unique, job.reducer, job.data)
        if job.reducer
        else _encode(_P.JOB_ASSIGN_UNIQ, job.handle, job.queue.name, job.unique, job.data)
    ),
}


def _grab_handler(assign: Callable[[Job], bytes]) -> _Handler:
    def grab(self: GearmanProtocol, body: bytes) -> None:
        job = self._flow.grab(self.participant)
        self.send_raw(_NO_JOB_PACKET if job is None else assign(job))

    return grab


def _work_status(self: GearmanProtocol, body: bytes) -> None:
    handle, numerator, denominator = _args(_P.WORK_STATUS, body, 3)
    self._flow.work_status(self.participant, handle, numerator, denominator)


def _work_complete(self: GearmanProtocol, body: bytes) -> None:
    handle, _, data = body.partition(b"\0")
    self._flow.work_complete(self.participant, handle, data)


def _work_fail(self: GearmanProtocol, body: bytes) -> None:
    self._flow.work_fail(self.participant, body.rstrip(b"\0"))


def _work_exception(self: GearmanProtocol, body: bytes) -> None:
    handle, _, data = body.partition(b"\0")
    self._flow.work_exception(self.participant, handle, data)


def _work_data(self: GearmanProtocol, body: bytes) -> None:
    handle, _, data = body.partition(b"\0")
    self._flow.work_data(self.participant, handle, data)


def _work_warning(self: GearmanProtocol, body: bytes) -> None:
    handle, _, data = body.partition(b"\0")
    self._flow.work_data(self.participant, handle, data, warning=True)


def _set_client_id(self: GearmanProtocol, body: bytes) -> None:
    client_id = _WHITESPACE.sub(b"", body)[:_MAX_CLIENT_ID]
    self.participant.client_id = client_id or b"-"


def _all_yours(self: GearmanProtocol, body: bytes) -> None:
    # Never implemented by any server; it expects no answer.
    pass


#: The plain submissions: (priority, background).
_SUBMIT_FORMS = {
    _P.SUBMIT_JOB: (NORMAL, False),
    _P.SUBMIT_JOB_BG: (NORMAL, True),
    _P.SUBMIT_JOB_HIGH: (HIGH, False),
    _P.SUBMIT_JOB_HIGH_BG: (HIGH, True),
    _P.SUBMIT_JOB_LOW: (LOW, False),
    _P.SUBMIT_JOB_LOW_BG: (LOW, True),
}


def _submit_handler(ptype: PacketType, priority: int, background: bool) -> _Handler:
    def submit(self: GearmanProtocol, body: bytes) -> None:
        # (On PyPy find and slice: see wire.SPLIT_IS_FAST.)
        args = body.split(b"\0", 2) if _SPLIT_IS_FAST else wire.split_fields(body, 3)
        if len(args) != 3:
            raise _malformed(ptype, 3)
        # Fast path: straight to JobFlow.submit with the form's constants,
        # a call fewer than through GearmanProtocol._submit.
        _created(
            self,
            self._flow.submit(self.participant, args[0], args[1], args[2], priority, background),
        )

    return submit


def _reduce_handler(ptype: PacketType, background: bool) -> _Handler:
    def submit(self: GearmanProtocol, body: bytes) -> None:
        function, unique, reducer, _aggregator, data = _args(ptype, body, 5)
        self._submit(function, unique, data, NORMAL, background, reducer)

    return submit


def _submit_job_epoch(self: GearmanProtocol, body: bytes) -> None:
    function, unique, epoch, data = _args(_P.SUBMIT_JOB_EPOCH, body, 4)
    try:
        when: float | None = float(int(epoch))
    except (ValueError, OverflowError):
        when = None
    self._submit(function, unique, data, NORMAL, True, b"", when)


def _get_status(self: GearmanProtocol, body: bytes) -> None:
    table = self.server.table
    job = table.by_handle.get(body)
    if job is None:
        # A spilled job is queued: answered from its record, which stays
        # one (a poller of a million handles makes no whole jobs).
        known = b"1" if body in table.spilled else b"0"
        self.send_packet(_P.STATUS_RES, body, known, b"0", b"0", b"0")
    else:
        running = b"1" if job.state is _RUNNING else b"0"
        self.send_packet(_P.STATUS_RES, body, b"1", running, job.numerator, job.denominator)


def _get_status_unique(self: GearmanProtocol, body: bytes) -> None:
    job = self.server.table.of_any_unique(body)
    if job is None:
        self.send_packet(_P.STATUS_RES_UNIQUE, body, b"0", b"0", b"0", b"0", b"0")
    else:
        self.send_packet(
            _P.STATUS_RES_UNIQUE,
            body,
            b"1",
            b"1" if job.state is _RUNNING else b"0",
            job.numerator,
            job.denominator,
            b"%d" % len(job.listeners),
        )


def _echo_req(self: GearmanProtocol, body: bytes) -> None:
    self.send_packet(_P.ECHO_RES, body)


def _option_req(self: GearmanProtocol, body: bytes) -> None:
    if body.lower() != b"exceptions":
        raise GearmanError(b"UNKNOWN_OPTION", b"Server does not recognize given option")
    self.participant.exceptions = True
    self.send_packet(_P.OPTION_RES, body)


def _text_line(self: GearmanProtocol, line: bytes) -> None:
    self.send_raw(admin.reply(self.server, self, line))


def _response_magic(self: GearmanProtocol, body: bytes) -> None:
    self.send_raw(_INVALID_MAGIC_PACKET)


def _not_expected(self: GearmanProtocol, body: bytes) -> None:
    self.send_raw(_NOT_EXPECTED_PACKET)


#: The packet types the memory budget may refuse while they arrive.
_SUBMIT_TYPES = frozenset(
    int(t)
    for t in (
        *_SUBMIT_FORMS,
        _P.SUBMIT_JOB_EPOCH,
        _P.SUBMIT_REDUCE_JOB,
        _P.SUBMIT_REDUCE_JOB_BACKGROUND,
        _P.SUBMIT_JOB_SCHED,
    )
)

#: Packet type (or pseudo type for text lines and response magic) to
#: handler, built once: one dict lookup per message.
_HANDLERS: dict[int, _Handler] = {
    wire.TEXT_LINE: _text_line,
    wire.RESPONSE_PACKET: _response_magic,
    _P.CAN_DO: _can_do,
    _P.CANT_DO: _cant_do,
    _P.RESET_ABILITIES: _reset_abilities,
    _P.PRE_SLEEP: _pre_sleep,
    _P.WORK_STATUS: _work_status,
    _P.WORK_COMPLETE: _work_complete,
    _P.WORK_FAIL: _work_fail,
    _P.GET_STATUS: _get_status,
    _P.ECHO_REQ: _echo_req,
    _P.SET_CLIENT_ID: _set_client_id,
    _P.CAN_DO_TIMEOUT: _can_do_timeout,
    _P.ALL_YOURS: _all_yours,
    _P.WORK_EXCEPTION: _work_exception,
    _P.OPTION_REQ: _option_req,
    _P.WORK_DATA: _work_data,
    _P.WORK_WARNING: _work_warning,
    _P.SUBMIT_JOB_EPOCH: _submit_job_epoch,
    _P.SUBMIT_REDUCE_JOB: _reduce_handler(_P.SUBMIT_REDUCE_JOB, False),
    _P.SUBMIT_REDUCE_JOB_BACKGROUND: _reduce_handler(_P.SUBMIT_REDUCE_JOB_BACKGROUND, True),
    _P.GET_STATUS_UNIQUE: _get_status_unique,
}
for _ptype, (_priority, _background) in _SUBMIT_FORMS.items():
    _HANDLERS[_ptype] = _submit_handler(_ptype, _priority, _background)
for _grab, _assign in _ASSIGN.items():
    _HANDLERS[_grab] = _grab_handler(_assign)
for _type in _P:
    if _type not in wire.REQUEST_TYPES:
        _HANDLERS[_type] = _not_expected
# Keys as plain ints: the parser yields ints.
_HANDLERS = {int(k): v for k, v in _HANDLERS.items()}


class _Refused(Protocol):
    """
    A connection past the connection limit: closed as soon as it is made.
    """

    def connectionMade(self) -> None:
        assert self.transport is not None
        abort = getattr(self.transport, "abortConnection", None)
        if abort is not None:
            abort()
        else:
            self.transport.loseConnection()


class GearmanServerFactory(ServerFactory):
    """
    Builds a L{GearmanProtocol} for each connection to a L{JobServer}.

    Works with any server endpoint; while the job server does not accept
    connections (stopped, or draining for a graceful shutdown) new ones are
    closed at once.
    """

    noisy = False

    def __init__(self, job_server: JobServer) -> None:
        self.job_server = job_server

    def buildProtocol(self, addr: IAddress | None) -> Protocol | None:  # type: ignore[override]
        """
        A new connection's protocol; C{None} while the server does not
        accept connections, a protocol that closes it at once past the
        connection limit.
        """
        if not self.job_server.accepting:
            return None
        if not self.job_server.guard.room_for_connection():
            # Closed at once (by a protocol, not None: TLS wrappers need
            # one); those already open keep being served.
            return _Refused()
        protocol = GearmanProtocol(self.job_server)
        protocol.factory = self
        return protocol
