"""
Tests for L{txgearmand.tap} (the command line of C{twistd gearmand}) and
the plugin that exposes it.
"""

from __future__ import annotations

import socket

from twisted.application.service import IServiceMaker
from twisted.internet.testing import MemoryReactorClock
from twisted.plugin import IPlugin, getPlugins
from twisted.python.usage import UsageError
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase

from txgearmand import _log, tap
from txgearmand.server import JobServer


def options(*argv: str) -> tap.GearmandOptions:
    """
    Parse a command line.
    """
    o = tap.GearmandOptions()
    o.parseOptions(list(argv))
    return o


class OptionsTests(SynchronousTestCase):
    """
    Tests for L{tap.Options}.
    """

    def test_defaults(self) -> None:
        """
        With no option: port 4730, Gearman::Server's wake-up defaults,
        unlimited retries, 64 MiB packets, milliseconds, local shutdown.
        """
        o = options()
        self.assertEqual(o["ports"], ["tcp:4730"])
        self.assertEqual(o["wakeup"], 3)
        self.assertEqual(o["wakeup-delay"], 0.1)
        self.assertEqual(o["job-retries"], 0)
        self.assertEqual(o["job-handle-prefix"], "H:" + socket.gethostname())
        self.assertEqual(o["max-packet-size"], 64 * 1024 * 1024)
        self.assertEqual(o["timeout-unit"], "milliseconds")
        self.assertEqual(o["admin-shutdown"], "local")
        self.assertEqual(o["verbose"], "INFO")
        self.assertFalse(o["exceptions"])
        self.assertEqual(o["max-queue"], {})
        self.assertEqual(o["queue"], "sqlite:gearmand.sqlite")

    def test_ports(self) -> None:
        """
        C{--port} takes a number or an endpoint string, and repeats.
        """
        o = options(
            "--port=4731",
            "--port",
            "tcp:4732:interface=127.0.0.1",
            "-p",
            "unix:/tmp/g.sock",
        )
        self.assertEqual(
            o["ports"], ["tcp:4731", "tcp:4732:interface=127.0.0.1", "unix:/tmp/g.sock"]
        )

    def test_values(self) -> None:
        """
        Every option reaches its key.
        """
        o = options(
            "--wakeup=-1",
            "--wakeup-delay=0",
            "-j",
            "5",
            "--job-handle-prefix=H:box",
            "--max-queue=f=3",
            "--max-queue",
            "g=1,2,3",
            "--max-packet-size=1K",
            "--exceptions",
            "--timeout-unit=s",
            "--admin-shutdown=any",
            "--verbose=debug",
        )
        self.assertEqual(o["wakeup"], -1)
        self.assertEqual(o["wakeup-delay"], 0)
        self.assertEqual(o["job-retries"], 5)
        self.assertEqual(o["job-handle-prefix"], "H:box")
        self.assertEqual(o["max-queue"], {b"f": 3, b"g": (1, 2, 3)})
        self.assertEqual(o["max-packet-size"], 1024)
        self.assertTrue(o["exceptions"])
        self.assertEqual(o["timeout-unit"], "seconds")
        self.assertEqual(o["admin-shutdown"], "any")
        self.assertEqual(o["verbose"], "DEBUG")

    def test_bad_values(self) -> None:
        """
        Bad values are refused with a message for the user.
        """
        for argv in [
            ["--wakeup=-2"],
            ["--wakeup=many"],
            ["--wakeup-delay=-0.5"],
            ["--job-retries=-1"],
            ["--max-queue=f"],
            ["--max-queue=f=x"],
            ["--max-queue=f=1,2"],
            ["--max-queue==3"],
            ["--max-packet-size=huge"],
            ["--max-packet-size=0"],
            ["--timeout-unit=hours"],
            ["--admin-shutdown=maybe"],
            ["--verbose=LOUD"],
            ["--job-handle-prefix=" + "x" * 60],
            ["--queue=redis://x"],
            ["--queue=sqlite:"],
        ]:
            self.assertRaises(UsageError, options, *argv)

    def test_sizes(self) -> None:
        """
        Sizes take K, M and G suffixes.
        """
        self.assertEqual(tap.parse_size("100"), 100)
        self.assertEqual(tap.parse_size("2k"), 2048)
        self.assertEqual(tap.parse_size("64MiB"), 64 * 1024 * 1024)
        self.assertEqual(tap.parse_size("1G"), 1024**3)
        self.assertRaises(ValueError, tap.parse_size, "1T")


class MakeServiceTests(SynchronousTestCase):
    """
    Tests for L{tap.makeService}.
    """

    def setUp(self) -> None:
        self.addCleanup(_log.set_level, "INFO")

    def test_service_tree(self) -> None:
        """
        The service holds a configured L{JobServer} and one listening
        service per port, each bound on start.
        """
        reactor = MemoryReactorClock()
        service = tap.makeService(
            options(
                "--port=4731",
                "--port=tcp6:4732:interface=\\:\\:1",
                "--port=unix:/tmp/txg-test.sock",
                "--wakeup=7",
                "--wakeup-delay=2",
                "--job-retries=3",
                "--job-handle-prefix=H:x",
                "--max-queue=f=2",
                "--max-packet-size=4K",
                "--exceptions",
                "--timeout-unit=seconds",
                "--admin-shutdown=never",
                "--verbose=WARNING",
                "--queue=memory",
            ),
            reactor,
        )
        js = service.job_server
        self.assertIsInstance(js, JobServer)
        s = js.settings
        self.assertEqual(
            (s.wakeup, s.wakeup_delay, s.job_retries, s.job_handle_prefix),
            (7, 2.0, 3, b"H:x"),
        )
        self.assertEqual(js.max_queue(b"f"), (2, 2, 2))
        self.assertEqual(s.max_packet_size, 4096)
        self.assertTrue(s.exceptions)
        self.assertEqual(s.timeout_unit, "seconds")
        self.assertEqual(s.admin_shutdown, "never")
        self.assertEqual(s.verbose, "WARNING")
        self.assertEqual(js.on_shutdown, reactor.stop)
        service.privilegedStartService()
        service.startService()
        self.assertEqual([p[0] for p in reactor.tcpServers], [4731, 4732])
        self.assertEqual(reactor.tcpServers[1][3], "::1")
        self.assertEqual(reactor.unixServers[0][0], "/tmp/txg-test.sock")
        self.assertTrue(js.running)

    def test_durable_by_default(self) -> None:
        """
        By default the job server keeps background jobs in
        C{gearmand.sqlite} in the working directory; C{--queue memory}
        opts out.
        """
        import os

        from txgearmand.store.sqlite import SQLiteStore

        workdir = self.mktemp()
        os.makedirs(workdir)
        self.addCleanup(os.chdir, os.getcwd())
        os.chdir(workdir)
        service = tap.makeService(options(), MemoryReactorClock())
        store = service.job_server.store
        assert isinstance(store, SQLiteStore)
        self.assertEqual(store.path, "gearmand.sqlite")
        # Made when the store opens (as the user twistd runs it as), not
        # when the ports are bound and the store checked.
        self.assertFalse(os.path.exists("gearmand.sqlite"))
        service.privilegedStartService()
        self.assertFalse(os.path.exists("gearmand.sqlite"))
        memory = tap.makeService(options("--queue=memory"), MemoryReactorClock())
        self.assertIsNone(memory.job_server.store)

    def test_node_and_takeover(self) -> None:
        """
        C{--node} and C{--takeover-after} reach a PostgreSQL store; the
        node's default is the host's name and the first port.
        """
        import socket

        from txgearmand.store.postgresql import PostgreSQLStore

        url = "--queue=postgresql://u@h/db"
        service = tap.makeService(
            options("--port=4731", url, "--node=n1", "--takeover-after=3"), MemoryReactorClock()
        )
        store = service.job_server.store
        assert isinstance(store, PostgreSQLStore)
        self.assertEqual((store.node, store.takeover_after), ("n1", 3.0))
        service = tap.makeService(options("--port=4731", url), MemoryReactorClock())
        store = service.job_server.store
        assert isinstance(store, PostgreSQLStore)
        self.assertEqual(store.node, socket.gethostname() + "/tcp:4731")
        self.assertEqual(store.takeover_after, 10.0)
        for bad in ("0", "-1", "soon"):
            with self.assertRaises(UsageError) as raised:
                options(f"--takeover-after={bad}")
            self.assertIn("--takeover-after", str(raised.exception))

    def test_store_cannot_open(self) -> None:
        """
        A store that cannot be opened stops the start with a message.
        """
        service = tap.makeService(
            options("--queue=sqlite:/nonexistent/directory/x.sqlite"), MemoryReactorClock()
        )
        with self.assertRaises(tap.StartFailed) as caught:
            service.privilegedStartService()
        self.assertIn("cannot open the job store", str(caught.exception))
        self.assertEqual(caught.exception.code, str(caught.exception))

    def test_stop_listening_first(self) -> None:
        """
        On stop, the ports stop before the job server.
        """
        reactor = MemoryReactorClock()
        service = tap.makeService(options("--port=4731", "--queue=memory"), reactor)
        order: list[str] = []
        (port,) = [s for s in service if s is not service.job_server]
        real_port_stop = port.stopService
        real_js_stop = service.job_server.stopService

        def port_stop() -> object:
            order.append("port")
            return real_port_stop()

        def js_stop() -> object:
            order.append("job server")
            return real_js_stop()

        self.patch(port, "stopService", port_stop)
        self.patch(service.job_server, "stopService", js_stop)
        service.privilegedStartService()
        service.startService()
        self.successResultOf(service.stopService())
        self.assertEqual(order, ["port", "job server"])

    def test_graceful_stops_ports_once(self) -> None:
        """
        A graceful admin shutdown stops the ports; the later service stop
        does not stop them again.
        """
        reactor = MemoryReactorClock()
        service = tap.makeService(options("--port=4731", "--queue=memory"), reactor)
        service.privilegedStartService()
        service.startService()
        (port,) = [s for s in service if s is not service.job_server]
        calls: list[int] = []
        real = port.stopService

        def counting_stop() -> object:
            calls.append(1)
            return real()

        self.patch(port, "stopService", counting_stop)
        service.job_server.shutdown(graceful=True)
        self.assertEqual(calls, [1])
        self.assertFalse(port.running)
        self.successResultOf(service.stopService())
        self.assertEqual(calls, [1])

    def test_verbose_filters_logs(self) -> None:
        """
        C{--verbose} sets the level txgearmand logs at.
        """
        from twisted.logger import LogLevel

        tap.makeService(options("--verbose=ERROR", "--queue=memory"), MemoryReactorClock())
        self.assertEqual(_log._predicate.logLevelForNamespace("txgearmand.x"), LogLevel.error)


class BindFailureTests(TestCase):
    """
    A port that cannot be bound fails the start loudly.
    """

    def test_port_in_use(self) -> None:
        """
        Starting on a port already in use fails the start, naming it.
        """
        from twisted.internet import reactor

        taken = socket.socket()
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        self.addCleanup(taken.close)
        port = taken.getsockname()[1]
        description = f"tcp:{port}:interface=127.0.0.1"
        service = tap.makeService(options(f"--port={description}", "--queue=memory"), reactor)
        failure = self.assertRaises(tap.StartFailed, service.privilegedStartService)
        self.assertIn(f"cannot listen on {description}", str(failure))


class PluginTests(SynchronousTestCase):
    """
    The twistd plugin.
    """

    def test_discovered(self) -> None:
        """
        twistd finds a C{gearmand} service maker that builds with
        L{tap.makeService} and L{tap.Options}.
        """
        makers = [m for m in getPlugins(IServiceMaker) if m.tapname == "gearmand"]
        self.assertEqual(len(makers), 1)
        (maker,) = makers
        self.assertTrue(IPlugin.providedBy(maker))
        self.assertTrue(IServiceMaker.providedBy(maker))
        self.assertIs(maker.options, tap.Options)
        self.assertIs(maker.makeService, tap.makeService)


class CommandLineTests(SynchronousTestCase):
    """
    Small corrections to the command line.
    """

    def test_version(self) -> None:
        """
        C{--version} prints txgearmand's version, Twisted's and Python's,
        and exits 0.
        """
        import contextlib
        import io
        import sys

        import twisted
        from txgearmand import __version__

        out = io.StringIO()
        with contextlib.redirect_stdout(out), self.assertRaises(SystemExit) as raised:
            options("--version")
        self.assertEqual(raised.exception.code, 0)
        text = out.getvalue()
        self.assertIn(f"txgearmand {__version__}", text)
        self.assertIn(f"Twisted {twisted.__version__}", text)
        self.assertIn(sys.version.split()[0], text)

    def test_handle_prefix_without_spaces(self) -> None:
        """
        A handle prefix with whitespace (which would break C{cancel job})
        is refused, naming the option.
        """
        for prefix in ("a b", "tab\there", "nl\n"):
            with self.assertRaises(UsageError) as raised:
                options(f"--job-handle-prefix={prefix}")
            self.assertIn("--job-handle-prefix", str(raised.exception))

    def test_help_has_no_whitespace_runs(self) -> None:
        """
        The help text's descriptions have single spaces (the option
        methods' docstrings are not shown with their indentation).
        """
        import re

        text = str(tap.GearmandOptions())
        for line in text.splitlines():
            description = re.sub(r"^\s*(-\w, )?--[\w-]+=?\s*", "", line).strip()
            self.assertNotIn("   ", description, line)

    def test_max_queue_not_negative(self) -> None:
        """
        A negative max-queue limit is refused, not taken as none.
        """
        for value in ("f=-1", "f=1,-2,3"):
            with self.assertRaises(UsageError) as raised:
                options(f"--max-queue={value}")
            self.assertIn("--max-queue", str(raised.exception))


class DaemonTests(SynchronousTestCase):
    """
    C{twistd gearmand} as a daemon (without C{-n}).
    """

    def test_getpid_is_the_daemons(self) -> None:
        """
        The admin C{getpid} answers the pid of the serving process (the one
        in the pid file), not the one from before the fork.
        """
        import os
        import sys
        import time
        from pathlib import Path

        from txgearmand.test import _process

        workdir = Path(self.mktemp()).resolve()
        workdir.mkdir(parents=True)
        port = _process.free_port()
        pidfile = workdir / "twistd.pid"
        argv = [
            sys.executable,
            "-c",
            _process._TWISTD,
            f"--pidfile={pidfile}",
            f"--logfile={workdir / 'twistd.log'}",
            "gearmand",
            f"--port=tcp:{port}:interface=127.0.0.1",
            "--queue=memory",
        ]
        _process.run(argv, timeout=60)

        def stop() -> None:
            if pidfile.exists():
                try:
                    os.kill(int(pidfile.read_text()), 15)
                except (OSError, ValueError):
                    pass

        self.addCleanup(stop)
        deadline = time.monotonic() + 30
        reply = b""
        while time.monotonic() < deadline:
            try:
                reply = _process.admin(port, b"getpid")
                break
            except OSError:
                time.sleep(0.1)
        self.assertTrue(pidfile.exists())
        daemon = int(pidfile.read_text())
        self.assertEqual(reply, b"OK %d\n" % daemon)


class SystemdUnitTests(SynchronousTestCase):
    """
    The sample systemd units in C{docs/systemd}.
    """

    def test_service_options(self) -> None:
        """
        The service's command line is one C{twistd gearmand} accepts, and
        it serves the socket systemd hands it.
        """
        import shlex
        from pathlib import Path

        import txgearmand

        unit = Path(txgearmand.__file__).resolve().parent.parent / "docs/systemd/txgearmand.service"
        if not unit.exists():
            self.skipTest("docs/systemd is not here (an installed copy)")
        [line] = [x for x in unit.read_text().splitlines() if x.startswith("ExecStart=")]
        argv = shlex.split(line.split("=", 1)[1])
        self.assertTrue(argv[0].endswith("/twistd"))
        self.assertIn("--nodaemon", argv)
        arguments = argv[argv.index("gearmand") + 1 :]
        # The systemd: endpoint needs the socket systemd hands over, which
        # this test has not: check the rest with a plain port.
        self.assertIn("--port=systemd:domain=INET6:index=0", arguments)
        arguments.remove("--port=systemd:domain=INET6:index=0")
        o = options(*arguments, "--port=tcp:0")
        self.assertEqual(o["ports"], ["tcp:0"])
        self.assertTrue(o["queue"].startswith("sqlite:/var/lib/txgearmand/"))
        socket_unit = unit.with_name("txgearmand.socket").read_text()
        self.assertIn("ListenStream=4730", socket_unit)


class StartFailureTests(SynchronousTestCase):
    """
    A bad option, as an operator meets it: C{twistd gearmand} as a process.
    """

    def setUp(self) -> None:
        from pathlib import Path

        self.workdir = Path(self.mktemp()).resolve()
        self.workdir.mkdir(parents=True)

    def twistd(self, *gearmand: str, daemon: bool = False) -> str:
        """
        Run C{twistd -n gearmand} (or, with C{daemon}, C{twistd gearmand})
        with these options in the work directory, where it must fail: check
        it exits 1 without a traceback and leaves no file behind; return
        what it printed.
        """
        import subprocess
        import sys

        from txgearmand.test import _process

        twistd = ["--pidfile=twistd.pid"] if daemon else ["-n", "--pidfile="]
        result = subprocess.run(
            [sys.executable, "-c", _process._TWISTD, *twistd, "gearmand", *gearmand],
            cwd=self.workdir,
            env=_process.environment(),
            capture_output=True,
            timeout=60,
            check=False,
        )
        output = (result.stdout + result.stderr).decode()
        self.assertEqual(result.returncode, 1, output)
        self.assertNotIn("Traceback", output)
        self.assertEqual(list(self.workdir.iterdir()), [], gearmand)
        return output

    def test_bad_options(self) -> None:
        """
        Each bad option ends the start with one line naming it, exit
        status 1, no help text, no traceback, and no store file.
        """
        cases = [
            ("--wakeup=abc", "--wakeup"),
            ("--read-timeout=soon", "--read-timeout"),
            ("--max-connections=-1", "--max-connections"),
            ("--max-memory=lots", "--max-memory"),
            ("--job-handle-prefix=a b", "--job-handle-prefix"),
            ("--max-queue=f=-2", "--max-queue"),
            ("--bogus", "--bogus"),
        ]
        for option, name in cases:
            output = self.twistd(option)
            self.assertEqual(len(output.strip().splitlines()), 1, output)
            self.assertIn(name, output)

    def test_store_password_not_echoed(self) -> None:
        """
        A store that cannot be opened ends the start with one line that
        names it without its password.
        """
        from txgearmand.test import _process

        output = self.twistd(
            f"--port=tcp:{_process.free_port()}:interface=127.0.0.1",
            "--queue=postgresql://bob:hunter2@127.0.0.1:1/jobs",
        )
        self.assertNotIn("hunter2", output)
        errors = [line for line in output.splitlines() if "cannot open the job store" in line]
        self.assertEqual(len(errors), 1, output)
        self.assertIn("postgresql://bob:***@127.0.0.1:1/jobs", errors[0])

    def test_bad_endpoints(self) -> None:
        """
        So does each endpoint that cannot be listened on: unknown, out of
        range, systemd's outside socket activation, TLS without its files,
        a port in use; and no store file is left.
        """
        taken = socket.socket()
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        self.addCleanup(taken.close)
        in_use = f"tcp:{taken.getsockname()[1]}:interface=127.0.0.1"
        for port in ["abc", "tcp:99999", "systemd:domain=INET:index=0", "ssl:4731", in_use]:
            output = self.twistd(f"--port={port}", "--queue=sqlite:jobs.sqlite")
            errors = [line for line in output.splitlines() if port in line]
            self.assertEqual(len(errors), 1, output)

    def test_daemon(self) -> None:
        """
        As a daemon (without C{-n}), a port in use, an address not on this
        host, a UNIX socket in no directory and a store that cannot be
        opened each end the start with the same one whole line, from the
        process that was started, before it daemonizes: no "An error has
        occurred" cut to 100 bytes, no pid, log or store file.
        """
        from txgearmand.test import _process

        taken = socket.socket()
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        self.addCleanup(taken.close)
        free = f"tcp:{_process.free_port()}:interface=127.0.0.1"
        cases = [
            (
                [f"--port=tcp:{taken.getsockname()[1]}:interface=127.0.0.1"],
                "Address already in use",
            ),
            (["--port=tcp:4799:interface=192.0.2.1"], "Cannot assign requested address"),
            (["--port=unix:/nonexistent/directory/g.sock"], "no such directory: /nonexistent"),
            ([f"--port={free}", "--queue=sqlite:/nonexistent/directory/x.sqlite"], "job store"),
        ]
        for gearmand, reason in cases:
            output = self.twistd(*gearmand, daemon=True)
            self.assertEqual(len(output.strip().splitlines()), 1, output)
            self.assertTrue(output.startswith("twistd gearmand: cannot "), output)
            self.assertIn(reason, output)
            self.assertNotIn("An error has occurred", output)


class DroppedPrivilegesTests(SynchronousTestCase):
    """
    C{twistd --uid}: the store is made by the user the server runs as.
    """

    def test_uid(self) -> None:
        """
        Started as root with C{--uid=nobody}, a new SQLite store is made
        by C{nobody} (the start-up check leaves no root-owned file), so
        background jobs are stored rather than refused.
        """
        import os
        import pwd
        from pathlib import Path

        from txgearmand.test import _process
        from txgearmand.wire import PacketType as P

        if os.getuid() != 0:
            raise SkipTest("needs root, to drop privileges")
        try:
            nobody = pwd.getpwnam("nobody")
        except KeyError:
            raise SkipTest("no user nobody") from None
        import shutil
        import tempfile

        # Outside trial's folder, which others cannot search.
        workdir = Path(tempfile.mkdtemp(prefix="txgearmand-uid-"))
        self.addCleanup(shutil.rmtree, workdir, True)
        workdir.chmod(0o755)
        store_dir = workdir / "store"
        store_dir.mkdir()
        store_dir.chmod(0o777)
        for parent in [workdir, *workdir.parents]:
            if not os.stat(parent).st_mode & 0o001:
                raise SkipTest(f"{parent} is not searchable by others")
        server = _process.twistd_gearmand(
            workdir,
            f"--queue=sqlite:{store_dir / 'jobs.sqlite'}",
            twistd=[f"--uid={nobody.pw_uid}", f"--gid={nobody.pw_gid}"],
        )
        server.start()
        self.addCleanup(server.stop)
        conn = _process.PacketConnection(server.port)
        self.addCleanup(conn.sock.close)
        conn.send(P.SUBMIT_JOB_BG, b"f", b"", b"x")
        self.assertTrue(conn.expect(P.JOB_CREATED).startswith(b"H:"))
        self.assertEqual((store_dir / "jobs.sqlite").stat().st_uid, nobody.pw_uid)


class StartLogTests(SynchronousTestCase):
    """
    What a good start logs first.
    """

    def test_first_lines(self) -> None:
        """
        The version, every address as bound, and the store (without its
        password).
        """
        from typing import Any, cast

        from twisted.logger import ILogObserver, formatEvent, globalLogPublisher

        from txgearmand import __version__

        events: list[dict[str, Any]] = []
        observer = cast(ILogObserver, events.append)
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)
        service = tap.makeService(
            options("--port=tcp:4731:interface=127.0.0.1", "--queue=memory"),
            MemoryReactorClock(),
        )
        service.store_url = "postgresql://gearman:secret@db/jobs"
        from txgearmand import store

        self.patch(store, "check_store_url", lambda url, early=False: None)
        service.privilegedStartService()
        text = "\n".join(formatEvent(e) for e in events)
        self.assertIn(f"txgearmand {__version__}", text)
        # (A memory reactor's port says it is bound to every interface.)
        self.assertRegex(text, r"Listening on [0-9.]+:4731 \(tcp:4731:interface=127.0.0.1\)")
        self.assertIn("Job store: postgresql://gearman:***@db/jobs", text)
        self.assertNotIn("secret", text)
