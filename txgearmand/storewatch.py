# -*- test-case-name: txgearmand.test.test_logs -*-
"""
Is the store slow?  The part of L{txgearmand.durability.Durability} that
times the store's writes: it counts each one's duration, keeps the last
write error, says (once) when the store became slow - a write took longer
than the slow threshold, or one still running has waited that long - and
when it is quick again.  Its timer runs only while writes are
outstanding.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.python.failure import Failure

from txgearmand.meters import Histogram

if TYPE_CHECKING:
    from twisted.logger import Logger

__all__ = ["StoreWatch"]


class StoreWatch:
    """
    The latency watch of the store's writes: a part of
    L{txgearmand.durability.Durability}, which sets the attributes it
    uses.

    @ivar slow: a write has taken longer than the slow threshold, and none
        has been quick since.
    @ivar watch_timer: the timer that looks at the writes still running
        (only while there are some), or C{None}.
    @ivar last_error: the last write error: its text and when, or C{None}.
    """

    log: Logger
    slow: bool
    watch_timer: IDelayedCall | None
    last_error: tuple[str, float] | None
    _clock: IReactorTime | None
    _slow_after: float
    _latency: Histogram | None
    _writing: dict[int, float]
    _writes: int

    def _writing_started(self) -> int:
        assert self._clock is not None
        self._writes += 1
        self._writing[self._writes] = self._clock.seconds()
        if self.watch_timer is None and self._slow_after:
            self.watch_timer = self._clock.callLater(self._slow_after, self._check_writes)
        return self._writes

    def _wrote(self, result: object, write: int, changes: int) -> object:
        assert self._clock is not None
        started = self._writing.pop(write, None)
        if started is None:
            return result
        now = self._clock.seconds()
        took = now - started
        if self._latency is not None:
            self._latency.observe(took)
        if isinstance(result, Failure):
            self.last_error = (
                " ".join(str(result.value).split()) or type(result.value).__name__,
                now,
            )
        if not self._slow_after:
            return result
        if took > self._slow_after:
            self._became_slow("writing {changes} job changes took {seconds:.3f} s", changes, took)
        elif self.slow and not isinstance(result, Failure) and not self._waited_too_long():
            self.slow = False
            self.log.info(
                "The job store is quick again: writing {changes} job changes took {seconds:.3f} s",
                changes=changes,
                seconds=took,
            )
        return result

    def _became_slow(self, how: str, changes: int, seconds: float) -> None:
        if self.slow:
            return
        self.slow = True
        self.log.warn(
            "The job store is slow: " + how + " (more than {threshold} s); jobs are"
            " acknowledged only once it has them",
            changes=changes,
            seconds=seconds,
            threshold=self._slow_after,
        )

    def _waited_too_long(self) -> float:
        """
        How long the oldest write still running has waited, if longer than
        the threshold (else 0).
        """
        assert self._clock is not None
        if not self._writing:
            return 0.0
        waited = self._clock.seconds() - next(iter(self._writing.values()))
        return waited if waited > self._slow_after else 0.0

    def _check_writes(self) -> None:
        # Runs only while writes are outstanding: a store that hangs is
        # reported before it fails.
        self.watch_timer = None
        waited = self._waited_too_long()
        if waited:
            self._became_slow(
                "a write has waited {seconds:.3f} s ({changes} writes outstanding)",
                len(self._writing),
                waited,
            )
        if self._writing and self._clock is not None:
            self.watch_timer = self._clock.callLater(self._slow_after, self._check_writes)
