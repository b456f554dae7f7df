"""
Tests for the fast paths of the protocol and the submission flow (issue
14): each gives the same bytes as the general path it shortcuts.
"""

from __future__ import annotations

import struct

from twisted.trial.unittest import SynchronousTestCase

from txgearmand import protocol, wire
from txgearmand.job import MAX_HANDLE_PREFIX
from txgearmand.protocol import _created
from txgearmand.test.helpers import ServerTestMixin
from txgearmand.wire import RESPONSE_PACKET, TEXT_LINE, PacketParser, encode, encode_request
from txgearmand.wire import PacketType as P

#: Every plain submission form.
_FORMS = (
    P.SUBMIT_JOB,
    P.SUBMIT_JOB_BG,
    P.SUBMIT_JOB_HIGH,
    P.SUBMIT_JOB_HIGH_BG,
    P.SUBMIT_JOB_LOW,
    P.SUBMIT_JOB_LOW_BG,
)


class JobCreatedTests(ServerTestMixin, SynchronousTestCase):
    """
    JOB_CREATED, encoded inline by the submission fast path.
    """

    def test_bytes_for_every_form_and_handle_length(self) -> None:
        """
        Every submission form is answered with the bytes C{wire.encode}
        makes, for handles from the shortest to the longest prefix.
        """
        for length in (1, 2, 9, 10, MAX_HANDLE_PREFIX - 1, MAX_HANDLE_PREFIX):
            prefix = b"p" * length
            self.make_server(job_handle_prefix=prefix)
            client = self.connect()
            client.send_bytes(b"".join(encode_request(f, b"f", b"", b"x") for f in _FORMS))
            client.end_turn()
            expected = b"".join(
                encode(P.JOB_CREATED, b"%s:%d" % (prefix, n)) for n in range(1, len(_FORMS) + 1)
            )
            self.assertEqual(client.transport.value(), expected)

    def test_counted_and_queued(self) -> None:
        """
        A submission through the fast path is counted for its client and
        queued for its priority, as before.
        """
        client = self.connect()
        client.send_bytes(b"".join(encode_request(f, b"f", b"", b"x") for f in _FORMS))
        client.end_turn()
        self.assertEqual(client.participant.jobs_submitted, len(_FORMS))
        fq = self.server.registry.by_name[b"f"]
        self.assertEqual(fq.queued, [2, 2, 2])
        worker = self.worker(b"f")
        worker.send(P.GRAB_JOB)
        self.assertEqual(worker.packets()[0][1][0], b"H:test:3")

    def test_outside_a_batch(self) -> None:
        """
        A submission made outside any read (an in-process caller) is
        answered at once, with the same bytes.
        """
        client = self.connect()
        client.transport.clear()
        job = self.server.flow.submit(client.participant, b"f", b"", b"x")
        self.assertEqual(self.server.output.depth, 0)
        _created(client.protocol, job)
        self.assertEqual(client.transport.value(), encode(P.JOB_CREATED, job.handle))

    def test_closed(self) -> None:
        """
        A connection closed before its reply is sent is sent nothing.
        """
        client = self.connect()
        client.protocol.connectionLost()
        client.transport.clear()
        job = self.server.flow.submit(client.participant, b"f", b"", b"x")
        _created(client.protocol, job)
        client.end_turn()
        self.assertEqual(client.transport.value(), b"")


class EncodeTests(SynchronousTestCase):
    """
    C{wire.encode}'s fast paths for one to three arguments.
    """

    def test_same_bytes_as_the_general_form(self) -> None:
        """
        For any number of arguments, empty ones and NULs in the last one
        included, the packet is the magic, the type, the body's size and
        the arguments joined with NULs.
        """
        samples = (b"", b"H:x:1", b"fn", b"d\0ata", b"x" * 70000)
        for n in range(7):
            for first in samples:
                for last in samples:
                    args = (first, *samples[1 : max(0, n - 2) + 1], last)[:n] if n else ()
                    body = b"\0".join(args)
                    expected = b"\0RES" + struct.pack(">II", 13, len(body)) + body
                    self.assertEqual(encode(13, *args), expected, (n, args[:3]))


class TurnTests(ServerTestMixin, SynchronousTestCase):
    """
    The read path holds the batch open once per reactor turn.
    """

    def test_reads_in_one_turn_answered_in_one_write(self) -> None:
        """
        Several reads in one turn (the first holds the batch open, the
        others see it held) are answered with one write per connection
        at the end of the turn, and one timer.
        """
        client = self.connect()
        client.transport.writes = 0
        for _ in range(3):
            client.protocol.dataReceived(encode_request(P.ECHO_REQ, b"x"))
        self.assertTrue(self.server.output.turn_pending)
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.assertEqual(client.transport.value(), b"")
        self.clock.advance(0)
        self.assertFalse(self.server.output.turn_pending)
        self.assertEqual(client.transport.writes, 1)
        self.assertEqual(client.transport.value(), encode(P.ECHO_RES, b"x") * 3)


def _parse_all(chunks: list[bytes], max_packet_size: int = 1000) -> tuple[list[object], object]:
    parser = PacketParser(max_packet_size)
    out: list[object] = []
    for chunk in chunks:
        out.extend(parser.feed(chunk))
    error = parser.error
    return out, (error.code, error.text) if error is not None else None


class ParserFastPathTests(SynchronousTestCase):
    """
    The parser's one-whole-packet fast path gives what the general loop
    gives, however the bytes are cut.
    """

    stream = (
        encode_request(P.SUBMIT_JOB, b"f", b"u", b"x" * 100)
        + encode_request(P.GRAB_JOB)
        + b"status\r\n"
        + encode(P.ECHO_RES, b"other magic")
        + encode_request(P.WORK_COMPLETE, b"H:x:1", b"\0done")
        + encode_request(P.ECHO_REQ, b"x" * 988)
    )

    def test_split_at_every_byte(self) -> None:
        """
        The stream cut in two at every byte, and cut into single bytes,
        parses to the same messages as in one read.
        """
        whole = _parse_all([self.stream])
        self.assertEqual(len(whole[0]), 6)
        self.assertIsNone(whole[1])
        for i in range(len(self.stream) + 1):
            self.assertEqual(_parse_all([self.stream[:i], self.stream[i:]]), whole, i)
        self.assertEqual(_parse_all([bytes([b]) for b in self.stream]), whole)

    def test_each_packet_alone(self) -> None:
        """
        Each packet read alone (the fast path) parses as in the stream.
        """
        packets = [
            encode_request(P.SUBMIT_JOB, b"f", b"u", b"x" * 100),
            encode_request(P.GRAB_JOB),
            encode_request(P.ECHO_REQ, b"x" * 988),
        ]
        for packet in packets:
            self.assertEqual(_parse_all([packet]), _parse_all([packet[:5], packet[5:]]))
            self.assertEqual(len(_parse_all([packet])[0]), 1)
        self.assertEqual(_parse_all(packets)[0], _parse_all([b"".join(packets)])[0])

    def test_size_limit_boundary(self) -> None:
        """
        A packet alone in a read whose body is exactly the limit is taken;
        one byte over is refused, as in the loop.
        """
        at_limit = encode_request(P.ECHO_REQ, b"x" * 1000)
        over = encode_request(P.ECHO_REQ, b"x" * 1001)
        self.assertEqual(_parse_all([at_limit]), ([(P.ECHO_REQ, b"x" * 1000)], None))
        messages, error = _parse_all([over])
        self.assertEqual(messages, [])
        self.assertEqual(error, _parse_all([over + over])[1])
        self.assertEqual(error[0], b"ARGUMENT_TOO_LARGE")  # type: ignore[index]

    def test_not_for_the_fast_path(self) -> None:
        """
        Exactly a header's worth of a bad packet (other magic, a bad type,
        a bad magic) and a packet's worth of text take the general loop.
        """
        other = encode(P.ECHO_RES)
        self.assertEqual(_parse_all([other]), ([(RESPONSE_PACKET, b"")], None))
        bad_type = b"\0REQ" + struct.pack(">II", 99, 0)
        self.assertEqual(
            _parse_all([bad_type])[1], (b"INVALID_COMMAND", b"Invalid command expected")
        )
        bad_magic = b"\0XYZ" + struct.pack(">II", 1, 0)
        self.assertEqual(_parse_all([bad_magic])[1], (b"INVALID_MAGIC", b"Request magic expected"))
        self.assertEqual(_parse_all([b"workers\n\0\0\0\0"])[0], [(TEXT_LINE, b"workers")])
        short = encode_request(P.ECHO_REQ, b"abc")
        self.assertEqual(_parse_all([short[:-1], short[-1:]])[0], [(P.ECHO_REQ, b"abc")])


class SplitFieldsTests(ServerTestMixin, SynchronousTestCase):
    """
    L{wire.split_fields}, how packets' fields are taken on PyPy (see
    L{wire.SPLIT_IS_FAST}), gives what C{bytes.split} does.
    """

    def test_as_split(self) -> None:
        """
        Same fields as C{bytes.split(b"\\0", count - 1)}, for bodies with
        fewer, as many and more NULs than fields, empty fields and NULs at
        either end.
        """
        bodies = [b"", b"\0", b"\0\0", b"a", b"a\0", b"\0a", b"a\0b", b"a\0\0b\0c\0", b"\0" * 5]
        bodies += [b"f\0u\0" + b"x\0y" * 1000, b"only one field" * 5000]
        for body in bodies:
            for count in range(1, 6):
                self.assertEqual(
                    wire.split_fields(body, count), body.split(b"\0", count - 1), (body, count)
                )

    def test_protocol_by_find(self) -> None:
        """
        The submission and result handlers answer as before when they take
        fields by find and slice: malformed bodies refused, payloads with
        NULs kept whole.
        """
        self.patch(protocol, "_SPLIT_IS_FAST", False)
        client = self.connect()
        client.send(P.SUBMIT_JOB, b"f", b"u", b"pay\0load\0")
        client.send(P.SUBMIT_JOB_EPOCH, b"f", b"v", b"1", b"p\0q")
        ((_, (handle,)), (_, (scheduled,))) = client.packets()
        self.assertEqual(self.server.table.by_handle[scheduled].data, b"p\0q")
        worker = self.connect().can_do(b"f")
        self.assertEqual(worker.grab(), (P.JOB_ASSIGN_UNIQ, (handle, b"f", b"u", b"pay\0load\0")))
        worker.send(P.WORK_STATUS, handle, b"1", b"2")
        self.assertEqual(client.packets(), [(P.WORK_STATUS, (handle, b"1", b"2"))])
        client.send_bytes(encode_request(P.SUBMIT_JOB_BG, b"f"))
        [(ptype, (code, _))] = client.packets()
        self.assertEqual((ptype, code), (P.ERROR, b"INVALID_ARGUMENT"))
