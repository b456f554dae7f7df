# -*- test-case-name: txgearmand.test.test_admin -*-
"""
A graceful shutdown: stop listening, let every queued and running job
finish, then say so.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, maybeDeferred

from txgearmand import _log

__all__ = ["Drain"]


class Drain:
    """
    Waits, once begun, until no job is left.

    @ivar draining: a graceful shutdown has begun.
    """

    log = _log.logger("txgearmand.server.JobServer")

    def __init__(self, jobs_left: Callable[[], int]) -> None:
        """
        @param jobs_left: how many queued and running jobs remain.
        """
        self._jobs_left = jobs_left
        self._done: Deferred[None] | None = None
        self.draining = False

    def begin(
        self,
        jobs: int,
        stop_listening: Callable[[], Any] | None,
        then: Callable[[], Deferred[None]],
    ) -> Deferred[None]:
        """
        Begin (the first call; later ones get the same Deferred): stop
        listening, and once no job is left (at once if none is) call
        C{then}, whose result the returned Deferred fires with.
        """
        if self._done is None:
            self.draining = True
            self._done = Deferred()
            self._done.addCallback(lambda _: then())
            self.log.info("Graceful shutdown: draining {n} jobs", n=jobs)
            if stop_listening is not None:
                maybeDeferred(stop_listening).addErrback(
                    lambda f: self.log.failure("Stopping the listeners failed", f)
                )
            self.check()
        return self._done

    def check(self) -> None:
        """
        A job ended: fire if it was the last.
        """
        d = self._done
        if d is None or d.called or self._jobs_left():
            return
        self.log.info("Graceful shutdown: no job left")
        d.callback(None)
