# -*- test-case-name: txgearmand.test.test_tap -*-
"""
The command line of C{twistd gearmand}, and the service tree it runs.
"""

from __future__ import annotations

import gc
import re
from typing import Any

import attrs
from twisted.application.service import IService, MultiService
from twisted.internet.defer import Deferred, DeferredList, maybeDeferred
from twisted.python import usage

from txgearmand import _host, _log, clientcerts, store
from txgearmand.httpsubmit import HTTPSubmitFactory
from txgearmand.protocol import GearmanServerFactory
from txgearmand.server import JobServer
from txgearmand.settings import ADMIN_SHUTDOWN_POLICIES, Settings, SettingsError

__all__ = ["GearmandOptions", "GearmandService", "Options", "StartFailed", "makeService"]

_SIZE = re.compile(r"^\s*(\d+)\s*([kKmMgG]?)i?[bB]?\s*$")
_SIZE_FACTORS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}
_TIMEOUT_UNITS = {
    "ms": "milliseconds",
    "millisecond": "milliseconds",
    "milliseconds": "milliseconds",
    "s": "seconds",
    "sec": "seconds",
    "second": "seconds",
    "seconds": "seconds",
}


def version_text() -> str:
    """
    What C{twistd gearmand --version} prints.
    """
    import sys

    import twisted
    from txgearmand._version import __version__

    python = sys.version.split()[0]
    return (
        f"txgearmand {__version__} (Twisted {twisted.__version__},"
        f" {sys.implementation.name} {python})"
    )


def endpoint_problem(description: str) -> str | None:
    """
    What is wrong with a server endpoint description, found without
    listening (an unknown kind, a TCP port out of range, a C{systemd:}
    endpoint outside socket activation, TLS without pyOpenSSL or its
    files), or C{None}.
    """
    try:
        # The parsers only keep the reactor: none is needed to check.
        endpoint = clientcerts.server_from_string(None, description)
    except (ImportError, NotImplementedError) as e:
        return f"{e} (for TLS: pip install 'txgearmand[tls]')"
    except (IndexError, KeyError) as e:
        if description.startswith("systemd:"):
            return "no such socket from systemd (is it started by a .socket unit?)"
        return f"bad endpoint description ({e})"
    except Exception as e:
        return str(e) or type(e).__name__
    port = getattr(endpoint, "_port", None)
    if isinstance(port, int) and not 0 <= port <= 65535:
        return f"port {port} is not in 0-65535"
    return None


def bind_problem(description: str) -> str | None:
    """
    Whether a TCP (or TLS) endpoint's address can be bound, tried with a
    socket closed at once; for a UNIX one, whether its directory exists.
    Run before twistd daemonizes, so that a port in use or an address not
    on this host fails in the foreground process with one whole line (a
    daemon's failure reaches the parent cut to 100 bytes).  Other kinds are
    not tried.

    @return: what is wrong, or C{None}.
    """
    import os
    import socket

    from twisted.internet import endpoints
    from twisted.internet.error import CannotListenError

    try:
        endpoint = clientcerts.server_from_string(None, description)
    except Exception:
        return None  # endpoint_problem has said what is wrong.
    address = getattr(endpoint, "_address", None)
    if isinstance(address, (str, bytes)):
        path = os.fsdecode(address)
        if path.startswith(("\0", "@")):
            return None  # Linux's abstract namespace: no file.
        folder = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(folder):
            return f"no such directory: {folder}"
        if not os.access(folder, os.W_OK | os.X_OK):
            return f"cannot write in {folder}"
        if os.path.exists(path):
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
                probe.settimeout(1)
                try:
                    probe.connect(path)
                except OSError:
                    return None  # Stale: Twisted's lock file lets it go.
            return f"{path} is in use: another server listens on it"
        return None
    port = getattr(endpoint, "_port", None)
    interface = getattr(endpoint, "_interface", None)
    if not isinstance(port, int) or not isinstance(interface, str):
        return None
    family = socket.AF_INET6 if ":" in interface else socket.AF_INET
    if isinstance(endpoint, endpoints.TCP6ServerEndpoint) and not interface:
        family, interface = socket.AF_INET6, "::"
    try:
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            # As Twisted's listening ports do: a port in TIME_WAIT binds.
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((interface, port))
    except OSError as e:
        return _one_line(CannotListenError(interface, port, e))
    return None


def parse_memory(value: str) -> int:
    """
    A memory budget: a size (see L{parse_size}) or a percentage of the
    memory available (C{40%}).
    """
    text = value.strip()
    if text.endswith("%"):
        try:
            share = float(text[:-1])
        except ValueError:
            raise ValueError(f"not a size or a percentage: {value!r}") from None
        if not 0 < share <= 100:
            raise ValueError(f"a percentage must be above 0 and at most 100: {value!r}")
        available = _host.memory_available()
        if available is None:
            return _host.FALLBACK_MAX_MEMORY
        return int(available * share / 100)
    return parse_size(text)


def parse_size(value: str) -> int:
    """
    A byte count such as C{65536}, C{64K}, C{64M} or C{1G}.
    """
    match = _SIZE.match(value)
    if match is None:
        raise ValueError(f"not a size: {value!r}")
    return int(match.group(1)) * _SIZE_FACTORS[match.group(2).lower()]


def _number(kind: type, option: str) -> Any:
    """
    A coercion for C{usage.Options} whose error names the option and says
    what it expected.
    """

    def coerce(value: str) -> Any:
        try:
            return kind(value)
        except ValueError:
            what = "an integer" if kind is int else "a number"
            raise ValueError(f"--{option} wants {what}, not {value!r}") from None

    coerce.coerceDoc = ""  # type: ignore[attr-defined]
    return coerce


def default_node(ports: list[str]) -> str:
    """
    A server's node name when C{--node} is not given: the host's name and
    the first address it listens on.  It stays the same when the server
    restarts (so it finds its jobs again) and differs between two servers
    on one host (they cannot listen on one address), with nothing to keep
    on disk.
    """
    import socket

    return socket.gethostname() + "/" + (ports[0] if ports else "tcp:4730")


def _endpoint_option(option: str) -> Any:
    """
    A coercion for an option naming where to listen: a port number (for
    C{tcp:N}) or a server endpoint string, checked as C{--port}'s are.
    """

    def coerce(value: str) -> str:
        description = value.strip()
        if description.isdigit():
            description = "tcp:" + description
        problem = endpoint_problem(description)
        if problem is not None:
            raise ValueError(f"--{option} {description}: {problem}")
        return description

    coerce.coerceDoc = ""  # type: ignore[attr-defined]
    return coerce


_http_endpoint = _endpoint_option("http")


_endpoint = _endpoint_option


class GearmandOptions(usage.Options):
    """
    Options of C{twistd gearmand}; a bad one raises a C{usage.UsageError}
    that names it (L{Options} turns that into one line and exit status 1).
    """

    synopsis = "[options]"
    longdesc = (
        "A Gearman job server. Listens on tcp:4730 unless --port is given; "
        "--port takes a port number or any Twisted server endpoint string "
        "and may be repeated."
    )

    optFlags = [
        [
            "exceptions",
            None,
            "Forward WORK_EXCEPTION to every client, not only to those that asked "
            "for it with OPTION_REQ.",
        ],
    ]

    optParameters: list[list[Any]] = [
        [
            "wakeup",
            None,
            3,
            "Sleeping workers woken (NOOP) per queued job: N, 0 for none, -1 for all.",
            _number(int, "wakeup"),
        ],
        [
            "wakeup-delay",
            None,
            0.1,
            "Seconds between further wake-ups while a function still has queued "
            "jobs and sleeping workers; 0 for the next reactor turn, -1 for never.",
            _number(float, "wakeup-delay"),
        ],
        [
            "job-retries",
            "j",
            0,
            "Failed attempts (worker lost, CANT_DO, timeout) after which a job "
            "fails with WORK_FAIL; 0 retries forever.",
            _number(int, "job-retries"),
        ],
        [
            "retry-failed",
            None,
            0,
            "Times a background job whose worker answers WORK_FAIL or WORK_EXCEPTION "
            "is queued again (after --retry-backoff), keeping its handle; 0: it ends "
            "at once. Lost workers and timeouts count against --job-retries instead.",
            _number(int, "retry-failed"),
        ],
        [
            "retry-backoff",
            None,
            "1,300",
            "FIRST,CAP: seconds before a failed background job's first retry, doubling "
            "with each failure up to CAP; each delay is drawn between half and all of it.",
        ],
        [
            "failed-keep",
            None,
            1000,
            "Background jobs that failed for the last time kept in the failed list "
            "(admin 'show failed', 'failed retry', 'failed drop'), at most; the oldest "
            "beyond it are dropped, logged. 0: none is kept (they end, as in other servers).",
            _number(int, "failed-keep"),
        ],
        [
            "failed-max-age",
            None,
            7 * 86400,
            "Seconds a job stays in the failed list at most [default: 7 days]; 0: no age limit.",
            _number(float, "failed-max-age"),
        ],
        [
            "spill-after",
            None,
            1000,
            "With a store (SQLite or PostgreSQL), queued background "
            "jobs beyond this many per function and priority keep only a record of "
            "about 300 bytes in memory, their payload in the store, fetched back "
            "ahead of the workers: queues bigger than memory. 0: never.",
            _number(int, "spill-after"),
        ],
        [
            "job-handle-prefix",
            None,
            None,
            "Job handles are PREFIX:N [default: H:<hostname>].",
        ],
        [
            "max-packet-size",
            None,
            "64M",
            "Largest packet body accepted (bytes, or with K, M, G); a larger one "
            "gets ERROR and its connection is closed.",
        ],
        [
            "timeout-unit",
            None,
            "milliseconds",
            "Unit of CAN_DO_TIMEOUT values: milliseconds (C gearmand, libgearman "
            "workers; under a second counts as one) or seconds (Perl Gearman::Worker).",
        ],
        [
            "admin-shutdown",
            None,
            "local",
            "Who may use the admin 'shutdown [graceful]' command: never, local "
            "(loopback and UNIX-socket connections) or any.",
        ],
        [
            "queue",
            "q",
            "sqlite:gearmand.sqlite",
            "Where background jobs are kept across restarts: sqlite:PATH (an SQLite "
            "file, relative to the working directory), postgresql://USER@HOST/DB "
            "(needs the postgresql extra), or memory (not kept).",
        ],
        [
            "node",
            None,
            None,
            "This server's name in a PostgreSQL store several servers share: it owns "
            "the jobs it accepted under this name, and finds them again when it "
            "restarts. [default: the host's name and the first --port]",
        ],
        [
            "takeover-after",
            None,
            10.0,
            "In a PostgreSQL store several servers share: a server whose heartbeat "
            "is this many seconds old is dead, and a live one adopts its jobs.",
            _number(float, "takeover-after"),
        ],
        [
            "verbose",
            None,
            "INFO",
            "Log level: FATAL, ALERT, CRITICAL, ERROR, WARNING, NOTICE, INFO or DEBUG.",
        ],
        [
            "max-memory",
            None,
            "40%",
            "Memory budget: payloads of the jobs held, partial packets and unsent "
            "output (a size, a percentage of the machine's or container's memory, or "
            "0 for none). Above it, submissions get ERROR QUEUE_ERROR and large "
            "partial packets are refused.",
        ],
        [
            "output-hard-limit",
            None,
            None,
            "Close a connection at once when its unsent output passes this size "
            "(0: never) [default: 128M, or twice --max-packet-size if more].",
        ],
        [
            "output-soft-limit",
            None,
            None,
            "Close a connection whose unsent output stays above this size for "
            "--output-soft-seconds (0: never) [default: 16M, or the hard limit if less].",
        ],
        [
            "output-soft-seconds",
            None,
            60.0,
            "See --output-soft-limit.",
            _number(float, "output-soft-seconds"),
        ],
        [
            "read-timeout",
            None,
            60.0,
            "Close a connection whose packet header or admin line stays incomplete "
            "this many seconds, or whose packet body gets no byte for as long "
            "(0: never). Idle connections are never closed.",
            _number(float, "read-timeout"),
        ],
        # --http: HTTP job submission (txgearmand.httpsubmit); off by default.
        [
            "http",
            None,
            None,
            "Also accept jobs over HTTP here, as C gearmand's -r http does: a port "
            "number or a Twisted server endpoint string (POST /FUNCTION with the "
            "workload as the body; see docs/guide/http.rst) [default: off].",
            _http_endpoint,
        ],
        [
            "tcp-keepalive",
            None,
            120.0,
            "Seconds of silence after which TCP keep-alive probes look for a dead peer (0: off).",
            _number(float, "tcp-keepalive"),
        ],
        [
            "stats-interval",
            None,
            0.0,
            "Log a one-line summary (jobs queued and running, workers, clients, "
            "jobs/s in and out) every this many seconds (0: never).",
            _number(float, "stats-interval"),
        ],
        # The status site (txgearmand.web.site): off unless given.
        [
            "web",
            None,
            None,
            "Serve the status site (a page, /status.json, /metrics; changes as --admin-allow "
            "allows, else from loopback only) on "
            "this Twisted server endpoint, e.g. tcp:8080:interface=127.0.0.1. Anyone who "
            "reaches it can read it: bind it to a private address. [default: off]",
            _endpoint("web"),
        ],
        [
            "store-slow-seconds",
            None,
            1.0,
            "A store write that takes longer is logged (a warning, once) as the store being "
            "slow, and the next quick one as its recovery (0: not watched).",
            _number(float, "store-slow-seconds"),
        ],
        [
            "max-connections",
            None,
            0,
            "Connections served at once (0: as many as the open file limit "
            "allows); more are closed as they arrive. The open file limit is "
            "raised to fit, where allowed.",
            _number(int, "max-connections"),
        ],
        # --metrics: Prometheus metrics (txgearmand.metrics); off by default.
        [
            "metrics",
            None,
            None,
            "Serve Prometheus metrics at /metrics here: a port number or a Twisted "
            "server endpoint string; needs pip install 'txgearmand[metrics]' "
            "[default: off].",
            _endpoint_option("metrics"),
        ],
    ]

    compData = usage.Completions(
        optActions={
            "timeout-unit": usage.CompleteList(["milliseconds", "seconds"]),
            "admin-shutdown": usage.CompleteList(list(ADMIN_SHUTDOWN_POLICIES)),
            "verbose": usage.CompleteList(list(_log.LEVELS)),
        }
    )

    def __init__(self) -> None:
        super().__init__()
        self["ports"] = []
        self["max-queue"] = {}

    def opt_version(self) -> None:
        """
        Print txgearmand's version, Twisted's and Python's, and exit.
        """
        print(version_text())
        raise SystemExit(0)

    def opt_port(self, description: str) -> None:
        """
        Listen here: a port number (4730) or a Twisted server endpoint
        (tcp:4730:interface=127.0.0.1, tcp6:4730, unix:/run/gearmand.sock,
        ssl:4730:privateKey=key.pem:certKey=cert.pem, systemd:...).
        Repeatable [default: tcp:4730].
        """
        description = description.strip()
        if description.isdigit():
            description = "tcp:" + description
        self["ports"].append(description)

    opt_p = opt_port

    def opt_admin_allow(self, rule: str) -> None:
        """
        Who may run mutating admin commands (shutdown, maxqueue with
        arguments, cancel job, create function, drop function, verbose with
        a value): an address or network (127.0.0.0/8, ::1), unix,
        cert:SHA256-FINGERPRINT or ca:PATH (TLS client certificates).
        Repeatable; with none, anyone may (shutdown: see --admin-shutdown,
        which also applies with rules).
        """
        self.setdefault("admin-allow", []).append(rule)

    def opt_max_queue(self, value: str) -> None:
        """
        Limit a function's jobs (queued and running): FUNC=N for every
        priority, or FUNC=HIGH,NORMAL,LOW; 0 is unlimited. Repeatable.
        """
        function, sep, limits = value.rpartition("=")
        if not sep or not function:
            raise usage.UsageError(f"--max-queue wants FUNC=N or FUNC=H,N,L, not {value!r}")
        try:
            numbers = [int(n) for n in limits.split(",")]
        except ValueError:
            raise usage.UsageError(f"--max-queue limits must be integers: {value!r}") from None
        if any(n < 0 for n in numbers):
            raise usage.UsageError(f"--max-queue limits must be 0 (none) or more: {value!r}")
        if len(numbers) not in (1, 3):
            raise usage.UsageError(f"--max-queue wants FUNC=N or FUNC=H,N,L, not {value!r}")
        self["max-queue"][function.encode("utf-8")] = (
            numbers[0] if len(numbers) == 1 else tuple(numbers)
        )

    def postOptions(self) -> None:
        """
        Fill defaults and build the L{Settings} (C{self["settings"]}): every
        value is checked there, and a bad one is reported by its option.
        """
        if not self["ports"]:
            self["ports"].append("tcp:4730")
        if self["metrics"] is not None:
            from txgearmand.metrics import available

            if not available():
                raise usage.UsageError(
                    "--metrics needs prometheus-client: pip install 'txgearmand[metrics]'"
                )
        sizes: dict[str, Any] = {}
        for option in ("max-packet-size", "output-soft-limit", "output-hard-limit"):
            if self[option] is not None:
                try:
                    sizes[option] = parse_size(str(self[option]))
                except ValueError as e:
                    raise usage.UsageError(f"--{option}: {e}") from None
        try:
            sizes["max-memory"] = parse_memory(str(self["max-memory"]))
        except ValueError as e:
            raise usage.UsageError(f"--max-memory: {e}") from None
        size = sizes["max-packet-size"]
        extra: dict[str, Any] = {}
        if "output-hard-limit" in sizes:
            extra["output_hard_limit"] = sizes["output-hard-limit"]
        if "output-soft-limit" in sizes:
            extra["output_soft_limit"] = sizes["output-soft-limit"]
        unit = _TIMEOUT_UNITS.get(str(self["timeout-unit"]).lower(), self["timeout-unit"])
        prefix = self["job-handle-prefix"]
        try:
            self["settings"] = Settings(
                wakeup=self["wakeup"],
                wakeup_delay=self["wakeup-delay"],
                job_retries=self["job-retries"],
                retry_failed=self["retry-failed"],
                retry_backoff=str(self["retry-backoff"]),
                failed_keep=self["failed-keep"],
                failed_max_age=self["failed-max-age"],
                spill_after=self["spill-after"],
                job_handle_prefix=None if prefix is None else prefix.encode("utf-8"),
                max_packet_size=size,
                max_queue=self["max-queue"],
                exceptions=bool(self["exceptions"]),
                timeout_unit=unit,
                admin_shutdown=self["admin-shutdown"],
                admin_allow=self.get("admin-allow", ()),
                verbose=str(self["verbose"]),
                max_memory=sizes["max-memory"],
                output_soft_seconds=self["output-soft-seconds"],
                read_timeout=self["read-timeout"],
                tcp_keepalive=self["tcp-keepalive"],
                max_connections=self["max-connections"],
                stats_interval=self["stats-interval"],
                store_slow_seconds=self["store-slow-seconds"],
                **extra,
            )
        except SettingsError as e:
            option = "--" + e.setting.replace("_", "-")
            raise usage.UsageError(f"{option} {e.reason}") from None
        settings = self["settings"]
        self["max-packet-size"] = settings.max_packet_size
        self["max-memory"] = settings.max_memory
        self["output-hard-limit"] = settings.output_hard_limit
        self["output-soft-limit"] = settings.output_soft_limit
        self["timeout-unit"] = settings.timeout_unit
        self["verbose"] = settings.verbose
        self["job-handle-prefix"] = settings.job_handle_prefix.decode("utf-8")
        try:
            store._kind(self["queue"])
        except ValueError as e:
            raise usage.UsageError(f"--queue: {e}") from None
        if not self["takeover-after"] > 0:
            raise usage.UsageError(
                f"--takeover-after must be more than 0, not {self['takeover-after']}"
            )
        for description in self["ports"]:
            problem = endpoint_problem(description)
            if problem is not None:
                raise usage.UsageError(f"--port {description}: {problem}")


# usage.Options shows an option method's docstring as it is: one line each.
# (setattr: pydoctor reads a "__doc__ =" statement as a docstring to parse.)
for _method in (
    GearmandOptions.opt_port,
    GearmandOptions.opt_max_queue,
    GearmandOptions.opt_version,
    GearmandOptions.opt_admin_allow,
):
    setattr(_method, "__doc__", " ".join((_method.__doc__ or "").split()))  # noqa: B010


class Options(GearmandOptions):
    """
    The options as C{twistd gearmand} reads them: a bad option ends the
    start with one line naming it, exit status 1, and neither the help text
    nor a traceback.
    """

    def parseOptions(self, options: Any = None) -> None:
        """
        Parse, or exit with one line saying what is wrong.
        """
        try:
            super().parseOptions(options)
        except usage.UsageError as e:
            text = str(e).replace("Parameter type enforcement failed: ", "")
            raise SystemExit(f"twistd gearmand: {text} (see twistd gearmand --help)") from None


def _metrics_site(job_server: JobServer) -> Any:
    from twisted.web.resource import Resource
    from twisted.web.server import Site

    from txgearmand.metrics import MetricsResource

    class QuietSite(Site):
        def log(self, request: Any) -> None:
            """
            No access log: a scrape every few seconds is not news.
            """

    root = Resource()
    root.putChild(b"metrics", MetricsResource(job_server))
    # Idle scrapers are closed after --read-timeout (Site's default: 12 h).
    site = QuietSite(
        root, timeout=job_server.settings.read_timeout or None, reactor=job_server.reactor
    )
    site.displayTracebacks = False
    return site


class StartFailed(SystemExit, Exception):
    """
    The start failed for a reason one line says.  A C{SystemExit}, so
    that in the foreground Python prints just that line and exits 1; an
    C{Exception} too, so that as a daemon twistd hands it to the waiting
    parent, which prints it and exits 1.
    """


def _one_line(error: Exception) -> str:
    return " ".join(str(error).split())


_safe_url = store.safe_url


def _check_store(url: str, early: bool = False) -> None:
    """
    Open the store and close it again (see L{store.check_store_url}).

    @raise StartFailed: saying why it cannot be opened.
    """
    try:
        store.check_store_url(url, early)
    except Exception as e:
        raise StartFailed(
            f"twistd gearmand: cannot open the job store {_safe_url(url)}: {_one_line(e)}"
        ) from None


class GearmandService(MultiService):
    """
    A L{JobServer} and the ports that serve it.

    Stops in order: first the ports (no new connections), then the job
    server.

    @ivar job_server: the L{JobServer}.
    """

    def __init__(self, job_server: JobServer) -> None:
        super().__init__()
        self.job_server = job_server
        self._ports: list[IService] = []
        self._descriptions: list[str] = []
        self._ports_stopped: Deferred[Any] | None = None
        #: The store checked once the ports are bound, if any.
        self.store_url: str | None = None

    def add_port(self, port: IService, description: str = "") -> None:
        """
        Add a listening service (a C{StreamServerEndpointService}), and the
        description it was made from, for messages.
        """
        self._ports.append(port)
        self._descriptions.append(description or repr(port))
        port.setServiceParent(self)

    def privilegedStartService(self) -> None:
        """
        Bind every port, then check the store (so that a start that fails
        leaves no store file behind); either failing ends the start with
        one line saying which and why.
        """
        for port, description in zip(self._ports, self._descriptions):
            try:
                port.privilegedStartService()
            except Exception as e:
                self._close_bound()
                raise StartFailed(
                    f"twistd gearmand: cannot listen on {description}: {_one_line(e)}"
                ) from None
        if self.store_url is not None:
            try:
                _check_store(self.store_url)
            except StartFailed:
                self._close_bound()
                raise
        for port, description in zip(self._ports, self._descriptions):
            bound = getattr(port, "_waitingForPort", None)
            if bound is not None:
                bound.addCallback(self._log_listening, description)
        if self.store_url is not None:
            _LOG.info("Job store: {store}", store=_safe_url(self.store_url))
        for child in self:
            if child not in self._ports:
                child.privilegedStartService()

    @staticmethod
    def _log_listening(port: Any, description: str) -> Any:
        host = port.getHost()
        where = (
            f"{host.host}:{host.port}"
            if hasattr(host, "port")
            else str(getattr(host, "name", None) or host)
        )
        _LOG.info("Listening on {address} ({endpoint})", address=where, endpoint=description)
        return port

    def _close_bound(self) -> None:
        for port in self._ports:
            listening = getattr(port, "_waitingForPort", None)
            if listening is not None:
                listening.addCallback(lambda p: p.stopListening()).addErrback(lambda f: None)

    def stop_listening(self) -> Deferred[None]:
        """
        Stop every port (once); the Deferred fires when they have stopped.
        """
        if self._ports_stopped is None:
            self._ports_stopped = DeferredList(
                [maybeDeferred(p.stopService) for p in self._ports if p.running],
                consumeErrors=True,
            )
        d: Deferred[None] = Deferred()

        def done(result: object) -> object:
            d.callback(None)
            return result

        self._ports_stopped.addBoth(done)
        return d

    def stopService(self) -> Deferred[None]:
        """
        Stop listening, then stop the job server.
        """
        self.running = False

        def stop_server(_: object) -> Deferred[None]:
            return maybeDeferred(self.job_server.stopService)

        d = self.stop_listening()
        d.addCallback(stop_server)
        return d.addCallback(lambda _: None)


#: Open files kept for what is not a connection: the store, logs, children.
RESERVED_FILES = 64
#: With no --max-connections, ask for this many open files at most.
AUTO_CONNECTIONS = 65536


def fit_open_files(settings: Settings) -> Settings:
    """
    Raise the process's open file limit to fit C{settings.max_connections}
    (or up to L{AUTO_CONNECTIONS} when it is 0) where the hard limit allows,
    and return the settings with the connection limit the process can
    really serve; say both in the log.
    """
    asked = settings.max_connections
    before, soft, hard = _host.raise_open_files((asked or AUTO_CONNECTIONS) + RESERVED_FILES)
    if soft < 0:
        return settings
    room = max(soft - RESERVED_FILES, 1)
    serve = asked if asked and asked <= room else room
    if asked and asked > room:
        _LOG.warn(
            "--max-connections {asked} does not fit the open file limit ({soft}, hard"
            " limit {hard}); serving at most {serve} connections",
            asked=asked,
            soft=soft,
            hard=hard,
            serve=serve,
        )
    _LOG.info(
        "Open file limit {soft} (was {before}, hard limit {hard}); serving at most"
        " {serve} connections",
        soft=soft,
        before=before,
        hard="unlimited" if hard < 0 else hard,
        serve=serve,
    )
    return attrs.evolve(settings, max_connections=serve)


_LOG = _log.logger("txgearmand.tap")


def makeService(options: GearmandOptions, reactor: Any = None) -> GearmandService:
    """
    Build the service tree of C{twistd gearmand}.

    Called by twistd (without C{reactor}), it first checks that every port
    can be bound and that the store can be opened, so that such a failure
    ends the start here with one whole line, before twistd daemonizes (a
    daemon's failure reaches the waiting parent cut to 100 bytes).  Nothing
    is left bound or open, and nothing is created.
    """
    if reactor is None:
        from twisted.internet import reactor as _reactor

        reactor = _reactor
        for description in options["ports"]:
            problem = bind_problem(description)
            if problem is not None:
                raise StartFailed(f"twistd gearmand: cannot listen on {description}: {problem}")
        # --http, --metrics and --web: their ports are checked as the others.
        for option in ("http", "metrics", "web"):
            if options[option] is not None:
                problem = bind_problem(options[option])
                if problem is not None:
                    raise StartFailed(
                        f"twistd gearmand: cannot listen on --{option} {options[option]}: {problem}"
                    )
        _check_store(options["queue"], early=True)
    settings: Settings = options["settings"]
    _log.set_level(settings.verbose)
    _LOG.info("{version}", version=version_text())
    settings = fit_open_files(settings)
    # A job server holds many long-lived objects (jobs); with the default
    # thresholds the cyclic collector walks them so often that it halves
    # throughput.  Jobs rarely form cycles: collect young objects less often.
    # (PyPy's collector is another kind, without these knobs.)
    if hasattr(gc, "set_threshold"):
        gc.set_threshold(50_000, 20, 20)
    node = options.get("node") or default_node(options["ports"])
    job_server = JobServer(
        reactor,
        settings,
        store=store.store_from_url(
            reactor, options["queue"], node=node, takeover_after=options.get("takeover-after", 10.0)
        ),
    )
    top = GearmandService(job_server)
    job_server.setServiceParent(top)
    factory = GearmanServerFactory(job_server)
    for description in options["ports"]:
        top.add_port(clientcerts.service(description, factory, reactor=reactor), description)
    # --http: HTTP job submission, a port of the service like the others
    # (bound before the start, stopped first, said in the log).
    if options["http"] is not None:
        http_factory = HTTPSubmitFactory(job_server)
        top.add_port(
            clientcerts.service(options["http"], http_factory, reactor=reactor),
            f"--http {options['http']}",
        )
    # --metrics: a site with Prometheus's /metrics alone.
    if options["metrics"] is not None:
        top.add_port(
            clientcerts.service(options["metrics"], _metrics_site(job_server), reactor=reactor),
            f"--metrics {options['metrics']}",
        )
        job_server.meters.watch()
    # The status site (--web): a port of its own, stopped with the Gearman
    # ports; the jobs/s history is kept from the start.
    if options["web"] is not None:
        from txgearmand.web.site import status_service

        job_server.meters.watch()
        top.add_port(status_service(reactor, options["web"], job_server), "--web " + options["web"])
    # Checked once the ports are bound, before the reactor runs: a store
    # that cannot be opened fails the start with a message, rather than a
    # server that loses jobs.
    top.store_url = options["queue"]
    job_server.stop_listening = top.stop_listening
    job_server.on_shutdown = reactor.stop
    return top
