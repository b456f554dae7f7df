# -*- test-case-name: txgearmand.test.test_model -*-
"""
Workers: what each can do (CAN_DO, CANT_DO, RESET_ABILITIES), which of
them sleep, and the wake-up policy: which sleepers a new job wakes (NOOP),
and when to wake more (Gearman::Server's C{wakeup} and C{wakeup_delay}).
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet.interfaces import IReactorTime

from txgearmand.batching import OutputBatch
from txgearmand.functions import FunctionRegistry
from txgearmand.records import FunctionQueue, Job, Participant
from txgearmand.settings import Settings
from txgearmand.wire import PacketType

__all__ = ["Workers"]

_NOOP = PacketType.NOOP


class Workers:
    """
    Registers workers for functions and puts them to sleep on them
    (L{FunctionQueue.sleepers}) and wakes them.  A worker that did jobs
    since it last slept goes to the head of the line, an idle one to the
    tail: warm workers stay busy, surplus ones stay asleep, and a job wakes
    C{wakeup} of them, not the whole herd.
    """

    def __init__(
        self,
        clock: IReactorTime,
        settings: Settings,
        registry: FunctionRegistry,
        batch: OutputBatch,
        take_back: Callable[[Job], None],
    ) -> None:
        """
        @param take_back: called with each job a worker holds when it gives
            up the job's function: the server takes it back (requeue).
        """
        self._clock = clock
        self._settings = settings
        self._count = settings.wakeup
        self._delay = settings.wakeup_delay
        self._registry = registry
        self._batch = batch
        self._take_back = take_back

    def can_do(self, worker: Participant, function: bytes, timeout: float | None = None) -> None:
        """
        Register a worker for a function (CAN_DO, or CAN_DO_TIMEOUT with
        C{timeout} in seconds).  Registering again updates the timeout.
        """
        fq = worker.abilities.get(function)
        if fq is None:
            fq = self._registry.function(function)
            worker.abilities[function] = fq
            worker.ability_list = list(worker.abilities.values())
            fq.workers[worker] = None
        if timeout:
            worker.timeouts[function] = timeout
        else:
            worker.timeouts.pop(function, None)
        if worker.sleeping:
            fq.sleepers[worker] = None
            if fq.has_ready():
                self.wake(worker)

    def can_do_timeout(self, worker: Participant, function: bytes, value: float) -> None:
        """
        CAN_DO_TIMEOUT: register with a timeout read in the C{timeout_unit}
        setting (0 or less: none).
        """
        self.can_do(worker, function, self._settings.timeout_seconds(value))

    def cant_do(self, worker: Participant, function: bytes) -> None:
        """
        Unregister a worker from a function (CANT_DO); the jobs of that
        function it holds are taken back for another worker.
        """
        fq = worker.abilities.pop(function, None)
        if fq is None:
            return
        worker.ability_list = list(worker.abilities.values())
        worker.timeouts.pop(function, None)
        fq.workers.pop(worker, None)
        fq.sleepers.pop(worker, None)
        for job in [j for j in worker.held.values() if j.queue is fq]:
            self._take_back(job)
        self._registry.forget_if_unused(fq)

    def reset_abilities(self, worker: Participant) -> None:
        """
        Unregister a worker from every function (RESET_ABILITIES); the jobs
        it holds are taken back for another worker.
        """
        for function in list(worker.abilities):
            self.cant_do(worker, function)

    def sleep(self, worker: Participant) -> None:
        """
        PRE_SLEEP: NOOP the worker at once if one of its functions has a
        queued job, else note it as sleeping on each of its functions.
        """
        functions = worker.ability_list
        for fq in functions:
            if fq.has_ready():
                if worker.sleeping:
                    # A second PRE_SLEEP: it sleeps on its functions still.
                    self.unsleep(worker)
                worker.send_packet(_NOOP)
                return
        warm = worker.jobs_done > 0
        worker.jobs_done = 0
        worker.sleeping = True
        for fq in functions:
            sleepers = fq.sleepers
            sleepers[worker] = None
            if warm:
                sleepers.move_to_end(worker, last=False)

    def unsleep(self, worker: Participant) -> None:
        """
        The worker is awake (woken, or it asked for a job).
        """
        worker.sleeping = False
        for fq in worker.ability_list:
            fq.sleepers.pop(worker, None)

    def wake(self, worker: Participant) -> None:
        """
        NOOP one sleeping worker.
        """
        self.unsleep(worker)
        worker.send_packet(_NOOP)

    def wake_up(self, fq: FunctionQueue) -> None:
        """
        A job was queued: NOOP up to C{wakeup} sleepers of its function
        (all for -1); if some still sleep, look again after
        C{wakeup_delay} while the function has queued jobs.
        """
        count = self._count
        if not count:
            return
        sleepers = fq.sleepers
        woken = 0
        while sleepers and woken != count:
            self.wake(next(iter(sleepers)))
            woken += 1
        if sleepers and self._delay >= 0 and fq.wake_timer is None:
            fq.wake_timer = self._clock.callLater(self._delay, self._wake_more, fq)

    def _wake_more(self, fq: FunctionQueue) -> None:
        fq.wake_timer = None
        if fq.has_ready() and fq.sleepers:
            with self._batch:
                self.wake_up(fq)
