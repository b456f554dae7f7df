"""
Tests for L{txgearmand.httpsubmit}: jobs submitted over HTTP, as C
gearmand's HTTP protocol (C{-r http}) takes them.

Most tests drive an L{HTTPSubmitChannel} over an in-memory transport on a
fake clock, with a Gearman worker connection on the same L{JobServer}; a
few use real sockets on 127.0.0.1; the last ones run C{twistd gearmand
--http} (and Debian's C gearmand with C{-r http}, side by side) as
processes.
"""

from __future__ import annotations

import http.client
import itertools
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import attrs
from twisted.internet import endpoints
from twisted.internet import reactor as _reactor
from twisted.internet.address import IPv4Address, UNIXAddress
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import Protocol, connectionDone
from twisted.internet.task import Clock, deferLater
from twisted.internet.testing import StringTransportWithDisconnection
from twisted.python.failure import Failure
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase

from txgearmand import tap
from txgearmand.httpsubmit import LINGER_SECONDS, HTTPSubmitChannel, HTTPSubmitFactory
from txgearmand.inprocess import InProcessEndpoint
from txgearmand.job import HIGH, LOW, NORMAL
from txgearmand.server import JobServer
from txgearmand.test import _process
from txgearmand.test.helpers import FakeConnection
from txgearmand.test.test_durability import ManualStore
from txgearmand.wire import PacketType as P
from txgearmand.worker import GearmanWorker

reactor: Any = _reactor
_ports = itertools.count(41000)


# -- reading responses -------------------------------------------------------


@attrs.frozen
class Response:
    """
    One HTTP response, parsed.

    @ivar version: C{HTTP/1.0} or C{HTTP/1.1}.
    @ivar status: the status code.
    @ivar headers: header names (lower case) to values.
    @ivar body: the body (empty for a HEAD).
    """

    version: bytes
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def command(self) -> str | None:
        return self.headers.get("x-gearman-command")

    @property
    def handle(self) -> str | None:
        return self.headers.get("x-gearman-job-handle")


def parse_responses(data: bytes, head: bool = False) -> tuple[list[Response], bytes]:
    """
    The whole responses at the start of C{data}, and what follows them.
    """
    out: list[Response] = []
    while True:
        top, sep, rest = data.partition(b"\r\n\r\n")
        if not sep:
            return out, data
        lines = top.split(b"\r\n")
        version, status, _ = (lines[0] + b" ").split(b" ", 2)
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            headers[name.decode("ascii").lower()] = value.strip().decode("latin-1")
        size = 0 if head else int(headers.get("content-length", "0"))
        if len(rest) < size:
            return out, data
        out.append(Response(version, int(status), headers, rest[:size]))
        data = rest[size:]


def request(
    method: str,
    path: str,
    body: bytes = b"",
    headers: Iterable[tuple[str, str]] = (),
    version: str = "HTTP/1.1",
) -> bytes:
    """
    A request's bytes (with Content-Length when there is a body).
    """
    lines = [f"{method} {path} {version}", "Host: test"]
    lines += [f"{name}: {value}" for name, value in headers]
    if body:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


class ServerTransport(StringTransportWithDisconnection):
    """
    A string transport that closes as TCP does: C{loseConnection} marks
    it disconnecting, and the protocol hears of it at the end of the turn.
    """

    clock: Clock

    def loseConnection(self) -> None:
        if self.connected and not self.disconnecting:
            self.disconnecting = True
            self.clock.callLater(0, self.connection_lost)

    def connection_lost(self) -> None:
        """
        The connection is gone (the peer left, or the close is done).
        """
        if self.connected:
            self.connected = False
            self.protocol.connectionLost(Failure(ConnectionDone("Bye.")))


class HalfClosingTransport(ServerTransport):
    """
    A string transport that can close its writing side, as TCP can.
    """

    write_closed = False
    aborted = False

    def loseWriteConnection(self) -> None:
        self.write_closed = True

    def abortConnection(self) -> None:
        self.aborted = True
        self.loseConnection()


class HTTPClient:
    """
    One HTTP connection to a job server, over an in-memory transport.
    """

    def __init__(
        self, factory: HTTPSubmitFactory, clock: Clock, peer: Any = None, half_close: bool = False
    ) -> None:
        if peer is None:
            peer = IPv4Address("TCP", "127.0.0.1", next(_ports))
        self.clock = clock
        channel = factory.buildProtocol(peer)
        assert isinstance(channel, HTTPSubmitChannel)
        self.channel = channel
        kind = HalfClosingTransport if half_close else ServerTransport
        self.transport = kind(peerAddress=peer)
        self.transport.clock = clock
        self.transport.protocol = channel
        channel.makeConnection(self.transport)
        self._buffer = b""

    def send(self, data: bytes) -> None:
        """
        The client sends bytes (one read); the reactor turn ends.
        """
        if self.transport.connected:
            self.channel.dataReceived(data)
        self.clock.advance(0)

    def ask(self, method: str, path: str, body: bytes = b"", *headers: tuple[str, str]) -> None:
        """
        Send a request.
        """
        self.send(request(method, path, body, headers))

    def responses(self, head: bool = False) -> list[Response]:
        """
        The whole responses received since last asked.
        """
        self._buffer += self.transport.value()
        self.transport.clear()
        out, self._buffer = parse_responses(self._buffer, head)
        return out

    def response(self, head: bool = False) -> Response:
        """
        The one response received since last asked.
        """
        out = self.responses(head)
        if len(out) != 1:
            raise AssertionError(f"expected one response, got {out!r} and {self._buffer!r}")
        return out[0]

    def leave(self) -> None:
        """
        The client goes away.
        """
        self.transport.connection_lost()
        self.clock.advance(0)

    @property
    def closed(self) -> bool:
        """
        Whether the server closed (or is closing) the connection.
        """
        return self.transport.disconnecting or not self.transport.connected


class HTTPTestMixin:
    """
    A job server on a fake clock, HTTP clients and Gearman workers for it.
    """

    clock: Clock
    server: JobServer

    def make_server(self, **options: Any) -> JobServer:
        self.clock = Clock()
        options.setdefault("job_handle_prefix", b"H:t")
        self.server = JobServer(self.clock, **options)
        self.server.startService()
        self.factory = HTTPSubmitFactory(self.server)
        return self.server

    def client(self, **kwargs: Any) -> HTTPClient:
        if not hasattr(self, "server"):
            self.make_server()
        return HTTPClient(self.factory, self.clock, **kwargs)

    def worker(self, *functions: bytes) -> FakeConnection:
        if not hasattr(self, "server"):
            self.make_server()
        return FakeConnection(self.server).can_do(*functions)


def assign(worker: FakeConnection) -> tuple[bytes, bytes, bytes, bytes]:
    """
    Grab a job: its handle, function, unique and payload.
    """
    ptype, args = worker.grab()
    if ptype != P.JOB_ASSIGN_UNIQ:
        raise AssertionError(f"expected a job, got {ptype!r}")
    handle, function, unique, data = args
    return handle, function, unique, data


# -- the protocol ------------------------------------------------------------


class ForegroundTests(HTTPTestMixin, SynchronousTestCase):
    """
    A foreground request waits for its job's result.
    """

    def test_result(self) -> None:
        """
        C{POST /FUNCTION} submits the body as the workload (unique C{-}, as
        C gearmand); the result is the response's body, with the handle
        and C{WORK_COMPLETE} in headers.
        """
        worker = self.worker(b"reverse")
        client = self.client()
        client.ask("POST", "/reverse", b"hello")
        self.assertEqual(client.responses(), [])
        handle, function, unique, data = assign(worker)
        self.assertEqual((function, unique, data), (b"reverse", b"-", b"hello"))
        worker.send(P.WORK_COMPLETE, handle, b"olleh")
        response = client.response()
        self.assertEqual(response.version, b"HTTP/1.1")
        self.assertEqual(response.status, 200)
        self.assertEqual(response.body, b"olleh")
        self.assertEqual(response.handle, handle.decode())
        self.assertEqual(response.command, "WORK_COMPLETE")
        self.assertEqual(response.headers["content-length"], "5")
        self.assertEqual(response.headers["content-type"], "application/octet-stream")
        self.assertTrue(response.headers["server"].startswith("txgearmand/"))
        self.assertIn("date", response.headers)
        self.assertFalse(client.closed)
        self.assertEqual(self.server.jobs(), [])
        # The request left the job server with its answer.
        self.assertEqual(self.server.clients(), [worker.participant])

    def test_methods(self) -> None:
        """
        C{PUT} and C{GET} submit too (a GET's body, if any, is the
        workload); C{HEAD} runs the job and answers with its headers only.
        """
        worker = self.worker(b"f")
        client = self.client()
        for method, body in [("PUT", b"put"), ("GET", b""), ("GET", b"with body")]:
            client.ask(method, "/f", body)
            handle, _, _, data = assign(worker)
            self.assertEqual(data, body)
            worker.send(P.WORK_COMPLETE, handle, b"r:" + data)
            response = client.response()
            self.assertEqual((response.status, response.body), (200, b"r:" + body))
        client.ask("HEAD", "/f")
        handle, _, _, _ = assign(worker)
        worker.send(P.WORK_COMPLETE, handle, b"12345")
        response = client.response(head=True)
        self.assertEqual(response.status, 200)
        self.assertEqual(response.headers["content-length"], "5")
        self.assertEqual(response.handle, handle.decode())
        self.assertEqual(client.responses(), [])

    def test_path(self) -> None:
        """
        The function is the path after its leading slashes, percent-decoded;
        a query string is not part of it.
        """
        worker = self.worker(b"a b/c")
        client = self.client()
        client.ask("POST", "//a%20b/c?x=1", b"d")
        _, function, _, _ = assign(worker)
        self.assertEqual(function, b"a b/c")

    def test_fail(self) -> None:
        """
        A job that fails (WORK_FAIL) is answered 500 with C{X-Gearman-Command:
        WORK_FAIL} and an empty body (C gearmand: 200).
        """
        worker = self.worker(b"f")
        client = self.client()
        client.ask("POST", "/f", b"x")
        handle, _, _, _ = assign(worker)
        worker.send(P.WORK_FAIL, handle)
        response = client.response()
        self.assertEqual((response.status, response.body), (500, b""))
        self.assertEqual(response.command, "WORK_FAIL")
        self.assertEqual(response.handle, handle.decode())
        self.assertFalse(client.closed)

    def test_exception(self) -> None:
        """
        A job that raises (WORK_EXCEPTION) is answered 500 with the
        exception's text as the body, without C{--exceptions} (C gearmand
        sends a bare WORK_FAIL).
        """
        worker = self.worker(b"f")
        client = self.client()
        client.ask("POST", "/f", b"x")
        handle, _, _, _ = assign(worker)
        worker.send(P.WORK_EXCEPTION, handle, b"ValueError: boom")
        response = client.response()
        self.assertEqual((response.status, response.body), (500, b"ValueError: boom"))
        self.assertEqual(response.command, "WORK_EXCEPTION")
        # Perl's Gearman::Worker follows it with WORK_FAIL: nothing more.
        worker.send(P.WORK_FAIL, handle)
        self.assertEqual(client.responses(), [])
        self.assertEqual(worker.packets(), [])

    def test_data_status_warning(self) -> None:
        """
        WORK_DATA is sent, in order, before the result; WORK_STATUS and
        WORK_WARNING are not part of the answer (C gearmand answers the
        request with the first of them).
        """
        worker = self.worker(b"f")
        client = self.client()
        client.ask("POST", "/f", b"x")
        handle, _, _, _ = assign(worker)
        worker.send(P.WORK_DATA, handle, b"abc")
        worker.send(P.WORK_STATUS, handle, b"1", b"2")
        worker.send(P.WORK_WARNING, handle, b"careful")
        worker.send(P.WORK_DATA, handle, b"def")
        self.assertEqual(client.responses(), [])
        self.assertEqual(self.server.guard.output, 6)
        worker.send(P.WORK_COMPLETE, handle, b"xyz")
        response = client.response()
        self.assertEqual((response.status, response.body), (200, b"abcdefxyz"))
        self.assertEqual(self.server.guard.output, 0)

    def test_data_limit(self) -> None:
        """
        WORK_DATA past C{--max-packet-size} answers 502 and the request
        stops waiting; the job goes on for its other clients.
        """
        self.make_server(max_packet_size=20)
        worker = self.worker(b"f")
        client = self.client()
        gearman = FakeConnection(self.server)
        client.ask("POST", "/f", b"x", ("X-Gearman-Unique", "u"))
        gearman.send(P.SUBMIT_JOB, b"f", b"u", b"x")
        handle, _, _, _ = assign(worker)
        worker.send(P.WORK_DATA, handle, b"123456789012")
        self.assertEqual(client.responses(), [])
        worker.send(P.WORK_DATA, handle, b"345678901234")
        response = client.response()
        self.assertEqual(response.status, 502)
        self.assertEqual(response.command, "WORK_DATA")
        self.assertIn(b"(20 bytes)", response.body)
        self.assertEqual(self.server.guard.output, 0)
        worker.send(P.WORK_COMPLETE, handle, b"done")
        self.assertEqual(gearman.packets()[-1], (P.WORK_COMPLETE, (handle, b"done")))
        self.assertEqual(client.responses(), [])

    def test_unknown_function(self) -> None:
        """
        A job of a function no worker has waits (no answer); when its
        client gives up and goes away, the queued job is dropped, as when a
        Gearman client disconnects.
        """
        client = self.client()
        client.ask("POST", "/nobody", b"x")
        self.clock.advance(120)
        self.assertEqual(client.responses(), [])
        self.assertEqual(len(self.server.jobs()), 1)
        self.assertFalse(client.closed)
        client.leave()
        self.assertEqual(self.server.jobs(), [])
        self.assertEqual(self.server.clients(), [])

    def test_pipelined_past_the_limit(self) -> None:
        """
        A client that pipelines more than the limit behind a request that
        waits for its job is closed, and its queued job dropped (Twisted
        would stop reading it instead, and its leaving would go unseen).
        """
        from txgearmand.httpsubmit import PIPELINED_LIMIT

        client = self.client()
        client.ask("POST", "/nobody", b"x")
        chunk = request("POST", "/nobody", b"y" * 60000, ())
        client.send(chunk * 3)
        self.assertFalse(client.closed)
        self.assertEqual(len(self.server.jobs()), 1)
        client.send(chunk * (PIPELINED_LIMIT // len(chunk)))
        self.assertTrue(client.closed)
        self.assertEqual(self.server.jobs(), [])

    def test_running_job_outlives_client(self) -> None:
        """
        A job already running when its client goes away runs on; its
        result goes nowhere.
        """
        worker = self.worker(b"f")
        client = self.client()
        client.ask("POST", "/f", b"x")
        handle, _, _, _ = assign(worker)
        client.leave()
        self.assertEqual(len(self.server.jobs()), 1)
        worker.send(P.WORK_COMPLETE, handle, b"r")
        self.assertEqual(self.server.jobs(), [])
        self.assertEqual(worker.packets(), [])

    def test_unique(self) -> None:
        """
        Requests with the same function and C{X-Gearman-Unique} share one
        job (the first's workload), and each gets its result; with the
        default unique C{-}, identical bodies share a job and others do not.
        """
        worker = self.worker(b"f")
        first, second, third = self.client(), self.client(), self.client()
        first.ask("POST", "/f", b"one", ("X-Gearman-Unique", "k"))
        second.ask("POST", "/f", b"two", ("x-gearman-unique", "k"))
        self.assertEqual(len(self.server.jobs()), 1)
        handle, _, unique, data = assign(worker)
        self.assertEqual((unique, data), (b"k", b"one"))
        worker.send(P.WORK_COMPLETE, handle, b"r")
        for client in (first, second):
            response = client.response()
            self.assertEqual((response.handle, response.body), (handle.decode(), b"r"))
        first.ask("POST", "/f", b"same")
        second.ask("POST", "/f", b"same")
        third.ask("POST", "/f", b"other")
        self.assertEqual(len(self.server.jobs()), 2)

    def test_unique_too_long(self) -> None:
        """
        A unique over 64 bytes is refused, 400 (C gearmand: 200 with
        C{X-Gearman-Command: ERROR}).
        """
        client = self.client()
        client.ask("POST", "/f", b"x", ("X-Gearman-Unique", "u" * 65))
        response = client.response()
        self.assertEqual(response.status, 400)
        self.assertEqual(response.command, "ERROR")
        self.assertEqual(response.headers["x-gearman-error"], "ARGUMENT_TOO_LARGE")
        self.assertEqual(response.body, b"Unique value too large\n")
        self.assertEqual(self.server.clients(), [])

    def test_priority(self) -> None:
        """
        C{X-Gearman-Priority: high} and C{low} (any case) set the priority;
        anything else is normal.
        """
        for value in ["low", "weird", "HIGH"]:
            self.client().ask("POST", "/f", value.encode(), ("X-Gearman-Priority", value))
        priorities = {job.data: job.priority for job in self.server.jobs()}
        self.assertEqual(priorities, {b"low": LOW, b"weird": NORMAL, b"HIGH": HIGH})


class BackgroundTests(HTTPTestMixin, SynchronousTestCase):
    """
    C{X-Gearman-Background: true} answers at once with the handle.
    """

    def test_created(self) -> None:
        """
        The answer is 200 with the handle, C{JOB_CREATED} and no body; the
        job stays queued, and the request is no participant any more.
        """
        client = self.client()
        client.ask("POST", "/f", b"x", ("X-Gearman-Background", "TRUE"))
        response = client.response()
        self.assertEqual((response.status, response.body), (200, b""))
        self.assertEqual(response.command, "JOB_CREATED")
        [job] = self.server.jobs()
        self.assertTrue(job.background)
        self.assertEqual(response.handle, job.handle.decode())
        self.assertEqual(self.server.clients(), [])
        # Only "true" means background, as in C gearmand.
        client.ask("POST", "/f", b"y", ("X-Gearman-Background", "1"))
        self.assertEqual(client.responses(), [])

    def test_priorities(self) -> None:
        """
        Background jobs are handed out by priority: high, normal, low.
        """
        client = self.client()
        for value in ["low", "normal", "high"]:
            client.ask(
                "POST",
                "/f",
                value.encode(),
                ("X-Gearman-Background", "true"),
                ("X-Gearman-Priority", value),
            )
            self.assertEqual(client.response().command, "JOB_CREATED")
        worker = self.worker(b"f")
        order = [assign(worker)[3] for _ in range(3)]
        self.assertEqual(order, [b"high", b"normal", b"low"])

    def test_after_commit(self) -> None:
        """
        With a store, the answer waits until the store has the job; if the
        store fails, 503 with its reason.
        """
        store = ManualStore()
        self.make_server(store=store)
        client = self.client()
        client.ask("POST", "/f", b"x", ("X-Gearman-Background", "true"))
        self.assertEqual(client.responses(), [])
        store.commit()
        self.clock.advance(0)
        self.assertEqual(client.response().command, "JOB_CREATED")
        store.fail_next = True
        client.ask("POST", "/f", b"y", ("X-Gearman-Background", "true"))
        store.commit()
        self.clock.advance(0)
        response = client.response()
        self.assertEqual(response.status, 503)
        self.assertEqual(response.headers["x-gearman-error"], "QUEUE_ERROR")
        self.assertEqual(response.body, b"The job store failed: disk full\n")

    def test_max_queue(self) -> None:
        """
        A submission past the function's max queue is refused, 503, with
        the server's words.
        """
        self.make_server(max_queue={b"f": 1})
        client = self.client()
        client.ask("POST", "/f", b"1", ("X-Gearman-Background", "true"))
        self.assertEqual(client.response().status, 200)
        client.ask("POST", "/f", b"2", ("X-Gearman-Background", "true"))
        response = client.response()
        self.assertEqual(response.status, 503)
        self.assertEqual(response.command, "ERROR")
        self.assertEqual(response.headers["x-gearman-error"], "QUEUE_ERROR")
        self.assertTrue(response.body.endswith(b"\n"))
        self.assertFalse(client.closed)


class RefusalTests(HTTPTestMixin, SynchronousTestCase):
    """
    Requests that cannot be jobs are answered with a status that says why,
    and nothing a client sends makes the server grow or fail.
    """

    def test_no_function(self) -> None:
        """
        A path without a function name is 404 (as C gearmand); C{HEAD /}
        is a ping (200 while the server serves).
        """
        client = self.client()
        for method in ["POST", "GET", "PUT"]:
            client.ask(method, "/", b"x")
            response = client.response()
            self.assertEqual(response.status, 404)
            self.assertEqual(response.headers["content-type"], "text/plain; charset=utf-8")
        client.ask("HEAD", "/")
        response = client.response(head=True)
        self.assertEqual(response.status, 200)
        self.assertIsNone(response.handle)
        self.assertEqual(self.server.jobs(), [])

    def test_bad_method(self) -> None:
        """
        Other methods (TRACE included) are 405 with C{Allow}; the
        connection stays open.
        """
        client = self.client()
        for method in ["DELETE", "TRACE", "OPTIONS", "PATCH", "post"]:
            client.ask(method, "/f", b"x")
            response = client.response()
            self.assertEqual(response.status, 405, method)
            self.assertEqual(response.headers["allow"], "GET, HEAD, POST, PUT")
        self.assertFalse(client.closed)
        self.assertEqual(self.server.jobs(), [])

    def test_nul_in_function(self) -> None:
        """
        A function name with a NUL byte is 400.
        """
        client = self.client()
        client.ask("POST", "/a%00b", b"x")
        self.assertEqual(client.response().status, 400)

    def test_oversized_body(self) -> None:
        """
        A body declared larger than C{--max-packet-size} is refused with
        413 on its headers, before it is read (no C{100 Continue}), and the
        connection closes.
        """
        self.make_server(max_packet_size=100)
        client = self.client()
        client.send(
            b"POST /f HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nContent-Length: 101\r\n\r\n"
        )
        response = client.response()
        self.assertEqual(response.status, 413)
        self.assertEqual(response.headers["connection"], "close")
        self.assertIn(b"100 bytes", response.body)
        self.assertTrue(client.closed)
        self.assertEqual(self.server.jobs(), [])
        # One that fits is taken.
        client = self.client()
        client.ask("POST", "/f", b"x" * 100, ("X-Gearman-Background", "true"))
        self.assertEqual(client.response().status, 200)

    def test_oversized_chunked_body(self) -> None:
        """
        So is a chunked body, once it passes the limit.
        """
        self.make_server(max_packet_size=100)
        client = self.client()
        client.send(b"POST /f HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n")
        client.send(b"40\r\n" + b"x" * 64 + b"\r\n")
        self.assertEqual(client.responses(), [])
        client.send(b"40\r\n" + b"x" * 64 + b"\r\n")
        self.assertEqual(client.response().status, 413)
        self.assertEqual(self.server.guard.partial, 0)
        # A chunked body within the limit is a workload like any other.
        client = self.client()
        client.send(b"POST /f HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n")
        client.send(b"X-Gearman-Background: true\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n")
        self.assertEqual(client.response().status, 200)
        self.assertEqual([job.data for job in self.server.jobs()], [b"abcde"])
        self.assertEqual(self.server.guard.partial, 0)

    def test_lingers_after_refusal(self) -> None:
        """
        After refusing a body it has not read, the server stops writing,
        drops what the client still sends, and closes after
        L{LINGER_SECONDS}.
        """
        self.make_server(max_packet_size=100)
        client = self.client(half_close=True)
        client.send(b"POST /f HTTP/1.1\r\nHost: t\r\nContent-Length: 1000\r\n\r\n" + b"x" * 500)
        self.assertEqual(client.response().status, 413)
        transport = client.transport
        assert isinstance(transport, HalfClosingTransport)
        self.assertTrue(transport.write_closed)
        self.assertFalse(client.closed)
        client.send(b"y" * 500 + request("POST", "/f", b"x"))
        self.assertEqual(client.responses(), [])
        self.assertEqual(self.server.jobs(), [])
        self.clock.advance(LINGER_SECONDS)
        self.assertTrue(transport.aborted)
        self.assertEqual(self.server.guard.connections, 0)

    def test_memory_budget(self) -> None:
        """
        A large body that would take the server over its memory budget is
        refused with 503 on its headers; a small one gets 503 from the
        submission, and the connection stays.
        """
        self.make_server(max_memory=200_000)
        client = self.client()
        client.send(b"POST /f HTTP/1.1\r\nHost: t\r\nContent-Length: 300000\r\n\r\n")
        response = client.response()
        self.assertEqual(response.status, 503)
        self.assertTrue(client.closed)
        self.assertEqual(self.server.guard.partial, 0)
        client = self.client()
        for letter in b"ab":
            body = bytes([letter]) * 90_000
            client.ask("POST", "/f", body, ("X-Gearman-Background", "true"))
            self.assertEqual(client.response().status, 200)
        client.ask("POST", "/f", b"c" * 90_000, ("X-Gearman-Background", "true"))
        self.assertEqual(client.response().status, 503)
        self.assertTrue(client.closed)
        client = self.client()
        client.ask("POST", "/f", b"d" * 30_000, ("X-Gearman-Background", "true"))
        response = client.response()
        self.assertEqual(response.status, 503)
        self.assertEqual(response.headers["x-gearman-error"], "QUEUE_ERROR")
        self.assertIn(b"memory budget", response.body)
        self.assertFalse(client.closed)

    def test_body_reserved_while_it_arrives(self) -> None:
        """
        A large body counts against the memory budget while it arrives,
        and stops counting when it is in (as the job it becomes) or its
        client goes away.
        """
        client = self.client()
        client.send(b"POST /f HTTP/1.1\r\nHost: t\r\nContent-Length: 100000\r\n\r\n")
        self.assertEqual(self.server.guard.partial, 100_000)
        client.send(b"x" * 100_000)
        self.assertEqual(self.server.guard.partial, 0)
        client = self.client()
        client.send(b"POST /f HTTP/1.1\r\nHost: t\r\nContent-Length: 100000\r\n\r\nxx")
        client.leave()
        self.assertEqual(self.server.guard.partial, 0)

    def test_malformed(self) -> None:
        """
        Malformed requests get twisted.web's 400 and are closed; headers
        over its limits too; none reaches the job server, which keeps
        serving.
        """
        inputs = [
            b"garbage\r\n\r\n",
            b"POST /f\r\n\r\n",
            b"POST /f HTTP/2.0\r\n\r\n",
            b"POST /f HTTP/1.1\r\nContent-Length: abc\r\n\r\n",
            b"POST /f HTTP/1.1\r\nContent-Length: -5\r\n\r\n",
            b"POST /f HTTP/1.1\r\nno colon\r\n\r\n",
            b"POST /f HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            b"POST /f HTTP/1.1\r\n" + b"X: y\r\n" * 600 + b"\r\n",
            b"POST /f HTTP/1.1\r\nX: " + b"y" * 20000 + b"\r\n\r\n",
            b"\x00\x01\x02\xff" * 10 + b"\r\n\r\n",
        ]
        for data in inputs:
            client = self.client()
            client.send(data)
            self.assertTrue(client.closed, data[:40])
            answer = client.transport.value()
            self.assertTrue(answer.startswith(b"HTTP/1.1 400") or not answer, data[:40])
        self.assertEqual(self.server.jobs(), [])
        self.assertEqual(self.server.guard.connections, 0)
        worker = self.worker(b"f")
        client = self.client()
        client.ask("POST", "/f", b"x")
        handle, _, _, _ = assign(worker)
        worker.send(P.WORK_COMPLETE, handle, b"ok")
        self.assertEqual(client.response().body, b"ok")

    def test_cancelled(self) -> None:
        """
        A job cancelled with the admin C{cancel job} fails: 500.
        """
        client = self.client()
        client.ask("POST", "/f", b"x")
        [job] = self.server.jobs()
        admin = FakeConnection(self.server)
        self.assertEqual(admin.admin(b"cancel job " + job.handle), b"OK\r\n")
        self.assertEqual(client.response().command, "WORK_FAIL")


class ConnectionTests(HTTPTestMixin, SynchronousTestCase):
    """
    HTTP/1.1 keep-alive, timeouts, limits and the job server's life.
    """

    def test_keep_alive(self) -> None:
        """
        An HTTP/1.1 connection serves request after request, pipelined
        ones too, each answered in order; HTTP/1.0 or C{Connection: close}
        closes after the answer.
        """
        worker = self.worker(b"f")
        client = self.client()
        for n in range(2):
            client.ask("POST", "/f", b"%d" % n)
            handle, _, _, data = assign(worker)
            worker.send(P.WORK_COMPLETE, handle, b"r" + data)
            self.assertEqual(client.response().body, b"r%d" % n)
        client.send(request("POST", "/f", b"a") + request("POST", "/f", b"b"))
        for expected in [b"a", b"b"]:
            handle, _, _, data = assign(worker)
            self.assertEqual(data, expected)
            worker.send(P.WORK_COMPLETE, handle, b"r" + data)
        self.assertEqual([r.body for r in client.responses()], [b"ra", b"rb"])
        self.assertFalse(client.closed)
        client.send(request("POST", "/f", b"c", version="HTTP/1.0"))
        handle, _, _, _ = assign(worker)
        worker.send(P.WORK_COMPLETE, handle, b"rc")
        response = client.response()
        self.assertEqual((response.version, response.body), (b"HTTP/1.0", b"rc"))
        self.assertTrue(client.closed)
        client = self.client()
        client.ask("POST", "/f", b"d", ("Connection", "close"))
        handle, _, _, _ = assign(worker)
        worker.send(P.WORK_COMPLETE, handle, b"rd")
        self.assertEqual(client.response().headers["connection"], "close")
        self.assertTrue(client.closed)

    def test_idle_timeout(self) -> None:
        """
        A connection idle (or stalled in a request) for C{--read-timeout}
        is closed; one waiting for its job's result is not.
        """
        self.make_server(read_timeout=10)
        idle = self.client()
        stalled = self.client()
        stalled.send(b"POST /f HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nab")
        waiting = self.client()
        waiting.ask("POST", "/f", b"x")
        self.clock.advance(11)
        self.assertTrue(idle.closed)
        self.assertTrue(stalled.closed)
        self.assertFalse(waiting.closed)
        self.assertEqual(len(self.server.jobs()), 1)

    def test_connection_limit(self) -> None:
        """
        HTTP connections count against C{--max-connections}: past it, a
        new one is answered 503 and closed.
        """
        self.make_server(max_connections=2)
        FakeConnection(self.server)
        first = self.client()
        self.assertEqual(self.server.guard.connections, 2)
        peer = IPv4Address("TCP", "127.0.0.1", next(_ports))
        refused = self.factory.buildProtocol(peer)
        assert refused is not None
        transport = StringTransportWithDisconnection(peerAddress=peer)
        transport.protocol = refused
        refused.makeConnection(transport)
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 503 "))
        self.assertFalse(transport.connected)
        first.leave()
        self.assertEqual(self.server.guard.connections, 1)
        self.client()

    def test_stop(self) -> None:
        """
        When the job server stops, a waiting request is answered 503 and
        its connection closed; new connections are refused.
        """
        client = self.client()
        client.ask("POST", "/f", b"x")
        self.server.stopService()
        response = client.response()
        self.assertEqual(response.status, 503)
        self.assertTrue(client.closed)
        self.assertIsNone(self.factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 1)))

    def test_draining(self) -> None:
        """
        While the job server drains (graceful shutdown), C{HEAD /} says
        so, and an open connection's new request is answered 503.
        """
        client = self.client()
        self.server.accepting = False
        client.ask("HEAD", "/")
        self.assertEqual(client.response(head=True).status, 503)
        client.ask("POST", "/f", b"x")
        self.assertEqual(client.response().status, 503)
        self.assertTrue(client.closed)
        self.assertEqual(self.server.jobs(), [])

    def test_waits_for_store(self) -> None:
        """
        A request that arrives before the store is replayed is submitted
        once it is.
        """
        opened: Deferred[None] = Deferred()

        class SlowStore(ManualStore):
            def open(self) -> Deferred[None]:
                return opened

        self.make_server(store=SlowStore())
        client = self.client()
        client.ask("POST", "/f", b"x")
        self.assertEqual(self.server.jobs(), [])
        opened.callback(None)
        self.clock.advance(0)
        self.assertEqual(len(self.server.jobs()), 1)

    def test_peer(self) -> None:
        """
        A waiting request is a participant: the admin C{workers} command
        lists it by its address, and the log names it C{http:HOST:PORT}.
        """
        client = self.client()
        client.ask("POST", "/f", b"x")
        [participant] = self.server.clients()
        self.assertTrue(participant.describe().startswith("http:127.0.0.1:"))
        self.assertEqual(participant.peer.peer_host(), "127.0.0.1")
        self.assertTrue(participant.peer.is_local())
        admin = FakeConnection(self.server)
        self.assertIn(b" 127.0.0.1 - :\n", admin.admin(b"workers"))
        unix = self.client(peer=UNIXAddress(None))
        unix.ask("POST", "/f", b"y")
        peers = {p.describe() for p in self.server.clients()}
        self.assertIn("http:unix", peers)


# -- real sockets ------------------------------------------------------------


class _RawClient(Protocol):
    """
    Sends bytes, collects what comes back, and says when the connection
    closes.
    """

    def __init__(self) -> None:
        self.data = b""
        self.lost: Deferred[None] = Deferred()
        self._waiting: list[tuple[int, Deferred[list[Response]]]] = []

    def dataReceived(self, data: bytes) -> None:
        self.data += data
        responses, _ = parse_responses(self.data)
        for n, d in list(self._waiting):
            if len(responses) >= n:
                self._waiting.remove((n, d))
                d.callback(responses)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.lost.callback(None)

    def responses(self, n: int) -> Deferred[list[Response]]:
        d: Deferred[list[Response]] = Deferred()
        self._waiting.append((n, d))
        self.dataReceived(b"")
        return d


class SocketTests(TestCase):
    """
    Over real sockets on 127.0.0.1, with a worker in-process.
    """

    timeout = 30

    async def start(self, **options: Any) -> int:
        server = JobServer(reactor, job_handle_prefix=b"H:s", **options)
        server.startService()
        self.addCleanup(server.stopService)
        self.server = server
        endpoint = endpoints.TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1")
        factory = HTTPSubmitFactory(server)
        self.channels: list[HTTPSubmitChannel] = []

        def build(addr: Any) -> Any:
            channel = HTTPSubmitFactory.buildProtocol(factory, addr)
            if isinstance(channel, HTTPSubmitChannel):
                self.channels.append(channel)
            return channel

        factory.buildProtocol = build  # type: ignore[method-assign]
        port = await endpoint.listen(factory)
        self.addCleanup(port.stopListening)
        worker = GearmanWorker([InProcessEndpoint(reactor, server)], reactor, reconnect=False)
        worker.register("reverse", lambda job: job.payload[::-1])
        worker.start()
        self.addCleanup(worker.stop)
        return int(port.getHost().port)

    async def until(self, predicate: Callable[[], bool], what: str) -> None:
        """
        Wait (on the reactor) until C{predicate()} holds.
        """
        for _ in range(400):
            if predicate():
                return
            await deferLater(reactor, 0.05, lambda: None)
        self.fail(f"timed out waiting for {what}")

    def server_closed(self) -> bool:
        """
        Whether every HTTP connection is closed on the server's side.
        """
        return all(not getattr(c.transport, "connected", False) for c in self.channels)

    async def connect(self, port: int) -> _RawClient:
        endpoint = endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", port)
        client = await endpoints.connectProtocol(endpoint, _RawClient())
        assert isinstance(client, _RawClient)
        self.addCleanup(lambda: client.transport.loseConnection() if client.transport else None)
        return client

    async def test_keep_alive(self) -> None:
        """
        Two requests, one after the other, on one connection.
        """
        port = await self.start()
        client = await self.connect(port)
        assert client.transport is not None
        client.transport.write(request("POST", "/reverse", b"abc"))
        [first] = await client.responses(1)
        client.transport.write(request("POST", "/reverse", b"xyz"))
        responses = await client.responses(2)
        self.assertEqual([r.body for r in responses], [b"cba", b"zyx"])
        self.assertEqual(first.command, "WORK_COMPLETE")
        self.assertFalse(client.lost.called)

    async def test_large_body_refused(self) -> None:
        """
        A client sending a body far over the limit reads the 413 and the
        end of the connection, not a reset.
        """
        port = await self.start(max_packet_size=1024)
        client = await self.connect(port)
        assert client.transport is not None
        body = b"x" * (4 * 1024 * 1024)
        client.transport.write(
            b"POST /reverse HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n" % len(body)
        )
        client.transport.write(body)
        [response] = await client.responses(1)
        self.assertEqual(response.status, 413)
        await client.lost
        await self.until(self.server_closed, "the server to close")
        self.assertEqual(self.server.jobs(), [])


# -- processes ---------------------------------------------------------------


def call(
    port: int,
    method: str,
    path: str,
    body: bytes = b"",
    headers: Sequence[tuple[str, str]] = (),
    timeout: float = 10.0,
) -> Response:
    """
    One request with Python's http.client, on a connection of its own.
    """
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.putrequest(method, path, skip_accept_encoding=True)
        for name, value in headers:
            connection.putheader(name, value)
        if body or method in ("POST", "PUT"):
            connection.putheader("Content-Length", str(len(body)))
        connection.endheaders(body or None)
        reply = connection.getresponse()
        data = reply.read()
        version = b"HTTP/1.1" if reply.version == 11 else b"HTTP/1.0"
        names = {name.lower(): value for name, value in reply.getheaders()}
        return Response(version, reply.status, names, data)
    finally:
        connection.close()


def status(port: int) -> dict[bytes, tuple[int, int, int]]:
    """
    The admin C{status}: function -> (total, running, workers).
    """
    out = {}
    for line in _process.admin(port, b"status").splitlines():
        if line == b".":
            break
        name, total, running, workers = line.split(b"\t")
        out[name] = (int(total), int(running), int(workers))
    return out


def has_workers(port: int, *functions: str) -> bool:
    """
    Whether each function has a worker on the server at C{port}.
    """
    now = status(port)
    return all(now.get(f.encode(), (0, 0, 0))[2] for f in functions)


def recorded(record: Path, n: int) -> bool:
    """
    Whether a worker's record file has C{n} lines.
    """
    return record.exists() and len(record.read_bytes().split()) == n


def wait_until(predicate: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


_HANDLE = re.compile(r"^H:[^:]+:\d+$")


class ProcessTestCase(SynchronousTestCase):
    """
    Servers and workers as processes, all stopped at cleanup.
    """

    def workdir(self, name: str) -> Path:
        path = Path(self.mktemp()).absolute() / name
        path.mkdir(parents=True)
        return path

    def start(self, server: _process.Server) -> _process.Server:
        self.addCleanup(server.kill)
        return server.start()

    def worker(self, port: int, workdir: Path, *functions: str) -> Path:
        """
        Our worker for C{functions}, on the Gearman port; its record file.
        """
        record = workdir / f"record-{'-'.join(functions)}"
        argv = [
            sys.executable,
            "-m",
            "txgearmand.test._http_worker",
            f"tcp:127.0.0.1:{port}",
            str(record),
            *functions,
        ]
        process = _process.spawn(argv, workdir / "worker.log")
        self.addCleanup(_process.reap, process)
        wait_until(partial(has_workers, port, *functions), f"workers for {functions}")
        return record


class TwistdTests(ProcessTestCase):
    """
    C{twistd gearmand --http} as a process.
    """

    def test_http(self) -> None:
        """
        With C{--http}, HTTP requests are jobs for the Gearman workers; the
        log says where it listens.  Without it, nothing else listens.
        """
        workdir = self.workdir("tx")
        http_port = _process.free_port()
        server = self.start(
            _process.twistd_gearmand(
                workdir, f"--http=tcp:{http_port}:interface=127.0.0.1", "--queue=memory"
            )
        )
        self.worker(server.port, workdir, "reverse", "chunks")
        response = call(http_port, "POST", "/reverse", b"hello")
        self.assertEqual((response.status, response.body), (200, b"olleh"))
        self.assertRegex(response.handle or "", _HANDLE)
        response = call(http_port, "POST", "/chunks", b"x")
        self.assertEqual((response.status, response.body), (200, b"abcdefxyz"))
        self.assertIn(f"Listening on 127.0.0.1:{http_port} (--http tcp:{http_port}", server.log())

    def test_off_by_default(self) -> None:
        """
        Without C{--http}, the server listens on its Gearman port only.
        """
        o = tap.GearmandOptions()
        o.parseOptions(["--queue=memory", "--port=tcp:4731:interface=127.0.0.1"])
        self.assertIsNone(o["http"])
        from twisted.internet.testing import MemoryReactorClock

        memory = MemoryReactorClock()
        service = tap.makeService(o, memory)
        service.privilegedStartService()
        self.assertEqual([p[0] for p in memory.tcpServers], [4731])
        o = tap.GearmandOptions()
        o.parseOptions(["--queue=memory", "--port=4731", "--http=8081"])
        self.assertEqual(o["http"], "tcp:8081")
        memory = MemoryReactorClock()
        service = tap.makeService(o, memory)
        service.privilegedStartService()
        self.assertEqual([p[0] for p in memory.tcpServers], [4731, 8081])
        self.assertIsInstance(memory.tcpServers[1][1], HTTPSubmitFactory)

    def test_http_port_in_use(self) -> None:
        """
        An C{--http} port that cannot be bound ends the start with one line
        saying so, before anything else starts.
        """
        taken = socket.socket()
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        self.addCleanup(taken.close)
        workdir = self.workdir("tx")
        description = f"tcp:{taken.getsockname()[1]}:interface=127.0.0.1"
        options = [f"--port=tcp:{_process.free_port()}", f"--http={description}", "--queue=memory"]
        result = subprocess.run(
            [sys.executable, "-c", _process._TWISTD, "-n", "--pidfile=", "gearmand", *options],
            cwd=workdir,
            env=_process.environment(),
            capture_output=True,
            timeout=60,
            check=False,
        )
        output = (result.stdout + result.stderr).decode()
        self.assertEqual(result.returncode, 1, output)
        self.assertNotIn("Traceback", output)
        self.assertIn(f"cannot listen on --http {description}: ", output)
        self.assertEqual(len(output.strip().splitlines()), 1, output)

    def test_bad_http_option(self) -> None:
        """
        A bad C{--http} endpoint is one line naming it.
        """
        from twisted.python.usage import UsageError

        for value in ["abc", "tcp:99999"]:
            o = tap.GearmandOptions()
            with self.assertRaises(UsageError) as e:
                o.parseOptions([f"--http={value}"])
            self.assertIn("--http", str(e.exception))


class SideBySideTests(ProcessTestCase):
    """
    The same requests to Debian's C gearmand with C{-r http} and to
    C{twistd gearmand --http}, each with the same workers: the answers
    agree but where C{docs/guide/http.rst} lists a difference.
    """

    def setUp(self) -> None:
        if shutil.which("gearman") is None:
            raise SkipTest("gearman-tools is not installed (gearman, for its workers)")
        workdir = self.workdir("c")
        c = _process.c_gearmand(workdir, "--queue-type=builtin")
        if c is None:
            raise SkipTest("Debian's C gearmand (gearman-job-server) is not installed")
        self.c_http = _process.free_port()
        c.argv += ["-r", "http", f"--http-port={self.c_http}"]
        self.c = self.start(c)
        self.c_dir = workdir
        workdir = self.workdir("tx")
        self.tx_http = _process.free_port()
        self.tx = self.start(
            _process.twistd_gearmand(
                workdir, f"--http=tcp:{self.tx_http}:interface=127.0.0.1", "--queue=memory"
            )
        )
        self.tx_dir = workdir
        for server, where in [(self.c, self.c_dir), (self.tx, self.tx_dir)]:
            for function, command in [("reverse", "rev"), ("fail", "false")]:
                argv = ["gearman", "-h", "127.0.0.1", "-p", str(server.port)]
                argv += ["-w", "-f", function, "--", command]
                process = _process.spawn(argv, where / f"gearman-{function}.log")
                self.addCleanup(_process.reap, process)
            self.worker(server.port, where, "exception", "slow")
            wait_until(partial(has_workers, server.port, "reverse", "fail"), "gearman -w workers")

    def both(self, *args: Any, **kwargs: Any) -> tuple[Response, Response]:
        """
        The same request to C gearmand and to ours.
        """
        return call(self.c_http, *args, **kwargs), call(self.tx_http, *args, **kwargs)

    def test_same(self) -> None:
        """
        Foreground results, PUT, GET, background and the empty function
        name: same status, body and commands, handles of the same form.
        """
        requests: list[tuple[str, str, bytes, list[tuple[str, str]]]] = [
            ("POST", "/reverse", b"hello", []),
            ("PUT", "/reverse", b"abc", []),
            ("GET", "/reverse", b"", []),
            ("POST", "/reverse", b"bg", [("X-Gearman-Background", "true")]),
            ("POST", "/reverse", b"hi", [("X-Gearman-Priority", "high")]),
            ("POST", "/reverse", b"lo", [("X-Gearman-Priority", "low")]),
        ]
        for method, path, body, headers in requests:
            c, tx = self.both(method, path, body, headers)
            self.assertEqual((c.status, c.body, c.command), (tx.status, tx.body, tx.command))
            self.assertRegex(c.handle or "", _HANDLE)
            self.assertRegex(tx.handle or "", _HANDLE)
        c, tx = self.both("POST", "/", b"x")
        self.assertEqual((c.status, tx.status), (404, 404))
        self.assertEqual(c.version, b"HTTP/1.0")
        self.assertEqual(tx.version, b"HTTP/1.1")

    def test_unique(self) -> None:
        """
        Two requests with the same unique at once share one job and its
        result, on both servers.
        """
        for port in (self.c_http, self.tx_http):
            results: list[Response] = []

            def ask(body: bytes, port: int = port, results: list[Response] = results) -> None:
                headers = [("X-Gearman-Unique", "same")]
                results.append(call(port, "POST", "/slow", body, headers))

            first = threading.Thread(target=ask, args=(b"one",))
            first.start()
            time.sleep(0.3)
            second = threading.Thread(target=ask, args=(b"two",))
            second.start()
            first.join(15)
            second.join(15)
            self.assertEqual(len(results), 2)
            self.assertEqual({r.body for r in results}, {b"one/same"})
            self.assertEqual(len({r.handle for r in results}), 1)

    def test_priority(self) -> None:
        """
        Background jobs queued at low, normal and high priority run high
        first, on both servers.
        """
        for server, http_port, workdir in [
            (self.c, self.c_http, self.c_dir),
            (self.tx, self.tx_http, self.tx_dir),
        ]:
            for value in ["low", "normal", "high"]:
                headers = [("X-Gearman-Background", "true"), ("X-Gearman-Priority", value)]
                response = call(http_port, "POST", "/record", value.encode(), headers)
                self.assertEqual(response.command, "JOB_CREATED")
            record = self.worker(server.port, workdir, "record")
            wait_until(partial(recorded, record, 3), "three jobs recorded")
            self.assertEqual(record.read_bytes().split(), [b"high", b"normal", b"low"])

    def test_failures(self) -> None:
        """
        A failing job: C answers 200, ours 500, both with C{WORK_FAIL} and
        no body (C cuts the handle's last character: ours is whole).  A job
        that raises: C sends a bare WORK_FAIL; ours 500, WORK_EXCEPTION and
        the exception's text.
        """
        c, tx = self.both("POST", "/fail", b"x")
        self.assertEqual((c.status, c.command, c.body), (200, "WORK_FAIL", b""))
        self.assertEqual((tx.status, tx.command, tx.body), (500, "WORK_FAIL", b""))
        self.assertRegex(tx.handle or "", _HANDLE)
        c, tx = self.both("POST", "/exception", b"x")
        self.assertEqual((c.status, c.command, c.body), (200, "WORK_FAIL", b""))
        self.assertEqual(
            (tx.status, tx.command, tx.body), (500, "WORK_EXCEPTION", b"ValueError: boom")
        )

    def test_unknown_function(self) -> None:
        """
        A job nobody can do: neither server answers; once the client gives
        up, C keeps the job queued, ours drops it.
        """
        for port in (self.c_http, self.tx_http):
            with self.assertRaises(socket.timeout):
                call(port, "POST", "/nobody", b"x", timeout=1.0)
        wait_until(lambda: b"nobody" not in status(self.tx.port), "the job dropped")
        self.assertEqual(status(self.c.port).get(b"nobody"), (1, 0, 0))

    def test_bad_method(self) -> None:
        """
        C closes on a method it does not know, without an answer; ours
        answers 405.
        """
        with self.assertRaises((http.client.RemoteDisconnected, ConnectionError)):
            call(self.c_http, "DELETE", "/reverse")
        self.assertEqual(call(self.tx_http, "DELETE", "/reverse").status, 405)
