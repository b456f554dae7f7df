"""
Tests for the status site, L{txgearmand.web.site}: C{/status.json} after
a scripted run, the page's headers, the changes (cancel a job, set a max
queue) and their guards, C{--web} in C{twistd gearmand}; and the page in a
real headless Chromium against a real C{twistd gearmand --web}.

The unit tests speak HTTP to the site over an in-memory transport (the
bytes a browser sends, through Twisted's own HTTP parser), with the job
server on a fake clock.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import shutil
import socket
import subprocess
import sys
import time
from html.parser import HTMLParser
from pathlib import Path
from typing import Any, Callable, NamedTuple, Optional, cast

from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.interfaces import IAddress
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import LogLevel, formatEvent
from twisted.python.usage import UsageError
from twisted.trial.unittest import SkipTest, SynchronousTestCase
from twisted.web.test.requesthelper import DummyRequest

from txgearmand import _log, tap
from txgearmand.status import snapshot
from txgearmand.test import _process
from txgearmand.test.helpers import FakeConnection, ServerTestMixin
from txgearmand.test.helpers import capture_logs as _capture
from txgearmand.web import site as web
from txgearmand.wire import PacketType as P

LOCAL = IPv4Address("TCP", "127.0.0.1", 50000)
REMOTE = IPv4Address("TCP", "192.0.2.7", 50000)
HOST = "127.0.0.1:8080"


class Response(NamedTuple):
    """
    An HTTP response, as read from the wire.
    """

    code: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def _dechunk(data: bytes) -> bytes:
    out = b""
    while True:
        size_line, _, data = data.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            return out
        out += data[:size]
        data = data[size + 2 :]


def http(
    site: web.StatusSite,
    method: str,
    path: str,
    headers: Optional[dict[str, str]] = None,
    body: bytes = b"",
    peer: IAddress = LOCAL,
) -> Response:
    """
    Send one request to the site over an in-memory connection from
    C{peer}; the response.  C{Host} is C{127.0.0.1:8080} unless given.
    """
    all_headers = {"Host": HOST, "Content-Length": str(len(body)), "Connection": "close"}
    all_headers.update(headers or {})
    if all_headers.get("Transfer-Encoding") == "chunked":
        del all_headers["Content-Length"]
    channel = site.buildProtocol(peer)
    assert channel is not None
    transport = StringTransport(hostAddress=IPv4Address("TCP", "127.0.0.1", 8080), peerAddress=peer)
    channel.makeConnection(transport)
    head = f"{method} {path} HTTP/1.1\r\n" + "".join(
        f"{name}: {value}\r\n" for name, value in all_headers.items()
    )
    channel.dataReceived(head.encode("latin-1") + b"\r\n" + body)
    raw = transport.value()
    status, _, rest = raw.partition(b"\r\n")
    header_block, _, content = rest.partition(b"\r\n\r\n")
    parsed: dict[str, str] = {}
    for line in header_block.split(b"\r\n"):
        name, _, value = line.decode("latin-1").partition(":")
        parsed[name.strip().lower()] = value.strip()
    if parsed.get("transfer-encoding") == "chunked":
        content = _dechunk(content)
    elif "content-length" in parsed:
        content = content[: int(parsed["content-length"])]
    return Response(int(status.split()[1]), parsed, content)


class SiteTestMixin(ServerTestMixin):
    """
    A job server on a fake clock and its status site.
    """

    site: web.StatusSite

    def make_site(self, **options: Any) -> web.StatusSite:
        if not hasattr(self, "server"):
            self.make_server()
        self.site = web.StatusSite(self.server, **options)
        self.site.doStart()
        cast(SynchronousTestCase, self).addCleanup(self.site.doStop)
        return self.site

    def get(self, path: str, **kwargs: Any) -> Response:
        return http(self.site, "GET", path, **kwargs)

    def post(
        self,
        path: str,
        data: Any,
        token: Optional[str] = "",
        headers: Optional[dict[str, str]] = None,
        **kwargs: Any,
    ) -> Response:
        """
        POST JSON with the site's token (C{token=None}: without one).
        """
        sent = {"Content-Type": "application/json"}
        if token is not None:
            sent[web.TOKEN_HEADER.decode()] = token or self.site.token
        sent.update(headers or {})
        body = data if isinstance(data, bytes) else json.dumps(data).encode()
        return http(self.site, "POST", path, headers=sent, body=body, **kwargs)


class StatusJSONTests(SiteTestMixin, SynchronousTestCase):
    """
    C{/status.json} is the server's snapshot, computed per request.
    """

    def scripted_run(self) -> None:
        """
        Submit N=6 background jobs of C{resize}; a worker completes M=2,
        fails K=1, and holds one; two stay queued.
        """
        self.make_server()
        self.make_site()
        client = self.connect()
        client.send(P.SET_CLIENT_ID, b"web-client")
        self.handles = [
            client.submit(b"resize", b"p%d" % i, ptype=P.SUBMIT_JOB_BG) for i in range(6)
        ]
        working = self.worker_for(b"resize")
        for reply in (P.WORK_COMPLETE, P.WORK_COMPLETE, P.WORK_FAIL):
            handle = working.grab()[1][0]
            self.clock.advance(1)
            working.send(reply, *((handle,) if reply == P.WORK_FAIL else (handle, b"ok")))
        working.grab()
        self.clock.advance(5)

    def worker_for(self, *functions: bytes) -> FakeConnection:
        worker = self.connect()
        worker.send(P.SET_CLIENT_ID, b"web-worker")
        return worker.can_do(*functions)

    def test_values(self) -> None:
        """
        After N submitted, M completed and K failed, the JSON says so:
        totals, the function's row (queued, running, workers), the jobs
        listed, the worker and the client; it is the snapshot.
        """
        self.scripted_run()
        response = self.get("/status.json")
        self.assertEqual(response.code, 200)
        data = response.json()
        self.assertEqual(data, json.loads(json.dumps(snapshot(self.server, self.site.limit))))
        totals = data["totals"]
        self.assertEqual((totals["submitted_bg"], totals["completed"], totals["failed"]), (6, 2, 1))
        self.assertEqual((totals["queued"], totals["running"]), (2, 1))
        [row] = data["functions"]
        self.assertEqual(row["name"], "resize")
        self.assertEqual(row["queued"], {"high": 0, "normal": 2, "low": 0})
        self.assertEqual((row["running"], row["workers"], row["completed"]), (1, 1, 2))
        self.assertEqual(data["jobs"]["total"], 3)
        self.assertEqual(
            sorted(j["handle"] for j in data["jobs"]["list"]),
            sorted(h.decode() for h in self.handles[3:]),
        )
        states = sorted(j["state"] for j in data["jobs"]["list"])
        self.assertEqual(states, ["queued", "queued", "running"])
        [worker] = data["workers"]
        self.assertEqual(
            (worker["id"], worker["functions"], worker["done"]), ("web-worker", ["resize"], 3)
        )
        [client] = data["clients"]
        self.assertEqual((client["id"], client["submitted"]), ("web-client", 6))
        self.assertEqual(data["run_time"]["count"], 3)
        self.assertTrue(data["rates"]["samples"])

    def test_headers(self) -> None:
        """
        JSON, never cached, with the site's security headers.
        """
        self.make_site()
        response = self.get("/status.json")
        self.assertEqual(response.headers["content-type"], "application/json")
        self.assertEqual(response.headers["cache-control"], "no-store")
        self.assertEqual(response.headers["content-security-policy"], web.CSP.decode())
        self.assertEqual(response.headers["x-content-type-options"], "nosniff")

    def test_limit(self) -> None:
        """
        The lists stop at the site's limit; the totals do not.
        """
        self.make_server()
        self.make_site(limit=3)
        client = self.connect()
        for i in range(10):
            client.submit(b"f%d" % i, b"", ptype=P.SUBMIT_JOB_BG)
        data = self.get("/status.json").json()
        self.assertEqual((data["jobs"]["total"], data["jobs"]["shown"]), (10, 3))
        self.assertEqual(len(data["jobs"]["list"]), 3)
        self.assertEqual(len(data["functions"]), 3)
        self.assertEqual(data["totals"]["queued"], 10)

    def test_watched(self) -> None:
        """
        A site that starts turns on the meters' timing and history.
        """
        self.make_server()
        self.assertFalse(self.server.meters.timing)
        self.make_site()
        self.assertTrue(self.server.meters.timing)

    def test_network_text(self) -> None:
        """
        Names and ids from the network come through as JSON strings, not
        bytes reprs, whatever they hold.
        """
        self.make_server()
        self.make_site()
        client = self.connect()
        client.submit(b"<b>f</b>", b"", unique=b"\xff\"'", ptype=P.SUBMIT_JOB_BG)
        data = self.get("/status.json").json()
        self.assertEqual(data["functions"][0]["name"], "<b>f</b>")
        self.assertEqual(data["jobs"]["list"][0]["unique"], "\\xff\"'")


class _Page(HTMLParser):
    """
    What matters of a page for its safety: scripts, attributes, links.
    """

    def __init__(self) -> None:
        super().__init__()
        self.scripts: list[dict[str, Optional[str]]] = []
        self.script_text = ""
        self.in_script = False
        self.attributes: list[tuple[str, str, Optional[str]]] = []
        self.metas: dict[str, str] = {}

    def handle_starttag(self, tag: str, attrs: list[tuple[str, Optional[str]]]) -> None:
        for name, value in attrs:
            self.attributes.append((tag, name, value))
        if tag == "script":
            self.scripts.append(dict(attrs))
            self.in_script = True
        if tag == "meta":
            values = dict(attrs)
            if values.get("name"):
                self.metas[values["name"] or ""] = values.get("content") or ""

    def handle_endtag(self, tag: str) -> None:
        if tag == "script":
            self.in_script = False

    def handle_data(self, data: str) -> None:
        if self.in_script:
            self.script_text += data


class PageTests(SiteTestMixin, SynchronousTestCase):
    """
    The page, its static files, and what is not there.
    """

    def page(self, **kwargs: Any) -> _Page:
        response = self.get("/", **kwargs)
        self.assertEqual(response.code, 200)
        parsed = _Page()
        parsed.feed(response.body.decode("utf-8"))
        return parsed

    def test_headers(self) -> None:
        """
        HTML in UTF-8, never cached, with a policy that allows the site's
        own scripts, styles, images and fetches only: no inline script or
        style, nothing remote, no framing, no form posts.
        """
        self.make_site()
        response = self.get("/")
        self.assertEqual(response.headers["content-type"], "text/html; charset=utf-8")
        self.assertEqual(response.headers["cache-control"], "no-store")
        policy = dict(
            (part.split()[0], part.split()[1:])
            for part in response.headers["content-security-policy"].split(";")
        )
        self.assertEqual(policy["default-src"], ["'none'"])
        for directive in ("script-src", "style-src", "img-src", "connect-src"):
            self.assertEqual(policy[directive], ["'self'"], directive)
        self.assertEqual(policy["frame-ancestors"], ["'none'"])
        self.assertEqual(policy["form-action"], ["'none'"])
        self.assertNotIn("unsafe", response.headers["content-security-policy"])
        self.assertEqual(response.headers["x-frame-options"], "DENY")
        self.assertEqual(response.headers["referrer-policy"], "no-referrer")

    def test_no_inline_script(self) -> None:
        """
        The page's scripts are files of the site; no inline script, event
        handler attribute, style attribute or remote URL.
        """
        self.make_site()
        page = self.page()
        self.assertEqual([s.get("src") for s in page.scripts], ["static/status.js"])
        self.assertEqual(page.script_text.strip(), "")
        for tag, name, value in page.attributes:
            self.assertFalse(name.startswith("on"), (tag, name))
            self.assertNotEqual(name, "style", tag)
            if name in ("src", "href"):
                self.assertNotRegex(value or "", r"^(\w+:|//)", (tag, name))

    def test_token_and_may_change(self) -> None:
        """
        The page carries the process's token, and says whether its
        reader may make changes (from the loopback, yes; elsewhere, no).
        """
        self.make_site(limit=50, refresh=1)
        page = self.page()
        self.assertEqual(page.metas["txgearmand-token"], self.site.token)
        self.assertEqual(page.metas["txgearmand-may-change"], "yes")
        self.assertEqual(page.metas["txgearmand-limit"], "50")
        self.assertEqual(page.metas["txgearmand-refresh"], "2")
        self.assertEqual(self.page(peer=REMOTE).metas["txgearmand-may-change"], "no")
        other = web.StatusSite(self.server)
        self.assertNotEqual(other.token, self.site.token)
        self.assertGreaterEqual(len(self.site.token), 40)
        self.assertEqual(web.StatusSite(self.server, token="a-b_C1").token, "a-b_C1")
        self.assertRaises(ValueError, web.StatusSite, self.server, token='x"><script>')

    def test_static(self) -> None:
        """
        The script, style sheet and icon, each with its type.
        """
        self.make_site()
        for name, content_type in [
            ("status.js", "text/javascript; charset=utf-8"),
            ("status.css", "text/css; charset=utf-8"),
            ("favicon.svg", "image/svg+xml"),
        ]:
            response = self.get("/static/" + name)
            self.assertEqual(response.code, 200, name)
            self.assertEqual(response.headers["content-type"], content_type)
            self.assertIn("content-security-policy", response.headers)
            self.assertTrue(response.body)

    def test_script_builds_no_html(self) -> None:
        """
        The script never turns text into HTML: no innerHTML, outerHTML,
        insertAdjacentHTML, document.write, eval or Function; it loads
        nothing from elsewhere.
        """
        self.make_site()
        script = self.get("/static/status.js").body.decode("utf-8")
        code = "\n".join(line for line in script.splitlines() if not line.strip().startswith("//"))
        for banned in (
            "innerHTML",
            "outerHTML",
            "insertAdjacentHTML",
            "document.write",
            "eval(",
            "Function(",
        ):
            self.assertNotIn(banned, code)
        self.assertNotRegex(code, r"https?://(?!www\.w3\.org/2000/svg)")
        self.assertIn("textContent", code)

    def test_not_found(self) -> None:
        """
        Anything else is 404, with the security headers; no directory
        listing.
        """
        self.make_site()
        for path in ("/nope", "/static/", "/static/nope.js", "/status.json/x", "/actions/"):
            response = self.get(path)
            self.assertEqual(response.code, 404, path)
            self.assertIn("content-security-policy", response.headers)

    def test_methods(self) -> None:
        """
        The changes are POST only; the rest GET (or HEAD) only.
        """
        self.make_site()
        self.assertEqual(self.get("/actions/cancel").code, 405)
        self.assertEqual(self.post("/status.json", {}).code, 405)
        self.assertEqual(self.post("/", {}).code, 405)
        head = http(self.site, "HEAD", "/status.json")
        self.assertEqual((head.code, head.body), (200, b""))


class ChangeTests(SiteTestMixin, SynchronousTestCase):
    """
    Cancelling a job and setting a max queue, and who may.
    """

    def setUp(self) -> None:
        self.make_server()
        self.make_site()
        self.client = self.connect()
        self.handle = self.client.submit(b"resize", b"photo")
        self.events = _capture(self)

    def cancel(self, **kwargs: Any) -> Response:
        return self.post("/actions/cancel", {"handle": self.handle.decode()}, **kwargs)

    def assertRefused(self, response: Response, code: int = 403) -> None:
        self.assertEqual(response.code, code, response.body)
        self.assertIn("error", response.json())
        self.assertIsNotNone(self.server.job_by_handle(self.handle))

    def test_cancel(self) -> None:
        """
        With the token, from the loopback, a job is cancelled: it is gone,
        its client gets WORK_FAIL, and the log says who did it.
        """
        self.client.packets()
        response = self.cancel()
        self.assertEqual(response.code, 200, response.body)
        self.assertEqual(response.json(), {"ok": True, "handle": self.handle.decode()})
        self.assertEqual(response.headers["cache-control"], "no-store")
        self.assertIsNone(self.server.job_by_handle(self.handle))
        self.client.end_turn()
        self.assertEqual(self.client.packets(), [(P.WORK_FAIL, (self.handle,))])
        [event] = [e for e in self.events if "cancelled job" in formatEvent(e)]
        self.assertEqual(event["log_level"], LogLevel.info)
        self.assertEqual(
            formatEvent(event), f"Status site: 127.0.0.1:50000 cancelled job {self.handle.decode()}"
        )

    def test_cancel_unknown(self) -> None:
        """
        A job that is not there: 404.
        """
        response = self.post("/actions/cancel", {"handle": "H:test:999"})
        self.assertEqual(response.code, 404)
        self.assertEqual(self.post("/actions/cancel", {"handle": 3}).code, 400)

    def test_no_token(self) -> None:
        """
        Without the token, or with another: refused.
        """
        self.assertRefused(self.cancel(token=None))
        self.assertRefused(self.cancel(token="x" * 43))
        self.assertRefused(self.cancel(token=self.site.token[:-1]))

    def test_peer_not_allowed(self) -> None:
        """
        From an address that is not local, even with the token: refused,
        and logged with the reason.
        """
        self.assertRefused(self.cancel(peer=REMOTE))
        self.assertRefused(self.cancel(peer=IPv6Address("TCP", "::ffff:10.0.0.1", 1)))
        event = next(e for e in self.events if "refused" in formatEvent(e))
        self.assertIn("192.0.2.7", formatEvent(event))
        self.assertIn("not allowed from this address", formatEvent(event))

    def test_local_peers(self) -> None:
        """
        The loopback in IPv4, IPv6 and IPv4-on-IPv6, and UNIX sockets, may.
        """
        for peer in (
            IPv6Address("TCP", "::1", 1),
            IPv6Address("TCP", "::ffff:127.0.0.1", 1),
            UNIXAddress(b"/tmp/web.sock"),
            LOCAL,
        ):
            handle = self.client.submit(b"resize", b"x")
            response = self.post("/actions/cancel", {"handle": handle.decode()}, peer=peer)
            self.assertEqual(response.code, 200, peer)

    def test_may_change_replaced(self) -> None:
        """
        The access rule is one attribute: replaced, it decides alone who
        may (the other checks stay).
        """
        self.site.may_change = lambda request: False
        self.assertRefused(self.cancel())
        self.assertEqual(self.get("/").body.count(b'content="no"'), 1)
        self.site.may_change = lambda request: request.getClientAddress().host == "192.0.2.7"
        self.assertRefused(self.cancel(peer=REMOTE, token=None))
        self.assertEqual(self.cancel(peer=REMOTE).code, 200)

    def test_other_origin(self) -> None:
        """
        A request from another site (its Origin is not the Host), or from
        an opaque origin: refused.  The same origin: allowed.
        """
        for origin in ("http://evil.example", "http://127.0.0.1:8081", "null", "garbage"):
            self.assertRefused(self.cancel(headers={"Origin": origin}))
        self.assertEqual(self.cancel(headers={"Origin": "http://127.0.0.1:8080"}).code, 200)

    def test_host_not_this_server(self) -> None:
        """
        A Host that does not name this server (DNS rebinding: a page of
        evil.example whose name now points at 127.0.0.1): refused, even
        with a matching Origin.  IP addresses, localhost and the machine's
        name are this server.
        """
        self.assertRefused(
            self.cancel(headers={"Host": "evil.example:8080", "Origin": "http://evil.example:8080"})
        )
        self.assertRefused(self.cancel(headers={"Host": ""}))
        for host in ("localhost:8080", "[::1]:8080", "10.1.2.3", socket.gethostname().upper()):
            self.assertTrue(self.site.trusted_host(host), host)
        self.assertEqual(self.cancel(headers={"Host": "localhost:8080"}).code, 200)

    def test_not_json(self) -> None:
        """
        A body that is not JSON, or not said to be, is refused.
        """
        self.assertRefused(self.cancel(headers={"Content-Type": "text/plain"}), 415)
        self.assertRefused(
            self.cancel(headers={"Content-Type": "application/x-www-form-urlencoded"}), 415
        )
        self.assertRefused(self.post("/actions/cancel", b"handle=H:test:1"), 400)
        self.assertRefused(self.post("/actions/cancel", [1]), 400)

    def test_body_too_large(self) -> None:
        """
        A body over the limit gets 413 and is not kept.
        """
        big = {"handle": self.handle.decode(), "pad": "x" * web.MAX_BODY}
        self.assertRefused(self.post("/actions/cancel", big), 413)
        body = json.dumps(big).encode()
        half = len(body) // 2
        chunked = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in (body[:half], body[half:]))
        response = self.post(
            "/actions/cancel", chunked + b"0\r\n\r\n", headers={"Transfer-Encoding": "chunked"}
        )
        self.assertRefused(response, 413)
        self.assertEqual(self.cancel().code, 200)

    def test_max_queue(self) -> None:
        """
        Three limits, one for all, none: each is set as the admin
        C{maxqueue} sets it, and really limits submissions.
        """
        response = self.post("/actions/maxqueue", {"function": "resize", "limits": [3, 2, 1]})
        self.assertEqual(response.code, 200, response.body)
        self.assertEqual(
            response.json(), {"ok": True, "function": "resize", "max_queue": [3, 2, 1]}
        )
        self.assertEqual(self.server.max_queue(b"resize"), (3, 2, 1))
        self.client.submit(b"resize", b"second")
        self.client.packets()
        self.client.send(P.SUBMIT_JOB, b"resize", b"", b"third")
        [(ptype, args)] = self.client.packets()
        self.assertEqual((ptype, args[0]), (P.ERROR, b"QUEUE_ERROR"))
        self.post("/actions/maxqueue", {"function": "resize", "limits": 5})
        self.assertEqual(self.server.max_queue(b"resize"), (5, 5, 5))
        cleared = self.post("/actions/maxqueue", {"function": "resize", "limits": None})
        self.assertEqual(cleared.json()["max_queue"], None)
        self.assertIsNone(self.server.max_queue(b"resize"))
        text = [formatEvent(e) for e in self.events if "max queue" in formatEvent(e)]
        self.assertEqual(
            text,
            [
                "Status site: 127.0.0.1:50000 set the max queue of resize to 3,2,1",
                "Status site: 127.0.0.1:50000 set the max queue of resize to 5,5,5",
                "Status site: 127.0.0.1:50000 set the max queue of resize to none",
            ],
        )

    def test_max_queue_bad(self) -> None:
        """
        Bad limits or no function: 400, nothing set; refused without the
        token or from elsewhere.
        """
        for data in (
            {"function": "resize", "limits": [1, 2]},
            {"function": "resize", "limits": -1},
            {"function": "resize", "limits": "3"},
            {"function": "resize", "limits": True},
            {"function": "", "limits": 3},
            {"limits": 3},
        ):
            self.assertEqual(self.post("/actions/maxqueue", data).code, 400, data)
        good = {"function": "resize", "limits": 3}
        self.assertEqual(self.post("/actions/maxqueue", good, token=None).code, 403)
        self.assertEqual(self.post("/actions/maxqueue", good, peer=REMOTE).code, 403)
        self.assertIsNone(self.server.max_queue(b"resize"))

    def test_refusals_logged_sparingly(self) -> None:
        """
        Refused changes are logged ten times, then one in a thousand.
        """
        for _ in range(1000):
            self.cancel(token=None)
        refused = [e for e in self.events if "refused a change" in formatEvent(e)]
        self.assertEqual(len(refused), 11)


class TapTests(SynchronousTestCase):
    """
    C{--web} in C{twistd gearmand}.
    """

    def setUp(self) -> None:
        self.addCleanup(_log.set_level, "INFO")

    def options(self, *argv: str) -> tap.GearmandOptions:
        o = tap.GearmandOptions()
        o.parseOptions(["--queue=memory", "--port=tcp:4731", *argv])
        return o

    def test_off_by_default(self) -> None:
        """
        Without C{--web}, only the Gearman port listens and nothing is
        timed.
        """
        reactor = MemoryReactorClock()
        service = tap.makeService(self.options(), reactor)
        service.privilegedStartService()
        service.startService()
        self.assertEqual([p[0] for p in reactor.tcpServers], [4731])
        self.assertFalse(service.job_server.meters.timing)

    def test_web(self) -> None:
        """
        With C{--web}, the site listens where it says, as one of the ports
        (stopped with them), the meters keep their history, and the start
        log says where the site is.
        """
        events = _capture(self)
        reactor = MemoryReactorClock()
        service = tap.makeService(self.options("--web=tcp:8080:interface=127.0.0.1"), reactor)
        service.privilegedStartService()
        service.startService()
        self.assertEqual([p[0] for p in reactor.tcpServers], [4731, 8080])
        _, factory, _, interface = reactor.tcpServers[1]
        assert isinstance(factory, web.StatusSite)
        self.assertIs(factory.job_server, service.job_server)
        self.assertEqual(interface, "127.0.0.1")
        self.assertTrue(service.job_server.meters.timing)
        text = "\n".join(formatEvent(e) for e in events)
        self.assertIn("(--web tcp:8080:interface=127.0.0.1)", text)
        self.assertRegex(text, r"Status site at http://[0-9.]+:8080/")
        self.successResultOf(service.stopService())
        self.assertFalse([s for s in service if s.running])

    def test_values(self) -> None:
        """
        A port number is a TCP port; an endpoint that cannot be listened
        on is refused, naming the option.
        """
        self.assertIsNone(self.options()["web"])
        self.assertEqual(self.options("--web=8080")["web"], "tcp:8080")
        self.assertEqual(self.options("--web", " unix:/tmp/w.sock ")["web"], "unix:/tmp/w.sock")
        for bad in ("tcp:99999", "bogus:1"):
            with self.assertRaises(UsageError) as caught:
                self.options(f"--web={bad}")
            self.assertIn(f"--web {bad}", str(caught.exception))

    def test_port_in_use(self) -> None:
        """
        As a process: a site port in use ends the start, before twistd
        daemonizes, with one line naming it and exit status 1.
        """
        workdir = Path(self.mktemp()).resolve()
        workdir.mkdir(parents=True)
        taken = socket.socket()
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        self.addCleanup(taken.close)
        web_port = f"tcp:{taken.getsockname()[1]}:interface=127.0.0.1"
        result = subprocess.run(
            [
                sys.executable,
                "-c",
                _process._TWISTD,
                "-n",
                "--pidfile=",
                "gearmand",
                f"--port=tcp:{_process.free_port()}:interface=127.0.0.1",
                "--queue=memory",
                f"--web={web_port}",
            ],
            cwd=workdir,
            env=_process.environment(),
            capture_output=True,
            timeout=60,
            check=False,
        )
        output = (result.stdout + result.stderr).decode()
        self.assertEqual(result.returncode, 1, output)
        self.assertNotIn("Traceback", output)
        [line] = output.strip().splitlines()
        self.assertIn(f"cannot listen on --web {web_port}: ", line)
        self.assertIn("Address already in use", line)


# -- the page in a real browser ------------------------------------------------

#: The longest a browser step may take (PyPy and loaded machines are slow).
BROWSER_TIMEOUT = 30.0


def _browser_paths() -> tuple[str, str]:
    """
    Chromium and its driver, or skip saying what is missing.
    """
    if importlib.util.find_spec("selenium") is None:
        raise SkipTest(
            "selenium is not installed (pip install selenium; the test extra installs it"
            " on CPython)"
        )
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        raise SkipTest("Chromium is not installed (apt-get install chromium chromium-driver)")
    driver = shutil.which("chromedriver")
    if driver is None:
        raise SkipTest("chromedriver is not installed (apt-get install chromium-driver)")
    return chromium, driver


def _reply(connection: _process.PacketConnection, ptype: int) -> list[bytes]:
    return connection.expect(ptype).split(b"\0")


class BrowserTests(SynchronousTestCase):
    """
    The page as a person sees it: a real C{twistd gearmand --web} with a
    worker holding a job and jobs queued, loaded in Debian's Chromium,
    headless, driven by chromedriver through selenium.
    """

    #: A function name that would run script if it were taken as HTML.
    EVIL = b'<img src=x onerror="window.pwned=1">'

    def setUp(self) -> None:
        chromium, driver = _browser_paths()
        self.workdir = Path(self.mktemp()).resolve()
        self.workdir.mkdir(parents=True)
        self.web_port = _process.free_port()
        self.server = _process.twistd_gearmand(
            self.workdir, "--queue=memory", f"--web=tcp:{self.web_port}:interface=127.0.0.1"
        )
        self.server.start()
        self.addCleanup(self.server.stop)
        self.driver = self.start_browser(chromium, driver)

    def start_browser(self, chromium: str, driver_path: str) -> Any:
        webdriver = importlib.import_module("selenium.webdriver")
        service_module = importlib.import_module("selenium.webdriver.chrome.service")
        options = webdriver.ChromeOptions()
        options.binary_location = chromium
        for argument in (
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-default-apps",
            "--disable-extensions",
            "--disable-sync",
            "--window-size=1280,1700",
            f"--user-data-dir={self.workdir / 'chromium-profile'}",
        ):
            options.add_argument(argument)
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        service = service_module.Service(
            executable_path=driver_path, log_output=str(self.workdir / "chromedriver.log")
        )
        driver = webdriver.Chrome(options=options, service=service)
        self.addCleanup(driver.quit)
        driver.set_page_load_timeout(BROWSER_TIMEOUT)
        driver.set_script_timeout(BROWSER_TIMEOUT)
        return driver

    def gearman(self) -> _process.PacketConnection:
        connection = _process.PacketConnection(self.server.port)
        self.addCleanup(connection.close)
        return connection

    def wait(self, what: str, condition: Callable[[], Any]) -> Any:
        """
        Poll a condition until it holds (its value), or fail saying what
        did not happen.
        """
        deadline = time.monotonic() + BROWSER_TIMEOUT
        last: Any = None
        while time.monotonic() < deadline:
            try:
                last = condition()
            except Exception as e:  # The page may be between two renders.
                last = e
            else:
                if last:
                    return last
            time.sleep(0.2)
        self.fail(f"{what}: not within {BROWSER_TIMEOUT} s (last: {last!r})")

    def rows(self, table: str) -> list[list[str]]:
        """
        The text of each cell of a table's body, as shown (without its
        buttons).
        """
        return cast(
            list[list[str]],
            self.driver.execute_script(
                "return Array.from(document.querySelectorAll(arguments[0] + ' tbody tr'))"
                ".map((tr) => Array.from(tr.cells).map((c) => Array.from(c.childNodes)"
                ".filter((n) => n.nodeName !== 'BUTTON').map((n) => n.textContent)"
                ".join('').trim()));",
                table,
            ),
        )

    def function_row(self, name: str) -> Optional[list[str]]:
        for row in self.rows("#functions"):
            if row and row[0] == name:
                return row
        return None

    def status(self) -> Any:
        from urllib.request import urlopen

        with urlopen(f"http://127.0.0.1:{self.web_port}/status.json", timeout=10) as r:
            return json.load(r)

    def test_page(self) -> None:
        """
        With a worker holding a job and jobs queued at each priority, the
        page shows the functions' rows with their numbers, the worker, the
        jobs, the chart with data points, refreshes by itself, cancels a
        job and sets a max queue from its buttons, shows a hostile
        function name as text, and logs no console error; a screenshot is
        saved.
        """
        worker = self.gearman()
        worker.send(P.SET_CLIENT_ID, b"page-worker")
        worker.send(P.CAN_DO, b"resize")
        client = self.gearman()
        client.send(P.SET_CLIENT_ID, b"page-client")
        # Three done, so there is something per second to draw.
        for i in range(3):
            client.send(P.SUBMIT_JOB_BG, b"resize", b"", b"done-%d" % i)
            client.expect(P.JOB_CREATED)
            worker.send(P.GRAB_JOB_UNIQ)
            handle = _reply(worker, P.JOB_ASSIGN_UNIQ)[0]
            worker.send(P.WORK_COMPLETE, handle, b"ok")
        queued = [
            (P.SUBMIT_JOB_HIGH_BG, b"resize"),
            (P.SUBMIT_JOB_HIGH_BG, b"resize"),
            (P.SUBMIT_JOB_BG, b"resize"),
            (P.SUBMIT_JOB_BG, b"resize"),
            (P.SUBMIT_JOB_BG, b"resize"),
            (P.SUBMIT_JOB_LOW_BG, b"resize"),
            (P.SUBMIT_JOB_BG, self.EVIL),
            (P.SUBMIT_JOB_BG, self.EVIL),
        ]
        handles = []
        for n, (ptype, function) in enumerate(queued):
            client.send(ptype, function, b"<script>u%d</script>" % n, b"payload")
            handles.append(client.expect(P.JOB_CREATED))
        worker.send(P.GRAB_JOB_UNIQ)
        held = _reply(worker, P.JOB_ASSIGN_UNIQ)[0]
        self.assertEqual(held, handles[0])  # High first.

        self.driver.get(f"http://127.0.0.1:{self.web_port}/")
        evil = self.EVIL.decode()
        row = self.wait("the resize row", lambda: self.function_row("resize"))
        # Function, high, normal, low, scheduled, running, workers, max queue, completed.
        self.assertEqual(row[:9], ["resize", "1", "3", "1", "0", "1", "1", "\u2013", "3"])
        evil_row = self.wait("the hostile row", lambda: self.function_row(evil))
        self.assertEqual(evil_row[1:7], ["0", "2", "0", "0", "0", "0"])
        [worker_row] = self.rows("#workers")
        self.assertEqual(worker_row[1:4], ["page-worker", "resize", held.decode()])
        jobs = {r[0]: r for r in self.rows("#jobs")}
        self.assertEqual(set(jobs), {h.decode() for h in handles})
        self.assertEqual(jobs[held.decode()][3], "running")
        self.assertEqual(jobs[handles[6].decode()][1:3], [evil, "<script>u6</script>"])
        [client_row] = self.rows("#clients")
        self.assertEqual(client_row[1], "page-client")
        self.assertIn("Updated", self.driver.find_element("id", "freshness").text)

        # The chart: a line with points, once the server has a sample.
        points = self.wait(
            "the chart's line",
            lambda: (
                len(
                    self.driver.find_element("css selector", "#rate-chart polyline.in")
                    .get_attribute("points")
                    .split()
                )
                >= 2
                and self.driver.find_element(
                    "css selector", "#rate-chart polyline.in"
                ).get_attribute("points")
            ),
        )
        for point in points.split():
            x, y = (float(v) for v in point.split(","))
            self.assertTrue(0 <= x <= 640 and 0 <= y <= 180, point)
        self.assertTrue(self.driver.find_elements("css selector", "#rate-chart circle"))

        # It refreshes by itself.
        client.send(P.SUBMIT_JOB_BG, b"resize", b"", b"late")
        client.expect(P.JOB_CREATED)
        self.wait("the new job shown", lambda: (self.function_row("resize") or [""] * 3)[2] == "4")

        # Cancel from the page: the button, then the confirmation.
        target = handles[7].decode()

        def click_cancel() -> bool:
            for tr in self.driver.find_elements("css selector", "#jobs tbody tr"):
                if tr.find_element("css selector", "td").text == target:
                    tr.find_element("css selector", "button.cancel").click()
                    return True
            return False

        self.wait(f"the cancel button of {target}", click_cancel)
        self.wait("the confirmation", lambda: self.driver.switch_to.alert).accept()
        self.wait(
            "the job cancelled",
            lambda: target not in {j["handle"] for j in self.status()["jobs"]["list"]},
        )
        self.wait(
            "the message",
            lambda: "Cancelled" in self.driver.find_element("id", "action-result").text,
        )

        # Set a max queue from the page's form.
        form = self.driver.find_element("id", "maxqueue-form")
        form.find_element("name", "function").send_keys("resize")
        for name, value in (("high", "9"), ("normal", "8"), ("low", "7")):
            form.find_element("name", name).send_keys(value)
        form.find_element("css selector", "button[type=submit]").click()
        self.wait(
            "the max queue shown",
            lambda: (self.function_row("resize") or [""] * 8)[7].startswith("9 / 8 / 7"),
        )
        [resize] = [f for f in self.status()["functions"] if f["name"] == "resize"]
        self.assertEqual(resize["max_queue"], [9, 8, 7])

        # Nothing taken as HTML; no error in the console.
        self.assertIsNone(self.driver.execute_script("return window.pwned"))
        self.assertEqual(self.driver.execute_script("return document.images.length"), 0)
        screenshot = self.workdir / "status-page.png"
        self.driver.save_screenshot(str(screenshot))
        self.assertTrue(screenshot.read_bytes().startswith(b"\x89PNG"))
        errors = [e for e in self.driver.get_log("browser") if e.get("level") == "SEVERE"]
        self.assertEqual(errors, [], f"console errors (screenshot: {screenshot})")


class AccessRulesSiteTests(SynchronousTestCase):
    """
    The site's changes follow the server's C{--admin-allow} rules when it
    has any, and it serves C{/metrics}.
    """

    def request_from(self, host: str) -> Any:
        request = DummyRequest([b""])
        transport = StringTransport(peerAddress=IPv4Address("TCP", host, 5555))
        request.channel = type("Channel", (), {"transport": transport})()  # type: ignore[attr-defined]
        request.client = IPv4Address("TCP", host, 5555)
        return request

    def test_rules(self) -> None:
        """
        With rules, a peer they allow may change and the loopback, which
        they leave out, may not; without rules, only the loopback.
        """
        from twisted.internet.task import Clock

        from txgearmand.server import JobServer
        from txgearmand.web.site import StatusSite, local_only

        ruled = StatusSite(JobServer(Clock(), admin_allow=["10.0.0.0/8"]))
        self.assertTrue(ruled.may_change(self.request_from("10.1.2.3")))
        self.assertFalse(ruled.may_change(self.request_from("127.0.0.1")))
        open_site = StatusSite(JobServer(Clock()))
        self.assertIs(open_site.may_change, local_only)
        self.assertFalse(open_site.may_change(self.request_from("10.1.2.3")))

    def test_metrics_child(self) -> None:
        """
        C{/metrics} is the Prometheus exposition.
        """
        from twisted.internet.task import Clock

        from txgearmand import metrics
        from txgearmand.server import JobServer
        from txgearmand.web.site import StatusSite

        site = StatusSite(JobServer(Clock()))
        child = site.resource.getChildWithDefault(b"metrics", DummyRequest([b"metrics"]))
        self.assertIsInstance(child, metrics.MetricsResource)
