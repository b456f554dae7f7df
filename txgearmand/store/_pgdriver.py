# -*- test-case-name: txgearmand.test.test_pgdriver,txgearmand.test.test_store -*-
"""
The PostgreSQL drivers behind the job store, behind one small interface
(L{connect} and L{Connection}): psycopg 3 (libpq) where it imports and
works, which is CPython; else pg8000 (pure Python), which runs on PyPy.

The environment variable C{TXGEARMAND_PG_DRIVER} (C{psycopg} or
C{pg8000}) forces one; it is read at each connection, so that the tests
can run the store on either.

psycopg takes the connection string as libpq does.  pg8000 takes none:
L{parse_conninfo} reads the forms C{--queue} is given
(C{postgresql://user:password@host:port/db?param=value}, C{postgres://},
and libpq's C{key=value} strings, with the C{PG*} environment variables
as defaults) and L{pg8000_options} maps them to pg8000's arguments,
refusing a parameter it cannot map with a C{ValueError} naming it.

Both drivers send the same SQL text, with C{%s} placeholders.
"""

from __future__ import annotations

import getpass
import os
import socket
from collections.abc import Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from functools import cache
from typing import Any, Callable
from urllib.parse import unquote

__all__ = [
    "DRIVERS",
    "ENVIRONMENT",
    "Connection",
    "Rows",
    "available",
    "choose",
    "connect",
    "connection_errors",
    "parse_conninfo",
    "pg8000_options",
    "quote_identifier",
]

#: The drivers, in the order they are preferred.
DRIVERS = ("psycopg", "pg8000")

#: The environment variable that forces a driver.
ENVIRONMENT = "TXGEARMAND_PG_DRIVER"


class Rows:
    """
    What a statement returned: its rows (tuples, possibly none) and the
    count of rows it touched.
    """

    def __init__(self, rows: list[tuple[Any, ...]], rowcount: int) -> None:
        self.rows = rows
        self.rowcount = rowcount

    def fetchall(self) -> list[tuple[Any, ...]]:
        """
        Every row.
        """
        return self.rows

    def fetchone(self) -> Any:
        """
        The first row (a tuple), or C{None}.
        """
        return self.rows[0] if self.rows else None

    def __iter__(self) -> Iterator[tuple[Any, ...]]:
        return iter(self.rows)


class Connection:
    """
    A connection to PostgreSQL in autocommit mode, through one driver.
    """

    #: The driver's name (one of L{DRIVERS}).
    driver = ""

    @property
    def database(self) -> str:
        """
        The name of the database connected to.
        """
        raise NotImplementedError

    @property
    def closed(self) -> bool:
        """
        Whether the connection was closed, or found broken.
        """
        raise NotImplementedError

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Rows:
        """
        Run one statement (or, without parameters, several separated by
        semicolons) with C{%s} placeholders.
        """
        raise NotImplementedError

    def transaction(self) -> AbstractContextManager[None]:
        """
        A transaction around a block: committed when it ends, rolled back
        when it raises.
        """
        raise NotImplementedError

    def copy_rows(self, table: str, columns: str, rows: Iterable[Sequence[Any]]) -> None:
        """
        Insert rows into a table, fast (C{COPY ... FROM STDIN}).

        @param columns: the columns the rows' values are for, separated by
            commas.
        """
        raise NotImplementedError

    def close(self) -> None:
        """
        Close the connection (nothing happens if it is closed already).
        """
        raise NotImplementedError


def quote_identifier(*names: str) -> str:
    """
    An SQL identifier, qualified by the names before the last
    (C{"schema"."table"}), each quoted.
    """
    return ".".join('"' + name.replace('"', '""') + '"' for name in names)


# -- psycopg ---------------------------------------------------------------


class _PsycopgConnection(Connection):
    driver = "psycopg"

    def __init__(self, conn: Any) -> None:
        self._conn = conn

    @property
    def database(self) -> str:
        return str(self._conn.info.dbname)

    @property
    def closed(self) -> bool:
        return bool(self._conn.closed)

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Rows:
        cursor = self._conn.execute(sql, params or None)
        rows = cursor.fetchall() if cursor.description is not None else []
        return Rows(rows, cursor.rowcount)

    def transaction(self) -> AbstractContextManager[None]:
        return self._conn.transaction()  # type: ignore[no-any-return]

    def copy_rows(self, table: str, columns: str, rows: Iterable[Sequence[Any]]) -> None:
        with self._conn.cursor() as cursor:
            with cursor.copy(f"COPY {table} ({columns}) FROM STDIN") as copy:
                for row in rows:
                    copy.write_row(row)

    def close(self) -> None:
        self._conn.close()


def _psycopg_connect(conninfo: str, connect_timeout: float, params: dict[str, Any]) -> Connection:
    import psycopg
    from psycopg.conninfo import conninfo_to_dict

    given = conninfo_to_dict(conninfo)
    if "connect_timeout" not in given and "PGCONNECT_TIMEOUT" not in os.environ:
        params = {"connect_timeout": connect_timeout, **params}
    return _PsycopgConnection(psycopg.connect(conninfo, autocommit=True, **params))


# -- pg8000 ----------------------------------------------------------------

# What libpq parameters pg8000 can be given.
_SSLMODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
_IGNORED = {
    # Nothing to do: pg8000 does neither GSSAPI encryption nor multi-host.
    "gssencmode": ("disable", "prefer"),
    "target_session_attrs": ("any",),
    "channel_binding": ("disable", "prefer"),
}
_KNOWN = {
    "host",
    "port",
    "dbname",
    "user",
    "password",
    "connect_timeout",
    "application_name",
    "fallback_application_name",
    "options",
    "client_encoding",
    "sslmode",
    "sslrootcert",
    "sslcert",
    "sslkey",
    "keepalives",
    "keepalives_idle",
    "keepalives_interval",
    "keepalives_count",
    "tcp_user_timeout",
    *_IGNORED,
}
# The PG* environment variables read as defaults, as libpq reads them.
_ENVIRONMENT = {
    "host": "PGHOST",
    "port": "PGPORT",
    "dbname": "PGDATABASE",
    "user": "PGUSER",
    "password": "PGPASSWORD",
    "connect_timeout": "PGCONNECT_TIMEOUT",
    "application_name": "PGAPPNAME",
    "options": "PGOPTIONS",
    "client_encoding": "PGCLIENTENCODING",
    "sslmode": "PGSSLMODE",
    "sslrootcert": "PGSSLROOTCERT",
    "sslcert": "PGSSLCERT",
    "sslkey": "PGSSLKEY",
}
# Where libpq looks for the server's socket when no host is given
# (Debian's, then PostgreSQL's own default).
_SOCKET_DIRECTORIES = ("/var/run/postgresql", "/tmp")


def parse_conninfo(conninfo: str) -> dict[str, str]:
    """
    The parameters of a libpq connection string, by name: a URI
    (C{postgresql://} or C{postgres://}, percent-encoded) or
    C{key=value} pairs (values in single quotes where they hold spaces,
    with backslash escapes).  Nothing is checked but the syntax.

    @raise ValueError: for a string that is neither, saying where.
    """
    if conninfo.startswith(("postgresql://", "postgres://")):
        return _parse_uri(conninfo)
    return _parse_pairs(conninfo)


def _parse_uri(uri: str) -> dict[str, str]:
    rest = uri.split("://", 1)[1]
    rest, _, query = rest.partition("?")
    netloc, _, path = rest.partition("/")
    params: dict[str, str] = {}
    if "@" in netloc:
        userinfo, _, netloc = netloc.partition("@")
        user, colon, password = userinfo.partition(":")
        if user:
            params["user"] = unquote(user)
        if colon:
            params["password"] = unquote(password)
    hosts = []
    ports = []
    for hostspec in netloc.split(",") if netloc else []:
        if hostspec.startswith("["):
            host, bracket, port = hostspec[1:].partition("]")
            if not bracket or (port and not port.startswith(":")):
                raise ValueError(f"bad IPv6 address in the PostgreSQL URI: {hostspec!r}")
            port = port[1:]
        else:
            host, _, port = hostspec.partition(":")
        hosts.append(unquote(host))
        ports.append(unquote(port))
    if any(hosts):
        params["host"] = ",".join(hosts)
    if any(ports):
        params["port"] = ",".join(ports)
    if path:
        params["dbname"] = unquote(path)
    for pair in query.split("&") if query else []:
        key, equals, value = pair.partition("=")
        if not equals:
            raise ValueError(f"missing '=' after {unquote(key)!r} in the PostgreSQL URI")
        params[unquote(key)] = unquote(value)
    return params


def _parse_pairs(conninfo: str) -> dict[str, str]:
    params: dict[str, str] = {}
    text = conninfo
    i = 0
    n = len(text)
    while True:
        while i < n and text[i].isspace():
            i += 1
        if i == n:
            return params
        start = i
        while i < n and not text[i].isspace() and text[i] != "=":
            i += 1
        key = text[start:i]
        while i < n and text[i].isspace():
            i += 1
        if i == n or text[i] != "=":
            raise ValueError(f"missing '=' after {key!r} in the PostgreSQL connection string")
        i += 1
        while i < n and text[i].isspace():
            i += 1
        value: list[str] = []
        if i < n and text[i] == "'":
            i += 1
            while True:
                if i == n:
                    raise ValueError(
                        f"unterminated quoted value of {key!r} in the PostgreSQL connection string"
                    )
                c = text[i]
                if c == "\\" and i + 1 < n:
                    value.append(text[i + 1])
                    i += 2
                elif c == "'":
                    i += 1
                    break
                else:
                    value.append(c)
                    i += 1
        else:
            while i < n and not text[i].isspace():
                if text[i] == "\\" and i + 1 < n:
                    i += 1
                value.append(text[i])
                i += 1
        params[key] = "".join(value)


def _integer(params: dict[str, str], key: str, low: int, high: int | None = None) -> int | None:
    if key not in params or params[key] == "":
        return None
    try:
        value = int(params[key])
    except ValueError:
        value = low - 1
    if value < low or (high is not None and value > high):
        raise ValueError(f"bad value for the PostgreSQL connection parameter {key}")
    return value


def pg8000_options(
    params: dict[str, str],
    connect_timeout: float = 10,
    environ: dict[str, str] | None = None,
) -> tuple[dict[str, Any], list[tuple[int, int, int]]]:
    """
    pg8000's connection arguments for libpq parameters (as
    L{parse_conninfo} reads them), the C{PG*} environment variables and
    libpq's defaults filling in those not given.

    @param connect_timeout: the timeout to connect, in seconds, unless the
        parameters (or C{PGCONNECT_TIMEOUT}) say.
    @param environ: the environment (default C{os.environ}).
    @return: the keyword arguments of C{pg8000.dbapi.connect}, and the
        socket options to set on a TCP connection (keepalives).
    @raise ValueError: for a parameter pg8000 cannot honour, naming it.
    """
    environ = dict(os.environ if environ is None else environ)
    for key in params:
        if key not in _KNOWN:
            raise ValueError(
                f"the PostgreSQL connection parameter {key} is not supported with the pg8000 driver"
            )
    for key, allowed in _IGNORED.items():
        if key in params and params[key] not in allowed:
            raise ValueError(
                f"the PostgreSQL connection parameter {key}={params[key]} is not"
                f" supported with the pg8000 driver (only {', '.join(allowed)})"
            )
    given = dict(params)
    for key, variable in _ENVIRONMENT.items():
        if key not in given and environ.get(variable):
            given[key] = environ[variable]
    if "," in given.get("host", "") or "," in given.get("port", ""):
        raise ValueError(
            "several hosts in the PostgreSQL connection parameter host are not"
            " supported with the pg8000 driver"
        )
    port = _integer(given, "port", 1, 65535) or 5432
    user = given.get("user") or getpass.getuser()
    options: dict[str, Any] = {
        "user": user,
        "database": given.get("dbname") or user,
        "password": given.get("password"),
        "application_name": given.get("application_name") or given.get("fallback_application_name"),
    }
    timeout = _integer(given, "connect_timeout", -(2**31))
    if timeout is None:
        options["timeout"] = connect_timeout
    else:
        # As libpq: zero or less waits for ever, and at least 2 s.
        options["timeout"] = max(timeout, 2) if timeout > 0 else None
    startup = {key: given[key] for key in ("options", "client_encoding") if given.get(key)}
    if startup:
        options["startup_params"] = startup
    host = given.get("host") or next(
        (d for d in _SOCKET_DIRECTORIES if os.path.isdir(d)), _SOCKET_DIRECTORIES[-1]
    )
    if host.startswith(("/", "@")):
        # A UNIX socket's directory ("@": in the abstract namespace):
        # PostgreSQL never speaks TLS there.
        path = f"{host}/.s.PGSQL.{port}"
        options["unix_sock"] = "\0" + path[1:] if host.startswith("@") else path
        options["ssl_context"] = False
        return options, []
    options["host"] = host
    options["port"] = port
    options["ssl_context"] = _ssl_context(given)
    socket_options: list[tuple[int, int, int]] = []
    keepalives = _integer(given, "keepalives", 0)
    options["tcp_keepalive"] = keepalives != 0
    if keepalives != 0:
        for key, name in (
            ("keepalives_idle", "TCP_KEEPIDLE"),
            ("keepalives_interval", "TCP_KEEPINTVL"),
            ("keepalives_count", "TCP_KEEPCNT"),
        ):
            value = _integer(given, key, 0)
            if value and hasattr(socket, name):
                socket_options.append((socket.IPPROTO_TCP, getattr(socket, name), value))
    user_timeout = _integer(given, "tcp_user_timeout", 0)
    if user_timeout and hasattr(socket, "TCP_USER_TIMEOUT"):
        socket_options.append((socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, user_timeout))
    return options, socket_options


def _ssl_context(params: dict[str, str]) -> Any:
    """
    pg8000's C{ssl_context} for libpq's C{sslmode}: C{False} (no TLS),
    C{None} (TLS if the server has it, unverified), or a context.
    """
    import ssl

    mode = params.get("sslmode", "prefer")
    if mode not in _SSLMODES:
        raise ValueError(f"bad value for the PostgreSQL connection parameter sslmode: {mode}")
    if mode == "disable":
        return False
    root = params.get("sslrootcert")
    if params.get("sslkey") and not params.get("sslcert"):
        raise ValueError("the PostgreSQL connection parameter sslkey needs sslcert")
    if mode in ("allow", "prefer"):
        for key in ("sslcert", "sslrootcert"):
            if params.get(key):
                raise ValueError(
                    f"the PostgreSQL connection parameter {key} needs sslmode=require,"
                    " verify-ca or verify-full with the pg8000 driver"
                )
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if mode == "require" and not root:
        # Encrypted, but the server is not checked (as libpq).
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    else:
        # verify-ca, verify-full, or require with a root certificate
        # (which libpq takes for verify-ca).
        context.check_hostname = mode == "verify-full"
        context.verify_mode = ssl.CERT_REQUIRED
        if root == "system":
            context.load_default_certs()
        else:
            root = root or os.path.expanduser("~/.postgresql/root.crt")
            try:
                context.load_verify_locations(cafile=root)
            except (OSError, ssl.SSLError) as e:
                raise ValueError(
                    f"the PostgreSQL connection parameter sslrootcert: cannot read {root}"
                    f" ({getattr(e, 'strerror', None) or e})"
                ) from None
    if params.get("sslcert"):
        try:
            context.load_cert_chain(params["sslcert"], params.get("sslkey") or None)
        except (OSError, ssl.SSLError) as e:
            raise ValueError(
                f"the PostgreSQL connection parameters sslcert/sslkey: cannot read"
                f" {params['sslcert']} ({getattr(e, 'strerror', None) or e})"
            ) from None
    return context


def _pg8000_message(error: BaseException) -> str:
    """
    A pg8000 error as one line: the server's severity, message and code
    where it sent them (pg8000 keeps them as a dict).
    """
    fields = error.args[0] if error.args else None
    if isinstance(fields, dict):
        return f"{fields.get('S', 'ERROR')}: {fields.get('M', '')} ({fields.get('C', '?')})"
    return str(error)


def _pg8000_fatal(error: BaseException) -> bool:
    """
    Whether a pg8000 error from the server means the connection is gone.
    """
    fields = error.args[0] if error.args else None
    if not isinstance(fields, dict):
        return False
    code = str(fields.get("C", ""))
    return fields.get("S") in ("FATAL", "PANIC") or code.startswith(("08", "57P"))


class _PG8000Connection(Connection):
    driver = "pg8000"

    def __init__(self, conn: Any, database: str) -> None:
        from pg8000.exceptions import DatabaseError, InterfaceError

        self._conn = conn
        self._database = database
        self._closed = False
        self._interface_error = InterfaceError
        self._database_error = DatabaseError

    @property
    def database(self) -> str:
        return self._database

    @property
    def closed(self) -> bool:
        return self._closed

    def _run(self, call: Callable[[Any], None]) -> Any:
        cursor = self._conn.cursor()
        try:
            call(cursor)
        except self._interface_error:
            # The socket failed (pg8000 says "network error"), or was
            # closed: the connection is no more use.
            self._lost()
            raise
        except OSError as e:
            # pg8000 lets some socket errors through as they are (a reset
            # on the first read of a reply): the same, said as pg8000 says
            # the others.
            self._lost()
            raise self._interface_error(f"network error ({e})") from e
        except self._database_error as e:
            if _pg8000_fatal(e):
                self._lost()
            raise
        return cursor

    def _lost(self) -> None:
        if not self._closed:
            self._closed = True
            try:
                self._conn.close()
            except Exception:
                pass

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Rows:
        cursor = self._run(lambda cursor: cursor.execute(sql, tuple(params)))
        rows = [tuple(row) for row in cursor.fetchall()] if cursor.description else []
        return Rows(rows, cursor.rowcount)

    @contextmanager
    def transaction(self) -> Iterator[None]:
        self.execute("BEGIN")
        try:
            yield
        except BaseException:
            if not self._closed:
                try:
                    self.execute("ROLLBACK")
                except Exception:
                    pass
            raise
        self.execute("COMMIT")

    def copy_rows(self, table: str, columns: str, rows: Iterable[Sequence[Any]]) -> None:
        self._run(
            lambda cursor: cursor.execute(
                f"COPY {table} ({columns}) FROM STDIN", stream=_copy_text(rows)
            )
        )

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            try:
                self._conn.close()
            except (self._interface_error, OSError):
                # Its goodbye could not be sent: the socket is closed all
                # the same.
                pass


# COPY's text format: these characters are escaped in a value.
_COPY_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})


def _copy_value(value: Any) -> str:
    if value is None:
        return "\\N"
    if isinstance(value, (bytes, bytearray, memoryview)):
        # bytea's hex form, its backslash escaped for COPY.
        return "\\\\x" + bytes(value).hex()
    if isinstance(value, bool):
        return "t" if value else "f"
    if isinstance(value, int):
        return str(int(value))
    if isinstance(value, float):
        return repr(float(value))
    return str(value).translate(_COPY_ESCAPES)


def _copy_text(rows: Iterable[Sequence[Any]], size: int = 1 << 16) -> Iterator[str]:
    """
    Rows in C{COPY}'s text format, in pieces of about C{size} characters
    (each piece is one message to the server).
    """
    lines: list[str] = []
    length = 0
    for row in rows:
        line = "\t".join([_copy_value(value) for value in row]) + "\n"
        lines.append(line)
        length += len(line)
        if length >= size:
            yield "".join(lines)
            lines = []
            length = 0
    if lines:
        yield "".join(lines)


def _pg8000_connect(conninfo: str, connect_timeout: float, params: dict[str, Any]) -> Connection:
    import pg8000.dbapi
    from pg8000.exceptions import DatabaseError, InterfaceError

    given = parse_conninfo(conninfo)
    given.update({key: str(value) for key, value in params.items()})
    options, socket_options = pg8000_options(given, connect_timeout)
    where = (
        f'socket "{options["unix_sock"]}"'.replace("\0", "@")
        if "unix_sock" in options
        else f'"{options["host"]}", port {options["port"]}'
    )
    try:
        conn = pg8000.dbapi.connect(**options)
    except InterfaceError as e:
        cause = e.__cause__
        reason = (getattr(cause, "strerror", None) or str(cause)) if cause else str(e)
        raise InterfaceError(f"connection to server at {where} failed: {reason}") from None
    except DatabaseError as e:
        raise DatabaseError(
            f"connection to server at {where} failed: {_pg8000_message(e)}"
        ) from None
    except OSError as e:
        raise InterfaceError(f"connection to server at {where} failed: {e}") from None
    conn.autocommit = True
    sock = getattr(conn, "_usock", None)
    if sock is not None:
        # pg8000's timeout is for every read, not only for connecting
        # (libpq's connect_timeout): a long statement must not fail.
        sock.settimeout(None)
        for level, name, value in socket_options:
            sock.setsockopt(level, name, value)
    return _PG8000Connection(conn, options["database"])


# -- choosing --------------------------------------------------------------


@cache
def available(name: str) -> str | None:
    """
    Why a driver cannot be used here, or C{None} if it can.
    """
    if name == "psycopg":
        try:
            import psycopg

            psycopg.pq.version()
        except Exception as e:
            return f"psycopg 3 does not work here ({type(e).__name__}: {e})"
        return None
    if name == "pg8000":
        try:
            import pg8000.dbapi  # noqa: F401
        except Exception as e:
            return f"pg8000 is not installed ({type(e).__name__}: {e})"
        return None
    return f"no such PostgreSQL driver: {name!r} (use {' or '.join(DRIVERS)})"


def choose() -> str:
    """
    The driver to connect with: the one C{TXGEARMAND_PG_DRIVER} names,
    else the first of L{DRIVERS} that works here.

    @raise RuntimeError: if it (or, unforced, every one) cannot be used.
    """
    forced = os.environ.get(ENVIRONMENT, "").strip()
    if forced:
        why = available(forced)
        if why is not None:
            raise RuntimeError(f"{ENVIRONMENT}={forced}: {why}")
        return forced
    for name in DRIVERS:
        if available(name) is None:
            return name
    raise RuntimeError(
        "the PostgreSQL job store needs psycopg 3 or (on PyPy) pg8000:"
        " pip install 'txgearmand[postgresql]'"
    )


def connect(conninfo: str, connect_timeout: float = 10, **params: Any) -> Connection:
    """
    Connect, in autocommit mode, with the driver L{choose} picks.

    @param conninfo: a libpq connection string: a URI or C{key=value}s.
    @param connect_timeout: the timeout to connect, in seconds, unless
        C{conninfo} (or C{PGCONNECT_TIMEOUT}) says.
    @param params: more libpq parameters, taking precedence over
        C{conninfo}'s.
    @raise ValueError: for a parameter the driver cannot honour.
    """
    if choose() == "psycopg":
        return _psycopg_connect(conninfo, connect_timeout, params)
    return _pg8000_connect(conninfo, connect_timeout, params)


def connection_errors() -> tuple[type[Exception], ...]:
    """
    The exceptions the drivers raise, among others, when the server
    cannot be reached or the connection is lost (then
    L{Connection.closed} is true): psycopg's C{OperationalError}; pg8000's
    C{InterfaceError} (C{"network error"}, also for a socket error pg8000
    lets through as it is) and C{DatabaseError} (a C{FATAL} one).
    """
    errors: list[type[Exception]] = []
    if available("psycopg") is None:
        import psycopg

        errors.append(psycopg.OperationalError)
    if available("pg8000") is None:
        from pg8000.exceptions import DatabaseError, InterfaceError

        errors.extend([InterfaceError, DatabaseError])
    return tuple(errors)
