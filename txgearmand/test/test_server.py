"""
Tests for L{txgearmand.server.JobServer}: submitting, coalescing, handing
out, relaying, requeueing, waking and limiting jobs, driven through real
L{GearmanProtocol}s over in-memory transports on a fake clock.
"""

from __future__ import annotations

import attrs
from twisted.trial.unittest import SynchronousTestCase

from txgearmand.job import HIGH, LOW, NORMAL, JobState
from txgearmand.server import GearmanError, JobServer
from txgearmand.test.helpers import ServerTestMixin
from txgearmand.wire import PacketType as P
from txgearmand.wire import encode_request


class SubmitTests(ServerTestMixin, SynchronousTestCase):
    """
    Submitting jobs.
    """

    def test_job_created(self) -> None:
        """
        A submission is answered with JOB_CREATED and a handle made of the
        prefix and a counter starting at 1.
        """
        client = self.connect()
        self.assertEqual(client.submit(b"f", b"x"), b"H:test:1")
        self.assertEqual(client.submit(b"f", b"y", ptype=P.SUBMIT_JOB_BG), b"H:test:2")

    def test_default_prefix_is_hostname(self) -> None:
        """
        Without a prefix, handles are C{H:<hostname>:N} as in C gearmand.
        """
        import socket

        self.clock = __import__("twisted.internet.task", fromlist=["Clock"]).Clock()
        server = JobServer(self.clock)
        self.assertEqual(server.new_job_handle(), b"H:" + socket.gethostname().encode() + b":1")

    def test_every_submit_type(self) -> None:
        """
        The six SUBMIT_JOB forms queue a job at their priority, foreground
        or background.
        """
        client = self.connect()
        forms = [
            (P.SUBMIT_JOB, NORMAL, False),
            (P.SUBMIT_JOB_BG, NORMAL, True),
            (P.SUBMIT_JOB_HIGH, HIGH, False),
            (P.SUBMIT_JOB_HIGH_BG, HIGH, True),
            (P.SUBMIT_JOB_LOW, LOW, False),
            (P.SUBMIT_JOB_LOW_BG, LOW, True),
        ]
        for ptype, priority, background in forms:
            handle = client.submit(b"f", b"d", ptype=ptype)
            job = self.server.job_by_handle(handle)
            assert job is not None
            self.assertEqual((job.priority, job.background), (priority, background), ptype)
            self.assertEqual(list(job.listeners), [] if background else [client.participant])

    def test_pipelined_submits_answered_in_order(self) -> None:
        """
        Pipelined submissions get their JOB_CREATED and ERROR replies in
        submission order.
        """
        self.make_server(max_queue={b"f": 2})
        client = self.connect()
        data = b"".join(
            __import__("txgearmand.wire", fromlist=["x"]).encode_request(P.SUBMIT_JOB, f, b"", b"")
            for f in (b"f", b"g", b"f", b"f", b"g")
        )
        client.send_bytes(data)
        self.assertEqual(
            client.packets(),
            [
                (P.JOB_CREATED, (b"H:test:1",)),
                (P.JOB_CREATED, (b"H:test:2",)),
                (P.JOB_CREATED, (b"H:test:3",)),
                (P.ERROR, (b"QUEUE_ERROR", b"Job queue is full")),
                (P.JOB_CREATED, (b"H:test:4",)),
            ],
        )

    def test_empty_function_refused(self) -> None:
        """
        A submission with an empty function name is refused.
        """
        client = self.connect()
        client.send(P.SUBMIT_JOB, b"", b"", b"x")
        self.assertEqual(
            client.packets(), [(P.ERROR, (b"INVALID_ARGUMENT", b"Function name is empty"))]
        )
        self.assertEqual(self.server.jobs(), [])

    def test_unique_too_long(self) -> None:
        """
        A unique id over 64 bytes gets C gearmand's ARGUMENT_TOO_LARGE; 64
        bytes is fine.
        """
        client = self.connect()
        client.send(P.SUBMIT_JOB, b"f", b"u" * 65, b"x")
        self.assertEqual(
            client.packets(), [(P.ERROR, (b"ARGUMENT_TOO_LARGE", b"Unique value too large"))]
        )
        client.submit(b"f", b"x", unique=b"u" * 64)

    def test_submit_from_code(self) -> None:
        """
        Code in the same process can submit background jobs directly.
        """
        self.make_server()
        job = self.server.submit_job(None, b"f", b"", b"payload", background=True)
        worker = self.worker(b"f")
        self.assertEqual(worker.grab(), (P.JOB_ASSIGN_UNIQ, (job.handle, b"f", b"", b"payload")))


class CoalescingTests(ServerTestMixin, SynchronousTestCase):
    """
    Duplicate submissions that share a unique id.
    """

    def test_same_unique_same_handle(self) -> None:
        """
        A second submission with the same function and unique id gets the
        first one's handle, and both clients get every update.
        """
        c1, c2 = self.connect(), self.connect()
        h1 = c1.submit(b"f", b"a", unique=b"u")
        h2 = c2.submit(b"f", b"b", unique=b"u")
        self.assertEqual(h1, h2)
        worker = self.worker(b"f")
        self.assertEqual(worker.grab(), (P.JOB_ASSIGN_UNIQ, (h1, b"f", b"u", b"a")))
        worker.send(P.WORK_STATUS, h1, b"1", b"2")
        worker.send(P.WORK_DATA, h1, b"part")
        worker.send(P.WORK_COMPLETE, h1, b"done")
        expected = [
            (P.WORK_STATUS, (h1, b"1", b"2")),
            (P.WORK_DATA, (h1, b"part")),
            (P.WORK_COMPLETE, (h1, b"done")),
        ]
        self.assertEqual(c1.packets(), expected)
        self.assertEqual(c2.packets(), expected)

    def test_same_connection_twice(self) -> None:
        """
        A connection that submits the same unique twice gets every update
        twice, once per submission (Perl's task sets count on it), and
        leaving drops both entries.
        """
        client = self.connect()
        h = client.submit(b"f", unique=b"u")
        self.assertEqual(client.submit(b"f", unique=b"u"), h)
        worker = self.worker(b"f")
        worker.grab()
        worker.send(P.WORK_STATUS, h, b"1", b"2")
        worker.send(P.WORK_COMPLETE, h, b"r")
        self.assertEqual(
            client.packets(),
            [(P.WORK_STATUS, (h, b"1", b"2"))] * 2 + [(P.WORK_COMPLETE, (h, b"r"))] * 2,
        )
        h2 = client.submit(b"f", unique=b"v")
        client.submit(b"f", unique=b"v")
        client.disconnect()
        self.assertIsNone(self.server.job_by_handle(h2))

    def test_coalesce_onto_running(self) -> None:
        """
        A duplicate of a running job joins it.
        """
        c1, c2 = self.connect(), self.connect()
        h = c1.submit(b"f", b"a", unique=b"u")
        worker = self.worker(b"f")
        worker.grab()
        self.assertEqual(c2.submit(b"f", b"a", unique=b"u"), h)
        worker.send(P.WORK_COMPLETE, h, b"r")
        self.assertEqual(c2.packets(), [(P.WORK_COMPLETE, (h, b"r"))])

    def test_finished_unique_is_free(self) -> None:
        """
        Once a job ends, its unique id makes a new job.
        """
        client = self.connect()
        h1 = client.submit(b"f", unique=b"u")
        worker = self.worker(b"f")
        worker.grab()
        worker.send(P.WORK_COMPLETE, h1, b"")
        self.assertNotEqual(client.submit(b"f", unique=b"u"), h1)

    def test_empty_unique_never_coalesces(self) -> None:
        """
        Submissions with an empty unique id are separate jobs.
        """
        client = self.connect()
        self.assertNotEqual(client.submit(b"f", b"same"), client.submit(b"f", b"same"))

    def test_other_function_other_job(self) -> None:
        """
        The same unique id under another function is another job.
        """
        client = self.connect()
        self.assertNotEqual(client.submit(b"f", unique=b"u"), client.submit(b"g", unique=b"u"))

    def test_dash_coalesces_on_payload(self) -> None:
        """
        Unique C{-} coalesces submissions with the same payload; the stored
        unique stays C{-}.
        """
        client = self.connect()
        h1 = client.submit(b"f", b"same", unique=b"-")
        self.assertEqual(client.submit(b"f", b"same", unique=b"-"), h1)
        self.assertNotEqual(client.submit(b"f", b"other", unique=b"-"), h1)
        self.assertNotEqual(client.submit(b"g", b"same", unique=b"-"), h1)
        job = self.server.job_by_handle(h1)
        assert job is not None
        self.assertEqual(job.unique, b"-")

    def test_dash_empty_payload(self) -> None:
        """
        Unique C{-} with an empty payload does not coalesce.
        """
        client = self.connect()
        self.assertNotEqual(
            client.submit(b"f", b"", unique=b"-"), client.submit(b"f", b"", unique=b"-")
        )

    def test_background_onto_foreground_survives(self) -> None:
        """
        A background submission that coalesces onto a foreground job keeps
        it alive when the foreground client leaves (C gearmand loses it).
        """
        fg, bg = self.connect(), self.connect()
        h = fg.submit(b"f", b"x", unique=b"u")
        self.assertEqual(bg.submit(b"f", b"x", unique=b"u", ptype=P.SUBMIT_JOB_BG), h)
        fg.disconnect()
        worker = self.worker(b"f")
        self.assertEqual(worker.grab()[0], P.JOB_ASSIGN_UNIQ)

    def test_coalesced_not_refused_by_max_queue(self) -> None:
        """
        A submission that coalesces is never refused as queue full.
        """
        self.make_server(max_queue={b"f": 1})
        client = self.connect()
        h = client.submit(b"f", unique=b"u")
        self.assertEqual(client.submit(b"f", unique=b"u"), h)

    def test_get_status_unique(self) -> None:
        """
        GET_STATUS_UNIQUE answers with the unique, known, running, status
        and the number of waiting clients; unknown uniques get zeros.
        """
        c1, c2 = self.connect(), self.connect()
        h = c1.submit(b"f", unique=b"u")
        c2.submit(b"f", unique=b"u")
        c1.send(P.GET_STATUS_UNIQUE, b"u")
        self.assertEqual(
            c1.packets(), [(P.STATUS_RES_UNIQUE, (b"u", b"1", b"0", b"0", b"0", b"2"))]
        )
        worker = self.worker(b"f")
        worker.grab()
        worker.send(P.WORK_STATUS, h, b"3", b"4")
        c1.packets()
        c1.send(P.GET_STATUS_UNIQUE, b"u")
        self.assertEqual(
            c1.packets(), [(P.STATUS_RES_UNIQUE, (b"u", b"1", b"1", b"3", b"4", b"2"))]
        )
        c1.send(P.GET_STATUS_UNIQUE, b"nope")
        self.assertEqual(
            c1.packets(), [(P.STATUS_RES_UNIQUE, (b"nope", b"0", b"0", b"0", b"0", b"0"))]
        )


class GrabTests(ServerTestMixin, SynchronousTestCase):
    """
    Handing jobs to workers.
    """

    def test_grab_forms(self) -> None:
        """
        GRAB_JOB gets JOB_ASSIGN, GRAB_JOB_UNIQ gets JOB_ASSIGN_UNIQ, and
        GRAB_JOB_ALL gets JOB_ASSIGN_UNIQ for a job without a reducer.
        """
        client = self.connect()
        worker = self.worker(b"f")
        h1 = client.submit(b"f", b"a", unique=b"u1")
        h2 = client.submit(b"f", b"b", unique=b"u2")
        h3 = client.submit(b"f", b"c", unique=b"u3")
        self.assertEqual(worker.grab(P.GRAB_JOB), (P.JOB_ASSIGN, (h1, b"f", b"a")))
        self.assertEqual(worker.grab(P.GRAB_JOB_UNIQ), (P.JOB_ASSIGN_UNIQ, (h2, b"f", b"u2", b"b")))
        self.assertEqual(worker.grab(P.GRAB_JOB_ALL), (P.JOB_ASSIGN_UNIQ, (h3, b"f", b"u3", b"c")))
        self.assertEqual(worker.grab(P.GRAB_JOB_ALL), (P.NO_JOB, ()))

    def test_reduce_job(self) -> None:
        """
        SUBMIT_REDUCE_JOB's reducer reaches a GRAB_JOB_ALL worker in
        JOB_ASSIGN_ALL; the payload may contain NUL bytes.
        """
        client = self.connect()
        client.send(P.SUBMIT_REDUCE_JOB, b"map", b"u", b"reduce", b"", b"a\0b")
        (created,) = client.packets()
        h = created[1][0]
        worker = self.worker(b"map")
        self.assertEqual(
            worker.grab(P.GRAB_JOB_ALL), (P.JOB_ASSIGN_ALL, (h, b"map", b"u", b"reduce", b"a\0b"))
        )
        job = self.server.job_by_handle(h)
        assert job is not None
        self.assertFalse(job.background)

    def test_reduce_background(self) -> None:
        """
        SUBMIT_REDUCE_JOB_BACKGROUND makes a background job.
        """
        client = self.connect()
        client.send(P.SUBMIT_REDUCE_JOB_BACKGROUND, b"map", b"", b"r", b"", b"d")
        (created,) = client.packets()
        job = self.server.job_by_handle(created[1][0])
        assert job is not None
        self.assertTrue(job.background)
        self.assertEqual(job.reducer, b"r")

    def test_no_abilities(self) -> None:
        """
        A worker with no abilities gets NO_JOB.
        """
        self.connect().submit(b"f")
        self.assertEqual(self.connect().grab(), (P.NO_JOB, ()))

    def test_priority_order(self) -> None:
        """
        HIGH jobs go first, then NORMAL, then LOW; FIFO within a priority.
        """
        client = self.connect()
        low = client.submit(b"f", ptype=P.SUBMIT_JOB_LOW)
        n1 = client.submit(b"f")
        high = client.submit(b"f", ptype=P.SUBMIT_JOB_HIGH_BG)
        n2 = client.submit(b"f", ptype=P.SUBMIT_JOB_BG)
        worker = self.worker(b"f")
        order = [worker.grab()[1][0] for _ in range(4)]
        self.assertEqual(order, [high, n1, n2, low])

    def test_priority_global_across_functions(self) -> None:
        """
        A worker's grab takes a HIGH job of any of its functions before a
        NORMAL job of another.
        """
        client = self.connect()
        normal = client.submit(b"a")
        high = client.submit(b"b", ptype=P.SUBMIT_JOB_HIGH)
        worker = self.worker(b"a", b"b")
        self.assertEqual(worker.grab()[1][0], high)
        self.assertEqual(worker.grab()[1][0], normal)

    def test_functions_take_turns(self) -> None:
        """
        At equal priority a worker's functions take turns, so a busy first
        function does not starve the others.
        """
        client = self.connect()
        a = [client.submit(b"a", b"%d" % i) for i in range(3)]
        b = [client.submit(b"b", b"%d" % i) for i in range(3)]
        worker = self.worker(b"a", b"b")
        order = [worker.grab()[1][0] for _ in range(6)]
        self.assertEqual(order, [a[0], b[0], a[1], b[1], a[2], b[2]])

    def test_running_job_status(self) -> None:
        """
        GET_STATUS reports known and running, and the last WORK_STATUS.
        """
        client = self.connect()
        h = client.submit(b"f")
        client.send(P.GET_STATUS, h)
        self.assertEqual(client.packets(), [(P.STATUS_RES, (h, b"1", b"0", b"0", b"0"))])
        worker = self.worker(b"f")
        worker.grab()
        worker.send(P.WORK_STATUS, h, b"5", b"10")
        client.packets()
        client.send(P.GET_STATUS, h)
        self.assertEqual(client.packets(), [(P.STATUS_RES, (h, b"1", b"1", b"5", b"10"))])

    def test_unknown_status(self) -> None:
        """
        GET_STATUS for an unknown handle answers zeros, as C gearmand.
        """
        client = self.connect()
        client.send(P.GET_STATUS, b"H:nope:1")
        self.assertEqual(client.packets(), [(P.STATUS_RES, (b"H:nope:1", b"0", b"0", b"0", b"0"))])


class ResultTests(ServerTestMixin, SynchronousTestCase):
    """
    Results relayed from workers to clients.
    """

    def setUp(self) -> None:
        self.client = self.connect()
        self.handle = self.client.submit(b"f", b"in")
        self.worker_conn = self.worker(b"f")
        self.worker_conn.grab()

    def test_relay_all(self) -> None:
        """
        WORK_STATUS, WORK_DATA, WORK_WARNING and WORK_COMPLETE reach the
        client; the job is then gone.
        """
        h = self.handle
        w = self.worker_conn
        w.send(P.WORK_STATUS, h, b"1", b"3")
        w.send(P.WORK_DATA, h, b"d\0ata")
        w.send(P.WORK_WARNING, h, b"careful")
        w.send(P.WORK_COMPLETE, h, b"result")
        self.assertEqual(
            self.client.packets(),
            [
                (P.WORK_STATUS, (h, b"1", b"3")),
                (P.WORK_DATA, (h, b"d\0ata")),
                (P.WORK_WARNING, (h, b"careful")),
                (P.WORK_COMPLETE, (h, b"result")),
            ],
        )
        self.assertEqual(w.packets(), [])
        self.assertIsNone(self.server.job_by_handle(h))
        self.assertEqual(self.server.registry.listed()[0].total(), 0)

    def test_fail(self) -> None:
        """
        WORK_FAIL reaches the client and ends the job.
        """
        self.worker_conn.send(P.WORK_FAIL, self.handle)
        self.assertEqual(self.client.packets(), [(P.WORK_FAIL, (self.handle,))])
        self.assertIsNone(self.server.job_by_handle(self.handle))

    def test_not_found(self) -> None:
        """
        Results for a job the worker does not hold get C gearmand's
        JOB_NOT_FOUND errors.
        """
        other = self.worker(b"f")
        expected = [
            (P.WORK_STATUS, (self.handle, b"1", b"2"), b"Job given in work result not found"),
            (P.WORK_COMPLETE, (self.handle, b""), b"Job given in work result not found"),
            (P.WORK_FAIL, (self.handle,), b"Job given in work result not found"),
            (P.WORK_DATA, (self.handle, b""), b"Job does not exist on server"),
            (P.WORK_WARNING, (self.handle, b""), b"Job does not exist on server"),
            (
                P.WORK_EXCEPTION,
                (self.handle, b""),
                b"An exception was received for a job that does not exist",
            ),
        ]
        for ptype, args, text in expected:
            other.send(ptype, *args)
            self.assertEqual(other.packets(), [(P.ERROR, (b"JOB_NOT_FOUND", text))], ptype)
        self.assertEqual(self.client.packets(), [])
        self.assertIsNotNone(self.server.job_by_handle(self.handle))

    def test_exception_to_opted_clients(self) -> None:
        """
        WORK_EXCEPTION ends the job: clients that asked for exceptions get
        it, the others get WORK_FAIL.
        """
        opted = self.connect()
        opted.send(P.OPTION_REQ, b"exceptions")
        self.assertEqual(opted.packets(), [(P.OPTION_RES, (b"exceptions",))])
        plain = self.connect()
        h = plain.submit(b"g", unique=b"u")
        self.assertEqual(opted.submit(b"g", unique=b"u"), h)
        w = self.worker(b"g")
        w.grab()
        w.send(P.WORK_EXCEPTION, h, b"boom")
        self.assertEqual(plain.packets(), [(P.WORK_FAIL, (h,))])
        self.assertEqual(opted.packets(), [(P.WORK_EXCEPTION, (h, b"boom"))])
        self.assertIsNone(self.server.job_by_handle(h))

    def test_exceptions_for_everyone(self) -> None:
        """
        With C{exceptions=True} every client gets WORK_EXCEPTION.
        """
        self.server.settings = attrs.evolve(self.server.settings, exceptions=True)
        self.worker_conn.send(P.WORK_EXCEPTION, self.handle, b"boom")
        self.assertEqual(self.client.packets(), [(P.WORK_EXCEPTION, (self.handle, b"boom"))])

    def test_fail_after_exception_accepted(self) -> None:
        """
        A WORK_FAIL that follows the same worker's WORK_EXCEPTION (Perl's
        Gearman::Worker sends both) gets no ERROR; a second one does.
        """
        w = self.worker_conn
        w.send(P.WORK_EXCEPTION, self.handle, b"boom")
        w.send(P.WORK_FAIL, self.handle)
        self.assertEqual(w.packets(), [])
        w.send(P.WORK_FAIL, self.handle)
        self.assertEqual(w.packets()[0][1][0], b"JOB_NOT_FOUND")

    def test_results_after_client_left(self) -> None:
        """
        A running job whose client left runs to completion; its result is
        dropped.
        """
        self.client.disconnect()
        self.worker_conn.send(P.WORK_COMPLETE, self.handle, b"r")
        self.assertEqual(self.worker_conn.packets(), [])
        self.assertEqual(self.server.jobs(), [])


class ListenerTests(ServerTestMixin, SynchronousTestCase):
    """
    Foreground clients that leave.
    """

    def test_abandoned_job_dropped(self) -> None:
        """
        A queued foreground job whose only client left is dropped before a
        worker gets it.
        """
        client = self.connect()
        client.submit(b"f")
        client.disconnect()
        self.assertEqual(self.server.jobs(), [])
        self.assertEqual(self.worker(b"f").grab(), (P.NO_JOB, ()))
        self.assertEqual(self.server.registry.listed(), [self.server.registry.get(b"f")])

    def test_one_of_two_clients_left(self) -> None:
        """
        A coalesced job survives while one of its clients waits.
        """
        c1, c2 = self.connect(), self.connect()
        h = c1.submit(b"f", unique=b"u")
        c2.submit(b"f", unique=b"u")
        c1.disconnect()
        worker = self.worker(b"f")
        self.assertEqual(worker.grab()[1][0], h)
        worker.send(P.WORK_COMPLETE, h, b"r")
        self.assertEqual(c2.packets(), [(P.WORK_COMPLETE, (h, b"r"))])

    def test_background_job_survives_client(self) -> None:
        """
        A background job stays when its submitter leaves.
        """
        client = self.connect()
        client.submit(b"f", ptype=P.SUBMIT_JOB_BG)
        client.disconnect()
        self.assertEqual(self.worker(b"f").grab()[0], P.JOB_ASSIGN_UNIQ)


class RequeueTests(ServerTestMixin, SynchronousTestCase):
    """
    Jobs put back when their worker goes away, gives them up, or times out.
    """

    def test_worker_lost(self) -> None:
        """
        A job whose worker disconnects goes to another worker; the client
        gets the result from that one.
        """
        client = self.connect()
        h = client.submit(b"f", b"x")
        w1, w2 = self.worker(b"f"), self.worker(b"f")
        w1.grab()
        self.assertEqual(w2.grab(), (P.NO_JOB, ()))
        w1.disconnect()
        self.assertEqual(w2.grab(), (P.JOB_ASSIGN_UNIQ, (h, b"f", b"", b"x")))
        w2.send(P.WORK_COMPLETE, h, b"r")
        self.assertEqual(client.packets(), [(P.WORK_COMPLETE, (h, b"r"))])

    def test_requeued_at_back(self) -> None:
        """
        A requeued job goes to the back of its priority, and its status is
        reset.
        """
        client = self.connect()
        h1 = client.submit(b"f")
        h2 = client.submit(b"f")
        w1 = self.worker(b"f")
        w1.grab()
        w1.send(P.WORK_STATUS, h1, b"1", b"2")
        w1.disconnect()
        client.packets()
        client.send(P.GET_STATUS, h1)
        self.assertEqual(client.packets(), [(P.STATUS_RES, (h1, b"1", b"0", b"0", b"0"))])
        w2 = self.worker(b"f")
        self.assertEqual([w2.grab()[1][0], w2.grab()[1][0]], [h2, h1])

    def test_cant_do_requeues(self) -> None:
        """
        CANT_DO for the function of a held job puts it back; the worker's
        late results are dropped without an ERROR.
        """
        client = self.connect()
        h = client.submit(b"f")
        w1 = self.worker(b"f", b"g")
        w1.grab()
        w1.send(P.CANT_DO, b"f")
        w1.send(P.WORK_DATA, h, b"late")
        w1.send(P.WORK_COMPLETE, h, b"late")
        self.assertEqual(w1.packets(), [])
        self.assertEqual(client.packets(), [])
        self.assertEqual(self.worker(b"f").grab()[1][0], h)

    def test_reset_abilities_requeues(self) -> None:
        """
        RESET_ABILITIES puts back every held job and unregisters the worker.
        """
        client = self.connect()
        h = client.submit(b"f")
        w1 = self.worker(b"f")
        w1.grab()
        w1.send(P.RESET_ABILITIES)
        self.assertEqual(w1.grab(), (P.NO_JOB, ()))
        self.assertEqual(self.worker(b"f").grab()[1][0], h)

    def test_job_retries(self) -> None:
        """
        With C{job_retries=N} the N-th failed attempt fails the job with
        WORK_FAIL to its clients.
        """
        self.make_server(job_retries=2)
        client = self.connect()
        h = client.submit(b"f")
        self.worker(b"f").grab()
        for conn in list(self.server.clients()):
            if conn.held:
                conn.peer.close()
        self.assertEqual(client.packets(), [])
        w = self.worker(b"f")
        self.assertEqual(w.grab()[1][0], h)
        w.disconnect()
        self.assertEqual(client.packets(), [(P.WORK_FAIL, (h,))])
        self.assertEqual(self.server.jobs(), [])

    def test_unlimited_retries(self) -> None:
        """
        With the default C{job_retries=0} a job is retried forever.
        """
        client = self.connect()
        h = client.submit(b"f")
        for _ in range(20):
            w = self.worker(b"f")
            self.assertEqual(w.grab()[1][0], h)
            w.disconnect()
        job = self.server.job_by_handle(h)
        assert job is not None
        self.assertEqual(job.retries, 20)

    def test_abandoned_running_job_not_requeued(self) -> None:
        """
        A foreground job whose client left is not requeued when its worker
        goes away too.
        """
        client = self.connect()
        client.submit(b"f")
        w = self.worker(b"f")
        w.grab()
        client.disconnect()
        w.disconnect()
        self.assertEqual(self.server.jobs(), [])


class TimeoutTests(ServerTestMixin, SynchronousTestCase):
    """
    CAN_DO_TIMEOUT.
    """

    def test_milliseconds(self) -> None:
        """
        By default the timeout is in milliseconds (C gearmand); an overrun
        puts the job back for another worker.  The late result is dropped
        without an ERROR: Perl's Gearman::Worker would die reading one.
        """
        client = self.connect()
        h = client.submit(b"f")
        w1 = self.connect()
        w1.send(P.CAN_DO_TIMEOUT, b"f", b"2500")
        w1.grab()
        self.clock.advance(2.4)
        w2 = self.worker(b"f")
        self.assertEqual(w2.grab(), (P.NO_JOB, ()))
        self.clock.advance(0.2)
        self.assertEqual(w2.grab()[1][0], h)
        w1.send(P.WORK_COMPLETE, h, b"late")
        self.assertEqual(w1.packets(), [])
        self.assertEqual(client.packets(), [])
        w1.send(P.WORK_COMPLETE, h, b"again")
        self.assertEqual(w1.packets()[0][1][0], b"JOB_NOT_FOUND")
        w2.send(P.WORK_COMPLETE, h, b"ok")
        self.assertEqual(client.packets(), [(P.WORK_COMPLETE, (h, b"ok"))])
        self.assert_no_timers()

    def test_floor_one_second(self) -> None:
        """
        Millisecond values under 1000 count as one second, as in C gearmand.
        """
        client = self.connect()
        h = client.submit(b"f")
        w1 = self.connect()
        w1.send(P.CAN_DO_TIMEOUT, b"f", b"5")
        w1.grab()
        self.clock.advance(0.9)
        job = self.server.job_by_handle(h)
        assert job is not None
        self.assertEqual(job.state, JobState.RUNNING)
        self.clock.advance(0.2)
        self.assertEqual(job.state, JobState.QUEUED)

    def test_seconds(self) -> None:
        """
        With C{timeout_unit="seconds"} (Perl workers) the value is seconds.
        """
        self.make_server(timeout_unit="seconds")
        client = self.connect()
        h = client.submit(b"f")
        w1 = self.connect()
        w1.send(P.CAN_DO_TIMEOUT, b"f", b"3")
        w1.grab()
        self.clock.advance(2.9)
        job = self.server.job_by_handle(h)
        assert job is not None
        self.assertEqual(job.state, JobState.RUNNING)
        self.clock.advance(0.2)
        self.assertEqual(job.state, JobState.QUEUED)

    def test_timeout_counts_as_retry(self) -> None:
        """
        A timeout is a failed attempt: with C{job_retries=1} the client gets
        WORK_FAIL.
        """
        self.make_server(job_retries=1)
        client = self.connect()
        h = client.submit(b"f")
        w1 = self.connect()
        w1.send(P.CAN_DO_TIMEOUT, b"f", b"1000")
        w1.grab()
        self.clock.advance(1.0)
        self.assertEqual(client.packets(), [(P.WORK_FAIL, (h,))])
        self.assertEqual(self.server.jobs(), [])

    def test_completed_in_time(self) -> None:
        """
        A job completed in time leaves no timer behind.
        """
        client = self.connect()
        h = client.submit(b"f")
        w1 = self.connect()
        w1.send(P.CAN_DO_TIMEOUT, b"f", b"1000")
        w1.grab()
        w1.send(P.WORK_COMPLETE, h, b"")
        self.assert_no_timers()

    def test_zero_is_none(self) -> None:
        """
        A timeout of 0 means none.
        """
        client = self.connect()
        client.submit(b"f")
        w1 = self.connect()
        w1.send(P.CAN_DO_TIMEOUT, b"f", b"0")
        w1.grab()
        self.assert_no_timers()

    def test_bad_value(self) -> None:
        """
        A timeout that is not a number is refused and nothing registered.
        """
        w = self.connect()
        w.send(P.CAN_DO_TIMEOUT, b"f", b"soon")
        self.assertEqual(w.packets()[0][1][0], b"INVALID_ARGUMENT")
        self.assertEqual(w.participant.abilities, {})
        w.send(P.CAN_DO_TIMEOUT, b"f")
        self.assertEqual(w.packets()[0][1][0], b"INVALID_ARGUMENT")

    def test_reregister_updates(self) -> None:
        """
        CAN_DO after CAN_DO_TIMEOUT for the same function removes the
        timeout.
        """
        client = self.connect()
        client.submit(b"f")
        w = self.connect()
        w.send(P.CAN_DO_TIMEOUT, b"f", b"1000")
        w.send(P.CAN_DO, b"f")
        w.grab()
        self.assert_no_timers()


class WakeupTests(ServerTestMixin, SynchronousTestCase):
    """
    PRE_SLEEP, NOOP and the wake-up policy.
    """

    def sleepers(self, count: int, function: bytes = b"f") -> list:  # type: ignore[type-arg]
        workers = []
        for _ in range(count):
            w = self.worker(function)
            w.send(P.PRE_SLEEP)
            workers.append(w)
        return workers

    def noops(self, workers: list) -> list[bool]:  # type: ignore[type-arg]
        return [w.packets() == [(P.NOOP, ())] for w in workers]

    def test_pre_sleep_with_work(self) -> None:
        """
        PRE_SLEEP while a job waits is answered with NOOP at once.
        """
        self.connect().submit(b"f")
        w = self.worker(b"f")
        w.send(P.PRE_SLEEP)
        self.assertEqual(w.packets(), [(P.NOOP, ())])

    def test_default_wakes_three(self) -> None:
        """
        By default a job wakes three sleepers (Gearman::Server's default).
        """
        self.make_server()
        workers = self.sleepers(5)
        self.connect().submit(b"f")
        self.assertEqual(self.noops(workers), [True, True, True, False, False])

    def test_wakeup_n(self) -> None:
        """
        C{wakeup=N} wakes N sleepers per job, each at most once per sleep.
        """
        self.make_server(wakeup=1, wakeup_delay=-1)
        workers = self.sleepers(3)
        client = self.connect()
        client.submit(b"f")
        self.assertEqual(self.noops(workers), [True, False, False])
        client.submit(b"f")
        self.assertEqual(self.noops(workers), [False, True, False])

    def test_wakeup_zero(self) -> None:
        """
        C{wakeup=0} wakes nobody.
        """
        self.make_server(wakeup=0)
        workers = self.sleepers(2)
        self.connect().submit(b"f")
        self.assertEqual(self.noops(workers), [False, False])
        self.assert_no_timers()

    def test_wakeup_all(self) -> None:
        """
        C{wakeup=-1} really wakes every sleeper (Perl's wakes none).
        """
        self.make_server(wakeup=-1)
        workers = self.sleepers(10)
        self.connect().submit(b"f")
        self.assertEqual(self.noops(workers), [True] * 10)
        self.assert_no_timers()

    def test_wakeup_delay(self) -> None:
        """
        While jobs stay queued, C{wakeup} more sleepers are woken every
        C{wakeup_delay} seconds; once the queue is empty it stops.
        """
        self.make_server(wakeup=1, wakeup_delay=0.5)
        workers = self.sleepers(3)
        self.connect().submit(b"f")
        self.assertEqual(self.noops(workers), [True, False, False])
        self.clock.advance(0.5)
        self.assertEqual(self.noops(workers), [False, True, False])
        workers[1].grab()
        self.clock.advance(0.5)
        self.assertEqual(self.noops(workers), [False, False, False])
        self.assert_no_timers()

    def test_wakeup_delay_zero(self) -> None:
        """
        C{wakeup_delay=0} wakes more on the next reactor turn.
        """
        self.make_server(wakeup=1, wakeup_delay=0)
        workers = self.sleepers(2)
        # The submission's read, without the end of its reactor turn.
        self.connect().protocol.dataReceived(encode_request(P.SUBMIT_JOB, b"f", b"", b""))
        self.assertEqual([w.participant.sleeping for w in workers], [False, True])
        self.clock.advance(0)
        self.assertEqual(self.noops(workers), [True, True])

    def test_wakeup_delay_never(self) -> None:
        """
        C{wakeup_delay=-1} never wakes more later.
        """
        self.make_server(wakeup=1, wakeup_delay=-1)
        self.sleepers(2)
        self.connect().submit(b"f")
        self.assert_no_timers()

    def test_warm_workers_first(self) -> None:
        """
        A worker that did jobs since it last slept is woken before those
        that did not.
        """
        self.make_server(wakeup=1, wakeup_delay=-1)
        idle, busy = self.worker(b"f"), self.worker(b"f")
        idle.send(P.PRE_SLEEP)
        client = self.connect()
        h = client.submit(b"f")
        idle.packets()
        busy.grab()
        busy.send(P.WORK_COMPLETE, h, b"")
        idle.send(P.PRE_SLEEP)
        busy.send(P.PRE_SLEEP)
        client.submit(b"f")
        self.assertEqual(self.noops([idle, busy]), [False, True])

    def test_only_capable_workers(self) -> None:
        """
        Only sleepers registered for the job's function are woken.
        """
        f = self.sleepers(1, b"f")
        g = self.sleepers(1, b"g")
        self.connect().submit(b"g")
        self.assertEqual(self.noops(f + g), [False, True])

    def test_grab_ends_sleep(self) -> None:
        """
        A sleeper that grabs is no longer woken.
        """
        self.make_server(wakeup=-1)
        (w,) = self.sleepers(1)
        w.grab()
        self.connect().submit(b"f")
        self.assertEqual(w.packets(), [])

    def test_disconnected_sleeper(self) -> None:
        """
        A sleeper that went away is not counted among the woken.
        """
        self.make_server(wakeup=1)
        gone, stays = self.sleepers(2)
        gone.disconnect()
        self.connect().submit(b"f")
        self.assertEqual(self.noops([stays]), [True])

    def test_can_do_while_sleeping(self) -> None:
        """
        A sleeping worker that registers a function with queued jobs is
        woken.
        """
        self.connect().submit(b"g")
        (w,) = self.sleepers(1)
        w.send(P.CAN_DO, b"g")
        self.assertEqual(w.packets(), [(P.NOOP, ())])

    def test_requeue_wakes(self) -> None:
        """
        A requeued job wakes a sleeper.
        """
        self.connect().submit(b"f")
        w1 = self.worker(b"f")
        w1.grab()
        (w2,) = self.sleepers(1)
        w1.disconnect()
        self.assertEqual(w2.packets(), [(P.NOOP, ())])


class EpochTests(ServerTestMixin, SynchronousTestCase):
    """
    SUBMIT_JOB_EPOCH.
    """

    def test_released_at_its_time(self) -> None:
        """
        A job scheduled for later is not handed out before its time; a
        timer then queues it and wakes sleepers.
        """
        self.make_server()
        self.clock.advance(1000)
        client = self.connect()
        client.send(P.SUBMIT_JOB_EPOCH, b"f", b"", b"1010", b"payload")
        (created,) = client.packets()
        h = created[1][0]
        job = self.server.job_by_handle(h)
        assert job is not None
        self.assertTrue(job.background)
        w = self.worker(b"f")
        self.assertEqual(w.grab(), (P.NO_JOB, ()))
        self.assertEqual(w.admin(b"status"), b"f\t1\t0\t1\n.\n")
        w.send(P.PRE_SLEEP)
        self.clock.advance(9.5)
        self.assertEqual(w.packets(), [])
        self.clock.advance(0.5)
        self.assertEqual(w.packets(), [(P.NOOP, ())])
        self.assertEqual(w.grab(), (P.JOB_ASSIGN_UNIQ, (h, b"f", b"", b"payload")))
        self.assert_no_timers()

    def test_past_and_junk_run_now(self) -> None:
        """
        An epoch in the past, zero or not a number runs at once.
        """
        self.make_server()
        self.clock.advance(1000)
        client = self.connect()
        for epoch in (b"5", b"0", b"soon", b""):
            client.send(P.SUBMIT_JOB_EPOCH, b"f", b"", epoch, b"x")
        self.assertEqual(len(client.packets()), 4)
        w = self.worker(b"f")
        self.assertEqual([w.grab()[0] for _ in range(4)], [P.JOB_ASSIGN_UNIQ] * 4)
        self.assert_no_timers()

    def test_order_of_release(self) -> None:
        """
        Scheduled jobs are released in time order, whatever the order they
        were submitted in.
        """
        self.make_server()
        client = self.connect()
        client.send(P.SUBMIT_JOB_EPOCH, b"f", b"", b"30", b"late")
        client.send(P.SUBMIT_JOB_EPOCH, b"f", b"", b"10", b"early")
        client.send(P.SUBMIT_JOB_EPOCH, b"f", b"", b"20", b"middle")
        self.clock.advance(30)
        w = self.worker(b"f")
        self.assertEqual([w.grab()[1][3] for _ in range(3)], [b"early", b"middle", b"late"])

    def test_cancel_scheduled(self) -> None:
        """
        A cancelled scheduled job never runs.
        """
        self.make_server()
        client = self.connect()
        client.send(P.SUBMIT_JOB_EPOCH, b"f", b"", b"10", b"x")
        (created,) = client.packets()
        self.assertEqual(client.admin(b"cancel job " + created[1][0]), b"OK\r\n")
        self.clock.advance(10)
        self.assertEqual(self.worker(b"f").grab(), (P.NO_JOB, ()))
        self.assert_no_timers()


class MaxQueueTests(ServerTestMixin, SynchronousTestCase):
    """
    Max queue limits.
    """

    def test_limit_counts_running(self) -> None:
        """
        The limit counts queued and running jobs, as in C gearmand, and a
        submission past it gets QUEUE_ERROR.
        """
        self.make_server(max_queue={b"f": 2})
        client = self.connect()
        client.submit(b"f")
        self.worker(b"f").grab()
        client.submit(b"f")
        client.send(P.SUBMIT_JOB_BG, b"f", b"", b"")
        self.assertEqual(client.packets(), [(P.ERROR, (b"QUEUE_ERROR", b"Job queue is full"))])

    def test_per_priority(self) -> None:
        """
        Limits apply per priority of the new submission.
        """
        self.make_server()
        self.server.set_max_queue(b"f", 0, 1, 3)
        client = self.connect()
        client.submit(b"f")
        client.send(P.SUBMIT_JOB, b"f", b"", b"")
        self.assertEqual(client.packets()[0][0], P.ERROR)
        client.submit(b"f", ptype=P.SUBMIT_JOB_LOW)
        client.submit(b"f", ptype=P.SUBMIT_JOB_HIGH)
        client.submit(b"f", ptype=P.SUBMIT_JOB_HIGH)
        client.send(P.SUBMIT_JOB_LOW, b"f", b"", b"")
        self.assertEqual(client.packets()[0][0], P.ERROR)

    def test_reset(self) -> None:
        """
        A limit of 0 (or none) removes it.
        """
        self.make_server(max_queue={b"f": 1})
        self.server.set_max_queue(b"f", 0)
        client = self.connect()
        client.submit(b"f")
        client.submit(b"f")
        self.assertIsNone(self.server.max_queue(b"f"))

    def test_rejected_leaves_nothing(self) -> None:
        """
        A refused submission leaves no job and no stray function behind.
        """
        self.make_server(max_queue={b"f": -5, b"g": 1})
        self.server.set_max_queue(b"g", 1)
        client = self.connect()
        client.submit(b"g", unique=b"u")
        client.send(P.SUBMIT_JOB, b"g", b"v", b"")
        client.packets()
        self.assertIsNone(self.server.job_of_unique(b"g", b"v"))


class ValidationTests(SynchronousTestCase):
    """
    Options of L{JobServer}.
    """

    def test_bad_options(self) -> None:
        """
        Out-of-range options are refused at construction.
        """
        from twisted.internet.task import Clock

        clock = Clock()
        for kwargs in (
            {"wakeup": -2},
            {"wakeup_delay": -0.5},
            {"job_retries": -1},
            {"timeout_unit": "hours"},
            {"admin_shutdown": "sometimes"},
            {"max_packet_size": 0},
            {"job_handle_prefix": b"x" * 60},
        ):
            self.assertRaises(ValueError, JobServer, clock, **kwargs)  # type: ignore[arg-type]

    def test_drop_function_with_jobs(self) -> None:
        """
        L{JobServer.drop_function} refuses a function that has jobs.
        """
        from twisted.internet.task import Clock

        server = JobServer(Clock())
        server.submit_job(None, b"f", b"", b"", background=True)
        self.assertRaises(GearmanError, server.registry.drop, b"f")
