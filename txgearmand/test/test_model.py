"""
Tests for the job server's model: L{txgearmand.server.JobServer} driven
directly by L{RecordingPeer}s (no protocol, no bytes), as Twisted's AMP
tests drive its dispatcher with a fake sender; and unit tests of its
parts: L{Settings}, L{JobTable}, L{FunctionRegistry} and L{OutputBatch}.
"""

from __future__ import annotations

from typing import Any

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from txgearmand.batching import OutputBatch
from txgearmand.functions import FunctionRegistry
from txgearmand.interfaces import IJobStore, StoredJob
from txgearmand.job import HIGH, LOW, NORMAL, JobTable
from txgearmand.records import FunctionQueue, Job, JobState, Participant
from txgearmand.server import JobServer
from txgearmand.settings import Settings, SettingsError
from txgearmand.store.memory import MemoryStore
from txgearmand.testing import RecordingPeer
from txgearmand.wire import GearmanError
from txgearmand.wire import PacketType as P

PREFIX = b"H:test"


class ModelMixin:
    """
    Make a started L{JobServer} on a L{Clock}, and participants for it.
    """

    clock: Clock
    server: JobServer

    def make_server(self, **options: Any) -> JobServer:
        self.clock = Clock()
        options.setdefault("job_handle_prefix", PREFIX)
        self.server = JobServer(self.clock, **options)
        self.server.startService()
        return self.server

    def join(self, name: str = "peer") -> tuple[RecordingPeer, Participant]:
        """
        A new peer joined to the server, and its participant.
        """
        peer = RecordingPeer.join(self.server, name)
        assert peer.participant is not None
        return peer, peer.participant

    def worker(self, *functions: bytes, name: str = "worker") -> tuple[RecordingPeer, Participant]:
        """
        A new participant registered for some functions.
        """
        peer, participant = self.join(name)
        for function in functions:
            self.server.workers.can_do(participant, function)
        return peer, participant

    def submit(
        self,
        client: Participant | None,
        function: bytes = b"f",
        data: bytes = b"data",
        unique: bytes = b"",
        priority: int = NORMAL,
        background: bool = False,
        when: float | None = None,
    ) -> Job:
        with self.server.output:
            return self.server.submit_job(
                client, function, unique, data, priority, background, b"", when
            )


class FlowTests(ModelMixin, SynchronousTestCase):
    """
    A job's way from submission to result.
    """

    def setUp(self) -> None:
        self.make_server()

    def test_submit_grab_complete(self) -> None:
        """
        A foreground job is queued and listened to by its client; a worker
        grabs it and it runs; WORK_COMPLETE reaches the client with the
        handle and data, and the job is gone from everywhere.
        """
        client_peer, client = self.join("client")
        worker_peer, worker = self.worker(b"f")
        job = self.submit(client, b"f", b"payload")
        self.assertEqual(job.handle, PREFIX + b":1")
        self.assertEqual(job.state, JobState.QUEUED)
        self.assertEqual(list(client.listening), [job])
        self.assertEqual(list(job.listeners), [client])
        self.assertEqual(self.server.jobs(), [job])
        self.assertEqual(self.server.jobs_outstanding(), 1)

        self.assertIs(self.server.grab_job(worker), job)
        self.assertEqual(job.state, JobState.RUNNING)
        self.assertIs(job.worker, worker)
        self.assertEqual(worker.held, {job.handle: job})
        self.assertEqual((self.server.jobs_outstanding(), self.server.jobs_running()), (0, 1))

        with self.server.output:
            self.server.work_complete(worker, job.handle, b"result")
        self.assertEqual(client_peer.take(), [(P.WORK_COMPLETE, (job.handle, b"result"))])
        self.assertEqual(worker_peer.take(), [])
        self.assertEqual(self.server.jobs(), [])
        self.assertIsNone(self.server.job_by_handle(job.handle))
        self.assertEqual(client.listening, {})
        self.assertEqual(worker.held, {})
        self.assertEqual(job.state, JobState.DONE)
        self.assertEqual((self.server.jobs_outstanding(), self.server.jobs_running()), (0, 0))

    def test_handles_count_up(self) -> None:
        """
        Each new job gets the next handle.
        """
        handles = [self.submit(None, background=True).handle for _ in range(3)]
        self.assertEqual(handles, [PREFIX + b":1", PREFIX + b":2", PREFIX + b":3"])
        self.assertEqual(self.server.new_job_handle(), PREFIX + b":4")

    def test_background_has_no_listener(self) -> None:
        """
        A background job has no listener: its client listens to nothing and
        its result goes to nobody.
        """
        client_peer, client = self.join("client")
        _, worker = self.worker(b"f")
        job = self.submit(client, background=True)
        self.assertEqual(list(job.listeners), [])
        self.assertEqual(client.listening, {})
        self.assertIs(self.server.grab_job(worker), job)
        self.server.work_complete(worker, job.handle, b"r")
        self.assertEqual(client_peer.take(), [])
        self.assertEqual(self.server.jobs(), [])

    def test_grab_nothing(self) -> None:
        """
        A participant with no ability, or whose functions have no job, gets
        no job.
        """
        _, idle = self.join("idle")
        _, worker = self.worker(b"g")
        self.submit(None, b"f", background=True)
        self.assertIsNone(self.server.grab_job(idle))
        self.assertIsNone(self.server.grab_job(worker))
        self.assertEqual(self.server.jobs_outstanding(), 1)

    def test_work_fail(self) -> None:
        """
        WORK_FAIL reaches the listener and ends the job.
        """
        client_peer, client = self.join("client")
        _, worker = self.worker(b"f")
        job = self.submit(client)
        self.server.grab_job(worker)
        self.server.work_fail(worker, job.handle)
        self.assertEqual(client_peer.take(), [(P.WORK_FAIL, (job.handle,))])
        self.assertEqual(self.server.jobs(), [])

    def test_submission_errors(self) -> None:
        """
        A unique id over 64 bytes is refused with ARGUMENT_TOO_LARGE and an
        empty function name with INVALID_ARGUMENT; no job is made.
        """
        _, client = self.join()
        with self.assertRaises(GearmanError) as too_large:
            self.submit(client, unique=b"u" * 65)
        self.assertEqual(too_large.exception.code, b"ARGUMENT_TOO_LARGE")
        with self.assertRaises(GearmanError) as empty:
            self.submit(client, function=b"")
        self.assertEqual(empty.exception.code, b"INVALID_ARGUMENT")
        self.assertEqual(self.server.jobs(), [])
        self.assertEqual(self.submit(client, unique=b"u" * 64).unique, b"u" * 64)

    def test_clients(self) -> None:
        """
        The server lists its participants in arrival order and forgets one
        that disconnects.
        """
        _, a = self.join("a")
        _, b = self.join("b")
        self.assertEqual(self.server.clients(), [a, b])
        self.server.note_disconnected_client(a)
        self.assertEqual(self.server.clients(), [b])
        self.assertFalse(a.connected)


class CoalescingTests(ModelMixin, SynchronousTestCase):
    """
    Submissions with the same function and unique id share one job.
    """

    def setUp(self) -> None:
        self.make_server()

    def test_same_unique_same_job(self) -> None:
        """
        Two clients submitting with the same unique id get the same job,
        and both get its result.
        """
        a_peer, a = self.join("a")
        b_peer, b = self.join("b")
        _, worker = self.worker(b"f")
        job = self.submit(a, unique=b"u", data=b"one")
        self.assertIs(self.submit(b, unique=b"u", data=b"two"), job)
        self.assertEqual(job.data, b"one")
        self.assertEqual(list(job.listeners), [a, b])
        self.assertEqual(len(self.server.jobs()), 1)
        self.server.grab_job(worker)
        self.server.work_complete(worker, job.handle, b"r")
        self.assertEqual(a_peer.take(), [(P.WORK_COMPLETE, (job.handle, b"r"))])
        self.assertEqual(b_peer.take(), [(P.WORK_COMPLETE, (job.handle, b"r"))])
        self.assertEqual((a.listening, b.listening), ({}, {}))

    def test_twice_from_one_client(self) -> None:
        """
        A client that submits the same unique twice is a listener twice
        and gets each update twice.
        """
        peer, client = self.join()
        _, worker = self.worker(b"f")
        job = self.submit(client, unique=b"u")
        self.assertIs(self.submit(client, unique=b"u"), job)
        self.assertEqual(list(job.listeners), [client, client])
        self.server.grab_job(worker)
        self.server.work_status(worker, job.handle, b"1", b"2")
        self.server.work_complete(worker, job.handle, b"r")
        self.assertEqual(
            peer.take(),
            [
                (P.WORK_STATUS, (job.handle, b"1", b"2")),
                (P.WORK_STATUS, (job.handle, b"1", b"2")),
                (P.WORK_COMPLETE, (job.handle, b"r")),
                (P.WORK_COMPLETE, (job.handle, b"r")),
            ],
        )

    def test_other_function_other_job(self) -> None:
        """
        The same unique id for another function is another job.
        """
        job = self.submit(None, b"f", unique=b"u", background=True)
        other = self.submit(None, b"g", unique=b"u", background=True)
        self.assertIsNot(job, other)
        self.assertEqual(len(self.server.jobs()), 2)

    def test_dash_coalesces_on_payload(self) -> None:
        """
        The unique C{-} coalesces submissions with the same payload (and
        function), not those with another payload, and never those with
        an empty payload.
        """
        _, client = self.join()
        job = self.submit(client, unique=b"-", data=b"p")
        self.assertIs(self.submit(client, unique=b"-", data=b"p"), job)
        other = self.submit(client, unique=b"-", data=b"q")
        self.assertIsNot(other, job)
        elsewhere = self.submit(client, b"g", unique=b"-", data=b"p")
        self.assertIsNot(elsewhere, job)
        empty = self.submit(client, unique=b"-", data=b"")
        self.assertIsNot(self.submit(client, unique=b"-", data=b""), empty)
        self.assertEqual(len(self.server.jobs()), 5)

    def test_empty_unique_never_coalesces(self) -> None:
        """
        Two submissions without a unique id are two jobs, even with the
        same payload.
        """
        first = self.submit(None, data=b"same", background=True)
        second = self.submit(None, data=b"same", background=True)
        self.assertIsNot(first, second)
        self.assertEqual([j.handle for j in self.server.jobs()], [first.handle, second.handle])

    def test_done_job_no_longer_coalesces(self) -> None:
        """
        Once a job ended, a submission with its unique id makes a new job.
        """
        _, worker = self.worker(b"f")
        job = self.submit(None, unique=b"u", background=True)
        self.server.grab_job(worker)
        self.server.work_complete(worker, job.handle, b"")
        self.assertIsNone(self.server.job_of_unique(b"f", b"u"))
        again = self.submit(None, unique=b"u", background=True)
        self.assertIsNot(again, job)
        self.assertIs(self.server.job_of_unique(b"f", b"u"), again)

    def test_background_coalescing_keeps_job(self) -> None:
        """
        A background submission coalescing onto a foreground job keeps it
        even once the foreground client leaves.
        """
        _, client = self.join()
        job = self.submit(client, unique=b"u")
        self.assertIs(self.submit(None, unique=b"u", background=True), job)
        self.server.note_disconnected_client(client)
        self.assertEqual(self.server.jobs(), [job])
        self.assertEqual(job.state, JobState.QUEUED)
        self.assertEqual(list(job.listeners), [])

    def test_lookups(self) -> None:
        """
        C{job_of_unique} finds the job a submission would coalesce onto
        (with str or bytes names; C{-} by payload); C{jobs_by_handle} is
        C{job_by_handle}.
        """
        job = self.submit(None, unique=b"u", background=True)
        dash = self.submit(None, unique=b"-", data=b"p", background=True)
        self.assertIs(self.server.job_of_unique(b"f", b"u"), job)
        self.assertIs(self.server.job_of_unique("f", "u"), job)
        self.assertIsNone(self.server.job_of_unique(b"g", b"u"))
        self.assertIsNone(self.server.job_of_unique(b"f", b"v"))
        self.assertIs(self.server.job_of_unique(b"f", b"-", b"p"), dash)
        self.assertIsNone(self.server.job_of_unique(b"f", b"-", b"q"))
        self.assertIsNone(self.server.job_of_unique(b"f", b""))
        self.assertEqual(JobServer.jobs_by_handle, JobServer.job_by_handle)
        self.assertIs(self.server.jobs_by_handle(job.handle), job)
        self.assertIs(self.server.job_by_handle(job.handle), job)
        self.assertIsNone(self.server.jobs_by_handle(b"H:test:99"))

    def test_set_unique_job(self) -> None:
        """
        C{set_unique_job(function, unique, job)} makes submissions with that
        function and unique coalesce onto the job, and refuses a function
        or unique id the job does not have.
        """
        job = self.submit(None, unique=b"u", background=True)
        self.server.set_unique_job("f", "u", job)
        self.assertIs(self.server.job_of_unique(b"f", b"u"), job)
        self.assertIs(self.submit(None, unique=b"u", background=True), job)
        self.assertRaises(ValueError, self.server.set_unique_job, b"g", b"u", job)
        self.assertRaises(ValueError, self.server.set_unique_job, b"f", b"v", job)
        self.assertIsNone(self.server.job_of_unique(b"g", b"u"))
        self.assertIsNone(self.server.job_of_unique(b"f", b"v"))


class PriorityTests(ModelMixin, SynchronousTestCase):
    """
    Which job a worker is handed first.
    """

    def setUp(self) -> None:
        self.make_server()

    def test_high_normal_low_across_functions(self) -> None:
        """
        Every HIGH job of a worker's functions comes before any NORMAL one,
        every NORMAL before any LOW, whatever the submission order.
        """
        _, worker = self.worker(b"f", b"g")
        low = self.submit(None, b"f", b"low", priority=LOW, background=True)
        normal = self.submit(None, b"g", b"normal", priority=NORMAL, background=True)
        high_f = self.submit(None, b"f", b"high f", priority=HIGH, background=True)
        high_g = self.submit(None, b"g", b"high g", priority=HIGH, background=True)
        grabbed = [self.server.grab_job(worker) for _ in range(5)]
        self.assertEqual(grabbed, [high_f, high_g, normal, low, None])

    def test_fifo_within_priority(self) -> None:
        """
        Within one function and priority, jobs go in submission order.
        """
        _, worker = self.worker(b"f")
        jobs = [self.submit(None, data=b"%d" % i, background=True) for i in range(3)]
        self.assertEqual([self.server.grab_job(worker) for _ in range(3)], jobs)

    def test_rotation_at_equal_priority(self) -> None:
        """
        At equal priority the worker's functions take turns, so none
        starves.
        """
        _, worker = self.worker(b"f", b"g")
        fs = [self.submit(None, b"f", b"f%d" % i, background=True) for i in range(3)]
        gs = [self.submit(None, b"g", b"g%d" % i, background=True) for i in range(3)]
        grabbed = [self.server.grab_job(worker) for _ in range(6)]
        self.assertEqual(grabbed, [fs[0], gs[0], fs[1], gs[1], fs[2], gs[2]])


class RelayTests(ModelMixin, SynchronousTestCase):
    """
    What a worker sends about a job reaches its listeners.
    """

    def setUp(self) -> None:
        self.make_server()

    def running(self, *clients: Participant) -> tuple[Participant, Job]:
        _, worker = self.worker(b"f")
        job = self.submit(clients[0], unique=b"u")
        for client in clients[1:]:
            self.submit(client, unique=b"u")
        self.assertIs(self.server.grab_job(worker), job)
        return worker, job

    def test_status_data_warning_to_every_listener(self) -> None:
        """
        WORK_STATUS, WORK_DATA and WORK_WARNING go to every listener, in
        order, and the status is remembered on the job.
        """
        a_peer, a = self.join("a")
        b_peer, b = self.join("b")
        worker, job = self.running(a, b)
        h = job.handle
        with self.server.output:
            self.server.work_status(worker, h, b"3", b"10")
            self.server.work_data(worker, h, b"chunk")
            self.server.work_data(worker, h, b"careful", warning=True)
        expected = [
            (P.WORK_STATUS, (h, b"3", b"10")),
            (P.WORK_DATA, (h, b"chunk")),
            (P.WORK_WARNING, (h, b"careful")),
        ]
        self.assertEqual(a_peer.take(), expected)
        self.assertEqual(b_peer.take(), expected)
        self.assertEqual((job.numerator, job.denominator), (b"3", b"10"))
        self.assertEqual(job.state, JobState.RUNNING)

    def test_exception_per_listener(self) -> None:
        """
        WORK_EXCEPTION goes as WORK_EXCEPTION to a listener that asked for
        exceptions and as WORK_FAIL to one that did not; the job ends.
        """
        a_peer, a = self.join("a")
        b_peer, b = self.join("b")
        a.exceptions = True
        worker, job = self.running(a, b)
        self.server.work_exception(worker, job.handle, b"boom")
        self.assertEqual(a_peer.take(), [(P.WORK_EXCEPTION, (job.handle, b"boom"))])
        self.assertEqual(b_peer.take(), [(P.WORK_FAIL, (job.handle,))])
        self.assertEqual(self.server.jobs(), [])

    def test_exception_to_all_with_setting(self) -> None:
        """
        With the C{exceptions} setting every listener gets WORK_EXCEPTION.
        """
        self.make_server(exceptions=True)
        a_peer, a = self.join("a")
        b_peer, b = self.join("b")
        worker, job = self.running(a, b)
        self.server.work_exception(worker, job.handle, b"boom")
        self.assertEqual(a_peer.take(), [(P.WORK_EXCEPTION, (job.handle, b"boom"))])
        self.assertEqual(b_peer.take(), [(P.WORK_EXCEPTION, (job.handle, b"boom"))])

    def test_fail_after_exception_dropped(self) -> None:
        """
        The WORK_FAIL a Perl worker sends after WORK_EXCEPTION is dropped
        without an error and without a packet.
        """
        a_peer, a = self.join("a")
        worker, job = self.running(a)
        self.server.work_exception(worker, job.handle, b"boom")
        a_peer.take()
        self.server.work_fail(worker, job.handle)
        self.assertEqual(a_peer.take(), [])

    def test_result_for_job_never_held(self) -> None:
        """
        A result for a job the worker never held - unknown, or held by
        another worker - raises GearmanError JOB_NOT_FOUND and changes
        nothing.
        """
        a_peer, a = self.join("a")
        worker, job = self.running(a)
        _, other = self.worker(b"f", name="other")
        calls = [
            lambda: self.server.work_complete(other, job.handle, b"r"),
            lambda: self.server.work_fail(other, job.handle),
            lambda: self.server.work_exception(other, job.handle, b"x"),
            lambda: self.server.work_status(other, job.handle, b"1", b"2"),
            lambda: self.server.work_data(other, job.handle, b"d"),
            lambda: self.server.work_complete(worker, b"H:test:404", b"r"),
        ]
        for call in calls:
            with self.assertRaises(GearmanError) as raised:
                call()
            self.assertEqual(raised.exception.code, b"JOB_NOT_FOUND")
        self.assertEqual(a_peer.take(), [])
        self.assertEqual(job.state, JobState.RUNNING)
        self.assertIs(job.worker, worker)

    def test_late_result_after_cancel(self) -> None:
        """
        C{cancel_job} fails a running job to its listeners; the worker's
        late results for it are then dropped silently, until its final
        result ends that grace.
        """
        a_peer, a = self.join("a")
        worker_peer = RecordingPeer.join(self.server, "w")
        worker, job = self.running(a)
        self.assertTrue(self.server.cancel_job(job.handle))
        self.assertEqual(a_peer.take(), [(P.WORK_FAIL, (job.handle,))])
        self.assertEqual(self.server.jobs(), [])
        self.assertEqual(worker.held, {})
        self.server.work_status(worker, job.handle, b"1", b"2")
        self.server.work_data(worker, job.handle, b"d")
        self.server.work_complete(worker, job.handle, b"late")
        self.assertEqual(a_peer.take(), [])
        self.assertEqual(worker_peer.take(), [])
        with self.assertRaises(GearmanError) as raised:
            self.server.work_complete(worker, job.handle, b"later")
        self.assertEqual(raised.exception.code, b"JOB_NOT_FOUND")

    def test_cancel_queued_and_unknown(self) -> None:
        """
        C{cancel_job} of a queued job fails it to its listeners so no
        worker gets it; of an unknown handle it returns False.
        """
        a_peer, a = self.join("a")
        _, worker = self.worker(b"f")
        job = self.submit(a)
        self.assertTrue(self.server.cancel_job(job.handle))
        self.assertEqual(a_peer.take(), [(P.WORK_FAIL, (job.handle,))])
        self.assertIsNone(self.server.grab_job(worker))
        self.assertEqual(self.server.jobs_outstanding(), 0)
        self.assertFalse(self.server.cancel_job(job.handle))


class DisconnectTests(ModelMixin, SynchronousTestCase):
    """
    Participants that go away.
    """

    def test_worker_lost_requeues(self) -> None:
        """
        A worker that disconnects holding a job puts it back: another
        worker grabs it, and the client hears only the final result.
        """
        self.make_server()
        client_peer, client = self.join("client")
        _, w1 = self.worker(b"f", name="w1")
        _, w2 = self.worker(b"f", name="w2")
        job = self.submit(client)
        self.server.grab_job(w1)
        with self.server.output:
            self.server.note_disconnected_client(w1)
        self.assertEqual(job.state, JobState.QUEUED)
        self.assertEqual(job.retries, 1)
        self.assertIsNone(job.worker)
        self.assertEqual(self.server.jobs_outstanding(), 1)
        self.assertIs(self.server.grab_job(w2), job)
        self.server.work_complete(w2, job.handle, b"r")
        self.assertEqual(client_peer.take(), [(P.WORK_COMPLETE, (job.handle, b"r"))])

    def test_only_client_lost_drops_queued_job(self) -> None:
        """
        A queued foreground job whose only client disconnects is dropped
        (and its function, with no worker, forgotten).
        """
        self.make_server()
        _, client = self.join("client")
        job = self.submit(client)
        self.server.note_disconnected_client(client)
        self.assertEqual(self.server.jobs(), [])
        self.assertEqual(job.state, JobState.DONE)
        self.assertEqual(self.server.jobs_outstanding(), 0)
        self.assertIsNone(self.server.registry.get(b"f"))

    def test_other_client_keeps_job(self) -> None:
        """
        A queued foreground job stays while another client still waits on
        it.
        """
        self.make_server()
        _, a = self.join("a")
        _, b = self.join("b")
        job = self.submit(a, unique=b"u")
        self.submit(b, unique=b"u")
        self.server.note_disconnected_client(a)
        self.assertEqual(self.server.jobs(), [job])
        self.assertEqual(list(job.listeners), [b])

    def test_running_job_without_client_not_requeued(self) -> None:
        """
        A running foreground job whose client left keeps running; if its
        worker is then lost it is dropped rather than requeued.
        """
        self.make_server()
        _, client = self.join("client")
        _, worker = self.worker(b"f")
        job = self.submit(client)
        self.server.grab_job(worker)
        self.server.note_disconnected_client(client)
        self.assertEqual(job.state, JobState.RUNNING)
        self.server.note_disconnected_client(worker)
        self.assertEqual(self.server.jobs(), [])
        self.assertEqual(self.server.jobs_outstanding(), 0)

    def test_job_retries(self) -> None:
        """
        With C{job_retries=2} the job fails, with WORK_FAIL to its
        listeners, when its second worker is lost - not its first.
        """
        self.make_server(job_retries=2)
        client_peer, client = self.join("client")
        _, w1 = self.worker(b"f", name="w1")
        _, w2 = self.worker(b"f", name="w2")
        job = self.submit(client)
        self.server.grab_job(w1)
        self.server.note_disconnected_client(w1)
        self.assertEqual(client_peer.take(), [])
        self.assertIs(self.server.grab_job(w2), job)
        self.server.note_disconnected_client(w2)
        self.assertEqual(client_peer.take(), [(P.WORK_FAIL, (job.handle,))])
        self.assertEqual(self.server.jobs(), [])
        self.assertEqual(client.listening, {})

    def test_retries_forever_by_default(self) -> None:
        """
        With the default C{job_retries=0} a job is requeued however many
        workers are lost.
        """
        self.make_server()
        _, client = self.join("client")
        job = self.submit(client)
        for i in range(5):
            _, worker = self.worker(b"f", name=f"w{i}")
            self.assertIs(self.server.grab_job(worker), job)
            self.server.note_disconnected_client(worker)
        self.assertEqual(job.retries, 5)
        self.assertEqual(job.state, JobState.QUEUED)

    def test_cant_do_requeues(self) -> None:
        """
        CANT_DO of a function whose job the worker holds requeues the job,
        and drops the worker's late result for it.
        """
        self.make_server()
        client_peer, client = self.join("client")
        _, worker = self.worker(b"f")
        job = self.submit(client)
        self.server.grab_job(worker)
        self.server.workers.cant_do(worker, b"f")
        self.assertEqual(job.state, JobState.QUEUED)
        self.assertEqual(worker.abilities, {})
        self.server.work_complete(worker, job.handle, b"late")
        self.assertEqual(client_peer.take(), [])
        self.assertEqual(self.server.jobs(), [job])


class TimeoutTests(ModelMixin, SynchronousTestCase):
    """
    CAN_DO_TIMEOUT: a job that runs too long is taken back.
    """

    def grabbed(self, value: float) -> tuple[Participant, Job]:
        _, worker = self.join("worker")
        self.server.workers.can_do_timeout(worker, b"f", value)
        job = self.submit(None, background=True)
        self.assertIs(self.server.grab_job(worker), job)
        return worker, job

    def test_milliseconds(self) -> None:
        """
        By default the timeout is in milliseconds: 2500 is 2.5 seconds,
        after which the job is requeued.
        """
        self.make_server()
        worker, job = self.grabbed(2500)
        self.assertEqual(worker.timeouts, {b"f": 2.5})
        self.clock.advance(2.4)
        self.assertEqual(job.state, JobState.RUNNING)
        self.clock.advance(0.1)
        self.assertEqual(job.state, JobState.QUEUED)
        self.assertEqual(worker.held, {})
        self.assertEqual(job.retries, 1)
        self.assertEqual(self.server.jobs_outstanding(), 1)

    def test_under_a_second_is_a_second(self) -> None:
        """
        A timeout under 1000 milliseconds counts as one second.
        """
        self.make_server()
        worker, job = self.grabbed(500)
        self.assertEqual(worker.timeouts, {b"f": 1.0})
        self.clock.advance(0.9)
        self.assertEqual(job.state, JobState.RUNNING)
        self.clock.advance(0.1)
        self.assertEqual(job.state, JobState.QUEUED)

    def test_seconds(self) -> None:
        """
        With C{timeout_unit="seconds"} the value is seconds.
        """
        self.make_server(timeout_unit="seconds")
        worker, job = self.grabbed(3)
        self.assertEqual(worker.timeouts, {b"f": 3.0})
        self.clock.advance(2.9)
        self.assertEqual(job.state, JobState.RUNNING)
        self.clock.advance(0.1)
        self.assertEqual(job.state, JobState.QUEUED)

    def test_zero_is_no_timeout(self) -> None:
        """
        A timeout of 0 is none: the job runs as long as it takes.
        """
        self.make_server()
        worker, job = self.grabbed(0)
        self.assertEqual(worker.timeouts, {})
        self.clock.advance(3600)
        self.assertEqual(job.state, JobState.RUNNING)

    def test_late_result_dropped_and_retries(self) -> None:
        """
        The timed-out worker's late result is dropped without an error, and
        with C{job_retries=1} the timeout fails the job to its client.
        """
        self.make_server(job_retries=1)
        client_peer, client = self.join("client")
        _, worker = self.join("worker")
        self.server.workers.can_do_timeout(worker, b"f", 1000)
        job = self.submit(client)
        self.server.grab_job(worker)
        self.clock.advance(1)
        self.assertEqual(client_peer.take(), [(P.WORK_FAIL, (job.handle,))])
        self.assertEqual(self.server.jobs(), [])
        self.server.work_complete(worker, job.handle, b"late")
        self.assertEqual(client_peer.take(), [])

    def test_completed_in_time(self) -> None:
        """
        A job completed before its timeout is not touched by it.
        """
        self.make_server()
        worker, job = self.grabbed(1000)
        self.server.work_complete(worker, job.handle, b"r")
        self.clock.advance(5)
        self.assertEqual(self.server.jobs(), [])
        self.assertEqual(self.clock.getDelayedCalls(), [])


class SleepTests(ModelMixin, SynchronousTestCase):
    """
    PRE_SLEEP and the NOOPs that wake sleeping workers.
    """

    def sleepers(self, n: int) -> list[tuple[RecordingPeer, Participant]]:
        out = []
        for i in range(n):
            peer, worker = self.worker(b"f", name=f"w{i}")
            self.server.on_client_sleep(worker)
            out.append((peer, worker))
        return out

    def noops(self, peers: list[tuple[RecordingPeer, Participant]]) -> list[int]:
        return [len([p for p in peer.take() if p[0] == P.NOOP]) for peer, _ in peers]

    def test_sleep_with_nothing_queued(self) -> None:
        """
        PRE_SLEEP with nothing queued sends nothing: the worker sleeps.
        """
        self.make_server()
        [(peer, worker)] = self.sleepers(1)
        self.assertEqual(peer.take(), [])
        self.assertTrue(worker.sleeping)

    def test_sleep_with_work_queued(self) -> None:
        """
        PRE_SLEEP while one of the worker's functions has a queued job gets
        an immediate NOOP and the worker stays awake.
        """
        self.make_server()
        self.submit(None, background=True)
        peer, worker = self.worker(b"g", b"f")
        self.server.on_client_sleep(worker)
        self.assertEqual(peer.take(), [(P.NOOP, ())])
        self.assertFalse(worker.sleeping)

    def test_second_sleep_with_work_queued(self) -> None:
        """
        A sleeping worker that sends PRE_SLEEP again while a job waits gets
        its NOOP and is a sleeper no more, on every function (found by the
        fuzzer: it stayed among the sleepers, awake).
        """
        self.make_server(wakeup=0)
        peer, worker = self.worker(b"g", b"f")
        self.server.on_client_sleep(worker)
        self.submit(None, background=True)
        self.server.on_client_sleep(worker)
        self.assertEqual(peer.take(), [(P.NOOP, ())])
        self.assertFalse(worker.sleeping)
        for name in (b"f", b"g"):
            fq = self.server.registry.get(name)
            assert fq is not None
            self.assertNotIn(worker, fq.sleepers)

    def test_wakeup_count(self) -> None:
        """
        A submission NOOPs at most C{wakeup} sleepers, those that slept
        first; the others sleep on.
        """
        self.make_server(wakeup=2, wakeup_delay=-1)
        peers = self.sleepers(3)
        self.submit(None, background=True)
        self.assertEqual(self.noops(peers), [1, 1, 0])
        self.assertEqual([w.sleeping for _, w in peers], [False, False, True])
        self.clock.advance(10)
        self.assertEqual(self.noops(peers), [0, 0, 0])

    def test_wakeup_delay(self) -> None:
        """
        While jobs stay queued, C{wakeup_delay} later more sleepers are
        woken; once none is queued, no more.
        """
        self.make_server(wakeup=1, wakeup_delay=0.5)
        peers = self.sleepers(3)
        job = self.submit(None, background=True)
        self.assertEqual(self.noops(peers), [1, 0, 0])
        self.clock.advance(0.4)
        self.assertEqual(self.noops(peers), [0, 0, 0])
        self.clock.advance(0.1)
        self.assertEqual(self.noops(peers), [0, 1, 0])
        self.assertIs(self.server.grab_job(peers[0][1]), job)
        self.clock.advance(0.5)
        self.assertEqual(self.noops(peers), [0, 0, 0])
        self.assertTrue(peers[2][1].sleeping)

    def test_wakeup_zero(self) -> None:
        """
        With C{wakeup=0} a submission wakes no sleeper, ever.
        """
        self.make_server(wakeup=0)
        peers = self.sleepers(2)
        self.submit(None, background=True)
        self.clock.advance(10)
        self.assertEqual(self.noops(peers), [0, 0])
        self.assertEqual([w.sleeping for _, w in peers], [True, True])

    def test_wakeup_all(self) -> None:
        """
        With C{wakeup=-1} a submission wakes every sleeper.
        """
        self.make_server(wakeup=-1)
        peers = self.sleepers(4)
        self.submit(None, background=True)
        self.assertEqual(self.noops(peers), [1, 1, 1, 1])

    def test_warm_worker_first(self) -> None:
        """
        A worker that did jobs since it last slept is woken before one that
        was idle, though it went to sleep later.
        """
        self.make_server(wakeup=1, wakeup_delay=-1)
        idle_peer, idle = self.worker(b"f", name="idle")
        warm_peer, warm = self.worker(b"f", name="warm")
        job = self.submit(None, background=True)
        self.server.grab_job(warm)
        self.server.work_complete(warm, job.handle, b"")
        self.server.on_client_sleep(idle)
        self.server.on_client_sleep(warm)
        self.submit(None, background=True)
        self.assertEqual(warm_peer.take(), [(P.NOOP, ())])
        self.assertEqual(idle_peer.take(), [])

    def test_only_sleepers_of_function(self) -> None:
        """
        A submission wakes only sleepers registered for its function.
        """
        self.make_server()
        f_peer, f_worker = self.worker(b"f", name="f")
        g_peer, g_worker = self.worker(b"g", name="g")
        self.server.on_client_sleep(f_worker)
        self.server.on_client_sleep(g_worker)
        self.submit(None, b"g", background=True)
        self.assertEqual(f_peer.take(), [])
        self.assertEqual(g_peer.take(), [(P.NOOP, ())])

    def test_grab_wakes(self) -> None:
        """
        A sleeping worker that asks for a job is awake: a later submission
        NOOPs the other sleeper.
        """
        self.make_server(wakeup=1, wakeup_delay=-1)
        peers = self.sleepers(2)
        self.assertIsNone(self.server.grab_job(peers[0][1]))
        self.assertFalse(peers[0][1].sleeping)
        self.submit(None, background=True)
        self.assertEqual(self.noops(peers), [0, 1])

    def test_lost_sleeper_not_woken(self) -> None:
        """
        A sleeping worker that disconnects is not woken, and does not use
        up a wake-up another sleeper should get.
        """
        self.make_server(wakeup=1, wakeup_delay=-1)
        peers = self.sleepers(2)
        self.server.note_disconnected_client(peers[0][1])
        self.submit(None, background=True)
        self.assertEqual(self.noops(peers), [0, 1])

    def test_requeue_by_lost_sleeping_worker_wakes_another(self) -> None:
        """
        When a worker that holds a job and sleeps disconnects, the job is
        requeued and the wake-up goes to a worker that is still there.
        """
        self.make_server(wakeup=1, wakeup_delay=-1)
        lost_peer, lost = self.worker(b"f", name="lost")
        job = self.submit(None, background=True)
        self.assertIs(self.server.grab_job(lost), job)
        self.server.on_client_sleep(lost)
        [(other_peer, other)] = self.sleepers(1)
        lost_peer.take()
        self.server.note_disconnected_client(lost)
        # The leaving worker is taken off the sleepers before its jobs go
        # back, so the one wake-up (wakeup=1) goes to the remaining sleeper.
        self.assertEqual(other_peer.take(), [(P.NOOP, ())])
        self.assertEqual(lost_peer.take(), [])
        self.assertFalse(other.sleeping)


class MaxQueueTests(ModelMixin, SynchronousTestCase):
    """
    Limits on how many jobs a function holds.
    """

    def setUp(self) -> None:
        self.make_server()

    def test_queue_full(self) -> None:
        """
        With a limit of 1, a second submission is refused with QUEUE_ERROR
        and makes no job.
        """
        self.server.set_max_queue(b"f", 1)
        self.assertEqual(self.server.max_queue(b"f"), (1, 1, 1))
        job = self.submit(None, background=True)
        with self.assertRaises(GearmanError) as raised:
            self.submit(None, background=True)
        self.assertEqual(raised.exception.code, b"QUEUE_ERROR")
        self.assertEqual(self.server.jobs(), [job])
        self.submit(None, b"g", background=True)

    def test_running_jobs_count(self) -> None:
        """
        Running jobs count toward the limit.
        """
        self.server.set_max_queue(b"f", 1)
        _, worker = self.worker(b"f")
        self.submit(None, background=True)
        self.server.grab_job(worker)
        with self.assertRaises(GearmanError) as raised:
            self.submit(None, background=True)
        self.assertEqual(raised.exception.code, b"QUEUE_ERROR")

    def test_coalescing_allowed_when_full(self) -> None:
        """
        A submission that coalesces onto an existing job is accepted even
        when the function is full.
        """
        self.server.set_max_queue(b"f", 1)
        job = self.submit(None, unique=b"u", background=True)
        self.assertIs(self.submit(None, unique=b"u", background=True), job)

    def test_reset(self) -> None:
        """
        C{None}, C{0} and C{""} each remove the limit.
        """
        for reset in (None, 0, ""):
            self.server.set_max_queue(b"f", 1)
            self.server.set_max_queue(b"f", reset)
            self.assertIsNone(self.server.max_queue(b"f"), reset)
            self.submit(None, background=True)
            self.submit(None, background=True)
        self.assertEqual(len(self.server.jobs()), 6)

    def test_str_spelling(self) -> None:
        """
        The function name (and the limit) may be given as str, as Perl's
        Gearman::Server is called.
        """
        self.server.set_max_queue("f", "1")
        self.assertEqual(self.server.max_queue(b"f"), (1, 1, 1))
        self.submit(None, background=True)
        self.assertRaises(GearmanError, self.submit, None, b"f", b"d", b"", NORMAL, True)
        self.server.set_max_queue("f", 2)
        self.submit(None, background=True)
        self.assertEqual(len(self.server.jobs()), 2)

    def test_per_priority(self) -> None:
        """
        With C{normal}, C{max} is the high limit and the others are apart:
        a NORMAL limit of 1 leaves HIGH unlimited.
        """
        self.server.set_max_queue(b"f", 0, normal=1)
        self.assertEqual(self.server.max_queue(b"f"), (0, 1, 0))
        self.submit(None, priority=NORMAL, background=True)
        self.assertRaises(GearmanError, self.submit, None, b"f", b"d", b"", NORMAL, True)
        for _ in range(3):
            self.submit(None, priority=HIGH, background=True)
        self.assertEqual(len(self.server.jobs()), 4)

    def test_from_settings(self) -> None:
        """
        The C{max_queue} setting limits functions from the start.
        """
        self.make_server(max_queue={b"f": 1})
        self.assertEqual(self.server.max_queue(b"f"), (1, 1, 1))
        self.submit(None, background=True)
        self.assertRaises(GearmanError, self.submit, None, b"f", b"d", b"", NORMAL, True)


class ScheduleTests(ModelMixin, SynchronousTestCase):
    """
    Jobs with a time to run at (SUBMIT_JOB_EPOCH).
    """

    def setUp(self) -> None:
        self.make_server()
        self.clock.advance(1000)

    def test_not_before_its_time(self) -> None:
        """
        A job for a future time is known but not grabbable until the clock
        reaches it; then it is.
        """
        _, worker = self.worker(b"f")
        job = self.submit(None, background=True, when=1010)
        self.assertEqual(job.state, JobState.SCHEDULED)
        self.assertEqual(self.server.jobs(), [job])
        self.assertEqual(self.server.jobs_outstanding(), 0)
        self.assertIsNone(self.server.grab_job(worker))
        self.clock.advance(9.9)
        self.assertIsNone(self.server.grab_job(worker))
        self.clock.advance(0.1)
        self.assertEqual(job.state, JobState.QUEUED)
        self.assertIs(self.server.grab_job(worker), job)

    def test_past_time_queued_at_once(self) -> None:
        """
        A job for a time already past is queued at once.
        """
        _, worker = self.worker(b"f")
        job = self.submit(None, background=True, when=999)
        self.assertIs(self.server.grab_job(worker), job)

    def test_in_time_order(self) -> None:
        """
        Scheduled jobs become due in time order, whatever the submission
        order, and a due job wakes a sleeping worker.
        """
        peer, worker = self.worker(b"f")
        later = self.submit(None, data=b"later", background=True, when=1020)
        sooner = self.submit(None, data=b"sooner", background=True, when=1005)
        self.server.on_client_sleep(worker)
        self.clock.advance(5)
        self.assertEqual(peer.take(), [(P.NOOP, ())])
        self.assertIs(self.server.grab_job(worker), sooner)
        self.assertIsNone(self.server.grab_job(worker))
        self.clock.advance(15)
        self.assertIs(self.server.grab_job(worker), later)

    def test_cancel_scheduled(self) -> None:
        """
        A cancelled scheduled job never becomes due.
        """
        _, worker = self.worker(b"f")
        job = self.submit(None, background=True, when=1010)
        self.assertTrue(self.server.cancel_job(job.handle))
        self.clock.advance(20)
        self.assertIsNone(self.server.grab_job(worker))
        self.assertEqual(self.server.jobs(), [])


@implementer(IJobStore)
class SlowLoadStore(MemoryStore):
    """
    A L{MemoryStore} whose C{load} answers only when told to.
    """

    def __init__(self) -> None:
        super().__init__()
        self.loading: Deferred[list[StoredJob]] = Deferred()

    def load(self) -> Deferred[list[StoredJob]]:
        return self.loading


class ReadinessTests(ModelMixin, SynchronousTestCase):
    """
    L{JobServer.when_ready}: served once the store is replayed.
    """

    def test_ready_without_store(self) -> None:
        """
        Without a store the server is ready at once.
        """
        self.make_server()
        self.assertTrue(self.server.ready)
        self.assertIsNone(self.successResultOf(self.server.when_ready()))

    def test_ready_after_replay(self) -> None:
        """
        With a store whose load is pending, C{when_ready} fires only once
        the load answers and the stored jobs are replayed, with their
        handles (new handles follow them).
        """
        store = SlowLoadStore()
        self.make_server(store=store)
        d = self.server.when_ready()
        self.assertNoResult(d)
        self.assertFalse(self.server.ready)
        stored = StoredJob(4, PREFIX + b":7", b"f", b"u", b"payload", HIGH, None, b"")
        store.loading.callback([stored])
        self.assertIsNone(self.successResultOf(d))
        self.assertTrue(self.server.ready)
        self.assertIsNone(self.successResultOf(self.server.when_ready()))
        job = self.server.job_by_handle(PREFIX + b":7")
        assert job is not None
        self.assertEqual(
            (job.queue.name, job.unique, job.data, job.priority, job.background, job.state),
            (b"f", b"u", b"payload", HIGH, True, JobState.QUEUED),
        )
        self.assertIs(self.server.job_of_unique(b"f", b"u"), job)
        self.assertEqual(self.server.new_job_handle(), PREFIX + b":8")


class SettingsTests(SynchronousTestCase):
    """
    L{Settings}: checked values, frozen.
    """

    def test_bad_values(self) -> None:
        """
        A bad value raises L{SettingsError} naming the setting, from
        L{Settings} and from L{JobServer}'s keyword arguments.
        """
        bad: list[tuple[str, Any]] = [
            ("wakeup", -2),
            ("wakeup_delay", -0.5),
            ("job_retries", -1),
            ("job_handle_prefix", b"x" * 60),
            ("job_handle_prefix", b""),
            ("max_packet_size", 0),
            ("timeout_unit", "hours"),
            ("admin_shutdown", "everyone"),
            ("verbose", "chatty"),
        ]
        for name, value in bad:
            with self.assertRaises(SettingsError) as raised:
                Settings(**{name: value})
            self.assertEqual(raised.exception.setting, name)
            self.assertIn(name, str(raised.exception))
            with self.assertRaises(SettingsError) as from_server:
                JobServer(Clock(), **{name: value})
            self.assertEqual(from_server.exception.setting, name)

    def test_edges_accepted(self) -> None:
        """
        The boundary values are accepted: C{wakeup=-1}, C{wakeup_delay=-1}
        and C{0}, a 52-byte prefix.
        """
        self.assertEqual(Settings(wakeup=-1).wakeup, -1)
        self.assertEqual(Settings(wakeup_delay=-1).wakeup_delay, -1)
        self.assertEqual(Settings(wakeup_delay=0).wakeup_delay, 0)
        self.assertEqual(Settings(job_handle_prefix=b"x" * 52).job_handle_prefix, b"x" * 52)

    def test_frozen(self) -> None:
        """
        A good L{Settings} holds its values and cannot be changed.
        """
        settings = Settings(wakeup=5, verbose="debug", max_queue={b"f": 2, b"g": (1, 0), b"h": 0})
        self.assertEqual(settings.wakeup, 5)
        self.assertEqual(settings.verbose, "DEBUG")
        self.assertEqual(dict(settings.max_queue), {b"f": (2, 2, 2), b"g": (1, 0, 0)})
        with self.assertRaises(attrs.exceptions.FrozenInstanceError):
            settings.wakeup = 1  # type: ignore[misc]
        self.assertEqual(settings.wakeup, 5)

    def test_defaults(self) -> None:
        """
        The defaults are those of C{twistd gearmand}.
        """
        settings = Settings()
        self.assertEqual(
            (
                settings.wakeup,
                settings.wakeup_delay,
                settings.job_retries,
                settings.exceptions,
                settings.timeout_unit,
                settings.admin_shutdown,
            ),
            (3, 0.1, 0, False, "milliseconds", "local"),
        )
        self.assertTrue(settings.job_handle_prefix.startswith(b"H:"))

    def test_timeout_seconds(self) -> None:
        """
        CAN_DO_TIMEOUT values are read in the timeout unit; under a second
        of milliseconds is a second; 0 or less is no timeout.
        """
        ms = Settings()
        self.assertEqual(
            [ms.timeout_seconds(v) for v in (1, 999, 1000, 2500, 0, -5)],
            [1.0, 1.0, 1.0, 2.5, None, None],
        )
        seconds = Settings(timeout_unit="seconds")
        self.assertEqual([seconds.timeout_seconds(v) for v in (1, 30, 0)], [1.0, 30.0, None])


class JobTableTests(SynchronousTestCase):
    """
    L{JobTable}: handles and the coalescing indexes.
    """

    def setUp(self) -> None:
        self.table = JobTable(b"P")
        self.fq = FunctionQueue(b"f")

    def job(self, handle: bytes, unique: bytes = b"", data: bytes = b"d") -> Job:
        return Job(handle, self.fq, unique, data)

    def test_handles_from_one(self) -> None:
        """
        Handles are C{<prefix>:<n>}, n counting from 1.
        """
        self.assertEqual([self.table.new_handle() for _ in range(3)], [b"P:1", b"P:2", b"P:3"])

    def test_skip_taken(self) -> None:
        """
        A handle a live job has is skipped.
        """
        self.table.add(self.job(b"P:2"))
        self.table.add(self.job(b"P:3"))
        self.assertEqual([self.table.new_handle() for _ in range(2)], [b"P:1", b"P:4"])

    def test_note_handle(self) -> None:
        """
        After C{note_handle}, new handles follow the noted one; a lower
        one, another prefix or a non-number changes nothing.
        """
        self.table.note_handle(b"P:10")
        self.table.note_handle(b"P:3")
        self.table.note_handle(b"Q:50")
        self.table.note_handle(b"P:abc")
        self.table.note_handle(b"PP:60")
        self.assertEqual(self.table.new_handle(), b"P:11")

    def test_default_prefix(self) -> None:
        """
        Without a prefix, handles start with C{H:}.
        """
        self.assertTrue(JobTable().new_handle().startswith(b"H:"))

    def test_unique_index(self) -> None:
        """
        A job with a unique id is found by function and unique id (and by
        unique id alone) until it is removed.
        """
        job = self.job(b"P:1", b"u")
        self.table.add(job)
        self.assertEqual(len(self.table), 1)
        self.assertIs(self.table.get(b"P:1"), job)
        self.assertIs(self.table.of_unique(b"f", b"u"), job)
        self.assertIsNone(self.table.of_unique(b"g", b"u"))
        self.assertIs(self.table.of_any_unique(b"u"), job)
        self.table.remove(job)
        self.assertEqual(len(self.table), 0)
        self.assertIsNone(self.table.get(b"P:1"))
        self.assertIsNone(self.table.of_unique(b"f", b"u"))
        self.assertIsNone(self.table.of_any_unique(b"u"))
        self.assertIsNone(job.coalesce_key)

    def test_unique_index_several_functions(self) -> None:
        """
        One unique id under several functions is one job per function (the
        index keeps a job alone while one function has the id, and a dict
        by function from the second); removing them in any order leaves
        the others found, and then nothing.
        """
        from txgearmand.records import FunctionQueue

        g = FunctionQueue(b"g")
        h = FunctionQueue(b"h")
        jobs = [self.job(b"P:1", b"u"), Job(b"P:2", g, b"u", b"d"), Job(b"P:3", h, b"u", b"d")]
        for job in jobs:
            self.table.add(job)
        self.assertIs(self.table.of_unique(b"f", b"u"), jobs[0])
        self.assertIs(self.table.of_unique(b"g", b"u"), jobs[1])
        self.assertIs(self.table.of_unique(b"h", b"u"), jobs[2])
        self.assertIsNone(self.table.of_unique(b"x", b"u"))
        self.table.remove(jobs[1])
        self.assertIsNone(self.table.of_unique(b"g", b"u"))
        self.assertIs(self.table.of_unique(b"h", b"u"), jobs[2])
        self.table.remove(jobs[0])
        self.assertIs(self.table.of_unique(b"h", b"u"), jobs[2])
        self.assertIsNone(self.table.of_unique(b"f", b"u"))
        self.assertIs(self.table.of_any_unique(b"u"), jobs[2])
        self.table.remove(jobs[2])
        self.assertIsNone(self.table.of_any_unique(b"u"))
        # A second job of the same function and id takes the first's place.
        first, second = self.job(b"P:4", b"v"), self.job(b"P:5", b"v")
        self.table.add(first)
        self.table.add(second)
        self.assertIs(self.table.of_unique(b"f", b"v"), second)
        self.table.remove(first)
        self.assertIs(self.table.of_unique(b"f", b"v"), second)

    def test_payload_index(self) -> None:
        """
        A job with the unique C{-} is found by function and payload until
        it is removed; one with an empty payload is not indexed.
        """
        job = self.job(b"P:1", b"-", b"payload")
        empty = self.job(b"P:2", b"-", b"")
        self.table.add(job)
        self.table.add(empty)
        self.assertIs(self.table.of_unique(b"f", b"-", b"payload"), job)
        self.assertIsNone(self.table.of_unique(b"f", b"-", b"other"))
        self.assertIsNone(self.table.of_unique(b"f", b"-", b""))
        self.assertIsNone(self.table.of_any_unique(b"-"))
        self.table.remove(job)
        self.assertIsNone(self.table.of_unique(b"f", b"-", b"payload"))

    def test_no_unique_not_indexed(self) -> None:
        """
        A job without a unique id is found only by handle.
        """
        job = self.job(b"P:1")
        self.table.add(job)
        self.assertIsNone(self.table.of_unique(b"f", b""))
        self.assertIsNone(job.coalesce_key)
        self.assertIs(self.table.get(b"P:1"), job)

    def test_remove_keeps_replacement(self) -> None:
        """
        Removing a job whose unique id now points at another job leaves the
        other job indexed.
        """
        old = self.job(b"P:1", b"u")
        new = self.job(b"P:2", b"u")
        self.table.add(old)
        self.table.add(new)
        self.table.remove(old)
        self.assertIs(self.table.of_unique(b"f", b"u"), new)


class FunctionRegistryTests(SynchronousTestCase):
    """
    L{FunctionRegistry}: functions, listing and limits.
    """

    def setUp(self) -> None:
        self.registry = FunctionRegistry()

    def add_job(self, fq: FunctionQueue) -> Job:
        job = Job(b"H:%d" % fq.total(), fq, b"", b"")
        fq.push(job)
        return job

    def test_limits(self) -> None:
        """
        Limits come from one number or up to three; all zero is none.
        C{check_room} refuses with QUEUE_ERROR once a priority's limit is
        reached.
        """
        registry = FunctionRegistry({b"f": 2, b"g": (1, 0, 3), b"h": 0})
        self.assertEqual(registry.limits(b"f"), (2, 2, 2))
        self.assertEqual(registry.limits(b"g"), (1, 0, 3))
        self.assertIsNone(registry.limits(b"h"))
        fq = registry.function(b"f")
        self.add_job(fq)
        registry.check_room(fq, NORMAL)
        self.add_job(fq)
        with self.assertRaises(GearmanError) as raised:
            registry.check_room(fq, NORMAL)
        self.assertEqual(raised.exception.code, b"QUEUE_ERROR")
        g = registry.function(b"g")
        for _ in range(5):
            self.add_job(g)
        registry.check_room(g, NORMAL)
        self.assertRaises(GearmanError, registry.check_room, g, HIGH)
        self.assertRaises(GearmanError, registry.check_room, g, LOW)
        registry.set_limits(b"f", (0, 0, 0))
        self.assertIsNone(registry.limits(b"f"))
        registry.check_room(fq, NORMAL)

    def test_listed(self) -> None:
        """
        C{listed} gives the functions in use (a worker, a job, or created),
        sorted by name.
        """
        self.add_job(self.registry.function(b"zeta"))
        worker = Participant(RecordingPeer())
        self.registry.function(b"alpha").workers[worker] = None
        self.registry.function(b"unused")
        self.assertEqual([fq.name for fq in self.registry.listed()], [b"alpha", b"zeta"])
        self.registry.create(b"mid")
        self.assertEqual([fq.name for fq in self.registry.listed()], [b"alpha", b"mid", b"zeta"])

    def test_drop_refuses_in_use(self) -> None:
        """
        C{drop} refuses, with GearmanError, a function that has a worker or
        a job, and leaves it created.
        """
        self.registry.create(b"w")
        self.registry.function(b"w").workers[Participant(RecordingPeer())] = None
        self.registry.create(b"j")
        self.add_job(self.registry.function(b"j"))
        for name in (b"w", b"j"):
            self.assertRaises(GearmanError, self.registry.drop, name)
            fq = self.registry.get(name)
            assert fq is not None
            self.assertTrue(fq.created)

    def test_drop(self) -> None:
        """
        C{drop} forgets a created function with no worker and no job,
        matching its name case-insensitively when there is no exact match;
        an unknown function drops nothing.
        """
        self.registry.create(b"Fn")
        fq = self.registry.get(b"Fn")
        self.assertIs(self.registry.drop(b"FN"), fq)
        self.assertIsNone(self.registry.get(b"Fn"))
        self.assertEqual(self.registry.listed(), [])
        self.assertIsNone(self.registry.drop(b"nothing"))

    def test_forget_if_unused(self) -> None:
        """
        C{forget_if_unused} drops a function with nothing left and keeps
        one still in use.
        """
        used = self.registry.function(b"used")
        self.add_job(used)
        unused = self.registry.function(b"unused")
        self.registry.forget_if_unused(used)
        self.registry.forget_if_unused(unused)
        self.assertIs(self.registry.get(b"used"), used)
        self.assertIsNone(self.registry.get(b"unused"))


class Flushed:
    """
    A peer that notes when it is flushed.
    """

    def __init__(self, log: list[str], name: str = "peer") -> None:
        self.log = log
        self.name = name

    def flush(self) -> None:
        self.log.append(self.name)


class OutputBatchTests(SynchronousTestCase):
    """
    L{OutputBatch}: one flush per batch.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.batch = OutputBatch(self.clock)
        self.log: list[str] = []
        self.batch.before_flush = lambda: self.log.append("before")

    def test_nested_flush_once(self) -> None:
        """
        Nested batches flush once, when the outermost ends, running
        C{before_flush} first and then every dirty peer.
        """
        with self.batch:
            with self.batch:
                self.batch.mark_dirty(Flushed(self.log, "a"))
            self.assertEqual(self.log, [])
            self.assertEqual(self.batch.depth, 1)
            self.batch.mark_dirty(Flushed(self.log, "b"))
        self.assertEqual(self.log, ["before", "a", "b"])
        self.assertEqual(self.batch.depth, 0)
        with self.batch:
            pass
        self.assertEqual(self.log, ["before", "a", "b", "before"])

    def test_hold_until_next_turn(self) -> None:
        """
        C{hold_until_next_turn} keeps the batch open (once, however often
        called) until the clock's next turn, then flushes.
        """
        self.batch.hold_until_next_turn()
        self.batch.hold_until_next_turn()
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.batch.mark_dirty(Flushed(self.log))
        with self.batch:
            pass
        self.assertEqual(self.log, [])
        self.clock.advance(0)
        self.assertEqual(self.log, ["before", "peer"])
        self.assertEqual(self.batch.depth, 0)

    def test_turn_ends_inside_batch(self) -> None:
        """
        If the turn ends while a C{with} batch is open, the flush waits for
        that batch to end.
        """
        self.batch.hold_until_next_turn()
        self.batch.mark_dirty(Flushed(self.log))
        with self.batch:
            self.clock.advance(0)
            self.assertEqual(self.log, [])
        self.assertEqual(self.log, ["before", "peer"])

    def test_flushed_peers_forgotten(self) -> None:
        """
        A peer flushed once is not flushed again by the next batch unless
        marked dirty again.
        """
        with self.batch:
            self.batch.mark_dirty(Flushed(self.log))
        with self.batch:
            pass
        self.assertEqual(self.log, ["before", "peer", "before"])
