#!/usr/bin/env python3
"""
A coverage-guided fuzz target for the job server's protocol state machine:
sequences of packets on up to three connections, with time passing.

An input is read as a server configuration (wake-up policy, retries, body
limit, exceptions, timeout unit, shutdown policy, max-queue limits, memory
budget, read timeout, and a store: none, in memory, one that commits a
turn later, or one that also fails some batches) and a list of steps
(L{decode_input}): on connection I send a
well-formed request (a fuzz-chosen type with arguments drawn mostly from
small vocabularies - function C{f}, unique C{u}, handle C{fuzz:3} - so
that packets meet existing jobs and workers), an admin text line, or raw
bytes; close connection I; connect it again; advance the clock.  A
request can be cut in two reads, or left to share a read with the next.

The steps run on a L{MemoryGearmanServer} with a fake clock.  A crash is:

  - any exception out of the server (C{dataReceived}, C{connectionLost},
    a timer);
  - the server logging a failure (C{log.failure}, as the protocol does
    when a handler raises, before it answers C{SERVER_ERROR});
  - on a connection that sent no text line: malformed output, or answers
    that do not match the requests in order (L{ANSWERS}: one JOB_CREATED
    or ERROR per submission, one JOB_ASSIGN or NO_JOB per grab, ...);
  - a broken invariant of the model (L{check_server}), checked after every
    step and again once every connection has closed, the clock has run
    on, the store has been replayed into a new server, and the server
    has stopped (no timer may be left).

Run it (from the checkout, with atheris installed)::

    python3 fuzz/protocol.py -max_len=2048 fuzz/corpus/protocol

L{one_input} replays one input without atheris (the test suite does);
C{python3 fuzz/protocol.py --describe FILE...} prints what inputs do and
C{--replay FILE...} runs them with tracebacks.

The invariants read the model's documented attributes (L{JobTable},
L{FunctionQueue}, L{Participant}, L{Job}, L{Guard}) and a few private
ones of L{GearmanProtocol}: C{_out} and C{_held} (nothing may stay
buffered once the connections are quiet), C{_reserved} and C{_parser}
(what a connection reserves against the memory budget).  A rename there
shows up as an C{AttributeError} here.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, Optional, Union, cast

if __name__ == "__main__":
    # Run as a script: this checkout's packages, not an installed copy.
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from twisted.internet.protocol import Protocol, connectionDone
from twisted.python.failure import Failure

from fuzz._reader import ByteReader, ByteWriter
from txgearmand import wire

if TYPE_CHECKING:
    from twisted.internet.task import Clock

    from txgearmand.server import JobServer
    from txgearmand.store.memory import MemoryStore
    from txgearmand.testing import MemoryGearmanServer

__all__ = [
    "Admin",
    "Advance",
    "Close",
    "Config",
    "Connect",
    "FuzzInput",
    "Packet",
    "Raw",
    "check_server",
    "decode_input",
    "describe",
    "encode_input",
    "main",
    "one_input",
]

P = wire.PacketType

# -- what an input can say ------------------------------------------------

#: Argument kinds: each is drawn from its vocabulary, or is raw fuzz bytes.
FUNC, UNIQUE, DATA, HANDLE, NUMBER, EPOCH, TIMEOUT, OPTION, CLIENT_ID = range(9)

#: The job handle prefix: the server's handles are C{fuzz:1}, C{fuzz:2}...
HANDLE_PREFIX = b"fuzz"

VOCABULARY: dict[int, tuple[bytes, ...]] = {
    FUNC: (b"f", b"g", b"h", b"F"),
    UNIQUE: (b"", b"u", b"v", b"-", b"U" * (wire.MAX_UNIQUE_SIZE + 1)),
    DATA: (b"", b"x", b"y", b"x\0y"),
    HANDLE: tuple(b"%s:%d" % (HANDLE_PREFIX, n) for n in range(1, 13)),
    NUMBER: (b"0", b"1", b"2", b"100", b"-1", b"x"),
    EPOCH: (b"0", b"1", b"2", b"10", b"100", b"-5", b"x", b"9" * 25),
    TIMEOUT: (b"0", b"1", b"500", b"1000", b"1500", b"3", b"-1", b"nan", b"inf", b"x", b" "),
    OPTION: (b"exceptions", b"EXCEPTIONS", b"other"),
    CLIENT_ID: (b"w1", b"a b", b""),
}
#: The longest raw argument.
RAW_ARGUMENT = 16
#: The longest raw chunk of bytes.
RAW_CHUNK = 64

#: The arguments of each request type, by kind.
_REQUEST_LAYOUT: dict[int, tuple[int, ...]] = {
    P.CAN_DO: (FUNC,),
    P.CANT_DO: (FUNC,),
    P.RESET_ABILITIES: (),
    P.PRE_SLEEP: (),
    P.SUBMIT_JOB: (FUNC, UNIQUE, DATA),
    P.GRAB_JOB: (),
    P.WORK_STATUS: (HANDLE, NUMBER, NUMBER),
    P.WORK_COMPLETE: (HANDLE, DATA),
    P.WORK_FAIL: (HANDLE,),
    P.GET_STATUS: (HANDLE,),
    P.ECHO_REQ: (DATA,),
    P.SUBMIT_JOB_BG: (FUNC, UNIQUE, DATA),
    P.SUBMIT_JOB_HIGH: (FUNC, UNIQUE, DATA),
    P.SET_CLIENT_ID: (CLIENT_ID,),
    P.CAN_DO_TIMEOUT: (FUNC, TIMEOUT),
    P.ALL_YOURS: (),
    P.WORK_EXCEPTION: (HANDLE, DATA),
    P.OPTION_REQ: (OPTION,),
    P.WORK_DATA: (HANDLE, DATA),
    P.WORK_WARNING: (HANDLE, DATA),
    P.GRAB_JOB_UNIQ: (),
    P.SUBMIT_JOB_HIGH_BG: (FUNC, UNIQUE, DATA),
    P.SUBMIT_JOB_LOW: (FUNC, UNIQUE, DATA),
    P.SUBMIT_JOB_LOW_BG: (FUNC, UNIQUE, DATA),
    P.SUBMIT_JOB_EPOCH: (FUNC, UNIQUE, EPOCH, DATA),
    P.SUBMIT_REDUCE_JOB: (FUNC, UNIQUE, FUNC, DATA, DATA),
    P.SUBMIT_REDUCE_JOB_BACKGROUND: (FUNC, UNIQUE, FUNC, DATA, DATA),
    P.GRAB_JOB_ALL: (),
    P.GET_STATUS_UNIQUE: (UNIQUE,),
}


def _layout(ptype: int) -> tuple[int, ...]:
    layout = _REQUEST_LAYOUT.get(ptype)
    if layout is not None:
        return layout
    # A type only a server sends: as many data arguments as it has.
    argc, has_data = wire.ARGUMENTS[P(ptype)]
    return (DATA,) * (argc + has_data)


#: Every packet type: requests first (by number), then the others.
PACKET_TYPES: tuple[int, ...] = tuple(
    [int(t) for t in sorted(wire.REQUEST_TYPES)]
    + [int(t) for t in P if t not in wire.REQUEST_TYPES]
)
LAYOUTS: dict[int, tuple[int, ...]] = {t: _layout(t) for t in PACKET_TYPES}

#: How a packet is framed: as it should be, one argument short, one too
#: many, or with the response magic.
NORMAL, SHORT, LONG, RESPONSE_MAGIC = range(4)
#: The largest cut: a packet is cut in two reads at this offset (0: none).
MAX_CUT = 255

#: Admin lines: literal words and argument kinds, joined by spaces.
ADMIN_TEMPLATES: tuple[tuple[Union[bytes, int], ...], ...] = (
    (b"status",),
    (b"prioritystatus",),
    (b"workers",),
    (b"show", b"jobs"),
    (b"show", b"unique", b"jobs"),
    (b"jobs",),
    (b"clients",),
    (b"getpid",),
    (b"verbose",),
    (b"version",),
    (b"maxqueue", FUNC),
    (b"maxqueue", FUNC, NUMBER),
    (b"maxqueue", FUNC, NUMBER, NUMBER),
    (b"maxqueue", FUNC, NUMBER, NUMBER, NUMBER),
    (b"cancel", b"job", HANDLE),
    (b"create", b"function", FUNC),
    (b"drop", b"function", FUNC),
    (b"shutdown",),
    (b"shutdown", b"graceful"),
    (b"shutdown", DATA),
    (DATA,),
    (DATA, DATA, DATA, DATA, DATA, DATA),
    (b"show", DATA),
    (b"limits",),
)

#: Clock steps.
DELAYS = (0.0, 0.05, 0.1, 0.5, 1.0, 1.5, 2.0, 5.0, 30.0, 120.0)

#: How many connections (slots) an input can use.
SLOTS = 3
#: The most steps an input runs.
MAX_STEPS = 64

#: Settings an input can choose; the first of each is the default.
WAKEUPS = (3, 1, 0, -1, 2)
WAKEUP_DELAYS = (0.1, 0.0, -1.0, 1.0)
MAX_RETRIES = 3
PACKET_SIZES = (wire.DEFAULT_MAX_PACKET_SIZE, 64, 1024)
TIMEOUT_UNITS = ("milliseconds", "seconds")
SHUTDOWN_POLICIES = ("local", "never", "any")
#: Memory budgets: large, none, a few jobs, a few dozen jobs.
MAX_MEMORIES = (1 << 30, 0, 3000, 20000)
READ_TIMEOUTS = (60.0, 0.0, 1.0)
#: Stores: none; a L{MemoryStore}; one that commits on the next turn; one
#: that also fails to store any batch with a job whose payload is C{y}.
NO_STORE, MEMORY_STORE, SLOW_STORE, FLAKY_STORE = range(4)
STORES = ("none", "memory", "slow", "flaky")
#: The payload a flaky store refuses.
REFUSED_PAYLOAD = b"y"
MAX_QUEUES: tuple[Mapping[bytes, Union[int, tuple[int, ...]]], ...] = (
    {},
    {b"f": 1},
    {b"f": (0, 2, 1)},
    {b"g": 2},
)


class Config(NamedTuple):
    """
    The server an input runs on, and how many connections it opens first.
    """

    connections: int = 1
    wakeup: int = WAKEUPS[0]
    wakeup_delay: float = WAKEUP_DELAYS[0]
    job_retries: int = 0
    max_packet_size: int = PACKET_SIZES[0]
    exceptions: bool = False
    timeout_unit: str = TIMEOUT_UNITS[0]
    admin_shutdown: str = SHUTDOWN_POLICIES[0]
    #: Give the server an C{on_shutdown}, so admin C{shutdown} works.
    shutdown_action: bool = False
    #: Where background jobs are kept: an index into L{STORES}.
    store: int = 0
    #: An index into L{MAX_QUEUES}.
    max_queue: int = 0
    max_memory: int = MAX_MEMORIES[0]
    read_timeout: float = READ_TIMEOUTS[0]


class Packet(NamedTuple):
    """
    Send a request on a connection (cut in two reads at C{cut}, if inside
    it), then let the bytes flow unless C{flush} is false.
    """

    slot: int
    ptype: int
    args: tuple[bytes, ...]
    shape: int = NORMAL
    cut: int = 0
    flush: bool = True


class Admin(NamedTuple):
    """
    Send an admin text line (L{ADMIN_TEMPLATES}C{[template]} filled with
    C{args}) on a connection.
    """

    slot: int
    template: int
    args: tuple[bytes, ...] = ()
    crlf: bool = False
    flush: bool = True


class Raw(NamedTuple):
    """
    Send raw bytes on a connection.
    """

    slot: int
    data: bytes
    flush: bool = True


class Close(NamedTuple):
    """
    The client closes a connection.
    """

    slot: int


class Connect(NamedTuple):
    """
    Open a new connection in a slot whose connection is closed.
    """

    slot: int


class Advance(NamedTuple):
    """
    Move the clock by L{DELAYS}C{[delay]} seconds.
    """

    delay: int


Step = Union[Packet, Admin, Raw, Close, Connect, Advance]

#: What an operation number means (packets more often than the rest).
OPERATIONS: tuple[type[Any], ...] = (Packet, Packet, Packet, Admin, Raw, Close, Connect, Advance)


class FuzzInput(NamedTuple):
    """
    What one input does.
    """

    config: Config
    steps: tuple[Step, ...]


# -- reading and writing inputs ---------------------------------------------


def _read_argument(reader: ByteReader, kind: int) -> bytes:
    vocabulary = VOCABULARY[kind]
    index = reader.ConsumeIntInRange(0, len(vocabulary))
    if index < len(vocabulary):
        return vocabulary[index]
    return reader.ConsumeShortBytes(RAW_ARGUMENT)


def _write_argument(writer: ByteWriter, kind: int, value: bytes) -> None:
    vocabulary = VOCABULARY[kind]
    if value in vocabulary:
        writer.WriteIntInRange(vocabulary.index(value), 0, len(vocabulary))
    else:
        writer.WriteIntInRange(len(vocabulary), 0, len(vocabulary))
        writer.WriteShortBytes(value, RAW_ARGUMENT)


def _admin_kinds(template: int) -> tuple[int, ...]:
    return tuple(part for part in ADMIN_TEMPLATES[template] if isinstance(part, int))


def _read_config(reader: ByteReader) -> Config:
    return Config(
        connections=reader.ConsumeIntInRange(1, SLOTS),
        wakeup=reader.PickValueInList(WAKEUPS),
        wakeup_delay=reader.PickValueInList(WAKEUP_DELAYS),
        job_retries=reader.ConsumeIntInRange(0, MAX_RETRIES),
        max_packet_size=reader.PickValueInList(PACKET_SIZES),
        exceptions=reader.ConsumeBool(),
        timeout_unit=reader.PickValueInList(TIMEOUT_UNITS),
        admin_shutdown=reader.PickValueInList(SHUTDOWN_POLICIES),
        shutdown_action=reader.ConsumeBool(),
        store=reader.ConsumeIntInRange(0, len(STORES) - 1),
        max_queue=reader.ConsumeIntInRange(0, len(MAX_QUEUES) - 1),
        max_memory=reader.PickValueInList(MAX_MEMORIES),
        read_timeout=reader.PickValueInList(READ_TIMEOUTS),
    )


def _write_config(writer: ByteWriter, config: Config) -> None:
    writer.WriteIntInRange(config.connections, 1, SLOTS)
    writer.WriteValueInList(config.wakeup, WAKEUPS)
    writer.WriteValueInList(config.wakeup_delay, WAKEUP_DELAYS)
    writer.WriteIntInRange(config.job_retries, 0, MAX_RETRIES)
    writer.WriteValueInList(config.max_packet_size, PACKET_SIZES)
    writer.WriteBool(config.exceptions)
    writer.WriteValueInList(config.timeout_unit, TIMEOUT_UNITS)
    writer.WriteValueInList(config.admin_shutdown, SHUTDOWN_POLICIES)
    writer.WriteBool(config.shutdown_action)
    writer.WriteIntInRange(config.store, 0, len(STORES) - 1)
    writer.WriteIntInRange(config.max_queue, 0, len(MAX_QUEUES) - 1)
    writer.WriteValueInList(config.max_memory, MAX_MEMORIES)
    writer.WriteValueInList(config.read_timeout, READ_TIMEOUTS)


def _read_step(reader: ByteReader) -> Step:
    operation = OPERATIONS[reader.ConsumeIntInRange(0, len(OPERATIONS) - 1)]
    if operation is Packet:
        slot = reader.ConsumeIntInRange(0, SLOTS - 1)
        ptype = reader.PickValueInList(PACKET_TYPES)
        args = tuple(_read_argument(reader, kind) for kind in LAYOUTS[ptype])
        shape = reader.ConsumeIntInRange(NORMAL, RESPONSE_MAGIC)
        cut = reader.ConsumeIntInRange(0, MAX_CUT)
        return Packet(slot, ptype, args, shape, cut, not reader.ConsumeBool())
    if operation is Admin:
        slot = reader.ConsumeIntInRange(0, SLOTS - 1)
        template = reader.ConsumeIntInRange(0, len(ADMIN_TEMPLATES) - 1)
        args = tuple(_read_argument(reader, kind) for kind in _admin_kinds(template))
        crlf = reader.ConsumeBool()
        return Admin(slot, template, args, crlf, not reader.ConsumeBool())
    if operation is Raw:
        slot = reader.ConsumeIntInRange(0, SLOTS - 1)
        data = reader.ConsumeShortBytes(RAW_CHUNK)
        return Raw(slot, data, not reader.ConsumeBool())
    if operation is Close:
        return Close(reader.ConsumeIntInRange(0, SLOTS - 1))
    if operation is Connect:
        return Connect(reader.ConsumeIntInRange(0, SLOTS - 1))
    return Advance(reader.ConsumeIntInRange(0, len(DELAYS) - 1))


def _write_step(writer: ByteWriter, step: Step) -> None:
    writer.WriteIntInRange(OPERATIONS.index(type(step)), 0, len(OPERATIONS) - 1)
    if isinstance(step, Advance):
        writer.WriteIntInRange(step.delay, 0, len(DELAYS) - 1)
        return
    writer.WriteIntInRange(step.slot, 0, SLOTS - 1)
    if isinstance(step, Packet):
        writer.WriteValueInList(step.ptype, PACKET_TYPES)
        kinds = LAYOUTS[step.ptype]
        if len(step.args) != len(kinds):
            raise ValueError(f"{P(step.ptype).name} takes {len(kinds)} arguments")
        for kind, value in zip(kinds, step.args):
            _write_argument(writer, kind, value)
        writer.WriteIntInRange(step.shape, NORMAL, RESPONSE_MAGIC)
        writer.WriteIntInRange(step.cut, 0, MAX_CUT)
        writer.WriteBool(not step.flush)
    elif isinstance(step, Admin):
        writer.WriteIntInRange(step.template, 0, len(ADMIN_TEMPLATES) - 1)
        kinds = _admin_kinds(step.template)
        if len(step.args) != len(kinds):
            raise ValueError(f"admin template {step.template} takes {len(kinds)} arguments")
        for kind, value in zip(kinds, step.args):
            _write_argument(writer, kind, value)
        writer.WriteBool(step.crlf)
        writer.WriteBool(not step.flush)
    elif isinstance(step, Raw):
        writer.WriteShortBytes(step.data, RAW_CHUNK)
        writer.WriteBool(not step.flush)


def decode_input(data: bytes) -> FuzzInput:
    """
    Read what an input does: its configuration, then steps until the input
    (or L{MAX_STEPS}) runs out.
    """
    reader = ByteReader(data)
    config = _read_config(reader)
    steps: list[Step] = []
    while reader.remaining_bytes() and len(steps) < MAX_STEPS:
        steps.append(_read_step(reader))
    return FuzzInput(config, tuple(steps))


def encode_input(spec: FuzzInput) -> bytes:
    """
    The input that L{decode_input} reads as C{spec}.
    """
    if len(spec.steps) > MAX_STEPS:
        raise ValueError(f"at most {MAX_STEPS} steps")
    writer = ByteWriter()
    _write_config(writer, spec.config)
    for step in spec.steps:
        _write_step(writer, step)
    return writer.getvalue()


def packet_bytes(step: Packet) -> bytes:
    """
    The bytes a L{Packet} step sends.
    """
    args = list(step.args)
    if step.shape == SHORT and args:
        args.pop()
    elif step.shape == LONG:
        args.append(b"z")
    if step.shape == RESPONSE_MAGIC:
        return wire.encode(step.ptype, *args)
    return wire.encode_request(step.ptype, *args)


def admin_bytes(step: Admin) -> bytes:
    """
    The line an L{Admin} step sends.
    """
    args = iter(step.args)
    words = [
        part if isinstance(part, bytes) else next(args) for part in ADMIN_TEMPLATES[step.template]
    ]
    return b" ".join(words) + (b"\r\n" if step.crlf else b"\n")


def describe(data: bytes) -> str:
    """
    What an input does, one step a line.
    """
    spec = decode_input(data)
    lines = [repr(spec.config)]
    for step in spec.steps:
        if isinstance(step, Packet):
            shape = ("", " (short)", " (long)", " (response magic)")[step.shape]
            lines.append(
                f"[{step.slot}] {P(step.ptype).name}{shape} {list(step.args)!r}"
                f" cut={step.cut} flush={step.flush}"
            )
        elif isinstance(step, Admin):
            lines.append(f"[{step.slot}] admin {admin_bytes(step)!r} flush={step.flush}")
        elif isinstance(step, Raw):
            lines.append(f"[{step.slot}] raw {step.data!r} flush={step.flush}")
        elif isinstance(step, Advance):
            lines.append(f"advance {DELAYS[step.delay]}")
        else:
            lines.append(f"[{step.slot}] {type(step).__name__.lower()}")
    return "\n".join(lines)


# -- running an input ---------------------------------------------------------

#: The packet types a server may send.
SERVER_SENDS = frozenset(
    int(t)
    for t in (
        P.NOOP,
        P.JOB_CREATED,
        P.NO_JOB,
        P.JOB_ASSIGN,
        P.WORK_STATUS,
        P.WORK_COMPLETE,
        P.WORK_FAIL,
        P.ECHO_RES,
        P.ERROR,
        P.STATUS_RES,
        P.WORK_EXCEPTION,
        P.OPTION_RES,
        P.WORK_DATA,
        P.WORK_WARNING,
        P.JOB_ASSIGN_UNIQ,
        P.JOB_ASSIGN_ALL,
        P.STATUS_RES_UNIQUE,
    )
)


#: What the server sends on its own, not as the answer to a request.
UNASKED = frozenset(
    int(t)
    for t in (
        P.NOOP,
        P.WORK_STATUS,
        P.WORK_COMPLETE,
        P.WORK_FAIL,
        P.WORK_EXCEPTION,
        P.WORK_DATA,
        P.WORK_WARNING,
    )
)

_SUBMITS = (
    P.SUBMIT_JOB,
    P.SUBMIT_JOB_BG,
    P.SUBMIT_JOB_HIGH,
    P.SUBMIT_JOB_HIGH_BG,
    P.SUBMIT_JOB_LOW,
    P.SUBMIT_JOB_LOW_BG,
    P.SUBMIT_JOB_EPOCH,
    P.SUBMIT_REDUCE_JOB,
    P.SUBMIT_REDUCE_JOB_BACKGROUND,
)
#: An expected answer: the packet types it may be, and whether it is optional.
Answer = tuple[frozenset[int], bool]
_ONE_ERROR: Answer = (frozenset({int(P.ERROR)}), False)
_MAYBE_ERROR: Answer = (frozenset({int(P.ERROR)}), True)
_SILENT: Answer = (frozenset(), True)

#: How the server answers each message a client sends: exactly one packet
#: of a set of types, or (optional) at most one.  Every message not listed
#: is answered with one ERROR (a response magic, a type only a server sends).
ANSWERS: dict[int, Answer] = {
    **{int(t): (frozenset({int(P.JOB_CREATED), int(P.ERROR)}), False) for t in _SUBMITS},
    int(P.GRAB_JOB): (frozenset({int(P.JOB_ASSIGN), int(P.NO_JOB)}), False),
    int(P.GRAB_JOB_UNIQ): (frozenset({int(P.JOB_ASSIGN_UNIQ), int(P.NO_JOB)}), False),
    int(P.GRAB_JOB_ALL): (
        frozenset({int(P.JOB_ASSIGN_UNIQ), int(P.JOB_ASSIGN_ALL), int(P.NO_JOB)}),
        False,
    ),
    int(P.ECHO_REQ): (frozenset({int(P.ECHO_RES)}), False),
    int(P.GET_STATUS): (frozenset({int(P.STATUS_RES)}), False),
    int(P.GET_STATUS_UNIQUE): (frozenset({int(P.STATUS_RES_UNIQUE)}), False),
    int(P.OPTION_REQ): (frozenset({int(P.OPTION_RES), int(P.ERROR)}), False),
    **{
        int(t): _MAYBE_ERROR
        for t in (
            P.CAN_DO,
            P.CAN_DO_TIMEOUT,
            P.WORK_STATUS,
            P.WORK_COMPLETE,
            P.WORK_FAIL,
            P.WORK_EXCEPTION,
            P.WORK_DATA,
            P.WORK_WARNING,
        )
    },
    **{
        int(t): _SILENT
        for t in (P.CANT_DO, P.RESET_ABILITIES, P.PRE_SLEEP, P.SET_CLIENT_ID, P.ALL_YOURS)
    },
}


class Broken(AssertionError):
    """
    The server broke an invariant (or crashed) on a fuzz input.
    """


#: Invariants not to check, by name (comma-separated in the environment
#: variable C{TXGEARMAND_FUZZ_IGNORE}): to keep fuzzing past a known bug
#: until it is fixed.
IGNORED = frozenset(filter(None, os.environ.get("TXGEARMAND_FUZZ_IGNORE", "").split(",")))


def _fail(message: str, name: str = "") -> None:
    """
    Raise L{Broken}, unless the invariant C{name} is in L{IGNORED}.
    """
    if name and name in IGNORED:
        return
    raise Broken(f"[{name}] {message}" if name else message)


class _Client(Protocol):
    """
    The client side of a connection: it records what it receives.
    """

    def __init__(self) -> None:
        self.received: list[bytes] = []
        self.lost = False

    def dataReceived(self, data: bytes) -> None:
        self.received.append(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.lost = True


class _Connection:
    """
    One client connection of an input: the client side, the server's
    protocol, and what was sent on it.
    """

    def __init__(self, server: MemoryGearmanServer, max_packet_size: int) -> None:
        self.client = _Client()
        self.server = server.connect(self.client)
        self.participant = self.server.participant
        #: Parses what the client sends, to notice admin text lines.
        self.sent = wire.PacketParser(max_packet_size)
        #: Sent a text line: the replies are not all packets any more.
        self.text = False
        #: Parses what the server sends, while C{text} is false.
        self.replies = wire.PacketParser(magic=wire.RESPONSE_MAGIC)
        #: The answers expected for what was sent, in order (L{ANSWERS}).
        self.expected: list[Answer] = []
        #: How many of them the answers so far may have settled: the
        #: states of a small automaton, as optional answers make it
        #: ambiguous.
        self.settled = {0}

    @property
    def lost(self) -> bool:
        """
        The client saw the connection end.
        """
        return bool(self.client.lost)

    def write(self, data: bytes) -> None:
        """
        Send bytes (they move when the server is flushed).
        """
        if self.lost:
            return
        transport = self.client.transport
        if transport is None:
            return
        transport.write(data)
        error = self.sent.error
        for ptype, _ in self.sent.feed(data):
            if ptype == wire.TEXT_LINE:
                self.text = True
            self.expected.append(ANSWERS.get(ptype, _ONE_ERROR))
        if error is None and self.sent.error is not None:
            if self.sent.error.text_line:
                self.text = True
            self.expected.append(_ONE_ERROR)

    def _skip_optional(self, states: set[int]) -> set[int]:
        out = set()
        expected = self.expected
        for state in states:
            out.add(state)
            while state < len(expected) and expected[state][1]:
                state += 1
                out.add(state)
        return out

    def _answer(self, ptype: int, body: bytes) -> None:
        """
        The server answered: that must be the next answer expected (past
        optional ones).
        """
        expected = self.expected
        states = {
            state + 1
            for state in self._skip_optional(self.settled)
            if state < len(expected) and ptype in expected[state][0]
        }
        if not states:
            if self.lost:
                # It closed the connection (and may have said why).
                self.text = True
                return
            waiting = [sorted(P(t).name for t in e[0]) for e in expected[min(self.settled) :]]
            _fail(
                f"{self.participant!r} got {P(ptype).name} {body!r}"
                f" while expecting answers {waiting!r}",
                "answers",
            )
            return
        self.settled = states

    def check_answered(self) -> None:
        """
        Every message sent on an open connection that sent only packets
        has had its answer.
        """
        if self.text or self.lost:
            return
        if len(self.expected) not in self._skip_optional(self.settled):
            waiting = [sorted(P(t).name for t in e[0]) for e in self.expected[min(self.settled) :]]
            _fail(f"{self.participant!r} still waits for answers {waiting!r}", "answers")

    def close(self) -> None:
        """
        The client closes the connection.
        """
        transport = self.client.transport
        if transport is not None and not self.lost:
            transport.loseConnection()

    def check_replies(self) -> None:
        """
        Everything the server sent a connection that sent only packets is
        well-formed response packets of types a server sends.
        """
        received, self.client.received = self.client.received, []
        if self.text:
            return
        for data in received:
            for ptype, body in self.replies.feed(data):
                if ptype not in SERVER_SENDS:
                    _fail(f"the server sent message type {ptype}: {body!r}")
                args = wire.split_body(ptype, body)
                if args is None:
                    _fail(f"the server sent a malformed {P(ptype).name}: {body!r}")
                if ptype == P.ERROR and args and args[0] == b"SERVER_ERROR":
                    _fail(f"the server answered SERVER_ERROR: {body!r}")
                if ptype not in UNASKED and not self.text:
                    self._answer(ptype, body)
            if self.replies.error is not None:
                _fail(f"the server sent bytes a client cannot parse: {self.replies.error!r}")


class _Run:
    """
    One input running on a L{MemoryGearmanServer}.
    """

    def __init__(self, config: Config, logged: list[dict[str, Any]]) -> None:
        """
        @param logged: where the log events that carry a failure arrive.
        """
        from twisted.internet.task import Clock

        from txgearmand.store.memory import MemoryStore
        from txgearmand.testing import MemoryGearmanServer

        self.config = config
        self.logged = logged
        self.clock = Clock()
        self.store: Optional[MemoryStore] = None
        if config.store == MEMORY_STORE:
            self.store = MemoryStore()
        elif config.store != NO_STORE:
            self.store = _test_store()(self.clock, config.store == FLAKY_STORE)
        self.memory = MemoryGearmanServer(
            clock=self.clock,
            store=self.store,
            job_handle_prefix=HANDLE_PREFIX,
            wakeup=config.wakeup,
            wakeup_delay=config.wakeup_delay,
            job_retries=config.job_retries,
            max_packet_size=config.max_packet_size,
            exceptions=config.exceptions,
            timeout_unit=config.timeout_unit,
            admin_shutdown=config.admin_shutdown,
            max_queue=MAX_QUEUES[config.max_queue],
            max_memory=config.max_memory,
            read_timeout=config.read_timeout,
        )
        self.server = self.memory.job_server
        self.shutdowns = 0
        if config.shutdown_action:
            self.server.on_shutdown = self._shutdown
        self.slots: list[Optional[_Connection]] = [None] * SLOTS
        self.connections: list[_Connection] = []
        #: Nothing is in flight: every byte sent was delivered and answered.
        self.quiet = True
        for slot in range(config.connections):
            self.connect(slot)
        self.flush()

    def _shutdown(self) -> None:
        self.shutdowns += 1

    def connect(self, slot: int) -> None:
        """
        Open a connection in a slot, unless one is open there or the server
        refuses.
        """
        from twisted.internet.error import ConnectionRefusedError

        current = self.slots[slot]
        if current is not None and not current.lost:
            return
        try:
            connection = _Connection(self.memory, self.config.max_packet_size)
        except ConnectionRefusedError:
            if self.server.accepting:
                raise
            return
        self.slots[slot] = connection
        self.connections.append(connection)

    def flush(self) -> None:
        """
        Deliver every byte in flight, then check what the clients got.
        """
        self.memory.flush()
        _raise_logged(self.logged)
        if self.server.output.depth:
            _fail(f"the output batch is still open ({self.server.output.depth}) after a flush")
        self.quiet = True
        for connection in self.connections:
            connection.check_replies()

    def step(self, step: Step) -> None:
        """
        Run one step.
        """
        if isinstance(step, Advance):
            self.memory.advance(DELAYS[step.delay])
            self.flush()
            return
        if isinstance(step, Connect):
            self.connect(step.slot)
            self.flush()
            return
        connection = self.slots[step.slot]
        if connection is None:
            return
        if isinstance(step, Close):
            connection.close()
            self.flush()
            return
        if isinstance(step, Packet):
            data = packet_bytes(step)
            if 0 < step.cut < len(data):
                connection.write(data[: step.cut])
                self.flush()
                data = data[step.cut :]
        elif isinstance(step, Admin):
            data = admin_bytes(step)
        else:
            data = step.data
        connection.write(data)
        self.quiet = False
        if step.flush:
            self.flush()

    def check(self) -> None:
        """
        Check the server, if the bytes stopped moving.
        """
        quiet = self.quiet
        check_server(self.server, self.clock, quiet)
        if not quiet:
            return
        for connection in self.connections:
            connection.check_answered()
            protocol = connection.server
            if connection.lost != protocol.closed:
                _fail(f"the client saw lost={connection.lost}, the server closed={protocol.closed}")
            participant = connection.participant
            if protocol.closed:
                _check_gone(self.server, participant)
            elif participant not in self.server.clients():
                _fail(f"an open connection's {participant!r} is not a client of the server")
            if protocol._out:
                _fail(f"{participant!r} has output left unwritten")
            if protocol._held is not None:
                _fail(f"{participant!r} has replies held back with nothing to wait for")
        guard = self.server.guard
        open_ = [c.server for c in self.connections if not c.server.closed]
        if guard.connections != len(open_):
            _fail(f"the guard counts {guard.connections} connections, {len(open_)} are open")
        reserved = sum(protocol._reserved for protocol in open_)
        if guard.partial != reserved or reserved < 0:
            _fail(f"the guard counts {guard.partial} partial bytes, connections hold {reserved}")
        for protocol in open_:
            if protocol._reserved < protocol._parser.buffered():
                _fail(
                    f"{protocol.participant!r} reserves {protocol._reserved} bytes"
                    f" but holds {protocol._parser.buffered()}"
                )
        if guard.output < 0:
            _fail(f"the guard counts {guard.output} bytes of output")
        drain = self.server.drain
        if drain.draining and not self.server.jobs_outstanding() + self.server.jobs_running():
            if not self.shutdowns:
                _fail("a graceful shutdown has no job left to wait for but did not end")

    def finish(self) -> None:
        """
        The end of an input: every client leaves, time runs on, the store is
        replayed into a new server, and the server stops.
        """
        from txgearmand.records import JobState

        server = self.server
        self.flush()
        self.check()
        for connection in self.connections:
            connection.close()
        self.flush()
        self.check()
        if server.clients():
            _fail(f"clients left after every connection closed: {server.clients()!r}")
        for job in server.jobs():
            if job.state is not JobState.QUEUED and job.state is not JobState.SCHEDULED:
                _fail(f"{job.handle!r} is {job.state.name} with no client connected")
            if job.require_listener:
                _fail(f"foreground {job.handle!r} is kept with no client connected")
        self.memory.advance(3600)
        self.flush()
        self.check()
        for job in server.jobs():
            if job.when is not None and job.state is JobState.SCHEDULED:
                if job.when <= self.clock.seconds():
                    _fail(f"{job.handle!r} is still scheduled after its time ({job.when})")
        if self.store is not None:
            self._check_replay()
        d = server.stopService()
        results: list[object] = []
        d.addBoth(results.append)
        if len(results) != 1 or results[0] is not None:
            _fail(f"stopService did not succeed at once: {results!r}")
        self.clock.advance(0)
        left = self.clock.getDelayedCalls()
        if left:
            _fail(f"timers left once the server stopped: {left!r}")

    def _check_replay(self) -> None:
        """
        A new server on the same store queues exactly the jobs this one
        has stored (every job left should be, by now: L{check_server} says
        so of the others).
        """
        from twisted.internet.task import Clock

        from txgearmand.testing import MemoryGearmanServer

        def summary(server: JobServer) -> dict[bytes, tuple[object, ...]]:
            return {
                job.handle: (
                    job.queue.name,
                    job.unique,
                    job.data,
                    job.priority,
                    job.when,
                    job.reducer,
                )
                for job in server.jobs()
                if job.store_id is not None
            }

        clock = Clock()
        clock.advance(self.clock.seconds())
        again = MemoryGearmanServer(clock=clock, store=self.store, job_handle_prefix=HANDLE_PREFIX)
        before, after = summary(self.server), summary(again.job_server)
        if before != after:
            _fail(f"the store replayed {after!r}, the server had {before!r}")
        check_server(again.job_server, clock, True)
        again.job_server.stopService()


@functools.cache
def _test_store() -> Any:
    """
    The class of the slow and flaky stores (made on first use: the
    store module is imported only then, so that atheris can instrument it).
    """
    from twisted.internet.defer import Deferred

    from txgearmand.interfaces import StoredJob
    from txgearmand.store.memory import MemoryStore

    class TestStore(MemoryStore):
        """
        A L{MemoryStore} that commits on the next turn of its clock, and if
        C{flaky}, fails (and keeps nothing of) any batch holding a job
        whose payload is L{REFUSED_PAYLOAD}.
        """

        def __init__(self, clock: Clock, flaky: bool) -> None:
            super().__init__()
            self.clock = clock
            self.flaky = flaky

        def add_many(self, jobs: Sequence[StoredJob]) -> Deferred[None]:
            d: Deferred[None] = Deferred()
            if self.flaky and any(job.payload == REFUSED_PAYLOAD for job in jobs):
                error = OSError("the test store refuses this batch")
                self.clock.callLater(0, d.errback, error)
                return d
            batch = list(jobs)
            self.clock.callLater(0, lambda: super(TestStore, self).add_many(batch).chainDeferred(d))
            return d

        def remove_many(self, job_ids: Sequence[int]) -> Deferred[None]:
            d: Deferred[None] = Deferred()
            ids = list(job_ids)
            self.clock.callLater(
                0, lambda: super(TestStore, self).remove_many(ids).chainDeferred(d)
            )
            return d

    return TestStore


def _check_gone(server: JobServer, participant: Any) -> None:
    """
    A closed connection's participant has left the server entirely.
    """
    if participant in server.clients():
        _fail(f"closed {participant!r} is still a client")
    if participant.connected:
        _fail(f"closed {participant!r} is still marked connected")
    if participant.held or participant.listening or participant.abilities:
        _fail(
            f"closed {participant!r} keeps held={list(participant.held)!r}"
            f" listening={[j.handle for j in participant.listening]!r}"
            f" abilities={list(participant.abilities)!r}"
        )
    if participant.sleeping:
        _fail(f"closed {participant!r} is still sleeping")


def check_server(server: JobServer, clock: Clock, quiet: bool = True) -> None:
    """
    Check the invariants of a job server's model; raise L{Broken} if one
    does not hold.

    @param quiet: no bytes are in flight and the server's batch is closed,
        so the store and the timers must be up to date too.
    """
    from txgearmand.job import JOB_OVERHEAD, cost
    from txgearmand.records import JobState

    queued_state, running_state, scheduled_state = (
        JobState.QUEUED,
        JobState.RUNNING,
        JobState.SCHEDULED,
    )
    table = server.table
    registry = server.registry
    clients = server.clients()
    members = {id(c) for c in clients}
    counts: dict[bytes, list[int]] = {}

    for handle, job in table.by_handle.items():
        name = job.queue.name
        where = f"{handle!r} ({name!r}, {job.state.name})"
        if job.handle != handle:
            _fail(f"{where} is filed under another handle ({job.handle!r})")
        if registry.get(name) is not job.queue:
            _fail(f"{where}: its function is not the registry's")
        count = counts.setdefault(name, [0, 0, 0, 0, 0])  # high, normal, low, running, scheduled
        state = job.state
        if state is queued_state:
            count[job.priority] += 1
        elif state is running_state:
            count[3] += 1
        elif state is scheduled_state:
            count[4] += 1
        else:
            _fail(f"{where} is in the table")
        if state is running_state:
            worker = job.worker
            if worker is None or id(worker) not in members or not worker.connected:
                _fail(f"{where} runs on {worker!r}, which is not a connected client")
            elif worker.held.get(handle) is not job:
                _fail(f"{where}: its worker {worker!r} does not hold it")
            elif worker.abilities.get(name) is not job.queue:
                _fail(f"{where}: its worker {worker!r} cannot do {name!r}")
        elif job.worker is not None:
            _fail(f"{where} has a worker {job.worker!r}")
        if state is scheduled_state and job.when is None:
            _fail(f"{where} has no time")
        if state is queued_state and job.require_listener and not job.listeners:
            _fail(f"{where}: a queued foreground job nobody waits for")
        if job.timer is not None and (state is not running_state or not job.timer.active()):
            _fail(f"{where} has a stale timer {job.timer!r}")
        for listener in job.listeners:
            if id(listener) not in members or job not in listener.listening:
                _fail(f"{where}: listener {listener!r} is gone or does not listen")
        if job.unique and (job.unique != b"-" or job.data):
            if table.of_unique(name, job.unique, job.data) is not job:
                _fail(f"{where}: its unique {job.unique!r} does not lead to it")
        if job.commit_waiters is not None and quiet:
            _fail(f"{where} still waits for its commit")
    if quiet and server.store is not None:
        _check_store(server)

    for name, fq in registry.by_name.items():
        where = f"function {name!r}"
        if fq.name != name:
            _fail(f"{where} is filed under {name!r} but named {fq.name!r}")
        if not fq.in_use():
            _fail(f"{where} is kept with no worker, no job and no create function", "unused")
        count = counts.pop(name, [0, 0, 0, 0, 0])
        for priority in range(3):
            live = [job for job in fq.queues[priority] if job.state is queued_state]
            if len({id(job) for job in live}) != len(live):
                _fail(f"{where}: a job is queued twice at priority {priority}")
            for job in fq.queues[priority]:
                if job.state is not queued_state and job.state is not JobState.DONE:
                    _fail(f"{where}: {job.handle!r} is in a queue but {job.state.name}")
                if job.state is queued_state and (
                    table.get(job.handle) is not job
                    or job.queue is not fq
                    or job.priority != priority
                ):
                    _fail(f"{where}: queued {job.handle!r} is not its live job at {priority}")
            if len(live) != fq.queued[priority] or count[priority] != fq.queued[priority]:
                _fail(
                    f"{where}: {fq.queued[priority]} counted queued at priority {priority},"
                    f" {len(live)} in the queue, {count[priority]} in the table"
                )
        if count[3] != fq.running or count[4] != fq.scheduled:
            _fail(
                f"{where}: running {fq.running} and scheduled {fq.scheduled} counted,"
                f" {count[3]} and {count[4]} in the table"
            )
        for worker in fq.workers:
            if id(worker) not in members or worker.abilities.get(name) is not fq:
                _fail(f"{where}: worker {worker!r} is gone or cannot do it")
        for sleeper in fq.sleepers:
            if sleeper not in fq.workers:
                _fail(f"{where}: sleeper {sleeper!r} is not a worker of it")
            if not sleeper.sleeping:
                _fail(f"{where}: sleeper {sleeper!r} is awake", "sleepers")
        if fq.wake_timer is not None and not fq.wake_timer.active():
            _fail(f"{where} has a stale wake-up timer")
    if counts:
        _fail(f"jobs of unknown functions: {sorted(counts)!r}")
    held = sum(cost(job) for job in table.by_handle.values()) + server.failed.held_bytes
    if table.held_bytes != held:
        _fail(f"the table counts {table.held_bytes} bytes held, its jobs cost {held}")
    kept = sum(
        JOB_OVERHEAD + len(job.payload) + len(job.unique) + len(job.reason) for job in server.failed
    )
    if server.failed.held_bytes != kept:
        _fail(f"the failed list counts {server.failed.held_bytes} bytes, its jobs {kept}")

    for client in clients:
        if not client.connected:
            _fail(f"{client!r} is a client but not connected")
        for handle, job in client.held.items():
            if job.worker is not client or job.state is not running_state:
                _fail(f"{client!r} holds {handle!r}, which is {job.state.name} on {job.worker!r}")
            if table.get(handle) is not job:
                _fail(f"{client!r} holds {handle!r}, which is not in the table")
        for job in client.listening:
            if table.get(job.handle) is not job or client not in job.listeners:
                _fail(f"{client!r} listens to {job.handle!r}, which is gone or ignores it")
        if client.ability_list != list(client.abilities.values()):
            _fail(f"{client!r}: its ability list is not its abilities")
        for name, fq in client.abilities.items():
            if registry.get(name) is not fq or client not in fq.workers:
                _fail(f"{client!r} can do {name!r}, which does not know it")
            if (client in fq.sleepers) != client.sleeping:
                _fail(
                    f"{client!r} has sleeping={client.sleeping} but is"
                    f" {'' if client in fq.sleepers else 'not '}a sleeper of {name!r}",
                    "sleepers",
                )

    _check_status(server)
    if quiet:
        _check_timers(server, clock)


def _check_store(server: JobServer) -> None:
    """
    The store holds exactly the jobs that have a store id, as they are,
    and those of the failed list, as failed; every background job has one.
    """
    store = cast("MemoryStore", server.store)
    kept: dict[int, bytes] = {}
    for job in server.jobs():
        if job.store_id is None:
            if not job.require_listener:
                _fail(f"background {job.handle!r} is not stored", "unstored")
            continue
        kept[job.store_id] = job.handle
        record = store.jobs.get(job.store_id)
        if record is None:
            _fail(f"{job.handle!r} (store id {job.store_id}) is not in the store")
        elif (record.handle, record.function, record.unique, record.payload) != (
            job.handle,
            job.queue.name,
            job.unique,
            job.data,
        ):
            _fail(f"the store has {record!r} for {job.handle!r}")
    for entry in server.failed:
        if entry.store_id is None:
            _fail(f"failed {entry.handle!r} is not stored", "unstored")
            continue
        kept[entry.store_id] = entry.handle
        record = store.jobs.get(entry.store_id)
        if record is None or record.failed_at is None or record.handle != entry.handle:
            _fail(f"the store has {record!r} for failed {entry.handle!r}")
    extra = sorted(set(store.jobs) - set(kept))
    if extra:
        _fail(f"the store keeps ended jobs: {[store.jobs[i] for i in extra]!r}")


def _check_status(server: JobServer) -> None:
    """
    The admin C{status} and C{prioritystatus} listings count what the
    table and the clients hold.
    """
    from txgearmand import admin
    from txgearmand.interfaces import IPeer
    from txgearmand.records import JobState

    jobs: dict[bytes, list[int]] = {}
    for job in server.jobs():
        count = jobs.setdefault(job.queue.name, [0, 0, 0, 0, 0])
        if job.state is JobState.QUEUED:
            count[job.priority] += 1
        elif job.state is JobState.RUNNING:
            count[3] += 1
        else:
            count[4] += 1
    workers: dict[bytes, int] = {}
    for client in server.clients():
        for name in client.abilities:
            workers[name] = workers.get(name, 0) + 1
    names = set(jobs) | set(workers)
    names.update(fq.name for fq in server.registry if fq.created)
    status = []
    priorities = []
    for name in sorted(names):
        h, n, lo, running, scheduled = jobs.get(name, [0, 0, 0, 0, 0])
        total = h + n + lo + running + scheduled
        status.append(b"%s\t%d\t%d\t%d\n" % (name, total, running, workers.get(name, 0)))
        priorities.append(
            b"%s\t%d\t%d\t%d\t%d\n" % (name, h, n + scheduled, lo, workers.get(name, 0))
        )
    peer = cast(IPeer, None)
    for command, lines in ((b"status", status), (b"prioritystatus", priorities)):
        want = b"".join(lines) + b".\n"
        got = admin.reply(server, peer, command)
        if got != want:
            _fail(f"admin {command.decode()} says {got!r}, the table {want!r}")


def _check_timers(server: JobServer, clock: Clock) -> None:
    """
    Every pending timer is a function's wake-up, a running job's timeout,
    the guard's sweep, the store's watch, or (at most one) the schedule's.
    """
    from txgearmand.records import JobState

    known = {id(fq.wake_timer) for fq in server.registry if fq.wake_timer is not None}
    known.update(
        id(job.timer)
        for job in server.jobs()
        if job.timer is not None and job.state is JobState.RUNNING
    )
    if server.durability.watch_timer is not None:
        known.add(id(server.durability.watch_timer))
    if server.failed.timer is not None:
        known.add(id(server.failed.timer))
    elif len(server.failed) and server.failed.max_age:
        _fail("the failed list has jobs and no expiry timer")
    sweep = server.guard.sweep
    others = [
        call
        for call in clock.getDelayedCalls()
        if id(call) not in known and getattr(call, "func", None) != sweep
    ]
    if len(others) > 1:
        _fail(f"unexplained timers: {others!r}")


@contextmanager
def _failures_logged() -> Iterator[list[dict[str, Any]]]:
    """
    Collect the log events that carry a failure while the block runs.
    """
    from twisted.logger import ILogObserver, globalLogPublisher

    events: list[dict[str, Any]] = []

    def observe(event: dict[str, Any]) -> None:
        if "log_failure" in event:
            events.append(event)

    observer = cast(ILogObserver, observe)
    globalLogPublisher.addObserver(observer)
    try:
        yield events
    finally:
        globalLogPublisher.removeObserver(observer)


def _raise_logged(events: list[dict[str, Any]]) -> None:
    if events:
        from twisted.logger import formatEvent

        event = events[0]
        failure: Failure = event["log_failure"]
        raise Broken(
            f"the server logged a failure: {formatEvent(event)}\n{failure.getTraceback()}"
        ) from failure.value


def run(spec: FuzzInput) -> None:
    """
    Run a decoded input; raise if the server breaks.
    """
    with _failures_logged() as logged:
        run_ = _Run(spec.config, logged)
        run_.check()
        for step in spec.steps:
            run_.step(step)
            _raise_logged(logged)
            run_.check()
        run_.finish()
        _raise_logged(logged)


def one_input(data: bytes) -> None:
    """
    Run one fuzz input; raise if the server breaks.
    """
    run(decode_input(data))


# -- running the fuzzer ---------------------------------------------------------


def _instrument_loaded(atheris: Any, module: Any) -> None:
    """
    Instrument the functions of a module imported before atheris was.
    """
    import inspect

    for value in vars(module).values():
        if inspect.isfunction(value) and value.__module__ == module.__name__:
            atheris.instrument_func(value)
        elif inspect.isclass(value) and value.__module__ == module.__name__:
            for attribute in vars(value).values():
                if inspect.isfunction(attribute):
                    atheris.instrument_func(attribute)


def _replay(paths: Sequence[str], show: bool) -> int:
    import traceback

    failed = 0
    for path in paths:
        data = Path(path).read_bytes()
        if show:
            print(f"== {path}\n{describe(data)}")
            continue
        try:
            one_input(data)
        except Exception:
            failed += 1
            print(f"== {path}: FAILED")
            traceback.print_exc()
        else:
            print(f"== {path}: ok")
    return 1 if failed else 0


def main(argv: Optional[list[str]] = None) -> None:
    """
    Fuzz with atheris (libFuzzer's options and corpus directories in
    C{argv}); or, with C{--describe} or C{--replay} and files, describe or
    replay inputs without it.
    """
    argv = list(sys.argv if argv is None else argv)
    if len(argv) > 1 and argv[1] in ("--describe", "--replay"):
        raise SystemExit(_replay(argv[2:], argv[1] == "--describe"))

    import atheris  # type: ignore[import-not-found,import-untyped,unused-ignore]
    from twisted.logger import globalLogBeginner

    # Nobody reads the log: drop events instead of buffering them.
    globalLogBeginner.beginLoggingTo([], discardBuffer=True, redirectStandardIO=False)
    with atheris.instrument_imports(include=["txgearmand"]):
        import txgearmand.admin
        import txgearmand.protocol
        import txgearmand.store.memory
        import txgearmand.testing  # noqa: F401
    _instrument_loaded(atheris, wire)
    atheris.Setup(argv, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
