"""
Tests for the fast paths of the protocol and the submission flow (issue
14): each gives the same bytes as the general path it shortcuts.
"""

from __future__ import annotations

import struct

from twisted.trial.unittest import SynchronousTestCase

from txgearmand.job import MAX_HANDLE_PREFIX
from txgearmand.protocol import _created
from txgearmand.test.helpers import ServerTestMixin
from txgearmand.wire import PacketType as P
from txgearmand.wire import encode, encode_request

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
