# -*- test-case-name: txgearmand.test.test_guard -*-
"""
The server's guard against peers that would make it grow or stall it:
the memory budget, the read timeout for stalled peers, the output limits
and the connection limit, and giving memory back after a spike.

The guard keeps the counts; the connections (L{Guarded}) measure what
they hold and act on the guard's answers.  One timer, running only while
there is something to watch, re-measures unsent output, closes stalled
connections, notices the server going back under its budget and trims
the heap after a spike.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from twisted.internet.interfaces import IDelayedCall, IReactorTime

from txgearmand import _host, _log

if TYPE_CHECKING:
    from txgearmand.job import JobTable
    from txgearmand.settings import Settings

__all__ = ["Guard", "Guarded"]

#: Partial packets smaller than this are never refused for the budget:
#: they are the replies and results that finish work and free memory.
SMALL_PARTIAL = 64 * 1024
#: Once the counted bytes reach this, the guard watches them, to give the
#: memory back once they fall.
WATCH_FLOOR = 32 * 1024**2
#: The longest time between two looks.
SWEEP_INTERVAL = 1.0


class Guarded(Protocol):
    """
    A connection the guard watches.
    """

    def check_output(self) -> None:
        """
        Measure the unsent output again, tell the guard
        (L{Guard.note_output}) and enforce the output limits.
        """

    def stalled(self) -> None:
        """
        A packet or line has stayed incomplete past the read timeout:
        close the connection.
        """

    def describe(self) -> str:
        """
        The peer, for logs.
        """


class Guard:
    """
    Counts what the server holds and watches the connections that could
    make it hold more.

    @ivar limit: the memory budget in bytes (0: none).
    @ivar partial: bytes reserved by incomplete packets (their declared
        size).
    @ivar output: bytes of unsent output, as last measured.
    @ivar over: whether the server refuses submissions for its budget:
        set by a refusal, cleared by the first look that finds the bytes
        counted back under the budget.
    @ivar alarm: L{txgearmand.flow.JobFlow.submit} calls L{admit} only when the
        counted bytes plus a new job's would pass this: below it, admitting
        a job costs one comparison.
    @ivar connections: connections open now.
    @ivar peak: the most bytes counted since memory was last given back.
    @ivar counts: events by name, for the admin C{limits} command.
    """

    log = _log.logger("txgearmand.guard.Guard")

    def __init__(
        self,
        clock: IReactorTime,
        settings: Settings,
        table: JobTable,
        release: Callable[[], object] = _host.release_to_os,
    ) -> None:
        self._clock = clock
        self._settings = settings
        self._table = table
        self._release = release
        self.limit = settings.max_memory
        self.partial = 0
        self.output = 0
        self.over = False
        self.peak = 0
        self.connections = 0
        self._outputs: dict[Guarded, int] = {}
        self._deadlines: dict[Guarded, float] = {}
        self._timer: IDelayedCall | None = None
        self._stopped = False
        self._refusing = False
        self._release_pending = False
        self.counts: dict[str, int] = dict.fromkeys(
            (
                "refused_submissions",
                "refused_packets",
                "refused_connections",
                "closed_output_hard",
                "closed_output_soft",
                "closed_stalled",
                "memory_released",
            ),
            0,
        )
        self.alarm = self._quiet_alarm()
        timeout = settings.read_timeout
        self._interval = min(SWEEP_INTERVAL, timeout / 2) if timeout else SWEEP_INTERVAL

    # -- the memory budget ----------------------------------------------

    def used(self) -> int:
        """
        The bytes counted against the budget: payloads of the jobs held,
        partial packets and unsent output.
        """
        return self._table.held_bytes + self.partial + self.output

    def admit(self, size: int) -> bool:
        """
        Whether C{size} more bytes fit the budget; if not, the server is
        over it (logged once, and watched until it is back under).
        """
        used = self.used() + size
        if self.limit and used > self.limit:
            self._go_over(used)
            return False
        if used > self.peak:
            self.peak = used
        self._watch()
        return True

    def refused(self, what: str) -> None:
        """
        Count a refusal (C{submissions}, C{packets} or C{connections}).
        """
        self.counts["refused_" + what] += 1

    def reserve(self, peer: Guarded, more: int, refusable: bool = True) -> bool:
        """
        A connection's incomplete packet declares C{more} bytes than it
        did: reserve them, or, if it is C{refusable} (a submission), refuse
        if they would take the server over its budget (small ones are
        always let through).
        """
        if refusable and more >= SMALL_PARTIAL and not self.admit(more):
            self.refused("packets")
            return False
        self.partial += more
        return True

    def unreserve(self, size: int) -> None:
        """
        Bytes reserved by a packet that completed or was dropped.
        """
        self.partial -= size

    def note_output(self, peer: Guarded, size: int) -> None:
        """
        A connection holds C{size} bytes of unsent output now.
        """
        old = self._outputs.get(peer, 0)
        if size:
            self._outputs[peer] = size
            self._watch()
        elif old:
            del self._outputs[peer]
        self.output += size - old

    def closed_for_output(self, kind: str) -> None:
        """
        A connection was closed for its unsent output (C{hard} or C{soft}):
        count it, and give what it held back at the next look.
        """
        self.counts["closed_output_" + kind] += 1
        self._release_pending = True
        self._watch()

    def _go_over(self, used: int) -> None:
        if not self.over:
            self.over = True
            self.log.warn(
                "Over the memory budget: {used} of {limit} bytes counted (jobs {jobs},"
                " partial packets {partial}, unsent output {output}); refusing new work",
                used=used,
                limit=self.limit,
                jobs=self._table.held_bytes,
                partial=self.partial,
                output=self.output,
            )
        self._watch()

    # -- stalled peers --------------------------------------------------

    def watch_stall(self, peer: Guarded, deadline: float) -> None:
        """
        Close C{peer} unless L{forget_stall} is called by C{deadline}.
        """
        self._deadlines[peer] = deadline
        self._watch()

    def forget_stall(self, peer: Guarded) -> None:
        """
        C{peer} has nothing incomplete any more.
        """
        self._deadlines.pop(peer, None)

    # -- connections ----------------------------------------------------

    def room_for_connection(self) -> bool:
        """
        Whether one more connection may be served (counting a refusal if
        not, and logging the first of a run of them).
        """
        limit = self._settings.max_connections
        if not limit or self.connections < limit:
            return True
        if not self._refusing:
            self._refusing = True
            self.log.warn(
                "At the connection limit ({limit}): refusing new connections", limit=limit
            )
        self.refused("connections")
        return False

    def connected(self) -> None:
        """
        A connection opened.
        """
        self.connections += 1

    def disconnected(self, peer: Guarded, reserved: int) -> None:
        """
        A connection closed: forget what it held.
        """
        self.connections -= 1
        if self._refusing and self.connections < self._settings.max_connections:
            self._refusing = False
            self.log.info(
                "Below the connection limit again ({n} refused so far)",
                n=self.counts["refused_connections"],
            )
        self.forget_stall(peer)
        self.note_output(peer, 0)
        self.partial -= reserved

    # -- the watch ------------------------------------------------------

    def _quiet_alarm(self) -> int:
        # While nothing is watched: look when the budget or the watch
        # floor would be passed.
        return min(self.limit, WATCH_FLOOR) if self.limit else WATCH_FLOOR

    def _watch(self) -> None:
        if self._timer is None and not self._stopped:
            self.alarm = self.limit or (1 << 62)
            self._timer = self._clock.callLater(self._interval, self.sweep)

    def sweep(self) -> None:
        """
        Look at everything watched: re-measure unsent output, close
        stalled connections, notice the server back under its budget, give
        memory back after a spike; look again later while anything is
        left to watch.
        """
        self._timer = None
        for peer in list(self._outputs):
            try:
                peer.check_output()
            except Exception:
                self._outputs.pop(peer, None)
                self.log.failure("Measuring the output of {peer} failed", peer=peer)
        now = self._clock.seconds()
        for peer, deadline in list(self._deadlines.items()):
            if deadline <= now and self._deadlines.get(peer) == deadline:
                del self._deadlines[peer]
                self.counts["closed_stalled"] += 1
                try:
                    self.log.info(
                        "Closing {peer}: incomplete packet past the read timeout",
                        peer=peer.describe(),
                    )
                    peer.stalled()
                except Exception:
                    self.log.failure("Closing the stalled {peer} failed", peer=peer)
        used = self.used()
        if self.over and used <= self.limit:
            self.over = False
            self.log.info(
                "Back under the memory budget: {used} of {limit} bytes; taking new work",
                used=used,
                limit=self.limit,
            )
        if used > self.peak:
            self.peak = used
        if self._release_pending or (self.peak >= WATCH_FLOOR and used < self.peak // 2):
            # A spike has drained, or a slow reader's output was dropped:
            # hand the freed heap back to the kernel.
            self.peak = used
            self._release_pending = False
            try:
                released = self._release()
            except Exception:
                released = False
                self.log.failure("Giving memory back failed")
            if released:
                self.counts["memory_released"] += 1
        if (
            self._outputs
            or self._deadlines
            or self.over
            or self._release_pending
            or self.peak >= WATCH_FLOOR
        ):
            self._watch()
        else:
            self.alarm = self._quiet_alarm()

    def stop(self) -> None:
        """
        Stop watching (the server stops).
        """
        self._stopped = True
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def start(self) -> None:
        """
        Watch again after L{stop}.
        """
        self._stopped = False
        if self._outputs or self._deadlines or self.over:
            self._watch()

    def report(self) -> list[tuple[str, int]]:
        """
        Where the server stands against its limits, as (name, value) pairs.
        """
        s = self._settings
        rss = _host.rss_bytes()
        return [
            ("max_memory", self.limit),
            ("used", self.used()),
            ("jobs_bytes", self._table.held_bytes),
            ("partial_bytes", self.partial),
            ("output_bytes", self.output),
            ("over_budget", int(self.over)),
            ("rss", -1 if rss is None else rss),
            ("connections", self.connections),
            ("max_connections", s.max_connections),
            *self.counts.items(),
        ]
