# -*- test-case-name: txgearmand.test.test_fastreactor -*-
"""
An opt-in epoll reactor that dispatches txgearmand's own connections
without Twisted's per-event logging context.

Twisted's epoll reactor wraps every readiness event in
C{log.callWithLogger(selectable, ...)}: it asks the selectable for its log
prefix, copies the legacy log context dict, pushes it and pops it again.
That context only names the "system" of lines logged through the legacy
C{twisted.python.log} while the event is handled; txgearmand logs with
C{twisted.logger}, which does not read it.  It costs about 2.6 µs per event
on CPython and 1.4 µs on PyPy, several times per job.

This reactor skips it for connections whose protocol sets
C{fastDispatch = True} (L{txgearmand.protocol.GearmanProtocol} does);
every other selectable (listening ports, the status site, clients of
other protocols) is dispatched exactly as Twisted does.  An exception
from a fast connection's handler is still logged (by Twisted's
C{_doReadOrWrite}, which also disconnects it), under the system C{-}.

It is never installed by library code.  Choose it with twistd::

    twistd -r txgearmand-epoll -n gearmand ...

or install it yourself before anything imports C{twisted.internet.reactor}::

    from txgearmand import fastreactor
    fastreactor.install()
"""

from __future__ import annotations

import errno
import select
import sys
from collections.abc import Callable
from typing import Any

from twisted.internet.epollreactor import EPollReactor
from twisted.python import log

__all__ = ["FastEPollReactor", "install"]

_EPOLLIN = select.EPOLLIN


class FastEPollReactor(EPollReactor):
    """
    C{EPollReactor} that calls a fast connection's handler directly, not
    through C{log.callWithLogger}.
    """

    def __init__(self) -> None:
        self._after_events: list[Callable[[], object]] = []
        self._in_events = False
        super().__init__()

    def txgearmandAfterEvents(self, f: Callable[[], object]) -> bool:
        """
        Call C{f} once the events of the current poll are dispatched,
        before the reactor runs its timed calls and polls again: what
        C{callLater(0, f)} does from an event handler, for a tenth of the
        cost (L{txgearmand.batching.OutputBatch} flushes a turn's output
        so).

        @return: whether C{f} was taken; C{False} outside the dispatch of
            events (a timed call, startup), where the caller must use
            C{callLater(0, f)}: no poll may wait on it.
        """
        if not self._in_events:
            return False
        self._after_events.append(f)
        return True

    def doPoll(self, timeout: float | None) -> None:
        """
        Poll for events, dispatch them, then call what was asked for with
        L{txgearmandAfterEvents}.
        """
        if timeout is None:
            timeout = -1
        try:
            events = self._poller.poll(timeout, len(self._selectables))
        except OSError as err:
            if err.errno == errno.EINTR:
                return
            raise
        self._in_events = True
        try:
            self._dispatch(events)
        finally:
            self._in_events = False
            after = self._after_events
            if after:
                self._after_events = []
                for f in after:
                    try:
                        f()
                    except BaseException:
                        log.err(system="txgearmand-epoll")

    def _dispatch(self, events: list[tuple[int, int]]) -> None:
        selectables = self._selectables
        dispatch = self._doReadOrWrite
        for fd, event in events:
            selectable: Any = selectables.get(fd)
            if selectable is None:
                continue
            # Fast path: our connections skip the legacy log context
            # (2.6 µs per event on CPython); anything else keeps it.
            if getattr(getattr(selectable, "protocol", None), "fastDispatch", False):
                try:
                    if event == _EPOLLIN:
                        # Fast path (nearly every event: readable, nothing
                        # else): _doReadOrWrite's read branch inline, two
                        # calls fewer (it and its fileno() check; a closed
                        # socket's recv fails and disconnects as well).
                        try:
                            why = selectable.doRead()
                        except BaseException:
                            why = sys.exc_info()[1]
                            log.err()
                        if why:
                            self._disconnectSelectable(selectable, why, True)
                    else:
                        dispatch(selectable, fd, event)
                except BaseException:
                    # As callWithLogger: _doReadOrWrite logs the handler's
                    # own errors; this catches a failure to disconnect.
                    log.err(system="txgearmand-epoll")
            else:
                log.callWithLogger(selectable, dispatch, selectable, fd, event)

    doIteration = doPoll


def install() -> None:
    """
    Install L{FastEPollReactor} as the global reactor.
    """
    from twisted.internet.main import installReactor

    installReactor(FastEPollReactor())
