"""
Tests for L{txgearmand.wire}: encoding and the incremental parser.
"""

from __future__ import annotations

from hypothesis import example, given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from txgearmand import wire
from txgearmand.wire import (
    RESPONSE_PACKET,
    TEXT_LINE,
    PacketParser,
    PacketType,
    encode,
    encode_request,
    split_body,
)


def feed_in_chunks(parser: PacketParser, data: bytes, cuts: list[int]) -> list[tuple[int, bytes]]:
    """
    Feed C{data} to C{parser} cut at the given offsets; collect the output.
    """
    out: list[tuple[int, bytes]] = []
    start = 0
    for cut in [*sorted(set(c for c in cuts if 0 < c < len(data))), len(data)]:
        out.extend(parser.feed(data[start:cut]))
        start = cut
    return out


_request_types = st.sampled_from(sorted(int(t) for t in wire.REQUEST_TYPES))
_packets = st.tuples(_request_types, st.binary(max_size=300)).map(
    lambda tb: (tb[0], tb[1], encode_request(tb[0], tb[1]))
)
_lines = st.binary(max_size=80).map(
    lambda b: b.replace(b"\n", b"").replace(b"\r", b"").lstrip(b"\0")
)
_text = st.tuples(_lines, st.sampled_from([b"\n", b"\r\n"])).map(
    lambda lt: (TEXT_LINE, lt[0], lt[0] + lt[1])
)
_messages = st.lists(st.one_of(_packets, _text), max_size=30)


class EncodeTests(SynchronousTestCase):
    """
    Tests for L{encode} and L{encode_request}.
    """

    def test_response_header(self) -> None:
        """
        A response packet is the RES magic, big-endian type and size, then
        the arguments joined by NUL bytes.
        """
        self.assertEqual(
            encode(PacketType.JOB_ASSIGN, b"H:x:1", b"f", b"d\0ata"),
            b"\0RES\0\0\0\x0b\0\0\0\x0dH:x:1\0f\0d\0ata",
        )

    def test_request_header(self) -> None:
        """
        A request packet carries the REQ magic.
        """
        self.assertEqual(encode_request(PacketType.PRE_SLEEP), b"\0REQ\0\0\0\x04\0\0\0\0")

    def test_split_body(self) -> None:
        """
        L{split_body} follows each type's layout: data may hold NUL bytes,
        the last argument of a type without data is the rest of the body,
        and too few arguments give L{None}.
        """
        self.assertEqual(split_body(PacketType.SUBMIT_JOB, b"f\0u\0a\0b"), (b"f", b"u", b"a\0b"))
        self.assertEqual(split_body(PacketType.WORK_STATUS, b"h\x001\x002"), (b"h", b"1", b"2"))
        self.assertEqual(split_body(PacketType.ECHO_REQ, b"a\0b"), (b"a\0b",))
        self.assertEqual(split_body(PacketType.NOOP, b""), ())
        self.assertIsNone(split_body(PacketType.SUBMIT_JOB, b"f\0u"))


class ParserTests(SynchronousTestCase):
    """
    Tests for L{PacketParser}.
    """

    def test_one_packet(self) -> None:
        """
        A whole request packet comes out as its type and raw body.
        """
        parser = PacketParser()
        self.assertEqual(
            parser.feed(encode_request(PacketType.SUBMIT_JOB, b"f", b"", b"x")),
            [(PacketType.SUBMIT_JOB, b"f\0\0x")],
        )
        self.assertIsNone(parser.error)

    def test_text_lines(self) -> None:
        """
        A message starting with a non-NUL byte is a text line; its C{\\r\\n}
        or C{\\n} is removed.
        """
        parser = PacketParser()
        self.assertEqual(
            parser.feed(b"status\r\nworkers\nversion\r\n"),
            [(TEXT_LINE, b"status"), (TEXT_LINE, b"workers"), (TEXT_LINE, b"version")],
        )

    def test_mixed(self) -> None:
        """
        Text lines and binary packets alternate freely on one stream.
        """
        parser = PacketParser()
        data = b"status\n" + encode_request(PacketType.ECHO_REQ, b"hi") + b"workers\r\n"
        self.assertEqual(
            parser.feed(data),
            [(TEXT_LINE, b"status"), (PacketType.ECHO_REQ, b"hi"), (TEXT_LINE, b"workers")],
        )

    def test_partial(self) -> None:
        """
        An incomplete message is kept until the rest arrives.
        """
        parser = PacketParser()
        data = encode_request(PacketType.ECHO_REQ, b"hello")
        self.assertEqual(parser.feed(data[:5]), [])
        self.assertEqual(parser.feed(data[5:14]), [])
        self.assertEqual(parser.buffered(), 14)
        self.assertEqual(parser.feed(data[14:]), [(PacketType.ECHO_REQ, b"hello")])
        self.assertEqual(parser.buffered(), 0)
        self.assertEqual(parser.feed(b"sta"), [])
        self.assertEqual(parser.feed(b"tus"), [])
        self.assertEqual(parser.feed(b"\r\n"), [(TEXT_LINE, b"status")])

    def test_response_magic(self) -> None:
        """
        A well-formed packet with the response magic is reported as
        L{RESPONSE_PACKET} and parsing goes on.
        """
        parser = PacketParser()
        data = encode(PacketType.ECHO_RES, b"x") + encode_request(PacketType.ECHO_REQ, b"y")
        self.assertEqual(parser.feed(data), [(RESPONSE_PACKET, b""), (PacketType.ECHO_REQ, b"y")])
        self.assertIsNone(parser.error)

    def test_client_side(self) -> None:
        """
        With C{magic=RESPONSE_MAGIC} the parser reads what a server sends.
        """
        parser = PacketParser(magic=wire.RESPONSE_MAGIC)
        self.assertEqual(parser.feed(encode(PacketType.NOOP)), [(PacketType.NOOP, b"")])

    def test_bad_magic(self) -> None:
        """
        An unknown magic stops the parser with INVALID_MAGIC; what came
        before it is still returned, nothing after.
        """
        parser = PacketParser()
        data = encode_request(PacketType.ECHO_REQ, b"a") + b"\0XYZ\0\0\0\x10\0\0\0\0"
        self.assertEqual(parser.feed(data), [(PacketType.ECHO_REQ, b"a")])
        assert parser.error is not None
        self.assertEqual(parser.error.code, b"INVALID_MAGIC")
        self.assertEqual(parser.feed(encode_request(PacketType.ECHO_REQ, b"b")), [])

    def test_unknown_type(self) -> None:
        """
        Type 0 or over 42 stops the parser with INVALID_COMMAND.
        """
        for ptype in (0, 43, 2**32 - 1):
            parser = PacketParser()
            self.assertEqual(parser.feed(b"\0REQ" + ptype.to_bytes(4, "big") + b"\0\0\0\0"), [])
            assert parser.error is not None
            self.assertEqual(parser.error.code, b"INVALID_COMMAND")

    def test_oversize_refused_on_header(self) -> None:
        """
        A header that declares a body over the limit stops the parser at
        once: none of the body is buffered.
        """
        parser = PacketParser(max_packet_size=1000)
        header = b"\0REQ\0\0\0\x07" + (1001).to_bytes(4, "big")
        self.assertEqual(parser.feed(header + b"x" * 10), [])
        assert parser.error is not None
        self.assertEqual(parser.error.code, b"ARGUMENT_TOO_LARGE")
        self.assertEqual(parser.buffered(), 0)
        self.assertEqual(parser.feed(b"x" * 5000), [])
        self.assertEqual(parser.buffered(), 0)

    def test_4gib_header(self) -> None:
        """
        The 4 GiB a single header can claim is refused, not allocated.
        """
        parser = PacketParser()
        self.assertEqual(parser.feed(b"\0REQ\0\0\0\x07\xff\xff\xff\xff"), [])
        assert parser.error is not None
        self.assertEqual(parser.error.code, b"ARGUMENT_TOO_LARGE")

    def test_limit_is_inclusive(self) -> None:
        """
        A body of exactly C{max_packet_size} bytes is accepted.
        """
        parser = PacketParser(max_packet_size=100)
        self.assertEqual(
            parser.feed(encode_request(PacketType.ECHO_REQ, b"a" * 100)),
            [(PacketType.ECHO_REQ, b"a" * 100)],
        )

    def test_long_line(self) -> None:
        """
        A text line longer than the limit stops the parser, whether it
        arrives at once or in pieces with no newline.
        """
        parser = PacketParser(max_line_length=10)
        self.assertEqual(parser.feed(b"x" * 20 + b"\n"), [])
        assert parser.error is not None
        self.assertTrue(parser.error.text_line)
        parser = PacketParser(max_line_length=10)
        self.assertEqual(parser.feed(b"xxxxxx"), [])
        self.assertEqual(parser.feed(b"xxxxxx"), [])
        assert parser.error is not None
        self.assertEqual(parser.error.code, b"LINE_TOO_LONG")

    def test_large_body_small_reads_kept_as_pieces(self) -> None:
        """
        A large body arriving in small reads is not re-concatenated per
        read (quadratic): the pieces are kept and joined once, when the
        header's length has arrived.
        """
        body = b"z" * (1024 * 1024)
        data = encode_request(PacketType.SUBMIT_JOB_BG, b"f", b"", body)
        parser = PacketParser()
        chunks = [data[i : i + 1400] for i in range(0, len(data), 1400)]
        for n, chunk in enumerate(chunks[:-1], start=1):
            self.assertEqual(parser.feed(chunk), [])
            # The first read holds the header; every later read is one more
            # piece in the list, untouched.
            self.assertEqual(len(parser._pending), n)
            self.assertIs(parser._pending[-1], chunk)
        self.assertEqual(parser.feed(chunks[-1]), [(PacketType.SUBMIT_JOB_BG, b"f\0\0" + body)])
        self.assertEqual(parser.buffered(), 0)

    @given(_messages, st.lists(st.integers(min_value=0, max_value=20000), max_size=40))
    @example(
        [(PacketType.ECHO_REQ, b"", encode_request(PacketType.ECHO_REQ, b""))],
        [1, 11, 12],
    )
    @example([(TEXT_LINE, b"a", b"a\r\n")], [2])
    def test_any_chunking(self, messages: list[tuple[int, bytes, bytes]], cuts: list[int]) -> None:
        """
        Any list of packets and text lines, cut into any chunks, parses to
        the same list of messages.
        """
        data = b"".join(m[2] for m in messages)
        expected = [(m[0], m[1]) for m in messages]
        parser = PacketParser()
        self.assertEqual(feed_in_chunks(parser, data, cuts), expected)
        self.assertIsNone(parser.error)
        self.assertEqual(parser.buffered(), 0)

    @given(_messages, st.integers(min_value=1, max_value=7))
    def test_byte_by_byte(self, messages: list[tuple[int, bytes, bytes]], step: int) -> None:
        """
        Feeding a few bytes at a time gives the same messages.
        """
        data = b"".join(m[2] for m in messages)
        parser = PacketParser()
        out: list[tuple[int, bytes]] = []
        for i in range(0, len(data), step):
            out.extend(parser.feed(data[i : i + step]))
        self.assertEqual(out, [(m[0], m[1]) for m in messages])

    @given(st.binary(max_size=200), st.lists(st.integers(min_value=0, max_value=200)))
    def test_garbage_never_raises(self, data: bytes, cuts: list[int]) -> None:
        """
        Arbitrary bytes never make the parser raise; every message it
        returns is a valid type or a pseudo type.
        """
        parser = PacketParser(max_packet_size=100, max_line_length=50)
        for ptype, _ in feed_in_chunks(parser, data, cuts):
            self.assertTrue(ptype in (TEXT_LINE, RESPONSE_PACKET) or 1 <= ptype <= 42)

    @given(_messages)
    def test_encode_roundtrip(self, messages: list[tuple[int, bytes, bytes]]) -> None:
        """
        What L{encode} writes, a client-side parser reads back.
        """
        packets = [(t, b) for t, b, _ in messages if t != TEXT_LINE]
        data = b"".join(encode(t, b) for t, b in packets)
        parser = PacketParser(magic=wire.RESPONSE_MAGIC)
        self.assertEqual(parser.feed(data), packets)
