"""
End-to-end tests: a real C{twistd -n gearmand} process on a free loopback
port, driven by real Gearman clients and workers - C{gearman} and
C{gearadmin} (Debian's gearman-tools, libgearman), Perl's Gearman::Client
and Gearman::Worker (libgearman-client-perl) and Python's C{gear}.

Each test class skips, saying why, when its client is not installed.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

from twisted.trial.unittest import SkipTest, SynchronousTestCase

from txgearmand import __version__
from txgearmand.test import _process
from txgearmand.test._process import admin, request, run, spawn
from txgearmand.wire import PacketType as P
from txgearmand.wire import encode_request

try:
    import gear
except ImportError:  # pragma: no cover
    gear = None


def wait_until(predicate: Callable[[], bool], timeout: float = 15.0, what: str = "") -> None:
    """
    Poll until C{predicate()} is true.

    @raise AssertionError: when the time runs out.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what or predicate}")


def status(port: int) -> dict[bytes, tuple[int, int, int]]:
    """
    The admin C{status} as a dict: function -> (total, running, workers).
    """
    out = {}
    for line in admin(port, b"status").splitlines():
        if line == b".":
            break
        name, total, running, workers = line.split(b"\t")
        out[name] = (int(total), int(running), int(workers))
    return out


class ServerMixin:
    """
    Starts a C{twistd gearmand} for each test.
    """

    server_options: tuple[str, ...] = ()

    def start_server(self, *options: str) -> _process.Server:
        assert isinstance(self, SynchronousTestCase)
        self.workdir = Path(self.mktemp()).resolve()
        self.workdir.mkdir(parents=True)
        server = _process.twistd_gearmand(self.workdir, *(self.server_options + options))
        self.addCleanup(server.kill)
        server.start()
        self.server = server
        self.port = server.port
        return server

    def spawn(self, argv: list[str], name: str = "helper") -> subprocess.Popen[bytes]:
        assert isinstance(self, SynchronousTestCase)
        process = spawn(argv, self.workdir / f"{name}.log")
        self.addCleanup(_process.reap, process)
        return process

    def helper_log(self, name: str) -> str:
        try:
            return (self.workdir / f"{name}.log").read_text(errors="replace")
        except OSError:
            return ""


class TwistdTests(ServerMixin, SynchronousTestCase):
    """
    The server process itself.
    """

    def test_sigterm_stops_cleanly(self) -> None:
        """
        SIGTERM stops the server cleanly: its services stop and it exits
        (twistd reports the signal as its exit status).
        """
        server = self.start_server()
        self.assertEqual(
            request(self.port, encode_request(P.ECHO_REQ, b"hi"), 1), [(P.ECHO_RES, b"hi")]
        )
        self.assertIn(server.stop(), (0, -signal.SIGTERM), server.log())
        log = server.log()
        self.assertIn("Server Shut Down.", log)
        self.assertNotIn("Traceback", log)

    def test_admin_shutdown(self) -> None:
        """
        The admin C{shutdown} from loopback answers C{OK} and the process
        exits with code 0.
        """
        server = self.start_server()
        self.assertEqual(admin(self.port, b"shutdown"), b"OK\n")
        self.assertEqual(server.wait(15), 0, server.log())

    def test_graceful_shutdown_drains(self) -> None:
        """
        C{shutdown graceful} closes the port at once but lets open
        connections finish the queued jobs before the process exits.
        """
        server = self.start_server()
        worker = socket.create_connection(("127.0.0.1", self.port), timeout=10)
        self.addCleanup(worker.close)
        worker.sendall(encode_request(P.CAN_DO, b"drain"))
        request(self.port, encode_request(P.SUBMIT_JOB_BG, b"drain", b"", b"x"), 1)
        self.assertEqual(admin(self.port, b"shutdown graceful"), b"OK\n")

        def refused() -> bool:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                    s.sendall(b"version\r\n")
                    return s.recv(10) == b""
            except OSError:
                return True

        wait_until(refused, what="the port to close")
        self.assertIsNone(server.process.poll() if server.process else 0)
        worker.sendall(encode_request(P.GRAB_JOB))
        data = b""
        while not data.endswith(b"x"):
            chunk = worker.recv(1000)
            self.assertTrue(chunk, "the server closed the worker's connection")
            data += chunk
        handle = data[12:].split(b"\0")[0]
        worker.sendall(encode_request(P.WORK_COMPLETE, handle, b"done"))
        self.assertEqual(server.wait(15), 0, server.log())

    def test_port_in_use(self) -> None:
        """
        A port that cannot be bound fails the start: the process exits
        non-zero and says why.
        """
        self.workdir = Path(self.mktemp()).resolve()
        self.workdir.mkdir(parents=True)
        taken = socket.socket()
        self.addCleanup(taken.close)
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        server = _process.twistd_gearmand(self.workdir, f"--port=tcp:{port}:interface=127.0.0.1")
        self.addCleanup(server.kill)
        with open(server.log_path, "ab") as log:
            code = subprocess.run(
                server.argv,
                cwd=self.workdir,
                env=_process.environment(),
                stdout=log,
                stderr=subprocess.STDOUT,
                timeout=60,
                check=False,
            ).returncode
        self.assertNotEqual(code, 0)
        self.assertIn("Address already in use", server.log())

    def test_unix_and_ipv6(self) -> None:
        """
        C{--port} takes endpoint strings and repeats: the same server
        answers on TCP over IPv6 loopback and on a UNIX socket.
        """
        path = Path(self.mktemp()).resolve()
        path.parent.mkdir(parents=True, exist_ok=True)
        options = [f"--port=unix:{path}"]
        ipv6 = socket.has_ipv6
        if ipv6:
            try:
                with socket.socket(socket.AF_INET6) as s:
                    s.bind(("::1", 0))
                    port6 = s.getsockname()[1]
            except OSError:
                ipv6 = False
        if ipv6:
            options.append(f"--port=tcp6:{port6}:interface=\\:\\:1")
        self.start_server(*options)
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(10)
            s.connect(str(path))
            s.sendall(b"workers\r\n")
            self.assertIn(b" unix - :\n", s.recv(1000))
        if ipv6:
            with socket.create_connection(("::1", port6), timeout=10) as s:
                s.sendall(b"version\r\n")
                self.assertEqual(s.recv(100), b"OK %s\n" % __version__.encode())

    def test_tls(self) -> None:
        """
        C{--port=ssl:...} serves the protocol over TLS, as Twisted's
        endpoint gives it.
        """
        try:
            import OpenSSL  # noqa: F401
            from cryptography import x509
            from cryptography.hazmat.primitives import hashes, serialization
            from cryptography.hazmat.primitives.asymmetric import ec
            from cryptography.x509.oid import NameOID
        except ImportError:
            raise SkipTest("TLS needs pyOpenSSL (pip install 'Twisted[tls]')") from None
        import datetime
        import ssl

        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
        now = datetime.datetime.now(datetime.timezone.utc)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .sign(key, hashes.SHA256())
        )
        pem = Path(self.mktemp()).resolve()
        pem.parent.mkdir(parents=True, exist_ok=True)
        pem.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
            + cert.public_bytes(serialization.Encoding.PEM)
        )
        tls_port = _process.free_port()
        self.start_server(f"--port=ssl:{tls_port}:interface=127.0.0.1:privateKey={pem}")
        context = ssl.create_default_context(cafile=None)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        with socket.create_connection(("127.0.0.1", tls_port), timeout=10) as raw:
            with context.wrap_socket(raw) as s:
                s.sendall(encode_request(P.ECHO_REQ, b"secret"))
                data = b""
                while len(data) < 18:
                    chunk = s.recv(100)
                    self.assertTrue(chunk)
                    data += chunk
                self.assertEqual(data[12:], b"secret")

    def test_bad_input_hurts_nobody(self) -> None:
        """
        A connection sending garbage is closed; the jobs and connections of
        others are untouched.
        """
        self.start_server()
        keeper = socket.create_connection(("127.0.0.1", self.port), timeout=10)
        self.addCleanup(keeper.close)
        keeper.sendall(encode_request(P.SUBMIT_JOB, b"kept", b"", b"x"))
        self.assertEqual(keeper.recv(100)[4:8], (P.JOB_CREATED).to_bytes(4, "big"))
        for garbage in (b"\0XXX" + b"\0" * 20, b"\0REQ\0\0\0\x07\xff\xff\xff\xff", os.urandom(300)):
            with socket.create_connection(("127.0.0.1", self.port), timeout=10) as s:
                s.sendall(garbage)
                s.settimeout(5)
                try:
                    while s.recv(4096):
                        pass
                except (TimeoutError, socket.timeout, ConnectionResetError):
                    pass
        self.assertEqual(status(self.port)[b"kept"], (1, 0, 0))
        keeper.sendall(encode_request(P.ECHO_REQ, b"alive"))
        self.assertEqual(keeper.recv(100)[12:], b"alive")


class GearmanToolsTests(ServerMixin, SynchronousTestCase):
    """
    C{gearman} and C{gearadmin} from Debian's gearman-tools (libgearman).
    """

    def setUp(self) -> None:
        for tool in ("gearman", "gearadmin"):
            if shutil.which(tool) is None:
                raise SkipTest(f"{tool} is not installed (Debian package gearman-tools)")
        self.start_server()

    def gearman(self, *args: str, input: bytes | None = None) -> bytes:
        return run(
            ["gearman", "-h", "127.0.0.1", "-p", str(self.port), *args], input=input, timeout=60
        )

    def gearadmin(self, *args: str) -> bytes:
        return run(["gearadmin", "-h", "127.0.0.1", "-p", str(self.port), *args], timeout=60)

    def libgearman_worker(
        self, function: str, count: int, *command: str, wait: bool = True
    ) -> None:
        self.spawn(
            [
                "gearman",
                "-h",
                "127.0.0.1",
                "-p",
                str(self.port),
                "-w",
                "-c",
                str(count),
                "-f",
                function,
                "--",
                *command,
            ],
            name=f"worker-{function}",
        )
        if not wait:
            return
        wait_until(
            lambda: status(self.port).get(function.encode(), (0, 0, 0))[2] >= 1,
            what=f"a worker for {function}",
        )

    def test_foreground(self) -> None:
        """
        A foreground job from the C{gearman} client is done by a
        C{gearman -w} worker (which grabs with GRAB_JOB_ALL) and its
        result printed.
        """
        self.libgearman_worker("rev", 2, "rev")
        self.assertEqual(self.gearman("-f", "rev", "hello world"), b"dlrow olleh")
        self.assertEqual(self.gearman("-I", "-f", "rev", "high"), b"hgih")

    def test_background_priorities(self) -> None:
        """
        Background jobs wait for a worker, which then does them high
        priority first, low last.
        """
        out = self.workdir / "order.txt"
        self.gearman("-b", "-L", "-f", "prio", "low\n")
        self.gearman("-b", "-f", "prio", "normal\n")
        self.gearman("-b", "-I", "-f", "prio", "high\n")
        self.assertEqual(status(self.port)[b"prio"], (3, 0, 0))
        self.assertEqual(self.gearadmin("--priority-status"), b"prio\t1\t1\t1\t0\n.\n")
        self.libgearman_worker("prio", 3, "sh", "-c", f"cat >> {out}", wait=False)
        wait_until(lambda: out.exists() and out.read_bytes().count(b"\n") == 3, what="3 jobs")
        self.assertEqual(out.read_bytes(), b"high\nnormal\nlow\n")

    def test_gearadmin(self) -> None:
        """
        gearadmin's commands get answers it understands.
        """
        self.gearman("-b", "-u", "u1", "-f", "adm", "one")
        self.gearman("-b", "-u", "u2", "-f", "adm", "two")
        self.assertEqual(self.gearadmin("--status"), b"adm\t2\t0\t0\n.\n")
        jobs = self.gearadmin("--show-jobs").splitlines()
        self.assertEqual(len(jobs), 3)
        self.assertEqual(jobs[-1], b".")
        handles = [line.split(b"\t")[0] for line in jobs[:-1]]
        for line in jobs[:-1]:
            self.assertEqual(line.split(b"\t")[1:], [b"0", b"0", b"1"])
        self.assertEqual(self.gearadmin("--show-unique-jobs"), b"u1\nu2\n.\n")
        self.assertEqual(self.gearadmin("--cancel-job", handles[0].decode()), b"OK\n")
        self.assertEqual(self.gearadmin("--status"), b"adm\t1\t0\t0\n.\n")
        assert self.server.process is not None
        self.assertEqual(self.gearadmin("--getpid"), b"%d\n" % self.server.process.pid)
        self.assertEqual(self.gearadmin("--server-version"), __version__.encode() + b"\n")
        self.assertEqual(self.gearadmin("--server-verbose"), b"INFO\n")
        self.assertEqual(self.gearadmin("--create-function", "made"), b"OK\n")
        self.assertIn(b"made\t0\t0\t0\n", self.gearadmin("--status"))
        self.assertEqual(self.gearadmin("--drop-function", "made"), b"OK\n")
        self.assertNotIn(b"made", self.gearadmin("--status"))

    def test_workers_listing(self) -> None:
        """
        gearadmin --workers lists the worker with its function.
        """
        self.libgearman_worker("listed", 1, "cat")
        lines = self.gearadmin("--workers").splitlines()
        self.assertEqual(lines[-1], b".")
        self.assertTrue(
            any(line.endswith(b" : listed") for line in lines),
            lines,
        )


_PERL_WORKER = r"""
use strict; use warnings;
use Gearman::Worker;
my ($port, $countfile) = @ARGV;
my $w = Gearman::Worker->new(job_servers => ["127.0.0.1:$port"]);
$w->register_function(reverse => sub { scalar reverse $_[0]->arg });
$w->register_function(boom => sub { die "kaboom\n" });
$w->register_function(slow => 1, sub { sleep 3; "slow" });
$w->register_function(progress => sub { $_[0]->set_status(1, 2); "done" });
$w->register_function(count => sub {
    open(my $fh, ">>", $countfile) or die; print $fh $_[0]->arg, "\n"; close $fh;
    sleep 1; "counted " . $_[0]->arg });
$w->work(stop_if => sub { 0 });
"""

_PERL_CLIENT = r"""
use strict; use warnings;
use Gearman::Client;
$| = 1;
my ($port, $what) = @ARGV;
my $c = Gearman::Client->new(job_servers => ["127.0.0.1:$port"], exceptions => 1);
sub res { my $r = shift; defined $r ? $$r : "undef" }
if ($what eq "basic") {
    print "reverse: ", res($c->do_task(reverse => "hello")), "\n";
    print "high: ", res($c->do_task(reverse => "high", {priority => "high"})), "\n";
    print "low: ", res($c->do_task(reverse => "low", {priority => "low"})), "\n";
    my $got = "none";
    my $r = $c->do_task(boom => "x", {
        on_fail => sub { $got = "fail" }, on_exception => sub { $got = "exception" } });
    print "boom: ", res($r), " $got\n";
    my @st;
    $r = $c->do_task(progress => "p", {on_status => sub { @st = @_ }});
    print "progress: ", res($r), " @st\n";
    print "after: ", res($c->do_task(reverse => "still")), "\n";
}
elsif ($what eq "background") {
    my $h = $c->dispatch_background(slow => "bg");
    print "handle: ", ($h =~ m{//H:} ? "ok" : $h), "\n";
    my $st = $c->get_status($h);
    print "known: ", ($st && $st->known ? 1 : 0), "\n";
}
elsif ($what eq "coalesce") {
    my $ts = $c->new_task_set;
    my @res;
    for my $i (1 .. 3) {
        $ts->add_task(count => "x$i", {uniq => "same",
            on_complete => sub { push @res, ${$_[0]} }});
    }
    $ts->wait(timeout => 20);
    print "results: ", join(",", sort @res), "\n";
}
elsif ($what eq "timeout") {
    my $got = "none";
    my $r = $c->do_task(slow => "s", {on_fail => sub { $got = "fail" }});
    print "slow: ", res($r), " $got\n";
    print "after: ", res($c->do_task(reverse => "alive")), "\n";
}
"""


class PerlTests(ServerMixin, SynchronousTestCase):
    """
    Perl's Gearman::Client and Gearman::Worker (which grab with GRAB_JOB and
    give CAN_DO_TIMEOUT in seconds).
    """

    server_options = ("--timeout-unit=seconds", "--job-retries=1")

    def setUp(self) -> None:
        for module in ("Gearman::Client", "Gearman::Worker"):
            if not _process.has_perl_module(module):
                raise SkipTest(f"Perl {module} is not installed (libgearman-client-perl)")
        self.start_server()
        self.worker_script = self.workdir / "worker.pl"
        self.worker_script.write_text(_PERL_WORKER)
        self.client_script = self.workdir / "client.pl"
        self.client_script.write_text(_PERL_CLIENT)
        self.countfile = self.workdir / "count.txt"

    def start_worker(self) -> None:
        self.spawn(
            ["perl", str(self.worker_script), str(self.port), str(self.countfile)], "perl-worker"
        )
        wait_until(
            lambda: status(self.port).get(b"reverse", (0, 0, 0))[2] == 1, what="the Perl worker"
        )

    def client(self, what: str) -> list[str]:
        out = run(["perl", str(self.client_script), str(self.port), what], timeout=60)
        return out.decode().splitlines()

    def test_basic(self) -> None:
        """
        Foreground jobs at all priorities, a worker that dies (WORK_EXCEPTION
        then WORK_FAIL: the worker survives), and WORK_STATUS.
        """
        self.start_worker()
        self.assertEqual(
            self.client("basic"),
            [
                "reverse: olleh",
                "high: hgih",
                "low: wol",
                "boom: undef exception",
                "progress: done 1 2",
                "after: llits",
            ],
            self.helper_log("perl-worker"),
        )

    def test_background_status(self) -> None:
        """
        A background job's handle can be polled with get_status.
        """
        self.assertEqual(self.client("background"), ["handle: ok", "known: 1"])

    def test_unique_coalescing(self) -> None:
        """
        Three tasks with one unique id run once; every client gets the
        result.
        """
        self.start_worker()
        self.assertEqual(self.client("coalesce"), ["results: counted x1,counted x1,counted x1"])
        self.assertEqual(self.countfile.read_text(), "x1\n")

    def test_can_do_timeout(self) -> None:
        """
        A job over its CAN_DO_TIMEOUT (seconds here) fails once the retry
        limit is reached, and the Perl worker, whose late result is
        dropped quietly, goes on working.
        """
        self.start_worker()
        self.assertEqual(
            self.client("timeout"),
            ["slow: undef fail", "after: evila"],
            self.helper_log("perl-worker"),
        )


class GearTests(ServerMixin, SynchronousTestCase):
    """
    Python's C{gear} client and worker (which grab with GRAB_JOB_UNIQ).
    """

    def setUp(self) -> None:
        if gear is None:
            raise SkipTest("the gear package is not installed (pip install gear)")
        self.start_server()

    def gear_worker(self, seen: list[tuple[bytes, bytes]], jobs: int) -> threading.Thread:
        worker = gear.Worker("gear-worker")
        worker.addServer("127.0.0.1", self.port)
        worker.waitForServer(timeout=30)
        worker.registerFunction("upper")
        self.addCleanup(worker.shutdown)

        def work() -> None:
            for _ in range(jobs):
                job = worker.getJob()
                seen.append((job.unique, job.arguments))
                job.sendWorkComplete(job.arguments.upper())

        thread = threading.Thread(target=work, daemon=True)
        thread.start()
        return thread

    def gear_client(self) -> object:
        client = gear.Client("gear-client")
        client.addServer("127.0.0.1", self.port)
        client.waitForServer(timeout=30)
        self.addCleanup(client.shutdown)
        return client

    def test_round_trip(self) -> None:
        """
        A gear client's job reaches a gear worker with its unique id and the
        result comes back; a background job is done too.
        """
        seen: list[tuple[bytes, bytes]] = []
        thread = self.gear_worker(seen, 2)
        client = self.gear_client()
        job = gear.TextJob("upper", "hello", unique="u-1")
        client.submitJob(job, timeout=30)  # type: ignore[attr-defined]
        wait_until(lambda: job.complete, what="the gear job")
        self.assertEqual("".join(job.data), "HELLO")
        self.assertFalse(job.failure)
        bg = gear.TextJob("upper", "later", unique="u-2")
        client.submitJob(bg, background=True, timeout=30)  # type: ignore[attr-defined]
        thread.join(30)
        self.assertFalse(thread.is_alive())
        self.assertEqual(seen, [(b"u-1", b"hello"), (b"u-2", b"later")])
