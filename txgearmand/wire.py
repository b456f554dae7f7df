# -*- test-case-name: txgearmand.test.test_wire -*-
"""
The Gearman wire format: packet numbers, framing, encoding and an
incremental parser.

Pure Python with no Twisted import, so it can be fuzzed on its own.

A binary packet is a 12-byte header (4-byte magic, ``\\0REQ`` towards the
server and ``\\0RES`` from it, then big-endian 32-bit type and body size)
followed by the body, whose arguments are separated by single NUL bytes.
Administrative text lines share the same socket: a message whose first
byte is not NUL is a line ending in ``\\n``.
"""

from __future__ import annotations

import struct
import sys
from enum import IntEnum

__all__ = [
    "ARGUMENTS",
    "DEFAULT_MAX_LINE_LENGTH",
    "DEFAULT_MAX_PACKET_SIZE",
    "HEADER_SIZE",
    "MAX_UNIQUE_SIZE",
    "REQUEST_MAGIC",
    "REQUEST_TYPES",
    "RESPONSE_MAGIC",
    "TEXT_LINE",
    "GearmanError",
    "PacketParser",
    "PacketType",
    "Priority",
    "WireError",
    "encode",
    "encode_request",
    "split_body",
]


class PacketType(IntEnum):
    """
    Every packet type of the Gearman protocol, by its number on the wire.
    """

    CAN_DO = 1
    CANT_DO = 2
    RESET_ABILITIES = 3
    PRE_SLEEP = 4
    UNUSED = 5
    NOOP = 6
    SUBMIT_JOB = 7
    JOB_CREATED = 8
    GRAB_JOB = 9
    NO_JOB = 10
    JOB_ASSIGN = 11
    WORK_STATUS = 12
    WORK_COMPLETE = 13
    WORK_FAIL = 14
    GET_STATUS = 15
    ECHO_REQ = 16
    ECHO_RES = 17
    SUBMIT_JOB_BG = 18
    ERROR = 19
    STATUS_RES = 20
    SUBMIT_JOB_HIGH = 21
    SET_CLIENT_ID = 22
    CAN_DO_TIMEOUT = 23
    ALL_YOURS = 24
    WORK_EXCEPTION = 25
    OPTION_REQ = 26
    OPTION_RES = 27
    WORK_DATA = 28
    WORK_WARNING = 29
    GRAB_JOB_UNIQ = 30
    JOB_ASSIGN_UNIQ = 31
    SUBMIT_JOB_HIGH_BG = 32
    SUBMIT_JOB_LOW = 33
    SUBMIT_JOB_LOW_BG = 34
    SUBMIT_JOB_SCHED = 35
    SUBMIT_JOB_EPOCH = 36
    SUBMIT_REDUCE_JOB = 37
    SUBMIT_REDUCE_JOB_BACKGROUND = 38
    GRAB_JOB_ALL = 39
    JOB_ASSIGN_ALL = 40
    GET_STATUS_UNIQUE = 41
    STATUS_RES_UNIQUE = 42


class Priority(IntEnum):
    """
    A job's priority: what a worker is handed first.  The values index a
    function's queues, highest first.
    """

    HIGH = 0
    NORMAL = 1
    LOW = 2


class GearmanError(Exception):
    """
    A request the server refuses, or a server's refusal as a client reads
    it: an ERROR packet's code and text.
    """

    def __init__(self, code: bytes, text: bytes) -> None:
        super().__init__(code, text)
        self.code = code
        self.text = text


#: For each type, how many NUL-separated arguments its body has and whether
#: an opaque data blob follows them (libgearman's command table).  Without
#: data, the last argument is the unterminated rest of the body.
ARGUMENTS: dict[PacketType, tuple[int, bool]] = {
    PacketType.CAN_DO: (1, False),
    PacketType.CANT_DO: (1, False),
    PacketType.RESET_ABILITIES: (0, False),
    PacketType.PRE_SLEEP: (0, False),
    PacketType.UNUSED: (0, False),
    PacketType.NOOP: (0, False),
    PacketType.SUBMIT_JOB: (2, True),
    PacketType.JOB_CREATED: (1, False),
    PacketType.GRAB_JOB: (0, False),
    PacketType.NO_JOB: (0, False),
    PacketType.JOB_ASSIGN: (2, True),
    PacketType.WORK_STATUS: (3, False),
    PacketType.WORK_COMPLETE: (1, True),
    PacketType.WORK_FAIL: (1, False),
    PacketType.GET_STATUS: (1, False),
    PacketType.ECHO_REQ: (0, True),
    PacketType.ECHO_RES: (0, True),
    PacketType.SUBMIT_JOB_BG: (2, True),
    PacketType.ERROR: (2, False),
    PacketType.STATUS_RES: (5, False),
    PacketType.SUBMIT_JOB_HIGH: (2, True),
    PacketType.SET_CLIENT_ID: (1, False),
    PacketType.CAN_DO_TIMEOUT: (2, False),
    PacketType.ALL_YOURS: (0, False),
    PacketType.WORK_EXCEPTION: (1, True),
    PacketType.OPTION_REQ: (1, False),
    PacketType.OPTION_RES: (1, False),
    PacketType.WORK_DATA: (1, True),
    PacketType.WORK_WARNING: (1, True),
    PacketType.GRAB_JOB_UNIQ: (0, False),
    PacketType.JOB_ASSIGN_UNIQ: (3, True),
    PacketType.SUBMIT_JOB_HIGH_BG: (2, True),
    PacketType.SUBMIT_JOB_LOW: (2, True),
    PacketType.SUBMIT_JOB_LOW_BG: (2, True),
    PacketType.SUBMIT_JOB_SCHED: (7, True),
    PacketType.SUBMIT_JOB_EPOCH: (3, True),
    PacketType.SUBMIT_REDUCE_JOB: (4, True),
    PacketType.SUBMIT_REDUCE_JOB_BACKGROUND: (4, True),
    PacketType.GRAB_JOB_ALL: (0, False),
    PacketType.JOB_ASSIGN_ALL: (4, True),
    PacketType.GET_STATUS_UNIQUE: (1, False),
    PacketType.STATUS_RES_UNIQUE: (6, False),
}

#: Types a client or worker may send to a server.  The rest are
#: responses (or, for UNUSED and SUBMIT_JOB_SCHED, never implemented).
REQUEST_TYPES: frozenset[PacketType] = frozenset(
    {
        PacketType.CAN_DO,
        PacketType.CANT_DO,
        PacketType.RESET_ABILITIES,
        PacketType.PRE_SLEEP,
        PacketType.SUBMIT_JOB,
        PacketType.GRAB_JOB,
        PacketType.WORK_STATUS,
        PacketType.WORK_COMPLETE,
        PacketType.WORK_FAIL,
        PacketType.GET_STATUS,
        PacketType.ECHO_REQ,
        PacketType.SUBMIT_JOB_BG,
        PacketType.SUBMIT_JOB_HIGH,
        PacketType.SET_CLIENT_ID,
        PacketType.CAN_DO_TIMEOUT,
        PacketType.ALL_YOURS,
        PacketType.WORK_EXCEPTION,
        PacketType.OPTION_REQ,
        PacketType.WORK_DATA,
        PacketType.WORK_WARNING,
        PacketType.GRAB_JOB_UNIQ,
        PacketType.SUBMIT_JOB_HIGH_BG,
        PacketType.SUBMIT_JOB_LOW,
        PacketType.SUBMIT_JOB_LOW_BG,
        PacketType.SUBMIT_JOB_EPOCH,
        PacketType.SUBMIT_REDUCE_JOB,
        PacketType.SUBMIT_REDUCE_JOB_BACKGROUND,
        PacketType.GRAB_JOB_ALL,
        PacketType.GET_STATUS_UNIQUE,
    }
)

REQUEST_MAGIC = b"\0REQ"
RESPONSE_MAGIC = b"\0RES"
HEADER_SIZE = 12
#: The largest unique id C gearmand accepts.
MAX_UNIQUE_SIZE = 64
#: The largest job handle, terminator excluded (C's GEARMAND_JOB_HANDLE_SIZE).
MAX_HANDLE_SIZE = 63
DEFAULT_MAX_PACKET_SIZE = 64 * 1024 * 1024
DEFAULT_MAX_LINE_LENGTH = 64 * 1024

#: The pseudo packet type the parser gives an administrative text line.
TEXT_LINE = 0
#: The pseudo packet type the parser gives a well-formed packet that carried
#: the response magic: the body is the packet's real type, as 4 bytes.
RESPONSE_PACKET = -1

_MIN_TYPE = 1
_MAX_TYPE = max(PacketType)

_HEADER = struct.Struct(">4sII")
_unpack_header = _HEADER.unpack_from
_pack_header = _HEADER.pack
_pack_type_size = struct.Struct(">II").pack


def encode(ptype: int, *args: bytes) -> bytes:
    """
    Encode a response packet (``\\0RES`` magic) from its arguments.

    @param ptype: the packet type.
    @param args: the arguments, joined with NUL bytes; the last one may be
        opaque data containing NUL bytes.
    @return: the whole packet.
    """
    n = len(args)
    # Fast paths for the usual one to three arguments (JOB_CREATED,
    # WORK_COMPLETE, JOB_ASSIGN): no loop and no star-unpacking, a third
    # less time on CPython and a quarter of it on PyPy.  As below, the
    # header rides on the first (small) argument: one copy of the payload.
    if n == 1:
        a = args[0]
        return RESPONSE_MAGIC + _pack_type_size(ptype, len(a)) + a
    if n == 2:
        a, b = args
        return b"\0".join((RESPONSE_MAGIC + _pack_type_size(ptype, len(a) + len(b) + 1) + a, b))
    if n == 3:
        a, b, c = args
        size = len(a) + len(b) + len(c) + 2
        return b"\0".join((RESPONSE_MAGIC + _pack_type_size(ptype, size) + a, b, c))
    if not args:
        return RESPONSE_MAGIC + _pack_type_size(ptype, 0)
    # One copy of a large payload: the header rides on the first (small)
    # argument instead of being prepended to the joined body.
    size = n - 1
    for arg in args:
        size += len(arg)
    first = RESPONSE_MAGIC + _pack_type_size(ptype, size) + args[0]
    return b"\0".join((first, *args[1:]))


def encode_request(ptype: int, *args: bytes) -> bytes:
    """
    Encode a request packet (``\\0REQ`` magic), as clients and workers send.
    """
    body = b"\0".join(args)
    return REQUEST_MAGIC + _pack_type_size(ptype, len(body)) + body


class WireError:
    """
    A framing error: what to tell the peer before closing the connection.

    @ivar code: the ERROR packet's code (or the ERR line's word).
    @ivar text: a human-readable explanation.
    @ivar text_line: True if the offending message was an admin text line,
        so the answer should be an C{ERR} line rather than an ERROR packet.
    """

    __slots__ = ("code", "text", "text_line")

    def __init__(self, code: bytes, text: bytes, text_line: bool = False) -> None:
        self.code = code
        self.text = text
        self.text_line = text_line

    def __repr__(self) -> str:
        return f"WireError({self.code!r}, {self.text!r}, text_line={self.text_line!r})"


class PacketParser:
    """
    An incremental parser for a Gearman byte stream: what a server receives
    (the default) or, with C{magic=RESPONSE_MAGIC}, what a client receives.

    Feed it bytes as they arrive, in any chunking; it returns the complete
    messages they finish, in order, as C{(type, body)} pairs:

      - a binary packet with the expected magic: its type (1-42) and its
        raw body;
      - an admin text line: L{TEXT_LINE} and the line without its
        C{\\r\\n} or C{\\n};
      - a packet with the other magic and a valid type: L{RESPONSE_PACKET}
        and an empty body (the peer is told so, the connection survives).

    Anything that breaks the framing (an unknown magic or type, a body over
    C{max_packet_size}, a text line over C{max_line_length}) sets L{error}
    and stops the parser: the messages before it are still returned, and
    every later C{feed} returns nothing.  A body over the limit is refused on
    its header, before any of it is buffered.

    Whole packets are sliced straight out of the data they arrive in; only
    an incomplete tail is kept, in a list joined once enough has arrived,
    so a large body arriving in small reads costs linear time.

    @ivar error: the L{WireError} that stopped the parser, or C{None}.
    @ivar held: how many bytes of an incomplete message are held (what
        L{buffered} returns, readable without a call on a hot path).
    """

    __slots__ = (
        "_line_mode",
        "_magic",
        "_need",
        "_other_magic",
        "_pending",
        "error",
        "held",
        "max_line_length",
        "max_packet_size",
    )

    def __init__(
        self,
        max_packet_size: int = DEFAULT_MAX_PACKET_SIZE,
        max_line_length: int = DEFAULT_MAX_LINE_LENGTH,
        magic: bytes = REQUEST_MAGIC,
    ) -> None:
        if magic not in (REQUEST_MAGIC, RESPONSE_MAGIC):
            raise ValueError("magic must be REQUEST_MAGIC or RESPONSE_MAGIC")
        self._magic = magic
        self._other_magic = RESPONSE_MAGIC if magic == REQUEST_MAGIC else REQUEST_MAGIC
        self.max_packet_size = max_packet_size
        self.max_line_length = max_line_length
        self.error: WireError | None = None
        self._pending: list[bytes] = []
        self.held = 0
        self._need = 0
        self._line_mode = False

    def buffered(self) -> int:
        """
        How many bytes of an incomplete message are held.
        """
        return self.held

    def incomplete(self) -> tuple[int, bool]:
        """
        What the incomplete message will take once whole (its full size
        once its header is in, the header's size before that, the bytes
        held for an admin line), and whether its header is complete (so
        that what is missing is a packet body).
        """
        if self._line_mode or not self._pending:
            return (self.held, False)
        return (max(self._need, self.held), self._need > HEADER_SIZE)

    def incomplete_type(self) -> int | None:
        """
        The type of the incomplete message: its packet type once its
        header is in (L{RESPONSE_PACKET} for the other magic), L{TEXT_LINE}
        for an admin line, C{None} before that or when nothing is held.
        """
        if not self._pending:
            return None
        if self._line_mode:
            return TEXT_LINE
        if self._need <= HEADER_SIZE:
            return None
        magic, ptype, _ = _unpack_header(self._pending[0], 0)
        return ptype if magic == self._magic else RESPONSE_PACKET

    def stop(self, error: WireError) -> None:
        """
        Stop parsing, dropping what is held: every later C{feed} returns
        nothing, and L{error} says why.
        """
        self.error = error
        self._pending = []
        self.held = 0

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        """
        Take more bytes; return the messages they complete.
        """
        if self.error is not None:
            return []
        size = len(data)
        if not self._pending and size >= HEADER_SIZE and data[0] == 0:
            # Fast path: a read that is exactly one whole packet (what a
            # client or worker waiting on its reply sends) skips the loop's
            # set-up.  Anything else, or anything wrong with it, takes the
            # loop below, which says what is wrong.
            magic, ptype, length = _unpack_header(data, 0)
            if (
                size == HEADER_SIZE + length
                and magic == self._magic
                and _MIN_TYPE <= ptype <= _MAX_TYPE
                and length <= self.max_packet_size
            ):
                return [(ptype, data[HEADER_SIZE:])]
        if self._pending:
            self._pending.append(data)
            self.held += len(data)
            if self._line_mode:
                if b"\n" not in data:
                    if self.held > self.max_line_length:
                        return self._fail_line()
                    return []
            elif self.held < self._need:
                return []
            data = b"".join(self._pending)
            self._pending = []
            self.held = 0
            size = len(data)
        out: list[tuple[int, bytes]] = []
        append = out.append
        max_packet = self.max_packet_size
        expected = self._magic
        other = self._other_magic
        pos = 0
        while pos < size:
            if data[pos] == 0:
                if size - pos < HEADER_SIZE:
                    self._keep(data, pos, HEADER_SIZE, False)
                    break
                magic, ptype, length = _unpack_header(data, pos)
                if length > max_packet:
                    self.error = WireError(
                        b"ARGUMENT_TOO_LARGE",
                        b"Packet body of %d bytes is over the limit of %d bytes"
                        % (length, max_packet),
                    )
                    break
                if not _MIN_TYPE <= ptype <= _MAX_TYPE:
                    if magic == expected or magic == other:
                        self.error = WireError(b"INVALID_COMMAND", b"Invalid command expected")
                    else:
                        self.error = WireError(b"INVALID_MAGIC", b"Request magic expected")
                    break
                end = pos + HEADER_SIZE + length
                if magic == expected:
                    if end > size:
                        self._keep(data, pos, end - pos, False)
                        break
                    append((ptype, data[pos + HEADER_SIZE : end]))
                elif magic == other:
                    if end > size:
                        self._keep(data, pos, end - pos, False)
                        break
                    append((RESPONSE_PACKET, b""))
                else:
                    self.error = WireError(b"INVALID_MAGIC", b"Request magic expected")
                    break
                pos = end
            else:
                nl = data.find(b"\n", pos)
                if nl < 0:
                    if size - pos > self.max_line_length:
                        self.error = _line_too_long(self.max_line_length)
                        break
                    self._keep(data, pos, 0, True)
                    break
                if nl - pos > self.max_line_length:
                    self.error = _line_too_long(self.max_line_length)
                    break
                end = nl - 1 if nl > pos and data[nl - 1] == 13 else nl
                append((TEXT_LINE, data[pos:end]))
                pos = nl + 1
        return out

    def _keep(self, data: bytes, pos: int, need: int, line_mode: bool) -> None:
        tail = data[pos:] if pos else data
        self._pending = [tail]
        self.held = len(tail)
        self._need = need
        self._line_mode = line_mode

    def _fail_line(self) -> list[tuple[int, bytes]]:
        self.error = _line_too_long(self.max_line_length)
        self._pending = []
        self.held = 0
        return []


#: Whether C{bytes.split(sep, maxsplit)} is the quickest way to take a
#: body's first fields.  On CPython it is (one C call).  PyPy's walks the
#: whole body whatever the maxsplit (a 64 KiB payload: 150 us, five times a
#: find and a slice), so there L{split_fields} finds and slices instead.
SPLIT_IS_FAST = sys.implementation.name != "pypy"


def split_fields(body: bytes, count: int) -> list[bytes]:
    """
    The first C{count} NUL-separated fields of C{body}, the last one the
    rest of it (fewer if it has fewer NULs), as C{bytes.split} with a
    maxsplit of C{count - 1} gives them, by find and slice.
    """
    fields = []
    start = 0
    for _ in range(count - 1):
        nul = body.find(b"\0", start)
        if nul < 0:
            break
        fields.append(body[start:nul])
        start = nul + 1
    fields.append(body[start:] if start else body)
    return fields


def split_body(ptype: int, body: bytes) -> tuple[bytes, ...] | None:
    """
    Split a packet body into its arguments by the type's layout (see
    L{ARGUMENTS}), or return C{None} if it has too few of them.
    """
    argc, has_data = ARGUMENTS[PacketType(ptype)]
    if argc == 0 and not has_data:
        return ()
    want = argc + 1 if has_data else argc
    parts = body.split(b"\0", want - 1) if SPLIT_IS_FAST else split_fields(body, want)
    if len(parts) != want:
        return None
    return tuple(parts)


def _line_too_long(limit: int) -> WireError:
    return WireError(
        b"LINE_TOO_LONG",
        b"Text command longer than %d bytes" % (limit,),
        text_line=True,
    )
