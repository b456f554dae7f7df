"""
Tests for L{txgearmand.fastreactor}: fast connections skip the legacy log
context, everything else keeps it, and errors are still logged.
"""

from __future__ import annotations

import errno
from typing import Any

from twisted.application.reactors import getReactorTypes
from twisted.python import context, log
from twisted.trial.unittest import SynchronousTestCase

from txgearmand import fastreactor
from txgearmand.protocol import GearmanProtocol


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
        as with Twisted's reactor.
        """
        fast = _Selectable(100, _Fast(), fail=True)
        reactor = self.reactor([(100, 1)], fast)
        reactor.doPoll(0)
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)
        self.assertEqual(len(fast.lost), 1)
        self.assertNotIn(100, reactor._selectables)

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
