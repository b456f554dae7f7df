"""
Tests for L{txgearmand.admin}: the text admin protocol, byte for byte.
"""

from __future__ import annotations

import os

import attrs
from twisted.trial.unittest import SynchronousTestCase

from txgearmand import __version__
from txgearmand.test.helpers import LOCAL6, REMOTE, UNIX, FakeConnection, ServerTestMixin
from txgearmand.wire import PacketType as P


class AdminTests(ServerTestMixin, SynchronousTestCase):
    """
    The admin commands, in the situation of C{peer-replies.txt}: a worker
    registered for two functions, jobs queued and one running.
    """

    def setUp(self) -> None:
        self.make_server()
        self.admin_conn = self.connect()
        self.client = self.connect()
        self.worker_conn = self.connect()
        self.worker_conn.send(P.SET_CLIENT_ID, b"sample-worker")
        self.worker_conn.can_do(b"fb", b"fa")
        self.h1 = self.client.submit(b"fa", b"1", unique=b"u1")
        self.h2 = self.client.submit(b"fa", b"2", unique=b"u2")
        self.h3 = self.client.submit(b"fb", b"3", ptype=P.SUBMIT_JOB_BG)
        # Functions take turns from the first registered: fb's job runs.
        self.assertEqual(self.worker_conn.grab()[1][0], self.h3)

    def admin(self, line: bytes) -> bytes:
        return self.admin_conn.admin(line)

    def test_status(self) -> None:
        """
        C{status}: FUNC, total (queued and running), running, workers;
        sorted; then C{.}.
        """
        self.assertEqual(self.admin(b"status"), b"fa\t2\t0\t1\nfb\t1\t1\t1\n.\n")

    def test_status_case_insensitive(self) -> None:
        """
        Command words are matched case-insensitively, as in C gearmand.
        """
        self.assertEqual(self.admin(b"STATUS"), self.admin(b"status"))

    def test_status_drops_idle_functions(self) -> None:
        """
        A function with no worker and no job is no longer listed, unless it
        was made with C{create function}.
        """
        self.worker_conn.disconnect()
        self.client.disconnect()
        self.assertEqual(self.admin(b"status"), b"fb\t1\t0\t0\n.\n")
        self.assertEqual(self.admin(b"create function idle"), b"OK\r\n")
        self.assertEqual(self.admin(b"status"), b"fb\t1\t0\t0\nidle\t0\t0\t0\n.\n")

    def test_prioritystatus(self) -> None:
        """
        C{prioritystatus}: queued (not running) jobs per priority, workers.
        """
        self.client.submit(b"fa", ptype=P.SUBMIT_JOB_HIGH)
        self.client.submit(b"fa", ptype=P.SUBMIT_JOB_LOW_BG)
        self.assertEqual(self.admin(b"prioritystatus"), b"fa\t1\t2\t1\t1\nfb\t0\t0\t0\t1\n.\n")

    def test_workers(self) -> None:
        """
        C{workers}: every connection as C{FD IP CLIENT_ID :} and its
        functions; a connection with none ends in C{:}.
        """
        reply = self.admin(b"workers")
        lines = reply.split(b"\n")
        self.assertEqual(lines[-2:], [b".", b""])
        by_fd = {int(line.split(b" ")[0]): line for line in lines[:-2]}
        self.assertEqual(
            by_fd[self.worker_conn.protocol.fileno()],
            b"%d 127.0.0.1 sample-worker : fb fa" % self.worker_conn.protocol.fileno(),
        )
        self.assertEqual(
            by_fd[self.client.protocol.fileno()],
            b"%d 127.0.0.1 - :" % self.client.protocol.fileno(),
        )
        self.assertEqual(len(by_fd), 3)
        self.assertEqual(sorted(by_fd), list(by_fd))

    def test_workers_ipv6_and_unix(self) -> None:
        """
        IPv6 peers show their address; UNIX-socket peers show C{unix}.
        """
        six = FakeConnection(self.server, LOCAL6)
        unix = FakeConnection(self.server, UNIX)
        reply = self.admin(b"workers")
        self.assertIn(b"%d ::1 - :\n" % six.protocol.fileno(), reply)
        self.assertIn(b"%d unix - :\n" % unix.protocol.fileno(), reply)

    def test_maxqueue(self) -> None:
        """
        C{maxqueue} in all its forms answers C{OK}; with no function, C's
        INVALID_ARGUMENTS line.
        """
        self.assertEqual(
            self.admin(b"maxqueue"),
            b"ERR INVALID_ARGUMENTS An+incomplete+set+of+arguments+was+sent+to+this+command"
            b"+maxqueue\r\n",
        )
        self.assertEqual(self.admin(b"maxqueue fa 3"), b"OK\r\n")
        self.assertEqual(self.server.max_queue(b"fa"), (3, 3, 3))
        self.assertEqual(self.admin(b"maxqueue fa 1 2"), b"OK\r\n")
        self.assertEqual(self.server.max_queue(b"fa"), (1, 2, 0))
        self.assertEqual(self.admin(b"maxqueue fa 1 2 3"), b"OK\r\n")
        self.assertEqual(self.server.max_queue(b"fa"), (1, 2, 3))
        self.assertEqual(self.admin(b"maxqueue fa"), b"OK\r\n")
        self.assertIsNone(self.server.max_queue(b"fa"))
        self.assertEqual(self.admin(b"maxqueue unknown 5"), b"OK\r\n")
        self.assertTrue(self.admin(b"maxqueue fa many").startswith(b"ERR INVALID_ARGUMENTS "))

    def test_maxqueue_refuses(self) -> None:
        """
        After C{maxqueue}, a submission past the limit gets QUEUE_ERROR.
        """
        self.assertEqual(self.admin(b"maxqueue fa 2"), b"OK\r\n")
        self.client.send(P.SUBMIT_JOB, b"fa", b"", b"")
        self.assertEqual(self.client.packets(), [(P.ERROR, (b"QUEUE_ERROR", b"Job queue is full"))])

    def test_show_jobs(self) -> None:
        """
        C{show jobs}: handle, retries, ignore flag, and 1 for a background
        (stored) job, as C gearmand prints them.
        """
        self.assertEqual(
            self.admin(b"show jobs"),
            b"%s\t0\t0\t0\n%s\t0\t0\t0\n%s\t0\t0\t1\n.\n" % (self.h1, self.h2, self.h3),
        )

    def test_show_unique_jobs(self) -> None:
        """
        C{show unique jobs}: one unique per line, empty for none.
        """
        self.assertEqual(self.admin(b"show unique jobs"), b"u1\nu2\n\n.\n")

    def test_show_other(self) -> None:
        """
        C{show} with other words gets C's UNKNOWN_SHOW_ARGUMENTS; bare
        C{show} is an unknown command.
        """
        self.assertEqual(self.admin(b"show workers"), b"ERR UNKNOWN_SHOW_ARGUMENTS\r\n")
        self.assertEqual(self.admin(b"show"), b"ERR UNKNOWN_COMMAND Unknown+server+commandshow\r\n")

    def test_cancel_job(self) -> None:
        """
        C{cancel job H}: the clients get WORK_FAIL and the job is gone;
        unknown handles get UNKNOWN_JOB.
        """
        self.client.packets()
        self.assertEqual(self.admin(b"cancel job " + self.h2), b"OK\r\n")
        self.assertEqual(self.client.packets(), [(P.WORK_FAIL, (self.h2,))])
        self.assertIsNone(self.server.job_by_handle(self.h2))
        self.assertEqual(self.admin(b"cancel job " + self.h2), b"ERR UNKNOWN_JOB\r\n")
        self.assertEqual(self.admin(b"cancel foo bar"), b"ERR UNKNOWN_ERROR\r\n")
        self.assertEqual(
            self.admin(b"cancel job"), b"ERR UNKNOWN_COMMAND Unknown+server+commandcancel\r\n"
        )

    def test_cancel_running_job(self) -> None:
        """
        Cancelling a running job fails it for its clients; the worker's
        later result is dropped without an ERROR.
        """
        self.assertEqual(self.admin(b"cancel job " + self.h3), b"OK\r\n")
        self.worker_conn.send(P.WORK_COMPLETE, self.h3, b"late")
        self.assertEqual(self.worker_conn.packets(), [])

    def test_create_drop_function(self) -> None:
        """
        C{create function} and C{drop function}, with C's replies.
        """
        self.assertEqual(self.admin(b"create function newf"), b"OK\r\n")
        self.assertEqual(self.admin(b"create function newf"), b"OK\r\n")
        self.assertEqual(
            self.admin(b"create function"),
            b"ERR INVALID_ARGUMENTS An+incomplete+set+of+arguments+was+sent+to+this+command"
            b"+create\r\n",
        )
        self.assertEqual(self.admin(b"drop function NEWF"), b"OK\r\n")
        self.assertEqual(self.admin(b"drop function newf"), b"ERR function not found\r\n")
        self.assertEqual(
            self.admin(b"drop function fa"),
            b"ERR there are still connected workers or executing clients\r\n",
        )
        self.assertEqual(
            self.admin(b"drop"),
            b"ERR INVALID_ARGUMENTS An+incomplete+set+of+arguments+was+sent+to+this+command"
            b"+drop\r\n",
        )

    def test_getpid_verbose_version(self) -> None:
        """
        C{getpid}, C{verbose} and C{version} answer C{OK <value>}.
        """
        self.assertEqual(self.admin(b"getpid"), b"OK %d\n" % os.getpid())
        self.assertEqual(self.admin(b"verbose"), b"OK INFO\n")
        self.assertEqual(self.admin(b"version"), b"OK %s\n" % __version__.encode())

    def test_unknown(self) -> None:
        """
        Unknown commands get C's line, the word glued to its text.
        """
        self.assertEqual(
            self.admin(b"bogus"), b"ERR UNKNOWN_COMMAND Unknown+server+commandbogus\r\n"
        )
        self.assertEqual(self.admin(b""), b"ERR UNKNOWN_COMMAND Unknown+server+command\r\n")
        self.assertEqual(
            self.admin(b"a b c d e f"), b"ERR TOO_MANY_ARGS Too+many+arguments+in+one+command\r\n"
        )

    def test_jobs(self) -> None:
        """
        Perl's C{jobs}: function, unique, worker address or C{-}, listeners.
        """
        worker = self.worker_conn.protocol.describe().encode()
        self.assertEqual(
            self.admin(b"jobs"), b"fa\tu1\t-\t1\nfa\tu2\t-\t1\nfb\t\t%s\t0\n.\n" % worker
        )

    def test_clients(self) -> None:
        """
        Perl's C{clients}: each connection's address, then the jobs it
        waits on.
        """
        self.assertEqual(
            self.admin(b"clients"),
            b"%s\n%s\n\tfa\tu1\t-\n\tfa\tu2\t-\n%s\n.\n"
            % (
                self.admin_conn.protocol.describe().encode(),
                self.client.protocol.describe().encode(),
                self.worker_conn.protocol.describe().encode(),
            ),
        )

    def test_reply_in_one_write(self) -> None:
        """
        A reply is written whole at once (gearadmin stops reading after
        5 ms of silence).
        """
        for i in range(100):
            self.client.submit(b"many%d" % i, ptype=P.SUBMIT_JOB_BG)
        self.admin_conn.transport.writes = 0
        self.admin(b"status")
        self.assertEqual(self.admin_conn.transport.writes, 1)


class ShutdownTests(ServerTestMixin, SynchronousTestCase):
    """
    The admin C{shutdown [graceful]} command.
    """

    def setUp(self) -> None:
        self.make_server()
        self.shutdowns: list[bool] = []
        self.server.on_shutdown = lambda: self.shutdowns.append(True)

    def test_immediate(self) -> None:
        """
        C{shutdown} from a local connection answers C{OK} and ends the
        server on the next turn.
        """
        self.assertEqual(self.connect().admin(b"shutdown"), b"OK\n")
        self.assertFalse(self.server.accepting)
        self.clock.advance(0)
        self.assertEqual(self.shutdowns, [True])

    def test_remote_refused(self) -> None:
        """
        By default a remote connection may not shut the server down.
        """
        reply = self.connect(REMOTE).admin(b"shutdown")
        self.assertTrue(reply.startswith(b"ERR PERMISSION_DENIED "))
        self.clock.advance(0)
        self.assertEqual(self.shutdowns, [])

    def test_any(self) -> None:
        """
        With C{admin_shutdown="any"}, remote connections may.
        """
        self.server.settings = attrs.evolve(self.server.settings, admin_shutdown="any")
        self.assertEqual(self.connect(REMOTE).admin(b"shutdown"), b"OK\n")

    def test_never(self) -> None:
        """
        With C{admin_shutdown="never"} the command is unknown, as in C.
        """
        self.server.settings = attrs.evolve(self.server.settings, admin_shutdown="never")
        self.assertEqual(
            self.connect().admin(b"shutdown"),
            b"ERR UNKNOWN_COMMAND Unknown+server+commandshutdown\r\n",
        )

    def test_local_kinds(self) -> None:
        """
        IPv6 loopback and UNIX sockets count as local.
        """
        self.assertEqual(self.connect(LOCAL6).admin(b"shutdown graceful"), b"OK\n")
        self.make_server()
        self.server.on_shutdown = lambda: None
        self.assertEqual(self.connect(UNIX).admin(b"shutdown graceful"), b"OK\n")

    def test_bad_argument(self) -> None:
        """
        Other arguments get Perl's unknown_args line.
        """
        self.assertEqual(
            self.connect().admin(b"shutdown now"),
            b"ERR unknown_args Unknown+arguments+to+server+command\r\n",
        )

    def test_no_action(self) -> None:
        """
        A server with no shutdown action (embedded) refuses the command.
        """
        self.server.on_shutdown = None
        self.assertTrue(self.connect().admin(b"shutdown").startswith(b"ERR NOT_SUPPORTED "))

    def test_graceful_drains(self) -> None:
        """
        C{shutdown graceful} stops listening and accepting, lets queued and
        running jobs finish - new submissions on open connections too - and
        only then ends the server.
        """
        stopped: list[bool] = []
        self.server.stop_listening = lambda: stopped.append(True)
        client = self.connect()
        h1 = client.submit(b"f", ptype=P.SUBMIT_JOB_BG)
        worker = self.worker(b"f")
        worker.grab()
        h2 = client.submit(b"f")
        self.assertEqual(self.connect().admin(b"shutdown graceful"), b"OK\n")
        self.assertEqual(stopped, [True])
        self.assertFalse(self.server.accepting)
        self.clock.advance(1)
        self.assertEqual(self.shutdowns, [])
        worker.send(P.WORK_COMPLETE, h1, b"")
        self.assertEqual(worker.grab()[1][0], h2)
        self.clock.advance(1)
        self.assertEqual(self.shutdowns, [])
        worker.send(P.WORK_COMPLETE, h2, b"done")
        self.assertEqual(client.packets()[-1], (P.WORK_COMPLETE, (h2, b"done")))
        self.clock.advance(0)
        self.assertEqual(self.shutdowns, [True])

    def test_graceful_idle(self) -> None:
        """
        With no job, a graceful shutdown ends the server at once.
        """
        self.assertEqual(self.connect().admin(b"shutdown graceful"), b"OK\n")
        self.clock.advance(0)
        self.assertEqual(self.shutdowns, [True])
