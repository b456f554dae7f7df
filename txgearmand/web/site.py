# -*- test-case-name: txgearmand.test.test_web -*-
"""
The status site (C{twistd gearmand --web ENDPOINT}): a page a person reads
at a glance, the same data as JSON, and two changes - cancel a job, set a
function's max queue - for the requests allowed to make them.

Its URLs::

    GET  /                   the page; its script polls status.json
    GET  /status.json        txgearmand.status.snapshot, at most `limit` of each list
    GET  /static/NAME        the page's script, style sheet and icon
    POST /actions/cancel     {"handle": "H:host:12"}
    POST /actions/maxqueue   {"function": "resize", "limits": 10 | [high, normal, low] | null}

Everything it serves is in the package (C{txgearmand/web/static/}): no
framework, nothing fetched from elsewhere.  Every response carries a
C{Content-Security-Policy} that allows scripts, styles, images and
fetches from the site itself only, and no inline script; the page's
script builds its DOM with text nodes, never HTML from data.

A change (a POST) is made only when every check passes, in this order:
the peer is allowed (L{StatusSite.may_change}; by default loopback and
UNIX-socket peers only: 403); the C{Host} header names this server (an IP
address, C{localhost} or a name in L{StatusSite.hosts}: 403, against DNS
rebinding); an C{Origin} header, when present, is that host (403); the
C{X-CSRF-Token} header holds the process's token, which the page embeds
(403); the body is JSON (415) of at most L{MAX_BODY} bytes (413).  A
cross-site form or script can send none of those headers without a CORS
preflight, which the site never answers.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import re
import secrets
import socket
from collections.abc import Callable, Iterable
from importlib import resources
from typing import Any, Optional
from urllib.parse import urlsplit

from twisted.application.internet import StreamServerEndpointService
from twisted.internet import endpoints
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource, NoResource, Resource
from twisted.web.server import Request, Site

from txgearmand import _log
from txgearmand.access import identity_of, is_local_address
from txgearmand.metrics import MetricsResource
from txgearmand.server import JobServer
from txgearmand.status import snapshot

__all__ = [
    "CSP",
    "MAX_BODY",
    "TOKEN_HEADER",
    "StatusService",
    "StatusSite",
    "local_only",
    "status_service",
]

_LOG = _log.logger("txgearmand.web.site")

#: The largest request body read; a larger one gets 413 and is not kept.
MAX_BODY = 4096

#: The header a change must carry the site's token in.
TOKEN_HEADER = b"x-csrf-token"

#: Only the site itself: no inline script or style, nothing remote, no
#: framing, no form posts (the page's script posts with C{fetch}).
CSP = (
    b"default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self';"
    b" connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)

#: Sent with every response, errors included.
HEADERS = (
    (b"content-security-policy", CSP),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
)

#: The static files, by name, and their content types.
ASSETS = {
    "status.js": b"text/javascript; charset=utf-8",
    "status.css": b"text/css; charset=utf-8",
    "favicon.svg": b"image/svg+xml",
}

_JSON = b"application/json"

#: What a token may hold: it is written into the page as it is.
_TOKEN = re.compile(r"^[A-Za-z0-9_-]+$")


def local_only(request: IRequest) -> bool:
    """
    Whether a request comes from this host: the loopback (IPv4, IPv6, or
    IPv4 on IPv6) or a UNIX socket.  The site's default
    L{StatusSite.may_change}.
    """
    return is_local_address(request.getClientAddress())


def rules_or_local(job_server: JobServer) -> Callable[[IRequest], bool]:
    """
    Who may make changes through the site: the server's C{--admin-allow}
    rules (L{txgearmand.access.AccessRules}) when there are any, the same
    as for the admin protocol's mutating commands; else L{local_only}.
    """
    rules = job_server.settings.admin_allow
    if not rules.restricted:
        return local_only

    def allowed(request: IRequest) -> bool:
        channel = getattr(request, "channel", None)
        transport = getattr(channel, "transport", None)
        if transport is None:
            return False
        return rules.allows(identity_of(transport))

    return allowed


def _asset(name: str) -> bytes:
    return (resources.files("txgearmand.web") / "static" / name).read_bytes()


def _text(value: Optional[bytes]) -> str:
    return (value or b"").decode("utf-8", "backslashreplace")


class _Request(Request):
    """
    A request whose body is read only up to L{MAX_BODY} (past it, it gets
    413 and what arrives is dropped), and whose every response carries
    L{HEADERS}.
    """

    _received = 0
    _too_large = False

    def gotLength(self, length: Optional[int]) -> None:
        if length is not None and length > MAX_BODY:
            self._too_large = True
            length = 0
        super().gotLength(length)

    def handleContentChunk(self, data: bytes) -> None:
        self._received += len(data)
        if self._received > MAX_BODY:
            self._too_large = True
        if not self._too_large:
            super().handleContentChunk(data)

    def process(self) -> None:
        for name, value in HEADERS:
            self.setHeader(name, value)
        if self._too_large:
            channel: Any = self.channel
            self.site = channel.site
            body = b'{"error": "the body is too large"}'
            self.setResponseCode(413)
            self.setHeader(b"content-type", _JSON)
            self.setHeader(b"cache-control", b"no-store")
            self.setHeader(b"content-length", b"%d" % len(body))
            self.write(body)
            self.finish()
            return
        super().process()


def _respond(request: IRequest, code: int, data: Any) -> bytes:
    request.setResponseCode(code)
    request.setHeader(b"content-type", _JSON)
    request.setHeader(b"cache-control", b"no-store")
    return json.dumps(data).encode("ascii")


class _Page(Resource):
    """
    The page: the static HTML with this process's token, whether this
    request may change things, and the refresh period filled in.
    """

    def __init__(self, site: StatusSite) -> None:
        super().__init__()
        self.site = site
        self.template = _asset("index.html")

    def render_GET(self, request: IRequest) -> bytes:
        site = self.site
        page = (
            self.template.replace(b"{{token}}", site.token.encode("ascii"))
            .replace(b"{{may_change}}", b"yes" if site.may_change(request) else b"no")
            .replace(b"{{refresh}}", b"%g" % site.refresh)
            .replace(b"{{limit}}", b"%d" % site.limit)
        )
        request.setHeader(b"content-type", b"text/html; charset=utf-8")
        request.setHeader(b"cache-control", b"no-store")
        return page


class _StatusJSON(Resource):
    """
    C{/status.json}: the snapshot, computed for each request.
    """

    def __init__(self, site: StatusSite) -> None:
        super().__init__()
        self.site = site

    def render_GET(self, request: IRequest) -> bytes:
        return _respond(request, 200, snapshot(self.site.job_server, self.site.limit))


class _Asset(Resource):
    """
    One static file, read once.
    """

    def __init__(self, content: bytes, content_type: bytes) -> None:
        super().__init__()
        self.content = content
        self.content_type = content_type

    def render_GET(self, request: IRequest) -> bytes:
        request.setHeader(b"content-type", self.content_type)
        request.setHeader(b"cache-control", b"no-cache")
        return self.content


class _Action(Resource):
    """
    A change, by POST only, after the site's checks
    (L{StatusSite.refusal}).
    """

    def __init__(self, site: StatusSite, act: Callable[[IRequest, Any], tuple[int, Any]]) -> None:
        super().__init__()
        self.site = site
        self.act = act

    def render_POST(self, request: IRequest) -> bytes:
        refused = self.site.refusal(request)
        if refused is not None:
            code, reason = refused
            self.site.note_refused(request, reason)
            return _respond(request, code, {"error": reason})
        content = request.content
        body = content.read(MAX_BODY + 1) if content is not None else b""
        try:
            data = json.loads(body.decode("utf-8"))
        except ValueError:
            return _respond(request, 400, {"error": "the body is not JSON"})
        if not isinstance(data, dict):
            return _respond(request, 400, {"error": "the body is not a JSON object"})
        code, answer = self.act(request, data)
        return _respond(request, code, answer)


class _Root(Resource):
    """
    C{/}: the page at the top, the JSON, the static files, the actions;
    anything else is 404.
    """

    def __init__(self, site: StatusSite) -> None:
        super().__init__()
        self.page = _Page(site)
        self.putChild(b"status.json", _StatusJSON(site))
        static = Resource()
        for name, content_type in ASSETS.items():
            static.putChild(name.encode("ascii"), _Asset(_asset(name), content_type))
        self.putChild(b"static", static)
        actions = Resource()
        actions.putChild(b"cancel", _Action(site, site.cancel))
        actions.putChild(b"maxqueue", _Action(site, site.set_max_queue))
        self.putChild(b"actions", actions)
        self.putChild(b"metrics", MetricsResource(site.job_server))

    def getChild(self, path: bytes, request: IRequest) -> IResource:
        if path == b"":
            return self.page
        return NoResource()


class StatusSite(Site):
    """
    The status site of a L{JobServer}: an C{IProtocolFactory} for any
    stream server endpoint.

    @ivar job_server: the L{JobServer} shown.
    @ivar limit: at most this many functions, workers, clients and jobs
        are listed (the page and the JSON).
    @ivar refresh: seconds between the page's polls (at least 2).
    @ivar may_change: whether a request may make changes (cancel a job,
        set a max queue); unless given, the server's C{--admin-allow}
        rules, or L{local_only} without any (see L{rules_or_local}).
    @ivar hosts: the names (lower case) a change's C{Host} header may
        give besides IP addresses and C{localhost}: by default this
        machine's host name.
    @ivar token: the token a change must carry in C{X-CSRF-Token}; random
        per process unless given.
    """

    noisy = False
    requestFactory = _Request

    def __init__(
        self,
        job_server: JobServer,
        *,
        limit: int = 200,
        refresh: float = 5.0,
        may_change: Callable[[IRequest], bool] | None = None,
        hosts: Iterable[str] | None = None,
        token: str | None = None,
    ) -> None:
        self.job_server = job_server
        self.limit = limit
        self.refresh = max(2.0, refresh)
        self.may_change = may_change if may_change is not None else rules_or_local(job_server)
        if hosts is None:
            hosts = [socket.gethostname()]
        self.hosts = frozenset(h.lower() for h in hosts)
        if token is None:
            token = secrets.token_urlsafe(32)
        elif not _TOKEN.match(token):
            raise ValueError("a token is letters, digits, - and _ only")
        self.token = token
        self._refused = 0
        # Idle connections close after --read-timeout (Site's default: 12 h).
        timeout = job_server.settings.read_timeout or None
        super().__init__(_Root(self), timeout=timeout, reactor=job_server.reactor)

    def startFactory(self) -> None:
        """
        Start listening: keep the jobs/s history from now (the chart
        needs it).
        """
        super().startFactory()
        self.job_server.meters.watch()

    def log(self, request: Any) -> None:
        """
        No access log (the page polls); each request at DEBUG.
        """
        if _log.debugging:
            _LOG.debug(
                "Status site: {method} {path} {code} from {peer}",
                method=_text(request.method),
                path=_text(request.uri),
                code=request.code,
                peer=_peer(request),
            )

    # -- changes --------------------------------------------------------

    def trusted_host(self, host: str) -> bool:
        """
        Whether a C{Host} header names this server: an IP address,
        C{localhost} (or a name under C{.localhost}), or one of L{hosts}.
        """
        try:
            name = urlsplit("//" + host).hostname
        except ValueError:
            return False
        if not name:
            return False
        try:
            ipaddress.ip_address(name)
        except ValueError:
            pass
        else:
            return True
        return name == "localhost" or name.endswith(".localhost") or name in self.hosts

    def refusal(self, request: IRequest) -> tuple[int, str] | None:
        """
        Why a change is refused (its status code and the reason), or
        C{None} if it may be made.
        """
        if not self.may_change(request):
            return 403, "changes are not allowed from this address"
        host = _text(request.getHeader(b"host"))
        if not self.trusted_host(host):
            return 403, "the Host header does not name this server"
        origin = request.getHeader(b"origin")
        if origin is not None:
            try:
                netloc = urlsplit(_text(origin)).netloc
            except ValueError:
                netloc = ""
            if not netloc or netloc.lower() != host.lower():
                return 403, "the request comes from another site (Origin)"
        token = request.getHeader(TOKEN_HEADER) or b""
        if not hmac.compare_digest(token, self.token.encode("ascii")):
            return 403, "no valid X-CSRF-Token header (reload the page)"
        content_type = _text(request.getHeader(b"content-type")).split(";")[0].strip()
        if content_type.lower() != "application/json":
            return 415, "the body must be application/json"
        return None

    def note_refused(self, request: IRequest, reason: str) -> None:
        """
        Log a refused change: the first ten, then one in a thousand.
        """
        self._refused += 1
        n = self._refused
        if n <= 10 or n % 1000 == 0:
            _LOG.info(
                "Status site: refused a change from {peer} ({reason}; {count} refused so far)",
                peer=_peer(request),
                reason=reason,
                count=n,
            )

    def cancel(self, request: IRequest, data: dict[str, Any]) -> tuple[int, Any]:
        """
        Cancel a job: C{{"handle": "H:host:12"}}.  As the admin C{cancel
        job}: its clients get C{WORK_FAIL}, a worker's results for it are
        dropped.

        @return: the status code and the JSON answer (404: no such job).
        """
        handle = data.get("handle")
        if not isinstance(handle, str) or not handle:
            return 400, {"error": "give the job's handle"}
        if not self.job_server.cancel_job(handle.encode("utf-8")):
            return 404, {"error": "no such job", "handle": handle}
        _LOG.info("Status site: {peer} cancelled job {handle}", peer=_peer(request), handle=handle)
        return 200, {"ok": True, "handle": handle}

    def set_max_queue(self, request: IRequest, data: dict[str, Any]) -> tuple[int, Any]:
        """
        Set a function's max queue: C{{"function": "resize", "limits": L}}
        where C{L} is one number for every priority, three (high, normal,
        low), or C{null} or C{0} for none; C{0} in a list is no limit for
        that priority.

        @return: the status code and the JSON answer, with the limits now
            set.
        """
        function = data.get("function")
        if not isinstance(function, str) or not function:
            return 400, {"error": "give the function's name"}
        limits = data.get("limits")
        numbers = [limits] if not isinstance(limits, list) else limits
        if limits is None:
            numbers = [0]
        if len(numbers) not in (1, 3) or not all(
            isinstance(n, int) and not isinstance(n, bool) and 0 <= n < 2**31 for n in numbers
        ):
            return 400, {"error": "limits: one number or three (high, normal, low), 0 or more"}
        name = function.encode("utf-8")
        self.job_server.set_max_queue(name, *numbers)
        now = self.job_server.max_queue(name)
        _LOG.info(
            "Status site: {peer} set the max queue of {function} to {limits}",
            peer=_peer(request),
            function=function,
            limits=",".join(str(n) for n in now) if now else "none",
        )
        return 200, {"ok": True, "function": function, "max_queue": list(now) if now else None}


def _peer(request: Any) -> str:
    address = request.getClientAddress()
    if isinstance(address, (IPv4Address, IPv6Address)):
        return f"{address.host}:{address.port}"
    if isinstance(address, UNIXAddress):
        return "unix"
    return str(address)


class StatusService(StreamServerEndpointService):
    """
    Listens for a L{StatusSite}; a port that cannot be bound fails the
    start (as C{strports.service}); the log says where the site is once
    bound.
    """

    _raiseSynchronously = True

    def privilegedStartService(self) -> None:
        """
        Listen, and log the site's address once bound.
        """
        super().privilegedStartService()
        waiting = getattr(self, "_waitingForPort", None)
        if waiting is not None:
            waiting.addCallback(self._bound)

    @staticmethod
    def _bound(port: Any) -> Any:
        host = port.getHost()
        if isinstance(host, (IPv4Address, IPv6Address)):
            name = f"[{host.host}]" if ":" in host.host else host.host
            where = f"http://{name}:{host.port}/"
        else:
            where = f"unix:{_text(getattr(host, 'name', None))}"
        _LOG.info("Status site at {address}", address=where)
        return port


def status_service(
    reactor: Any, description: str, job_server: JobServer, **options: Any
) -> StatusService:
    """
    The status site of a job server on a server endpoint description
    (C{tcp:8080:interface=127.0.0.1}, C{unix:/run/gearmand-web.sock}...).

    @param options: passed to L{StatusSite}.
    """
    endpoint = endpoints.serverFromString(reactor, description)
    return StatusService(endpoint, StatusSite(job_server, **options))
