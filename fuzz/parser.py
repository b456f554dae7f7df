#!/usr/bin/env python3
"""
A differential fuzz target for L{txgearmand.wire.PacketParser}.

An input chooses the parser's settings (request or response magic, body
and line limits), how to cut a byte stream into reads, and the stream.
The stream is fed to one parser whole, to another read by read and, when
short, to a third byte by byte.  After every read, what the incremental
parser has said so far (messages, error, bytes held) must be exactly what
a plain reference parser, written here from the docstring's contract,
says of the bytes fed so far; and the three parsers must end alike.  So
chunking never changes the messages or the error, an error is raised as
soon as the bytes that cause it have arrived (a body over the limit on its
header), and C{buffered()} never holds more than an incomplete packet
within the body limit or a line within the line limit.

Run it (from the checkout, with atheris installed)::

    python3 fuzz/parser.py -max_len=4096 fuzz/corpus/parser

L{one_input} replays one input without atheris (the test suite does).
"""

from __future__ import annotations

import inspect
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple, Optional

if __name__ == "__main__":
    # Run as a script: this checkout's packages, not an installed copy.
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fuzz._reader import ByteReader, ByteWriter
from txgearmand import wire

__all__ = ["ParserInput", "decode_input", "encode_input", "main", "one_input"]

#: Body limits an input can choose beyond 0-63.
PACKET_LIMITS = (100, 255, 256, 1000, 4096, 65536, wire.DEFAULT_MAX_PACKET_SIZE, 2**32 - 1)
#: Line limits an input can choose beyond 0-63.
LINE_LIMITS = (100, 1000, wire.DEFAULT_MAX_LINE_LENGTH)
#: The most reads an input cuts its stream into (the rest is one more).
MAX_CUTS = 15
#: The longest read a cut makes.
MAX_CUT = 255
#: Streams up to this long are also fed one byte at a time.
BYTEWISE_LIMIT = 300

_SMALL = 64

Message = tuple[int, bytes]
#: An error as (code, text, text_line).
ErrorKey = tuple[bytes, bytes, bool]

_INVALID_COMMAND: ErrorKey = (b"INVALID_COMMAND", b"Invalid command expected", False)
_INVALID_MAGIC: ErrorKey = (b"INVALID_MAGIC", b"Request magic expected", False)


class ParserInput(NamedTuple):
    """
    What one fuzz input asks for.

    @ivar response: use the response magic (what a client parses).
    @ivar max_packet_size: the parser's body limit.
    @ivar max_line_length: the parser's line limit.
    @ivar cuts: the sizes of the first reads (0: an empty read).
    @ivar data: the byte stream.
    """

    response: bool
    max_packet_size: int
    max_line_length: int
    cuts: tuple[int, ...]
    data: bytes


def _read_limit(reader: ByteReader, choices: Sequence[int]) -> int:
    n = reader.ConsumeIntInRange(0, _SMALL + len(choices) - 1)
    return n if n < _SMALL else choices[n - _SMALL]


def _write_limit(writer: ByteWriter, value: int, choices: Sequence[int]) -> None:
    index = value if value < _SMALL else _SMALL + list(choices).index(value)
    writer.WriteIntInRange(index, 0, _SMALL + len(choices) - 1)


def decode_input(data: bytes) -> ParserInput:
    """
    Read what an input asks for.
    """
    reader = ByteReader(data)
    response = reader.ConsumeBool()
    max_packet = _read_limit(reader, PACKET_LIMITS)
    max_line = _read_limit(reader, LINE_LIMITS)
    count = reader.ConsumeIntInRange(0, MAX_CUTS)
    cuts = tuple(reader.ConsumeIntInRange(0, MAX_CUT) for _ in range(count))
    return ParserInput(response, max_packet, max_line, cuts, reader.ConsumeRemainingBytes())


def encode_input(spec: ParserInput) -> bytes:
    """
    The input that L{decode_input} reads as C{spec} (limits must be 0-63
    or one of L{PACKET_LIMITS} / L{LINE_LIMITS}).
    """
    writer = ByteWriter()
    writer.WriteBool(spec.response)
    _write_limit(writer, spec.max_packet_size, PACKET_LIMITS)
    _write_limit(writer, spec.max_line_length, LINE_LIMITS)
    writer.WriteIntInRange(len(spec.cuts), 0, MAX_CUTS)
    for cut in spec.cuts:
        writer.WriteIntInRange(cut, 0, MAX_CUT)
    writer.WriteBytes(spec.data)
    return writer.getvalue()


class Reference(NamedTuple):
    """
    What a stream holds, by the contract: the complete messages, the error
    that stops it (if any), and where the incomplete tail starts.
    """

    messages: list[Message]
    error: Optional[ErrorKey]
    tail: int


def reference(data: bytes, magic: bytes, max_packet: int, max_line: int) -> Reference:
    """
    Parse a whole stream the plain way, as L{wire.PacketParser}'s
    docstring says it must be parsed.
    """
    other = wire.RESPONSE_MAGIC if magic == wire.REQUEST_MAGIC else wire.REQUEST_MAGIC
    messages: list[Message] = []
    pos = 0
    while pos < len(data):
        if data[pos] != 0:
            # An admin text line, ended by \n (a \r before it is dropped).
            end = data.find(b"\n", pos)
            length = (end if end >= 0 else len(data)) - pos
            if length > max_line:
                text = b"Text command longer than %d bytes" % max_line
                return Reference(messages, (b"LINE_TOO_LONG", text, True), pos)
            if end < 0:
                return Reference(messages, None, pos)
            line = data[pos:end]
            if line.endswith(b"\r"):
                line = line[:-1]
            messages.append((wire.TEXT_LINE, line))
            pos = end + 1
            continue
        header = data[pos : pos + wire.HEADER_SIZE]
        if len(header) < wire.HEADER_SIZE:
            return Reference(messages, None, pos)
        packet_magic = header[:4]
        ptype = int.from_bytes(header[4:8], "big")
        size = int.from_bytes(header[8:12], "big")
        if size > max_packet:
            text = b"Packet body of %d bytes is over the limit of %d bytes" % (size, max_packet)
            return Reference(messages, (b"ARGUMENT_TOO_LARGE", text, False), pos)
        known_magic = packet_magic in (magic, other)
        if not 1 <= ptype <= max(wire.PacketType):
            return Reference(messages, _INVALID_COMMAND if known_magic else _INVALID_MAGIC, pos)
        if not known_magic:
            return Reference(messages, _INVALID_MAGIC, pos)
        end = pos + wire.HEADER_SIZE + size
        if end > len(data):
            return Reference(messages, None, pos)
        if packet_magic == magic:
            messages.append((ptype, data[pos + wire.HEADER_SIZE : end]))
        else:
            messages.append((wire.RESPONSE_PACKET, b""))
        pos = end
    return Reference(messages, None, pos)


def _error_key(parser: wire.PacketParser) -> Optional[ErrorKey]:
    error = parser.error
    if error is None:
        return None
    return (error.code, error.text, error.text_line)


def _check_messages(messages: list[Message]) -> None:
    for ptype, body in messages:
        if type(ptype) is not int or type(body) is not bytes:
            raise AssertionError(f"message of types {type(ptype)}, {type(body)}: want int, bytes")


def _check_state(
    what: str, parser: wire.PacketParser, got: list[Message], fed: bytes, want: Reference
) -> None:
    """
    Compare what an incremental parser said of the bytes fed so far with
    the reference.
    """
    if got != want.messages:
        raise AssertionError(
            f"{what}: messages {got!r} != reference {want.messages!r} after {len(fed)} bytes"
        )
    error = _error_key(parser)
    if error != want.error:
        raise AssertionError(
            f"{what}: error {error!r} != reference {want.error!r} after {len(fed)} bytes"
        )
    if error is None:
        held = parser.buffered()
        if held != len(fed) - want.tail:
            raise AssertionError(
                f"{what}: buffered() {held} != {len(fed) - want.tail} unparsed bytes"
                f" after {len(fed)} bytes"
            )
        tail = fed[want.tail :]
        if tail[:1] == b"\0":
            limit = wire.HEADER_SIZE + parser.max_packet_size - 1
        else:
            limit = parser.max_line_length
        if held > limit:
            raise AssertionError(f"{what}: buffered() {held} is over the limit {limit}")
        _check_incomplete(what, parser, tail)


def _check_incomplete(what: str, parser: wire.PacketParser, tail: bytes) -> None:
    """
    What C{incomplete()} says of the incomplete tail: a packet's full size
    once its header is whole (and that the body is what is missing), else
    no more than a header or the line held.
    """
    size, in_body = parser.incomplete()
    if tail[:1] == b"\0" and len(tail) >= wire.HEADER_SIZE:
        want = wire.HEADER_SIZE + int.from_bytes(tail[8:12], "big")
        ok = size == want and in_body
    elif tail[:1] == b"\0":
        ok = len(tail) <= size <= wire.HEADER_SIZE and not in_body
    else:
        ok = size == len(tail) and not in_body
    if not ok:
        raise AssertionError(f"{what}: incomplete() is {(size, in_body)} for a tail {tail[:16]!r}")


def one_input(data: bytes) -> None:
    """
    Check one fuzz input; raise if the parser breaks its contract.
    """
    spec = decode_input(data)
    magic = wire.RESPONSE_MAGIC if spec.response else wire.REQUEST_MAGIC
    stream = spec.data

    def new_parser() -> wire.PacketParser:
        return wire.PacketParser(spec.max_packet_size, spec.max_line_length, magic)

    def ref(fed: bytes) -> Reference:
        return reference(fed, magic, spec.max_packet_size, spec.max_line_length)

    whole = new_parser()
    whole_messages = whole.feed(stream)
    _check_messages(whole_messages)
    final = ref(stream)
    _check_state("whole", whole, whole_messages, stream, final)

    # Read by read, as the input cuts it; the rest in one last read.
    chunked = new_parser()
    chunked_messages: list[Message] = []
    pos = 0
    reads = [*spec.cuts, len(stream)]
    for n, size in enumerate(reads):
        chunk = stream[pos : pos + size]
        pos += len(chunk)
        out = chunked.feed(chunk)
        _check_messages(out)
        chunked_messages.extend(out)
        fed = stream[:pos]
        want = final if pos == len(stream) else ref(fed)
        _check_state(f"read {n}", chunked, chunked_messages, fed, want)

    if len(stream) <= BYTEWISE_LIMIT:
        bytewise = new_parser()
        bytewise_messages: list[Message] = []
        for i in range(len(stream)):
            bytewise_messages.extend(bytewise.feed(stream[i : i + 1]))
        _check_messages(bytewise_messages)
        _check_state("byte by byte", bytewise, bytewise_messages, stream, final)

    # A stopped parser stays stopped.
    for parser in (whole, chunked):
        if parser.error is not None and parser.feed(b"\nstatus\n\0REQ\0\0\0\x10\0\0\0\0"):
            raise AssertionError("a parser returned messages after its error")


def _replay(paths: list[str]) -> int:
    import traceback

    failed = 0
    for path in paths:
        try:
            one_input(Path(path).read_bytes())
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
    C{argv}); or, with C{--replay} and files, replay inputs without it.
    """
    argv = list(sys.argv if argv is None else argv)
    if len(argv) > 1 and argv[1] == "--replay":
        raise SystemExit(_replay(argv[2:]))

    import atheris  # type: ignore[import-not-found,import-untyped,unused-ignore]

    # wire was imported before atheris: instrument its code in place.
    for value in [*vars(wire).values(), *vars(wire.PacketParser).values()]:
        if inspect.isfunction(value) and value.__module__ == wire.__name__:
            atheris.instrument_func(value)
    atheris.Setup(argv, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
