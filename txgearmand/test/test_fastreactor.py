"""
Tests for L{txgearmand.fastreactor}: fast connections skip the legacy log
context, everything else keeps it, and errors are still logged.
"""

from __future__ import annotations

import errno
import select
import socket
from pathlib import Path
from typing import Any

from twisted.application.reactors import getReactorTypes
from twisted.internet import main
from twisted.python import context, log
from twisted.trial.unittest import SynchronousTestCase

from txgearmand import fastreactor
from txgearmand.batching import OutputBatch
from txgearmand.protocol import GearmanProtocol
from txgearmand.test import _process
from txgearmand.wire import RESPONSE_MAGIC, PacketParser, encode_request
from txgearmand.wire import PacketType as P


class _Poller:
    """
    An epoll stand-in that returns the events it is given, once.
    """

    def __init__(self, events: list[tuple[int, int]], error: OSError | None = None) -> None:
        self.events = events
        self.error = error

    def poll(self, timeout: float, maxevents: int) -> list[tuple[int, int]]:
        if self.error is not None:
            raise self.error
        events, self.events = self.events, []
        return events

    def unregister(self, fd: int) -> None:
        pass

    def close(self) -> None:
        pass


class _Fast:
    fastDispatch = True


class _Slow:
    pass


class _Selectable:
    """
    Just enough of a connection for C{_doReadOrWrite}.
    """

    def __init__(self, fd: int, protocol: object, fail: bool = False) -> None:
        self.fd = fd
        self.protocol = protocol
        self.fail = fail
        self.reads: list[dict[str, Any]] = []
        self.lost: list[object] = []

    def fileno(self) -> int:
        return self.fd

    def logPrefix(self) -> str:
        return f"Sel{self.fd}"

    def doRead(self) -> None:
        self.reads.append(dict(context.get(log.ILogContext)))
        if self.fail:
            raise ZeroDivisionError("handler failed")

    def connectionLost(self, reason: object) -> None:
        self.lost.append(reason)


class FastEPollReactorTests(SynchronousTestCase):
    def reactor(self, events: list[tuple[int, int]], *selectables: _Selectable) -> Any:
        reactor: Any = fastreactor.FastEPollReactor()
        self.addCleanup(reactor._poller.close)
        real = reactor._poller
        reactor._poller = _Poller(events)
        real.close()
        for s in selectables:
            reactor._selectables[s.fd] = s
            reactor._reads.add(s.fd)
        return reactor

    def test_gearman_connections_are_fast(self) -> None:
        """
        The server's protocol asks for the fast dispatch.
        """
        self.assertIs(GearmanProtocol.fastDispatch, True)

    def test_fast_skips_context(self) -> None:
        """
        A fast connection's read runs without the log context its prefix
        would set; another connection's still has it; an fd with no
        selectable is skipped.
        """
        fast = _Selectable(100, _Fast())
        slow = _Selectable(101, _Slow())
        reactor = self.reactor([(100, 1), (101, 1), (102, 1)], fast, slow)
        reactor.doPoll(0)
        self.assertEqual(len(fast.reads), 1)
        self.assertNotEqual(fast.reads[0]["system"], "Sel100")
        self.assertEqual(slow.reads, [{"system": "Sel101"}])

    def test_fast_error_logged_and_disconnected(self) -> None:
        """
        A fast connection whose handler raises is logged and disconnected,
        as with Twisted's reactor: on a plain read event (the inline path)
        and on a read with hang-up (through C{_doReadOrWrite}).
        """
        for event in (select.EPOLLIN, select.EPOLLIN | select.EPOLLHUP):
            fast = _Selectable(100, _Fast(), fail=True)
            reactor = self.reactor([(100, event)], fast)
            reactor.doPoll(0)
            self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)
            self.assertEqual(len(fast.reads), 1)
            self.assertEqual(len(fast.lost), 1)
            self.assertNotIn(100, reactor._selectables)

    def test_fast_read_done(self) -> None:
        """
        A fast connection whose read says it is done is disconnected.
        """
        fast = _Selectable(100, _Fast())
        fast.doRead = lambda: main.CONNECTION_DONE  # type: ignore[assignment,method-assign]
        reactor = self.reactor([(100, select.EPOLLIN)], fast)
        reactor.doPoll(0)
        self.assertEqual(len(fast.lost), 1)

    def test_fast_hangup(self) -> None:
        """
        A hang-up alone goes through Twisted's C{_doReadOrWrite}: the
        connection is done, with no read.
        """
        fast = _Selectable(100, _Fast())
        reactor = self.reactor([(100, select.EPOLLHUP)], fast)
        reactor.doPoll(0)
        self.assertEqual(fast.reads, [])
        self.assertEqual(len(fast.lost), 1)

    def test_disconnect_failure_logged(self) -> None:
        """
        If even disconnecting fails, the error is logged, not raised.
        """
        fast = _Selectable(100, _Fast(), fail=True)

        def broken(reason: object) -> None:
            raise ZeroDivisionError("disconnect failed")

        fast.connectionLost = broken  # type: ignore[method-assign]
        reactor = self.reactor([(100, 1)], fast)
        reactor.doPoll(0)
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 2)

    def test_after_events(self) -> None:
        """
        What a handler asks for with C{txgearmandAfterEvents} runs once
        every event of the poll is dispatched; an error in one is logged
        and the others still run; outside the dispatch it is refused.
        """
        calls: list[str] = []
        first = _Selectable(100, _Fast())
        second = _Selectable(101, _Slow())
        reactor = self.reactor([(100, select.EPOLLIN), (101, select.EPOLLIN)], first, second)

        def read_first() -> None:
            calls.append("read 100")
            self.assertTrue(reactor.txgearmandAfterEvents(lambda: 1 / 0))
            self.assertTrue(reactor.txgearmandAfterEvents(lambda: calls.append("after")))

        first.doRead = read_first  # type: ignore[method-assign]
        second.doRead = lambda: calls.append("read 101")  # type: ignore[assignment,method-assign]
        self.assertFalse(reactor.txgearmandAfterEvents(lambda: calls.append("never")))
        reactor.doPoll(0)
        self.assertEqual(calls, ["read 100", "read 101", "after"])
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)
        reactor.doPoll(0)
        self.assertEqual(calls, ["read 100", "read 101", "after"])

    def test_batch_turn_without_timer(self) -> None:
        """
        An L{OutputBatch} on this reactor ends a turn held during events
        after them, with no timer; held outside events, with C{callLater}.
        """
        fast = _Selectable(100, _Fast())
        reactor = self.reactor([(100, select.EPOLLIN)], fast)
        batch = OutputBatch(reactor)
        flushed: list[int] = []
        batch.before_flush = lambda: flushed.append(batch.depth)
        fast.doRead = batch.hold_until_next_turn  # type: ignore[assignment,method-assign]
        reactor.doPoll(0)
        self.assertEqual(flushed, [0])
        self.assertEqual(reactor.getDelayedCalls(), [])
        batch.hold_until_next_turn()
        (call,) = reactor.getDelayedCalls()
        call.cancel()

    def test_eintr(self) -> None:
        """
        An interrupted poll returns; another error is raised.
        """
        reactor = self.reactor([])
        reactor._poller = _Poller([], OSError(errno.EINTR, "interrupted"))
        reactor.doPoll(None)
        reactor._poller = _Poller([], OSError(errno.EBADF, "bad"))
        self.assertRaises(OSError, reactor.doPoll, 0)

    def test_plugin(self) -> None:
        """
        twistd knows it as C{txgearmand-epoll}, in this module.
        """
        names = {r.shortName: getattr(r, "moduleName", None) for r in getReactorTypes()}
        self.assertEqual(names.get("txgearmand-epoll"), "txgearmand.fastreactor")


class TwistdTests(SynchronousTestCase):
    """
    C{twistd -r txgearmand-epoll -n gearmand} serves jobs.
    """

    def test_job_round_trip(self) -> None:
        """
        A client's job reaches a worker and its result comes back, and the
        log names the reactor.
        """
        workdir = Path(self.mktemp()).resolve()
        workdir.mkdir()
        server = _process.twistd_gearmand(
            workdir, "--queue=memory", twistd=("--reactor=txgearmand-epoll",)
        ).start()
        self.addCleanup(server.stop)
        client = socket.create_connection(("127.0.0.1", server.port), timeout=10)
        worker = socket.create_connection(("127.0.0.1", server.port), timeout=10)
        self.addCleanup(client.close)
        self.addCleanup(worker.close)
        worker.sendall(encode_request(P.CAN_DO, b"f"))
        client.sendall(encode_request(P.SUBMIT_JOB, b"f", b"", b"x" * 100))
        ptype, handle = _read(client)
        self.assertEqual(ptype, P.JOB_CREATED)
        worker.sendall(encode_request(P.GRAB_JOB))
        self.assertEqual(_read(worker), (P.JOB_ASSIGN, handle + b"\0f\0" + b"x" * 100))
        worker.sendall(encode_request(P.WORK_COMPLETE, handle, b"done"))
        self.assertEqual(_read(client), (P.WORK_COMPLETE, handle + b"\0done"))
        self.assertIn("FastEPollReactor", server.log())


def _read(sock: socket.socket) -> tuple[int, bytes]:
    """
    One response packet: its type and body.
    """
    parser = PacketParser(magic=RESPONSE_MAGIC)
    while True:
        messages = parser.feed(sock.recv(65536))
        if messages:
            return messages[0]
