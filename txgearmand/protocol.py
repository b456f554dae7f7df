# -*- test-case-name: txgearmand.test.test_protocol -*-
"""
One Gearman connection: bytes in, calls on the L{JobServer}; what the
server tells it, bytes out.
"""

from __future__ import annotations

import re
import socket
from collections import deque
from collections.abc import Callable
from typing import Any

from twisted.internet import tcp as _tcp
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.interfaces import IAddress, IPushProducer
from twisted.internet.protocol import Protocol, ServerFactory, connectionDone
from twisted.python.failure import Failure
from zope.interface import implementer

from txgearmand import _log, admin, wire
from txgearmand.job import HIGH, LOW, NORMAL, Job
from txgearmand.server import FunctionQueue, GearmanError, JobServer
from txgearmand.wire import PacketType

__all__ = ["GearmanProtocol", "GearmanServerFactory"]

_encode = wire.encode
_READ_SIZE = 256 * 1024
_ERROR = PacketType.ERROR
_JOB_CREATED = PacketType.JOB_CREATED
_NO_JOB = PacketType.NO_JOB
_WHITESPACE = re.compile(rb"\s+")
_MAX_CLIENT_ID = 127
#: How many released handles a connection remembers.
MAX_RELEASED = 256


@implementer(IPushProducer)
class GearmanProtocol(Protocol):
    """
    A connection to the job server: a client, a worker, an admin console or
    all of them at once.

    Incoming bytes go through a L{wire.PacketParser}; each message is
    dispatched with one dict lookup.  What the connection must send while
    the server works in a batch is buffered and written once when the batch
    ends.  The protocol is its transport's push producer: when the peer
    stops reading and the transport's buffer fills, the connection stops
    reading the peer's requests too.

    @ivar server: the L{JobServer}.
    @ivar abilities: the functions it registered, by name.
    @ivar ability_list: the same L{FunctionQueue}s, in registration order.
    @ivar timeouts: CAN_DO_TIMEOUT limits in seconds, by function name.
    @ivar next_function: where in L{ability_list} the next grab starts.
    @ivar sleeping: sent PRE_SLEEP and was not woken since.
    @ivar jobs_done: jobs it finished since it last slept.
    @ivar held: the jobs it works on, by handle.
    @ivar listening: the jobs it waits on (an ordered set).
    @ivar exceptions: it asked for WORK_EXCEPTION with OPTION_REQ.
    @ivar released: handles of jobs the server took from this worker while
        it still worked on them (timed out, CANT_DO, cancelled) or that it
        ended with WORK_EXCEPTION: results it still sends for them are
        dropped without an ERROR (the last L{MAX_RELEASED} are kept).
    @ivar client_id: set with SET_CLIENT_ID (C{-} by default).
    @ivar number: a number unique among this server's connections.
    @ivar label: shown instead of the peer's address (in-process and child
        connections), or L{None}.
    @ivar paused: its peer does not read what it is sent, so it does not
        read the peer's requests either.
    """

    log = _log.logger("txgearmand.protocol.GearmanProtocol")
    _count = 0

    def __init__(self, server: JobServer) -> None:
        self.server = server
        self._parser = wire.PacketParser(server.max_packet_size)
        self._out: list[bytes] = []
        self.abilities: dict[bytes, FunctionQueue] = {}
        self.ability_list: list[FunctionQueue] = []
        self.timeouts: dict[bytes, float] = {}
        self.next_function = 0
        self.sleeping = False
        self.jobs_done = 0
        self.held: dict[bytes, Job] = {}
        self.listening: dict[Job, None] = {}
        self.exceptions = False
        self.released: dict[bytes, None] = {}
        self.client_id = b"-"
        self.closed = False
        self._closing = False
        self.paused = False
        #: Output held back behind submissions the store has not committed:
        #: bytes, and one-item lists for those replies (filled on commit).
        self._held: deque[bytes | list[bytes | None]] | None = None
        self._socket: socket.socket | None = None
        GearmanProtocol._count += 1
        self.number = GearmanProtocol._count
        self._peer: IAddress | None = None
        self.label: str | None = None

    def __repr__(self) -> str:
        return f"<GearmanProtocol #{self.number} {self.describe()}>"

    # -- Twisted interfaces ---------------------------------------------

    def connectionMade(self) -> None:
        """
        Register with the job server and as the transport's producer.
        """
        transport = self.transport
        assert transport is not None
        self._peer = transport.getPeer()
        if isinstance(self._peer, (IPv4Address, IPv6Address)):
            # Small request/reply packets: Nagle's algorithm would hold
            # replies back for the peer's delayed ACK (as Gearman::Server
            # and C gearmand, set TCP_NODELAY).
            try:
                transport.setTcpNoDelay(True)  # type: ignore[attr-defined]
            except (AttributeError, OSError):
                pass
        transport.registerProducer(self, True)  # type: ignore[attr-defined]
        self._socket = _direct_socket(transport)
        if self._socket is not None:
            # Read up to 256 KiB at a time (Twisted's default is 64 KiB): a
            # 64 KiB job arrives in one read, not two.
            transport.bufferSize = _READ_SIZE  # type: ignore[attr-defined]
        self.server.new_client(self)
        self.log.debug("Connection from {peer}", peer=self.describe())
        if not self.server.ready:
            # Not before the store is replayed: its jobs must be queued first.
            transport.pauseProducing()  # type: ignore[attr-defined]
            self.server.when_ready(self._server_ready)

    def _server_ready(self) -> None:
        if not self.closed and not self.paused and self.transport is not None:
            self.transport.resumeProducing()  # type: ignore[attr-defined]

    def dataReceived(self, data: bytes) -> None:
        """
        Parse and handle every message C{data} completes.
        """
        server = self.server
        server.batch_depth += 1
        try:
            parser = self._parser
            for ptype, body in parser.feed(data):
                if self.closed:
                    break
                try:
                    _HANDLERS[ptype](self, body)
                except Exception:
                    self._internal_error(ptype)
            if parser.error is not None and not self.closed:
                self._framing_error(parser.error)
        finally:
            server.batch_depth -= 1
            if not server.batch_depth:
                server.end_of_input()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        """
        Tell the job server, which puts back the jobs this worker held.
        """
        self.closed = True
        self._out = []
        self._held = None
        self.log.debug("Connection from {peer} closed", peer=self.describe())
        server = self.server
        server.batch_depth += 1
        try:
            server.note_disconnected_client(self)
        finally:
            server.batch_depth -= 1
            if not server.batch_depth:
                server.flush()

    def pauseProducing(self) -> None:
        """
        The peer does not read what we send: stop reading what it sends.
        """
        self.paused = True
        if self.transport is not None:
            self.transport.pauseProducing()  # type: ignore[attr-defined]

    def resumeProducing(self) -> None:
        """
        The peer reads again: so do we.
        """
        self.paused = False
        if self.transport is not None and not self.closed and self.server.ready:
            self.transport.resumeProducing()  # type: ignore[attr-defined]

    def stopProducing(self) -> None:
        """
        The transport is going away; L{connectionLost} does the rest.
        """

    def remember_released(self, handle: bytes) -> None:
        """
        Drop, without an ERROR, results this worker still sends for a job
        the server ended for it.
        """
        released = self.released
        released[handle] = None
        if len(released) > MAX_RELEASED:
            del released[next(iter(released))]

    # -- output ---------------------------------------------------------

    def send_packet(self, ptype: int, *args: bytes) -> None:
        """
        Send a response packet now, or at the end of the server's batch.
        """
        self.send_raw(_encode(ptype, *args))

    def send_raw(self, data: bytes) -> None:
        """
        Send already encoded bytes now, or at the end of the server's batch.
        """
        if self.closed:
            return
        if self._held is not None:
            self._held.append(data)
            return
        self._emit(data)

    def _emit(self, data: bytes) -> None:
        server = self.server
        if server.batch_depth:
            out = self._out
            if not out:
                server.mark_dirty(self)
            out.append(data)
        else:
            self._write(data)

    def _write(self, data: bytes) -> None:
        """
        Write to the transport - straight to its socket when nothing is
        buffered in it, saving Twisted's write-readiness round trip (two
        epoll updates, a poll and a callback) per write.
        """
        transport: Any = self.transport
        sock = self._socket
        if (
            sock is not None
            and not transport._tempDataLen
            and transport.offset == len(transport.dataBuffer)
            and not transport.disconnecting
        ):
            try:
                sent = sock.send(data)
            except OSError:
                # Would block, or the connection is broken: the transport
                # buffers the data, or finds out.
                sent = 0
            if sent == len(data):
                return
            data = data[sent:]
        transport.write(data)

    def reply_when_committed(self, job: Job) -> None:
        """
        Answer a submission with JOB_CREATED once the store has committed
        its job (or with ERROR if it could not); what this connection is
        sent meanwhile waits behind it, so replies keep their order.
        """
        slot: list[bytes | None] = [None]
        if self._held is None:
            self._held = deque()
        self._held.append(slot)
        handle = job.handle

        def committed(failure: Failure | None) -> None:
            if failure is None:
                slot[0] = _encode(_JOB_CREATED, handle)
            else:
                slot[0] = _encode(
                    _ERROR, b"QUEUE_ERROR", b"The job store failed: " + _text(failure)
                )
            self._release_held()

        job.commit_waiters.append(committed)

    def _release_held(self) -> None:
        held = self._held
        while held:
            item = held[0]
            if isinstance(item, list):
                data = item[0]
                if data is None:
                    return
            else:
                data = item
            held.popleft()
            if not self.closed:
                self._emit(data)
        self._held = None

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
        self._write(out[0] if len(out) == 1 else b"".join(out))

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

    # -- describing the peer --------------------------------------------

    def fileno(self) -> int:
        """
        The connection's file descriptor, or its number when it has none.
        """
        transport = self.transport
        getter = getattr(transport, "fileno", None)
        if getter is not None:
            try:
                fd = getter()
            except Exception:
                fd = -1
            if isinstance(fd, int) and fd >= 0:
                return fd
        return self.number

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
        peer = self._peer
        if isinstance(peer, UNIXAddress):
            return True
        if isinstance(peer, IPv4Address):
            return peer.host.startswith("127.")
        if isinstance(peer, IPv6Address):
            return peer.host in ("::1", "0:0:0:0:0:0:0:1") or peer.host.startswith("::ffff:127.")
        return False

    # -- errors ---------------------------------------------------------

    def _internal_error(self, ptype: int) -> None:
        self.log.failure(
            "Handling packet type {ptype} from {peer} failed", ptype=ptype, peer=self.describe()
        )
        self.send_error(b"SERVER_ERROR", b"Internal server error")

    def _framing_error(self, error: wire.WireError) -> None:
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

    def _malformed(self, ptype: int, want: int) -> None:
        self.send_error(
            b"INVALID_ARGUMENT",
            b"%s needs %d NUL-separated arguments" % (PacketType(ptype).name.encode("ascii"), want),
        )

    # -- handlers: workers ----------------------------------------------

    def _h_can_do(self, body: bytes) -> None:
        if not body:
            self.send_error(b"INVALID_ARGUMENT", b"Function name is empty")
            return
        self.server.can_do(self, body)

    def _h_can_do_timeout(self, body: bytes) -> None:
        function, sep, value = body.partition(b"\0")
        if not sep or not function:
            self._malformed(PacketType.CAN_DO_TIMEOUT, 2)
            return
        try:
            timeout = float(value) if value.strip() else 0.0
        except ValueError:
            self.send_error(b"INVALID_ARGUMENT", b"CAN_DO_TIMEOUT needs a number")
            return
        if timeout != timeout or timeout in (float("inf"), float("-inf")):
            self.send_error(b"INVALID_ARGUMENT", b"CAN_DO_TIMEOUT needs a number")
            return
        server = self.server
        if timeout <= 0:
            seconds = None
        elif server.timeout_unit == "milliseconds":
            seconds = max(timeout / 1000.0, 1.0)
        else:
            seconds = timeout
        server.can_do(self, function, seconds)

    def _h_cant_do(self, body: bytes) -> None:
        self.server.cant_do(self, body)

    def _h_reset_abilities(self, body: bytes) -> None:
        self.server.reset_abilities(self)

    def _h_pre_sleep(self, body: bytes) -> None:
        self.server.on_client_sleep(self)

    def _h_grab_job(self, body: bytes) -> None:
        job = self.server.grab_job(self)
        if job is None:
            self.send_raw(_NO_JOB_PACKET)
        else:
            self.send_packet(PacketType.JOB_ASSIGN, job.handle, job.queue.name, job.data)

    def _h_grab_job_uniq(self, body: bytes) -> None:
        job = self.server.grab_job(self)
        if job is None:
            self.send_raw(_NO_JOB_PACKET)
        else:
            self.send_packet(
                PacketType.JOB_ASSIGN_UNIQ, job.handle, job.queue.name, job.unique, job.data
            )

    def _h_grab_job_all(self, body: bytes) -> None:
        job = self.server.grab_job(self)
        if job is None:
            self.send_raw(_NO_JOB_PACKET)
        elif job.reducer:
            self.send_packet(
                PacketType.JOB_ASSIGN_ALL,
                job.handle,
                job.queue.name,
                job.unique,
                job.reducer,
                job.data,
            )
        else:
            self.send_packet(
                PacketType.JOB_ASSIGN_UNIQ, job.handle, job.queue.name, job.unique, job.data
            )

    def _h_work_status(self, body: bytes) -> None:
        args = body.split(b"\0", 2)
        if len(args) != 3:
            self._malformed(PacketType.WORK_STATUS, 3)
            return
        try:
            self.server.work_status(self, args[0], args[1], args[2])
        except GearmanError as e:
            self.send_error(e.code, e.text)

    def _h_work_complete(self, body: bytes) -> None:
        handle, _, data = body.partition(b"\0")
        try:
            self.server.work_complete(self, handle, data)
        except GearmanError as e:
            self.send_error(e.code, e.text)

    def _h_work_fail(self, body: bytes) -> None:
        try:
            self.server.work_fail(self, body.rstrip(b"\0"))
        except GearmanError as e:
            self.send_error(e.code, e.text)

    def _h_work_exception(self, body: bytes) -> None:
        handle, _, data = body.partition(b"\0")
        try:
            self.server.work_exception(self, handle, data)
        except GearmanError as e:
            self.send_error(e.code, e.text)

    def _h_work_data(self, body: bytes) -> None:
        handle, _, data = body.partition(b"\0")
        try:
            self.server.work_data(self, PacketType.WORK_DATA, handle, data)
        except GearmanError as e:
            self.send_error(e.code, e.text)

    def _h_work_warning(self, body: bytes) -> None:
        handle, _, data = body.partition(b"\0")
        try:
            self.server.work_data(self, PacketType.WORK_WARNING, handle, data)
        except GearmanError as e:
            self.send_error(e.code, e.text)

    def _h_set_client_id(self, body: bytes) -> None:
        client_id = _WHITESPACE.sub(b"", body)[:_MAX_CLIENT_ID]
        self.client_id = client_id or b"-"

    def _h_all_yours(self, body: bytes) -> None:
        # Never implemented by any server; it expects no answer.
        pass

    # -- handlers: clients ----------------------------------------------

    def _submit(
        self,
        ptype: int,
        function: bytes,
        unique: bytes,
        data: bytes,
        priority: int,
        background: bool,
        reducer: bytes = b"",
        when: float | None = None,
    ) -> None:
        try:
            job = self.server.submit_job(
                self, function, unique, data, priority, background, reducer, when
            )
        except GearmanError as e:
            self.send_error(e.code, e.text)
            return
        if job.commit_waiters is None:
            self.send_packet(_JOB_CREATED, job.handle)
        else:
            self.reply_when_committed(job)

    def _h_submit_job_epoch(self, body: bytes) -> None:
        args = body.split(b"\0", 3)
        if len(args) != 4:
            self._malformed(PacketType.SUBMIT_JOB_EPOCH, 4)
            return
        try:
            when: float | None = float(int(args[2]))
        except (ValueError, OverflowError):
            when = None
        self._submit(
            PacketType.SUBMIT_JOB_EPOCH, args[0], args[1], args[3], NORMAL, True, b"", when
        )

    def _h_get_status(self, body: bytes) -> None:
        self.send_packet(PacketType.STATUS_RES, *self.server.get_status(body))

    def _h_get_status_unique(self, body: bytes) -> None:
        self.send_packet(PacketType.STATUS_RES_UNIQUE, *self.server.get_status_unique(body))

    def _h_echo_req(self, body: bytes) -> None:
        self.send_packet(PacketType.ECHO_RES, body)

    def _h_option_req(self, body: bytes) -> None:
        if body.lower() == b"exceptions":
            self.exceptions = True
            self.send_packet(PacketType.OPTION_RES, body)
        else:
            self.send_error(b"UNKNOWN_OPTION", b"Server does not recognize given option")

    # -- other messages -------------------------------------------------

    def _h_text(self, line: bytes) -> None:
        admin.handle_line(self, line)

    def _h_response_magic(self, body: bytes) -> None:
        self.send_raw(_INVALID_MAGIC_PACKET)

    def _h_not_expected(self, body: bytes) -> None:
        self.send_raw(_NOT_EXPECTED_PACKET)


def _direct_socket(transport: object) -> socket.socket | None:
    """
    The socket of a plain TCP or UNIX transport whose buffer we can check
    (Twisted's C{tcp.Connection}), else L{None} (TLS, test transports).
    """
    if not isinstance(transport, _tcp.Connection):
        return None
    if not all(hasattr(transport, a) for a in ("_tempDataLen", "offset", "dataBuffer")):
        return None
    sock = getattr(transport, "socket", None)
    return sock if isinstance(sock, socket.socket) else None


def _text(failure: Failure) -> bytes:
    return failure.getErrorMessage().encode("utf-8", "replace")[:200]


_NO_JOB_PACKET = _encode(_NO_JOB)
_INVALID_MAGIC_PACKET = _encode(_ERROR, b"INVALID_MAGIC", b"Request magic expected")
_NOT_EXPECTED_PACKET = _encode(_ERROR, b"INVALID_COMMAND", b"Command not expected")

_Handler = Callable[[GearmanProtocol, bytes], None]


def _submit_handler(ptype: PacketType, priority: int, background: bool) -> _Handler:
    def handle(self: GearmanProtocol, body: bytes) -> None:
        args = body.split(b"\0", 2)
        if len(args) != 3:
            self._malformed(ptype, 3)
            return
        self._submit(ptype, args[0], args[1], args[2], priority, background)

    return handle


def _reduce_handler(ptype: PacketType, background: bool) -> _Handler:
    def handle(self: GearmanProtocol, body: bytes) -> None:
        args = body.split(b"\0", 4)
        if len(args) != 5:
            self._malformed(ptype, 5)
            return
        self._submit(ptype, args[0], args[1], args[4], NORMAL, background, args[2])

    return handle


_P = PacketType
#: Packet type (or pseudo type for text lines and response magic) to
#: handler, built once.
_HANDLERS: dict[int, _Handler] = {
    wire.TEXT_LINE: GearmanProtocol._h_text,
    wire.RESPONSE_PACKET: GearmanProtocol._h_response_magic,
    _P.CAN_DO: GearmanProtocol._h_can_do,
    _P.CANT_DO: GearmanProtocol._h_cant_do,
    _P.RESET_ABILITIES: GearmanProtocol._h_reset_abilities,
    _P.PRE_SLEEP: GearmanProtocol._h_pre_sleep,
    _P.SUBMIT_JOB: _submit_handler(_P.SUBMIT_JOB, NORMAL, False),
    _P.GRAB_JOB: GearmanProtocol._h_grab_job,
    _P.WORK_STATUS: GearmanProtocol._h_work_status,
    _P.WORK_COMPLETE: GearmanProtocol._h_work_complete,
    _P.WORK_FAIL: GearmanProtocol._h_work_fail,
    _P.GET_STATUS: GearmanProtocol._h_get_status,
    _P.ECHO_REQ: GearmanProtocol._h_echo_req,
    _P.SUBMIT_JOB_BG: _submit_handler(_P.SUBMIT_JOB_BG, NORMAL, True),
    _P.SUBMIT_JOB_HIGH: _submit_handler(_P.SUBMIT_JOB_HIGH, HIGH, False),
    _P.SET_CLIENT_ID: GearmanProtocol._h_set_client_id,
    _P.CAN_DO_TIMEOUT: GearmanProtocol._h_can_do_timeout,
    _P.ALL_YOURS: GearmanProtocol._h_all_yours,
    _P.WORK_EXCEPTION: GearmanProtocol._h_work_exception,
    _P.OPTION_REQ: GearmanProtocol._h_option_req,
    _P.WORK_DATA: GearmanProtocol._h_work_data,
    _P.WORK_WARNING: GearmanProtocol._h_work_warning,
    _P.GRAB_JOB_UNIQ: GearmanProtocol._h_grab_job_uniq,
    _P.SUBMIT_JOB_HIGH_BG: _submit_handler(_P.SUBMIT_JOB_HIGH_BG, HIGH, True),
    _P.SUBMIT_JOB_LOW: _submit_handler(_P.SUBMIT_JOB_LOW, LOW, False),
    _P.SUBMIT_JOB_LOW_BG: _submit_handler(_P.SUBMIT_JOB_LOW_BG, LOW, True),
    _P.SUBMIT_JOB_EPOCH: GearmanProtocol._h_submit_job_epoch,
    _P.SUBMIT_REDUCE_JOB: _reduce_handler(_P.SUBMIT_REDUCE_JOB, False),
    _P.SUBMIT_REDUCE_JOB_BACKGROUND: _reduce_handler(_P.SUBMIT_REDUCE_JOB_BACKGROUND, True),
    _P.GRAB_JOB_ALL: GearmanProtocol._h_grab_job_all,
    _P.GET_STATUS_UNIQUE: GearmanProtocol._h_get_status_unique,
}
for _ptype in _P:
    if _ptype not in wire.REQUEST_TYPES:
        _HANDLERS[_ptype] = GearmanProtocol._h_not_expected
# Keys as plain ints: the parser yields ints.
_HANDLERS = {int(k): v for k, v in _HANDLERS.items()}


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

    def buildProtocol(self, addr: IAddress | None) -> GearmanProtocol | None:  # type: ignore[override]
        """
        A new connection's protocol, or L{None} to refuse it.
        """
        if not self.job_server.accepting:
            return None
        protocol = GearmanProtocol(self.job_server)
        protocol.factory = self
        return protocol
