# -*- test-case-name: txgearmand.test.test_model -*-
"""
Output batching: what the job server tells its participants while it
works through what it read in one reactor turn goes out once per
participant, at the end of the turn.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from twisted.internet.interfaces import IReactorTime

__all__ = ["Flushable", "OutputBatch"]


class Flushable(Protocol):
    """
    Something that buffers output during a batch (a connection).
    """

    def flush(self) -> None:
        """
        Write what was buffered.
        """


def _nothing() -> None:
    pass


class OutputBatch:
    """
    A re-entrant batch: while L{depth} is above 0, peers buffer what they
    are told to send and mark themselves dirty; when the outermost batch
    ends (or, for input, when the reactor turn ends), L{flush} runs
    L{before_flush} (the store's writes of the turn) and then flushes every
    dirty peer, once.

    Use it as a context manager (C{with batch:}); the connections' read
    path touches L{depth} directly, which saves a call per read.

    @ivar depth: how many batches are open.
    @ivar turn_pending: a batch is held open until the next reactor turn
        (the read path reads it to skip a call when one is).
    @ivar before_flush: called at the start of each flush.
    """

    __slots__ = ("_after_events", "_clock", "_dirty", "before_flush", "depth", "turn_pending")

    def __init__(self, clock: IReactorTime) -> None:
        self._clock = clock
        self.depth = 0
        self._dirty: list[Flushable] = []
        self.turn_pending = False
        self.before_flush: Callable[[], None] = _nothing
        #: The reactor's hook to run a call after the current poll's events
        #: (L{txgearmand.fastreactor}), if it has one.
        self._after_events: Callable[[Callable[[], None]], bool] | None = getattr(
            clock, "txgearmandAfterEvents", None
        )

    def __enter__(self) -> None:
        self.depth += 1

    def __exit__(self, *exc_info: object) -> None:
        self.depth -= 1
        if not self.depth:
            self.flush()

    def mark_dirty(self, peer: Flushable) -> None:
        """
        Note that a peer has buffered output to write when the batch ends.
        """
        self._dirty.append(peer)

    def hold_until_next_turn(self) -> None:
        """
        Keep a batch open until the next reactor turn, then flush: what the
        connections read in one turn is answered once per peer, however
        many reads caused output for it.
        """
        if not self.turn_pending:
            self.turn_pending = True
            self.depth += 1
            after = self._after_events
            # Fast path: under txgearmand.fastreactor, the turn ends after
            # the poll's events without a DelayedCall (2.6 µs a turn on
            # CPython); elsewhere, or outside an event, callLater(0).
            if after is None or not after(self._end_of_turn):
                self._clock.callLater(0, self._end_of_turn)

    def _end_of_turn(self) -> None:
        self.turn_pending = False
        self.depth -= 1
        if not self.depth:
            self.flush()

    def flush(self) -> None:
        """
        Run L{before_flush}, then write out every dirty peer's output.
        """
        self.before_flush()
        dirty = self._dirty
        if dirty:
            self._dirty = []
            for peer in dirty:
                peer.flush()
