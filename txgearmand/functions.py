# -*- test-case-name: txgearmand.test.test_model -*-
"""
The function registry: every function name the server knows, its queues
(L{FunctionQueue}), and the max-queue limits.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Union

from txgearmand.meters import REFUSED, FunctionCounts
from txgearmand.records import FunctionQueue
from txgearmand.settings import Limits, limits_of
from txgearmand.wire import GearmanError

__all__ = ["FunctionQueue", "FunctionRegistry"]


class FunctionRegistry:
    """
    The functions a job server knows, by name, and their limits.

    A function is kept while it has a worker or a job, or was made with
    C{create function}; L{forget_if_unused} drops it after that.

    @ivar by_name: every known L{FunctionQueue} by name (read it; change it
        through the methods).
    @ivar limits_by_name: the functions that have max-queue limits.
    @ivar counts: every function's counters (L{FunctionCounts}), which
        outlive the functions.
    @ivar on_function: called with each new function's L{FunctionQueue}
        (the L{txgearmand.spill.Spill} attaches itself), or C{None}.
    """

    def __init__(
        self,
        max_queue: Mapping[bytes, Union[int, Iterable[int]]] | None = None,
        counts: FunctionCounts | None = None,
    ):
        self.by_name: dict[bytes, FunctionQueue] = {}
        self.counts = counts if counts is not None else FunctionCounts()
        self.limits_by_name: dict[bytes, Limits] = {}
        self.on_function: Callable[[FunctionQueue], None] | None = None
        for name, limit in (max_queue or {}).items():
            self.set_limits(name, limits_of(limit))

    def __iter__(self) -> Iterator[FunctionQueue]:
        return iter(self.by_name.values())

    def function(self, name: bytes) -> FunctionQueue:
        """
        The L{FunctionQueue} of a function, made if new.
        """
        fq = self.by_name.get(name)
        if fq is None:
            fq = self.by_name[name] = FunctionQueue(name)
            fq.counts = self.counts.of(name)
            if self.on_function is not None:
                self.on_function(fq)
        return fq

    def get(self, name: bytes) -> FunctionQueue | None:
        """
        The L{FunctionQueue} of a function, or C{None} if unknown.
        """
        return self.by_name.get(name)

    def listed(self) -> list[FunctionQueue]:
        """
        The functions worth listing (with a worker, a job, or made with
        C{create function}), sorted by name.
        """
        return [fq for _, fq in sorted(self.by_name.items()) if fq.in_use()]

    def create(self, name: bytes) -> None:
        """
        Make a function known even with no worker and no job.
        """
        self.function(name).created = True

    def drop(self, name: bytes) -> FunctionQueue | None:
        """
        Undo L{create}: forget a function with no worker and no job (its
        name compared case-insensitively when there is no exact match, as
        C gearmand does).

        @raise GearmanError: if it still has workers or jobs.
        @return: the dropped function, or C{None} if there was none.
        """
        fq = self.by_name.get(name)
        if fq is None:
            lowered = name.lower()
            for other, candidate in self.by_name.items():
                if other.lower() == lowered:
                    fq = candidate
                    break
        if fq is None or not fq.in_use():
            return None
        if fq.workers or fq.total():
            raise GearmanError(b"", b"there are still connected workers or executing clients")
        fq.created = False
        self.forget_if_unused(fq)
        return fq

    def forget_if_unused(self, fq: FunctionQueue) -> None:
        """
        Drop a function that no longer has a worker, a job or a
        C{create function}.
        """
        if fq.in_use():
            return
        if self.by_name.get(fq.name) is fq:
            del self.by_name[fq.name]
        fq.cancel_wake_timer()

    # -- limits ---------------------------------------------------------

    def set_limits(self, name: bytes, limits: Limits) -> None:
        """
        Set (or, all zero, remove) a function's max-queue limits.
        """
        if any(limits):
            self.limits_by_name[name] = limits
        else:
            self.limits_by_name.pop(name, None)

    def limits(self, name: bytes) -> Limits | None:
        """
        The limits set for a function (high, normal, low; 0 = none), if any.
        """
        return self.limits_by_name.get(name)

    def check_room(self, fq: FunctionQueue, priority: int) -> None:
        """
        Refuse a new job of this priority if the function is at its limit
        (queued and running jobs, as C gearmand counts).

        @raise GearmanError: C{QUEUE_ERROR} when it is full.
        """
        limits = self.limits_by_name.get(fq.name)
        if limits is not None:
            limit = limits[priority]
            if limit and fq.total() >= limit:
                fq.counts[REFUSED] += 1
                self.forget_if_unused(fq)
                raise GearmanError(b"QUEUE_ERROR", b"Job queue is full")

    def over_limit(self) -> list[FunctionQueue]:
        """
        The functions holding more jobs than a limit allows (after a replay,
        which keeps every stored job).
        """
        out = []
        for fq in self.by_name.values():
            limits = self.limits_by_name.get(fq.name)
            if limits is not None and any(n and fq.total() > n for n in limits):
                out.append(fq)
        return out
