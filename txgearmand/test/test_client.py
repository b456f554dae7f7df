"""
Tests for L{txgearmand.client} against real servers: a C{twistd gearmand}
process and Debian's C gearmand, each started on a free loopback port.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

from twisted.internet import reactor as _reactor
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.error import ConnectionDone, ConnectionRefusedError
from twisted.internet.interfaces import IProtocol, IProtocolFactory, IStreamClientEndpoint
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase
from zope.interface import implementer

from txgearmand import wire
from txgearmand.client import (
    HIGH,
    LOW,
    GearmanClient,
    JobException,
    JobFailed,
    JobStatus,
    NoServerAvailable,
)
from txgearmand.test import _process
from txgearmand.test.test_inprocess import eventually
from txgearmand.wire import PacketType, Priority
from txgearmand.worker import GearmanWorker, WorkerJob

reactor: Any = _reactor


class _ServerTestsMixin:
    """
    The client and worker against a real server; subclasses say which.
    """

    timeout = 90

    def start(self) -> _process.Server:
        raise NotImplementedError

    def setUp(self) -> None:
        assert isinstance(self, TestCase)
        self.workdir = Path(self.mktemp()).resolve()
        self.workdir.mkdir(parents=True)
        self.server = self.start()
        self.addCleanup(self.server.kill)
        self.endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", self.server.port, timeout=5)

    def client(self) -> GearmanClient:
        assert isinstance(self, TestCase)
        client = GearmanClient(self.endpoint, reactor)
        self.addCleanup(client.close)
        return client

    def worker(self, **functions: Any) -> GearmanWorker:
        assert isinstance(self, TestCase)
        worker = GearmanWorker(self.endpoint, reactor, client_id="txworker")
        for name, work in functions.items():
            worker.register(name, work)
        worker.start()
        self.addCleanup(worker.stop)
        return worker

    async def test_round_trip(self) -> None:
        """
        A job goes from the client to the worker, with its unique id, and
        its updates and result come back.
        """
        seen: list[bytes] = []

        def work(job: WorkerJob) -> bytes:
            seen.append(job.unique)
            job.send_status(1, 2)
            job.send_data(b"partial")
            return job.payload.upper()

        self.worker(upper=work)
        client = self.client()
        updates: list[object] = []
        result = await client.submit(
            "upper",
            b"hello",
            unique="u-1",
            on_status=lambda n, d: updates.append((n, d)),
            on_data=updates.append,
        )
        assert isinstance(self, TestCase)
        self.assertEqual(result, b"HELLO")
        self.assertEqual(updates, [(1, 2), b"partial"])
        self.assertEqual(seen, [b"u-1"])

    async def test_exception(self) -> None:
        """
        A worker function's exception reaches the client.
        """

        def broken(job: WorkerJob) -> bytes:
            raise RuntimeError("broken on purpose")

        self.worker(broken=broken)
        assert isinstance(self, TestCase)
        with self.assertRaises(JobException) as caught:
            await self.client().submit("broken", b"")
        self.assertIn(b"broken on purpose", caught.exception.data)
        self.flushLoggedErrors(RuntimeError)

    async def test_background_status_echo(self) -> None:
        """
        A background job's handle comes back at once; its status can be
        asked; a worker started later does it.
        """
        client = self.client()
        handle = await client.submit("later", b"x", background=True, priority=LOW)
        status = await client.get_status(handle)
        assert isinstance(self, TestCase)
        self.assertEqual(status, JobStatus(handle, True, False, 0, 0))
        self.assertEqual(await client.echo(b"ping"), b"ping")
        done: Deferred[bytes] = Deferred()

        def later(job: WorkerJob) -> bytes:
            done.callback(job.payload)
            return b""

        self.worker(later=later)
        self.assertEqual(await done, b"x")


class TxGearmandClientTests(_ServerTestsMixin, TestCase):
    """
    Against C{twistd gearmand}.
    """

    def start(self) -> _process.Server:
        return _process.twistd_gearmand(self.workdir).start()

    async def test_reconnect_after_restart(self) -> None:
        """
        A worker and a client whose server restarts reconnect (with
        back-off) and work again.
        """
        self.worker(echo=lambda job: job.payload)
        client = self.client()
        self.assertEqual(await client.submit("echo", b"before"), b"before")
        port = self.server.port
        self.server.stop()
        self.server = _process.Server(
            [*self.server.argv], port, self.workdir / "twistd2.log", self.workdir
        )
        self.addCleanup(self.server.kill)
        for _ in range(50):
            try:
                self.server.start()
                break
            except RuntimeError:
                # The old process's port may take a moment to free.
                await eventually(lambda: True)
        await eventually(lambda: b"echo\t0\t0\t1" in _process.admin(port, b"status"), timeout=30)
        self.assertEqual(await client.submit("echo", b"after"), b"after")


class CGearmandClientTests(_ServerTestsMixin, TestCase):
    """
    Against Debian's C gearmand (gearman-job-server).
    """

    def start(self) -> _process.Server:
        server = _process.c_gearmand(self.workdir, "--threads=1")
        if server is None:
            raise SkipTest("C gearmand is not installed (Debian package gearman-job-server)")
        return server.start()


_PERL_SUBMIT = r"""
use strict; use warnings;
use Gearman::Client;
# Arguments: the servers' ports, "--", then unique ids in hex; a unique id
# "-" is followed by the payload in hex.
my @ports;
while (@ARGV && $ARGV[0] ne "--") { push @ports, shift @ARGV }
shift @ARGV;
my $client = Gearman::Client->new(job_servers => [map { "127.0.0.1:$_" } @ports]);
while (@ARGV) {
    my $hex = shift @ARGV;
    my ($func, $uniq, $payload) = ("p_$hex", pack("H*", $hex), "x");
    if ($hex eq "-") {
        my $p = shift @ARGV;
        ($func, $uniq, $payload) = ("pd_$p", "-", pack("H*", $p));
    }
    my $handle = $client->dispatch_background($func, $payload, {uniq => $uniq});
    print defined $handle ? "$handle\n" : "FAILED $func\n";
}
"""


class PerlSameServerTests(TestCase):
    """
    A Perl Gearman::Client and a L{GearmanClient} given the same three
    C{twistd gearmand} servers send each unique id to the same server.
    """

    timeout = 90

    def setUp(self) -> None:
        if not _process.has_perl_module("Gearman::Client"):
            raise SkipTest("Perl Gearman::Client is not installed (libgearman-client-perl)")
        self.servers: list[_process.Server] = []
        for i in range(3):
            workdir = Path(self.mktemp()).resolve() / f"server{i}"
            workdir.mkdir(parents=True)
            server = _process.twistd_gearmand(workdir)
            self.addCleanup(server.kill)
            self.servers.append(server.start())

    def functions(self) -> dict[str, int]:
        """
        Each function with queued jobs, and the index of the server that
        holds them (from each server's C{status}).
        """
        where: dict[str, int] = {}
        for index, server in enumerate(self.servers):
            for line in _process.admin(server.port, b"status").decode().splitlines():
                fields = line.split("\t")
                if len(fields) == 4 and fields[1] != "0":
                    self.assertNotIn(fields[0], where)
                    where[fields[0]] = index
        return where

    async def test_same_servers(self) -> None:
        """
        Background jobs with the same unique ids (and C{"-"} with the same
        payloads) from Perl and from us land on the same servers, the ones
        Perl's hash chooses.
        """
        uniques = [u for u, _ in _PERL_HASHES]
        payloads = [p for p, _ in _PERL_DASH_HASHES]
        argv = [str(s.port) for s in self.servers] + ["--"]
        argv += [u.hex() for u in uniques]
        for payload in payloads:
            argv += ["-", payload.hex()]
        script = Path(self.mktemp()).resolve()
        script.write_text(_PERL_SUBMIT)
        perl = subprocess.run(["perl", str(script), *argv], capture_output=True, timeout=60)
        self.assertEqual((perl.returncode, b"FAILED" in perl.stdout), (0, False), perl)

        endpoints = [
            TCP4ClientEndpoint(reactor, "127.0.0.1", s.port, timeout=5) for s in self.servers
        ]
        client = GearmanClient(endpoints, reactor)
        self.addCleanup(client.close)
        for unique in uniques:
            await client.submit(f"t_{unique.hex()}", b"x", unique, background=True)
        for payload in payloads:
            await client.submit(f"td_{payload.hex()}", payload, "-", background=True)

        where = self.functions()
        for unique, perl_hash in _PERL_HASHES:
            self.assertEqual(
                (where[f"p_{unique.hex()}"], where[f"t_{unique.hex()}"]),
                (perl_hash % 3, perl_hash % 3),
                unique,
            )
        for payload, perl_hash in _PERL_DASH_HASHES:
            self.assertEqual(
                (where[f"pd_{payload.hex()}"], where[f"td_{payload.hex()}"]),
                (perl_hash % 3, perl_hash % 3),
                payload,
            )


class NoGlobalReactorTests(TestCase):
    """
    Importing the client does not install a reactor.
    """

    def test_import(self) -> None:
        """
        C{import txgearmand.client} (and the worker, endpoints, in-process
        and testing modules) leaves C{twisted.internet.reactor} unimported.
        """
        code = (
            "import sys\n"
            "import txgearmand.client, txgearmand.worker, txgearmand.endpoints\n"
            "import txgearmand.inprocess, txgearmand.testing\n"
            "print('twisted.internet.reactor' in sys.modules)\n"
        )
        out = subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            env=_process.environment(),
            timeout=60,
            check=True,
        ).stdout
        self.assertEqual(out.strip(), b"False")


@implementer(IStreamClientEndpoint)
class _RecordingEndpoint:
    """
    Connects each protocol to a L{StringTransport}, to read what it sends.
    """

    def __init__(self) -> None:
        self.connected: list[tuple[IProtocol, StringTransport]] = []

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[IProtocol]:
        protocol = protocolFactory.buildProtocol(None)  # type: ignore[arg-type]
        assert protocol is not None
        transport = StringTransport()
        self.connected.append((protocol, transport))
        protocol.makeConnection(transport)
        return succeed(protocol)


@implementer(IStreamClientEndpoint)
class _RefusingEndpoint:
    """
    Never connects.
    """

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[IProtocol]:
        return fail(ConnectionRefusedError())


class GetStatusTests(SynchronousTestCase):
    """
    L{GearmanClient.get_status} with several servers asks each in turn.
    """

    def setUp(self) -> None:
        self.up = [_RecordingEndpoint(), _RecordingEndpoint()]
        endpoints: list[Any] = [self.up[0], _RefusingEndpoint(), self.up[1]]
        self.clock = Clock()
        self.client = GearmanClient(
            endpoints, self.clock, exceptions=False, retry_policy=lambda attempt: 1.0
        )
        self.addCleanup(self.client.stopService)

    def answer(self, index: int, known: bytes, running: bytes = b"0") -> None:
        """
        The C{index}th server that is up answers GET_STATUS for C{b"H:1"}
        (after the server that is down fails its next attempt, which the
        client waits for).
        """
        if index == 1:
            self.clock.advance(1)
        [(protocol, transport)] = self.up[index].connected
        [packet] = wire.PacketParser().feed(transport.value())
        self.assertEqual(packet, (PacketType.GET_STATUS, b"H:1"))
        protocol.dataReceived(
            wire.encode(PacketType.STATUS_RES, b"H:1", known, running, b"1", b"2")
        )

    def test_first_that_knows(self) -> None:
        """
        The first server that knows the job answers; refusing servers and
        those that do not know it are passed over.
        """
        d = self.client.get_status(b"H:1")
        self.answer(0, b"0")
        self.assertNoResult(d)
        self.answer(1, b"1", b"1")
        self.assertEqual(self.successResultOf(d), JobStatus(b"H:1", True, True, 1, 2))

    def test_none_knows(self) -> None:
        """
        When no server knows the job, the last answer (unknown) is given.
        """
        d = self.client.get_status("H:1")
        self.answer(0, b"0")
        self.answer(1, b"0")
        self.assertEqual(self.successResultOf(d), JobStatus(b"H:1", False, False, 1, 2))

    def test_none_reachable(self) -> None:
        """
        When no server answers, L{NoServerAvailable}.
        """
        client = GearmanClient(
            [_RefusingEndpoint(), _RefusingEndpoint()],
            self.clock,
            retry_policy=lambda attempt: 1.0,
        )
        self.addCleanup(client.stopService)
        d = client.get_status(b"H:1")
        self.assertNoResult(d)
        self.clock.advance(1)
        self.failureResultOf(d, NoServerAvailable)


class PriorityTests(SynchronousTestCase):
    """
    L{GearmanClient.submit}'s C{priority}: a L{Priority}, or its name.
    """

    def sent(self, priority: Priority | str, background: bool = False) -> tuple[int, bytes]:
        """
        Submit a job with this priority; return the packet that was sent.
        """
        endpoint = _RecordingEndpoint()
        client = GearmanClient(endpoint, Clock(), exceptions=False)
        d = client.submit("f", b"x", priority=priority, background=background)
        [(protocol, transport)] = endpoint.connected
        client.close()
        protocol.connectionLost(Failure(ConnectionDone()))
        self.failureResultOf(d, JobFailed)
        [packet] = wire.PacketParser().feed(transport.value())
        return packet

    def test_priority_or_name(self) -> None:
        """
        L{Priority.HIGH} (which is C{client.HIGH}) and C{"high"}, in any
        case, send the same packet; so do the other priorities.
        """
        self.assertIs(HIGH, Priority.HIGH)
        self.assertIs(LOW, Priority.LOW)
        high = (PacketType.SUBMIT_JOB_HIGH, b"f\0\0x")
        self.assertEqual(self.sent(Priority.HIGH), high)
        self.assertEqual(self.sent("high"), high)
        self.assertEqual(self.sent("High"), high)
        self.assertEqual(self.sent("normal"), self.sent(Priority.NORMAL))
        self.assertEqual(self.sent(Priority.NORMAL)[0], PacketType.SUBMIT_JOB)
        self.assertEqual(self.sent("LOW", True), self.sent(Priority.LOW, True))
        self.assertEqual(self.sent(Priority.LOW, True)[0], PacketType.SUBMIT_JOB_LOW_BG)
        self.assertEqual(self.sent("high", True)[0], PacketType.SUBMIT_JOB_HIGH_BG)

    def test_bad_priority(self) -> None:
        """
        Any other priority fails with C{ValueError}, and nothing is sent.
        """
        endpoint = _RecordingEndpoint()
        client = GearmanClient(endpoint, Clock(), exceptions=False)
        bad: list[Any] = ["urgent", "", 0, 1, None, b"high"]
        for priority in bad:
            failure = self.failureResultOf(client.submit("f", priority=priority), ValueError)
            self.assertIn(repr(priority), str(failure.value))
        self.assertEqual(endpoint.connected, [])


#: Unique ids and the hash Perl's Gearman::Client (2.004.015,
#: C{Gearman::Task->hash}) gives them, printed by Perl itself.
_PERL_HASHES = [
    (b"a", 26807),
    (b"abc", 13604),
    (b"u-1", 23695),
    (b"job-42", 20872),
    (b"user:1001", 26739),
    (b"12345", 19445),
    (b"hello world", 3402),
    (b"\xe9t\xe9", 19447),
    (b"x" * 60, 1110),
    (b"Z", 22972),
    (b"order/77", 3892),
    (b"-0", 18218),
    (b"00", 14406),
    (b"image.png", 2161),
    (b"key\twith tab", 2227),
    (b"1", 988),
]

#: Payloads submitted with the unique id C{"-"}, and Perl's hash of them.
_PERL_DASH_HASHES = [
    (b"abc", 13604),
    (b"payload one", 1855),
    (b"p2", 9777),
    (b'{"id": 7}', 142),
]


@implementer(IStreamClientEndpoint)
class _Server:
    """
    A fake server that is up (connects to a L{StringTransport}), down
    (refuses), or holding its connection attempts until the test ends them.
    """

    def __init__(self, up: bool = True) -> None:
        self.up = up
        self.hold = False
        self.held: list[tuple[Deferred[IProtocol], IProtocolFactory]] = []
        self.connected: list[tuple[IProtocol, StringTransport]] = []

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[IProtocol]:
        if self.hold:
            d: Deferred[IProtocol] = Deferred()
            self.held.append((d, protocolFactory))
            return d
        if not self.up:
            return fail(ConnectionRefusedError())
        return succeed(self._connected(protocolFactory))

    def _connected(self, protocolFactory: IProtocolFactory) -> IProtocol:
        protocol = protocolFactory.buildProtocol(None)  # type: ignore[arg-type]
        assert protocol is not None
        transport = StringTransport()
        self.connected.append((protocol, transport))
        protocol.makeConnection(transport)
        return protocol

    def release(self, up: bool) -> None:
        """
        End the held attempts: they connect if C{up}, else are refused.
        """
        self.hold = False
        self.up = up
        held, self.held = self.held, []
        for d, factory in held:
            if up:
                d.callback(self._connected(factory))
            else:
                d.errback(ConnectionRefusedError())

    def uniques(self) -> list[bytes]:
        """
        The unique ids of the jobs submitted to this server, on all its
        connections.
        """
        return [
            body.split(b"\0")[1]
            for _, transport in self.connected
            for _, body in wire.PacketParser().feed(transport.value())
        ]

    def lose(self) -> None:
        """
        Lose the current connection.
        """
        protocol, _ = self.connected[-1]
        protocol.connectionLost(Failure(ConnectionDone()))

    def created(self, handle: bytes) -> None:
        """
        The current connection answers the oldest submission with
        JOB_CREATED.
        """
        protocol, _ = self.connected[-1]
        protocol.dataReceived(wire.encode(PacketType.JOB_CREATED, handle))


class ServerChoiceTests(SynchronousTestCase):
    """
    With several servers, L{GearmanClient.submit} picks the one Perl's
    Gearman::Client picks for the unique id, and fails over in its order.
    """

    def client(self, *servers: _Server) -> GearmanClient:
        """
        A client of these servers, retrying every second on L{self.clock}.
        """
        self.clock = Clock()
        client = GearmanClient(
            list(servers), self.clock, exceptions=False, retry_policy=lambda attempt: 1.0
        )
        self.addCleanup(client.stopService)
        return client

    def landed(self, servers: list[_Server], unique: bytes) -> int:
        """
        The index of the server that got the one job with this unique id.
        """
        where = [i for i, s in enumerate(servers) if unique in s.uniques()]
        self.assertEqual(len(where), 1, f"{unique!r} went to {where}")
        return where[0]

    def test_perl_hash(self) -> None:
        """
        With 1, 2, 3 and 5 servers, each unique id goes to the server Perl
        chooses: its hash modulo the number of servers.
        """
        for n in (1, 2, 3, 5):
            servers = [_Server() for _ in range(n)]
            client = self.client(*servers)
            for unique, perl_hash in _PERL_HASHES:
                self.assertNoResult(client.submit("f", b"x", unique, background=True))
                self.assertEqual(self.landed(servers, unique), perl_hash % n, (n, unique))
            self.assertEqual(
                sorted(u for s in servers for u in s.uniques()),
                sorted(u for u, _ in _PERL_HASHES),
            )

    def test_dash_hashes_payload(self) -> None:
        """
        The unique id C{"-"} hashes the payload (the server coalesces
        those jobs on it), as in Perl.
        """
        for n in (2, 3, 5):
            servers = [_Server() for _ in range(n)]
            client = self.client(*servers)
            for payload, perl_hash in _PERL_DASH_HASHES:
                client.submit("f", payload, "-", background=True)
                [index] = [
                    i
                    for i, s in enumerate(servers)
                    for _, t in s.connected
                    for _, body in wire.PacketParser().feed(t.value())
                    if body == b"f\0-\0" + payload
                ]
                self.assertEqual(index, perl_hash % n, (n, payload))

    def test_no_unique_round_robin(self) -> None:
        """
        Jobs without a unique id go round the servers.
        """
        servers = [_Server() for _ in range(3)]
        client = self.client(*servers)
        for _ in range(6):
            client.submit("f", b"x", background=True)
        self.assertEqual([len(s.uniques()) for s in servers], [2, 2, 2])

    def test_fail_over_in_hash_order(self) -> None:
        """
        When the hashed server is down, the job goes to the next one up in
        hash order, wrapping round.
        """
        # b"a" hashes to 26807, server 2 of 3; b"abc" to 13604, server 2
        # of 3 too; b"u-1" to 23695, server 1 of 3.
        servers = [_Server(), _Server(), _Server(up=False)]
        client = self.client(*servers)
        lost = client.submit("f", b"x", "a", background=True)
        self.assertEqual(self.landed(servers, b"a"), 0)
        servers[0].lose()
        self.failureResultOf(lost, JobFailed)
        client.submit("f", b"x", "abc", background=True)
        self.assertEqual(self.landed(servers, b"abc"), 1)
        client.submit("f", b"x", "u-1", background=True)
        self.assertEqual(self.landed(servers, b"u-1"), 1)

    def test_all_down(self) -> None:
        """
        When every server is down, a submission waits for the next attempt
        of each, and fails with L{NoServerAvailable} when they all fail.
        """
        servers = [_Server(up=False) for _ in range(3)]
        client = self.client(*servers)
        d = client.submit("f", b"x", "a")
        self.assertNoResult(d)
        self.clock.advance(1)
        self.failureResultOf(d, NoServerAvailable)
        d = client.submit("f", b"x")
        self.assertNoResult(d)
        self.clock.advance(1)
        self.failureResultOf(d, NoServerAvailable)

    def test_all_down_one_returns(self) -> None:
        """
        When every server is down, the first to come back at its next
        attempt takes the submission.
        """
        servers = [_Server(up=False) for _ in range(3)]
        client = self.client(*servers)
        d = client.submit("f", b"x", "a", background=True)
        servers[0].up = True
        self.clock.advance(1)
        self.assertEqual(self.landed(servers, b"a"), 0)
        servers[0].created(b"H:1")
        self.assertEqual(self.successResultOf(d), b"H:1")

    def test_recovery(self) -> None:
        """
        A server that comes back gets its unique ids again; a server known
        down is passed over at once while it is retried.
        """
        servers = [_Server(), _Server(), _Server(up=False)]
        client = self.client(*servers)
        client.submit("f", b"x", "a", background=True)
        self.assertEqual(self.landed(servers, b"a"), 0)
        servers[2].hold = True
        self.clock.advance(1)
        self.assertEqual(len(servers[2].held), 1)
        client.submit("f", b"x", "abc", background=True)
        self.assertEqual(self.landed(servers, b"abc"), 0)
        servers[2].release(up=True)
        client.submit("f", b"x", "hello world", background=True)
        # 3402 % 3 == 0, and b"a" again goes to server 2 now.
        self.assertEqual(self.landed(servers, b"hello world"), 0)
        client.submit("f", b"y", "a", background=True)
        self.assertEqual(servers[2].uniques(), [b"a"])

    def test_first_attempt_waited_for(self) -> None:
        """
        A hashed server still making its first attempt is waited for (so
        duplicates do not scatter at start-up); if that attempt fails, the
        job goes to the next server, and later ones go there at once.
        """
        servers = [_Server(), _Server(), _Server()]
        servers[2].hold = True
        client = self.client(*servers)
        d = client.submit("f", b"x", "a", background=True)
        self.assertNoResult(d)
        self.assertEqual([s.uniques() for s in servers], [[], [], []])
        servers[2].release(up=True)
        self.assertEqual(self.landed(servers, b"a"), 2)

        servers = [_Server(), _Server(), _Server()]
        servers[2].hold = True
        client = self.client(*servers)
        d = client.submit("f", b"x", "a", background=True)
        self.assertNoResult(d)
        servers[2].release(up=False)
        self.assertEqual(self.landed(servers, b"a"), 0)
        client.submit("f", b"x", "abc", background=True)
        self.assertEqual(self.landed(servers, b"abc"), 0)

    def test_lost_before_created(self) -> None:
        """
        A submission whose connection is lost before JOB_CREATED fails
        with L{JobFailed}, foreground or background; the next submission
        with that unique id goes to the next server.
        """
        servers = [_Server(), _Server(), _Server()]
        client = self.client(*servers)
        background = client.submit("f", b"x", "a", background=True)
        foreground = client.submit("f", b"x", "abc")
        self.assertEqual(servers[2].uniques(), [b"a", b"abc"])
        servers[2].lose()
        self.failureResultOf(background, JobFailed)
        self.failureResultOf(foreground, JobFailed)
        client.submit("f", b"x", "a", background=True)
        self.assertEqual(servers[0].uniques(), [b"a"])

    def test_lost_after_created(self) -> None:
        """
        A foreground job whose connection is lost after JOB_CREATED fails
        with L{JobFailed} and its handle.
        """
        server = _Server()
        client = self.client(server)
        d = client.submit("f", b"x", "a")
        server.created(b"H:7")
        self.assertNoResult(d)
        server.lose()
        self.assertEqual(self.failureResultOf(d, JobFailed).value.handle, b"H:7")
