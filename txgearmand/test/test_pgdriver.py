"""
Tests for L{txgearmand.store._pgdriver} that need no server: reading
libpq connection strings, mapping them to pg8000's arguments, COPY's text
format, identifier quoting and choosing the driver.
"""

from __future__ import annotations

import os
import socket
import ssl

from twisted.trial.unittest import SynchronousTestCase

from txgearmand.store import _pgdriver
from txgearmand.store._pgdriver import parse_conninfo, pg8000_options


class ParseTests(SynchronousTestCase):
    """
    L{parse_conninfo} reads URIs and C{key=value} strings as libpq does.
    """

    def test_uri(self) -> None:
        """
        A URI's user, password, host, port, database and query parameters,
        percent-decoded.
        """
        self.assertEqual(
            parse_conninfo("postgresql://gear%40man:p%3Ass%2F%40w@db.example:5433/jobs%20db"),
            {
                "user": "gear@man",
                "password": "p:ss/@w",
                "host": "db.example",
                "port": "5433",
                "dbname": "jobs db",
            },
        )
        self.assertEqual(
            parse_conninfo("postgres://u@h/d?sslmode=require&application_name=a+b%26c"),
            {
                "user": "u",
                "host": "h",
                "dbname": "d",
                "sslmode": "require",
                "application_name": "a+b&c",
            },
        )

    def test_uri_sparse(self) -> None:
        """
        Every part of a URI may be left out; a user without a password has
        none (not an empty one).
        """
        self.assertEqual(parse_conninfo("postgresql://"), {})
        self.assertEqual(parse_conninfo("postgresql:///gearman"), {"dbname": "gearman"})
        self.assertEqual(parse_conninfo("postgresql://u@"), {"user": "u"})
        self.assertEqual(
            parse_conninfo("postgresql://u:@h"), {"user": "u", "password": "", "host": "h"}
        )
        self.assertEqual(parse_conninfo("postgresql://:7/"), {"port": "7"})

    def test_uri_socket_and_ipv6(self) -> None:
        """
        A UNIX socket directory, percent-encoded in the host or given as the
        C{host} parameter; an IPv6 address in brackets.
        """
        self.assertEqual(
            parse_conninfo("postgresql://%2Fvar%2Frun%2Fpostgresql/gearman"),
            {"host": "/var/run/postgresql", "dbname": "gearman"},
        )
        self.assertEqual(
            parse_conninfo("postgresql:///gearman?host=/var/run/postgresql&port=5433"),
            {"host": "/var/run/postgresql", "dbname": "gearman", "port": "5433"},
        )
        self.assertEqual(
            parse_conninfo("postgresql://[::1]:5433/d"),
            {"host": "::1", "port": "5433", "dbname": "d"},
        )
        self.assertEqual(parse_conninfo("postgresql://[::1]/d"), {"host": "::1", "dbname": "d"})

    def test_pairs(self) -> None:
        """
        C{key=value} pairs: spaces around C{=}, quoted values with spaces
        and escapes, backslash escapes outside quotes, empty values.
        """
        self.assertEqual(
            parse_conninfo(
                "host=/var/run/postgresql dbname = gearman  user=x"
                " password='it\\'s a \\\\ secret' options=-c\\ a=b application_name=''"
            ),
            {
                "host": "/var/run/postgresql",
                "dbname": "gearman",
                "user": "x",
                "password": "it's a \\ secret",
                "options": "-c a=b",
                "application_name": "",
            },
        )
        self.assertEqual(parse_conninfo(""), {})
        self.assertEqual(parse_conninfo("  "), {})

    def test_bad(self) -> None:
        """
        A key without C{=}, an unterminated quote, a bad bracketed host or
        a query parameter without C{=} is refused, saying which.
        """
        for bad, says in [
            ("host", "'host'"),
            ("host=h dbname", "'dbname'"),
            ("password='open", "unterminated quoted value of 'password'"),
            ("postgresql://[::1/d", "IPv6"),
            ("postgresql://[::1]x/d", "IPv6"),
            ("postgresql://h/d?sslmode", "'sslmode'"),
        ]:
            with self.assertRaises(ValueError, msg=bad) as caught:
                parse_conninfo(bad)
            self.assertIn(says, str(caught.exception))


def options(
    conninfo: str, environ: dict[str, str] | None = None, **kwargs: float
) -> dict[str, object]:
    """
    pg8000's arguments for a connection string, in an empty environment
    (or the one given).
    """
    return pg8000_options(parse_conninfo(conninfo), environ=environ or {}, **kwargs)[0]


class PG8000OptionsTests(SynchronousTestCase):
    """
    L{pg8000_options} maps libpq's parameters to pg8000's arguments, or
    refuses them.
    """

    def test_tcp(self) -> None:
        """
        A host and port over TCP, TLS tried (C{sslmode=prefer}, libpq's
        default), the default connect timeout.
        """
        got = options("postgresql://u:secret@db.example:5433/jobs")
        self.assertEqual(
            got,
            {
                "user": "u",
                "password": "secret",
                "database": "jobs",
                "host": "db.example",
                "port": 5433,
                "application_name": None,
                "timeout": 10,
                "ssl_context": None,
                "tcp_keepalive": True,
            },
        )

    def test_defaults(self) -> None:
        """
        Without them, the user is the login name, the database the user's,
        the port 5432, the host a UNIX socket directory; C{PG*} variables
        fill in what the string does not say.
        """
        import getpass

        got = options("postgresql://")
        self.assertEqual(got["user"], getpass.getuser())
        self.assertEqual(got["database"], getpass.getuser())
        self.assertRegex(str(got["unix_sock"]), r"^/.*/\.s\.PGSQL\.5432$")
        environ = {
            "PGHOST": "envhost",
            "PGPORT": "6000",
            "PGUSER": "envuser",
            "PGPASSWORD": "envpw",
            "PGDATABASE": "envdb",
            "PGCONNECT_TIMEOUT": "30",
        }
        got = options("postgresql://", environ)
        self.assertEqual(
            (got["host"], got["port"], got["user"], got["password"], got["database"]),
            ("envhost", 6000, "envuser", "envpw", "envdb"),
        )
        self.assertEqual(got["timeout"], 30)
        got = options("postgresql://u@h:1/d?connect_timeout=5", environ)
        self.assertEqual(
            (got["host"], got["port"], got["user"], got["database"]), ("h", 1, "u", "d")
        )
        self.assertEqual(got["timeout"], 5)

    def test_unix_socket(self) -> None:
        """
        A host that is a directory is a UNIX socket's, named after the
        port; no TLS there.  C{@} names one in the abstract namespace.
        """
        got = options("host=/var/run/postgresql port=5433 dbname=gearman user=x")
        self.assertEqual(got["unix_sock"], "/var/run/postgresql/.s.PGSQL.5433")
        self.assertIs(got["ssl_context"], False)
        self.assertNotIn("host", got)
        got = options("postgresql://%2Ftmp%2Fpg/gearman?user=x")
        self.assertEqual(got["unix_sock"], "/tmp/pg/.s.PGSQL.5432")
        got = options("host=@abstract user=x")
        self.assertEqual(got["unix_sock"], "\0abstract/.s.PGSQL.5432")

    def test_timeout(self) -> None:
        """
        The default timeout is the caller's; C{connect_timeout} overrides
        it, zero (or less) for none, at least 2 s (as libpq).
        """
        self.assertEqual(options("host=h", connect_timeout=3)["timeout"], 3)
        self.assertEqual(options("host=h connect_timeout=0")["timeout"], None)
        self.assertEqual(options("host=h connect_timeout=1")["timeout"], 2)
        self.assertEqual(options("host=h connect_timeout=60")["timeout"], 60)

    def test_startup(self) -> None:
        """
        C{options} and C{client_encoding} go to the server at start-up;
        the application name, or the fallback one.
        """
        got = options("host=h options='-c statement_timeout=5s' client_encoding=UTF8")
        self.assertEqual(
            got["startup_params"], {"options": "-c statement_timeout=5s", "client_encoding": "UTF8"}
        )
        self.assertEqual(options("host=h fallback_application_name=f")["application_name"], "f")
        self.assertEqual(
            options("host=h application_name=a fallback_application_name=f")["application_name"],
            "a",
        )

    def test_sslmode(self) -> None:
        """
        C{disable}: no TLS; C{allow} and C{prefer}: TLS if the server has
        it, unverified; C{require}: TLS, unverified; C{verify-full}: TLS
        with the server's certificate and name checked.
        """
        self.assertIs(options("host=h sslmode=disable")["ssl_context"], False)
        self.assertIsNone(options("host=h sslmode=allow")["ssl_context"])
        self.assertIsNone(options("host=h sslmode=prefer")["ssl_context"])
        required = options("host=h sslmode=require")["ssl_context"]
        assert isinstance(required, ssl.SSLContext)
        self.assertEqual(required.verify_mode, ssl.CERT_NONE)
        self.assertFalse(required.check_hostname)
        full = options("host=h sslmode=verify-full sslrootcert=system")["ssl_context"]
        assert isinstance(full, ssl.SSLContext)
        self.assertEqual(full.verify_mode, ssl.CERT_REQUIRED)
        self.assertTrue(full.check_hostname)
        ca = options("host=h sslmode=verify-ca sslrootcert=system")["ssl_context"]
        assert isinstance(ca, ssl.SSLContext)
        self.assertEqual(ca.verify_mode, ssl.CERT_REQUIRED)
        self.assertFalse(ca.check_hostname)
        self.assertIs(options("host=h", {"PGSSLMODE": "disable"})["ssl_context"], False)

    def test_keepalives(self) -> None:
        """
        TCP keepalive settings become socket options; C{keepalives=0}
        turns keepalives off.
        """
        params = parse_conninfo(
            "host=h keepalives_idle=30 keepalives_interval=5 keepalives_count=3"
            " tcp_user_timeout=9000"
        )
        got, socket_options = pg8000_options(params, environ={})
        self.assertTrue(got["tcp_keepalive"])
        expected = [
            (socket.IPPROTO_TCP, getattr(socket, name), value)
            for name, value in [
                ("TCP_KEEPIDLE", 30),
                ("TCP_KEEPINTVL", 5),
                ("TCP_KEEPCNT", 3),
                ("TCP_USER_TIMEOUT", 9000),
            ]
            if hasattr(socket, name)
        ]
        self.assertEqual(socket_options, expected)
        got, socket_options = pg8000_options(
            parse_conninfo("host=h keepalives=0 keepalives_idle=30"), environ={}
        )
        self.assertFalse(got["tcp_keepalive"])
        self.assertEqual(socket_options, [])

    def test_refused(self) -> None:
        """
        What pg8000 cannot do is refused, naming the parameter, and
        without echoing a password.
        """
        for conninfo, says in [
            ("host=h sslcompression=1", "parameter sslcompression is not supported"),
            ("postgresql://h/d?service=x", "parameter service is not supported"),
            ("host=h hostaddr=127.0.0.1", "parameter hostaddr is not supported"),
            ("postgresql://a,b/d", "several hosts"),
            ("host=h port=5432,5433", "several hosts"),
            ("host=h gssencmode=require", "gssencmode=require"),
            ("host=h channel_binding=require", "channel_binding=require"),
            ("host=h sslmode=sometimes", "sslmode"),
            ("host=h port=x", "port"),
            ("host=h port=70000", "port"),
            ("host=h connect_timeout=soon", "connect_timeout"),
            ("host=h sslkey=/k.pem", "sslkey"),
            ("host=h sslcert=/c.pem", "sslcert needs sslmode=require"),
            ("host=h sslmode=verify-full sslrootcert=/nonexistent/root.crt", "sslrootcert"),
            ("host=h sslmode=require sslcert=/nonexistent/c.pem", "sslcert"),
        ]:
            with self.assertRaises(ValueError, msg=conninfo) as caught:
                options(conninfo + " password=hunter2" if "://" not in conninfo else conninfo)
            self.assertIn(says, str(caught.exception), conninfo)
            self.assertNotIn("hunter2", str(caught.exception))
            self.assertNotIn("\n", str(caught.exception))

    def test_start_up_line(self) -> None:
        """
        At start-up, an unsupported parameter stops the start with one
        line naming it.
        """
        from txgearmand.tap import StartFailed, _check_store

        old = os.environ.get(_pgdriver.ENVIRONMENT)
        os.environ[_pgdriver.ENVIRONMENT] = "pg8000"
        self.addCleanup(
            lambda: (
                os.environ.__setitem__(_pgdriver.ENVIRONMENT, old)
                if old is not None
                else os.environ.pop(_pgdriver.ENVIRONMENT, None)
            )
        )
        if _pgdriver.available("pg8000") is not None:
            self.skipTest("pg8000 is not installed")
        with self.assertRaises(StartFailed) as caught:
            _check_store("postgresql://u:hunter2@127.0.0.1:1/d?target_session_attrs=read-write")
        message = str(caught.exception)
        self.assertEqual(
            message,
            "twistd gearmand: cannot open the job store postgresql://u:***@127.0.0.1:1/d"
            "?target_session_attrs=read-write: the PostgreSQL connection parameter"
            " target_session_attrs=read-write is not supported with the pg8000 driver"
            " (only any)",
        )


class CopyTextTests(SynchronousTestCase):
    """
    Rows in C{COPY}'s text format, as pg8000 sends them.
    """

    def test_values(self) -> None:
        """
        NULL, bytes (in bytea's hex form), numbers, booleans and text with
        COPY's special characters.
        """
        text = "".join(
            _pgdriver._copy_text(
                [
                    (None, b"", b"\x00\xff", 1, -(2**40), 0.1, True, "a\tb\\c\nd\re"),
                    (bytearray(b"\\"), memoryview(b"N"), False, ""),
                ]
            )
        )
        self.assertEqual(
            text,
            "\\N\t\\\\x\t\\\\x00ff\t1\t-1099511627776\t0.1\tt\ta\\tb\\\\c\\nd\\re\n"
            "\\\\x5c\t\\\\x4e\tf\t\n",
        )

    def test_pieces(self) -> None:
        """
        Many rows go in pieces of about the size asked, whole rows each.
        """
        pieces = list(_pgdriver._copy_text([(i, b"x" * 10) for i in range(100)], size=100))
        self.assertGreater(len(pieces), 5)
        self.assertTrue(all(piece.endswith("\n") for piece in pieces))
        self.assertEqual("".join(pieces).count("\n"), 100)
        self.assertEqual(list(_pgdriver._copy_text([])), [])


class ChooseTests(SynchronousTestCase):
    """
    Which driver connects.
    """

    def setUp(self) -> None:
        old = os.environ.pop(_pgdriver.ENVIRONMENT, None)
        if old is not None:
            self.addCleanup(os.environ.__setitem__, _pgdriver.ENVIRONMENT, old)
        self.addCleanup(os.environ.pop, _pgdriver.ENVIRONMENT, None)

    def test_first_that_works(self) -> None:
        """
        Unforced, psycopg where it works, else pg8000.
        """
        working = [name for name in _pgdriver.DRIVERS if _pgdriver.available(name) is None]
        if not working:
            self.assertRaises(RuntimeError, _pgdriver.choose)
        else:
            self.assertEqual(_pgdriver.choose(), working[0])

    def test_forced(self) -> None:
        """
        C{TXGEARMAND_PG_DRIVER} forces a driver; an unknown one is refused.
        """
        for name in _pgdriver.DRIVERS:
            os.environ[_pgdriver.ENVIRONMENT] = name
            if _pgdriver.available(name) is None:
                self.assertEqual(_pgdriver.choose(), name)
            else:
                self.assertRaises(RuntimeError, _pgdriver.choose)
        os.environ[_pgdriver.ENVIRONMENT] = "libpq"
        with self.assertRaises(RuntimeError) as caught:
            _pgdriver.choose()
        self.assertIn(
            "TXGEARMAND_PG_DRIVER=libpq: no such PostgreSQL driver", str(caught.exception)
        )

    def test_quote_identifier(self) -> None:
        """
        Identifiers are quoted, their quotes doubled, qualified by dots.
        """
        self.assertEqual(_pgdriver.quote_identifier("q"), '"q"')
        self.assertEqual(_pgdriver.quote_identifier('my "s"', "t.x"), '"my ""s"""."t.x"')


class _Cursor:
    description = None
    rowcount = -1

    def __init__(self, error: Exception) -> None:
        self.error = error

    def execute(self, *args: object, **kwargs: object) -> None:
        raise self.error


class _BrokenPG8000:
    """
    A pg8000 connection whose socket fails.
    """

    def __init__(self, error: Exception) -> None:
        self.error = error
        self.closes = 0

    def cursor(self) -> _Cursor:
        return _Cursor(self.error)

    def close(self) -> None:
        self.closes += 1
        raise BrokenPipeError(32, "Broken pipe")


class LostTests(SynchronousTestCase):
    """
    A pg8000 connection whose server went away is closed, and says so
    with one of L{_pgdriver.connection_errors}.
    """

    def setUp(self) -> None:
        if _pgdriver.available("pg8000") is not None:
            self.skipTest("pg8000 is not installed")

    def lost(self, error: Exception) -> None:
        fake = _BrokenPG8000(error)
        conn = _pgdriver._PG8000Connection(fake, "db")
        with self.assertRaises(_pgdriver.connection_errors()) as caught:
            conn.execute("SELECT 1")
        self.assertTrue(conn.closed)
        self.assertEqual(fake.closes, 1)
        conn.close()
        self.assertEqual(fake.closes, 1)
        self.assertIn("network error", str(caught.exception))

    def test_network_error(self) -> None:
        """
        pg8000's own C{InterfaceError("network error")}.
        """
        from pg8000.exceptions import InterfaceError

        self.lost(InterfaceError("network error"))

    def test_socket_error(self) -> None:
        """
        A socket error pg8000 lets through (a reset on the first read of a
        reply) becomes pg8000's C{InterfaceError}.
        """
        self.lost(ConnectionResetError(104, "Connection reset by peer"))

    def test_fatal(self) -> None:
        """
        A C{FATAL} error from the server (as when it is shut down) closes
        the connection; an ordinary one does not.
        """
        from pg8000.exceptions import DatabaseError

        fatal = DatabaseError({"S": "FATAL", "C": "57P01", "M": "terminating connection"})
        conn = _pgdriver._PG8000Connection(_BrokenPG8000(fatal), "db")
        self.assertRaises(DatabaseError, conn.execute, "SELECT 1")
        self.assertTrue(conn.closed)
        error = DatabaseError({"S": "ERROR", "C": "23505", "M": "duplicate key"})
        conn = _pgdriver._PG8000Connection(_BrokenPG8000(error), "db")
        self.assertRaises(DatabaseError, conn.execute, "SELECT 1")
        self.assertFalse(conn.closed)
