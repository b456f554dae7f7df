"""
A PostgreSQL server for tests: the one named by C{TXGEARMAND_TEST_POSTGRESQL}
(a conninfo URL), or a private cluster this helper starts once per test
process from Debian's C{postgresql} package (C{initdb} and C{pg_ctl}) in a
temporary directory, listening on a free loopback port, and stops at exit.

The tests reach it through L{txgearmand.store._pgdriver}, with psycopg 3
or pg8000: L{DriverMixin} runs a test case with the driver it names.
"""

from __future__ import annotations

import atexit
import glob
import os
import shutil
import subprocess
import tempfile
import uuid
from typing import Any

from txgearmand.test._process import free_port

_state: dict[str, str | None] = {}


class Unavailable(Exception):
    """
    No PostgreSQL server can be had here; the message says why.
    """


def _binary(name: str) -> str:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    if candidates:
        return candidates[-1]
    raise Unavailable(f"{name} is not installed (Debian package postgresql)")


def _as_postgres(argv: list[str]) -> list[str]:
    if os.geteuid() != 0:
        return argv
    runuser = shutil.which("runuser")
    if runuser is None:
        raise Unavailable("running as root without runuser: cannot start PostgreSQL")
    return [runuser, "-u", "postgres", "--", *argv]


def _check_driver() -> None:
    # Imported here: the helper's command line (for CI) needs only the
    # standard library.
    from txgearmand.store import _pgdriver

    try:
        _pgdriver.choose()
    except RuntimeError as e:
        raise Unavailable(str(e)) from None


def _start(keep: bool = False) -> str:
    if not keep:
        _check_driver()
    initdb = _binary("initdb")
    pg_ctl = _binary("pg_ctl")
    directory = tempfile.mkdtemp(prefix="txgearmand-pg-")
    if os.geteuid() == 0:
        import pwd

        try:
            user = pwd.getpwnam("postgres")
        except KeyError:
            raise Unavailable("there is no postgres user to run PostgreSQL as") from None
        os.chown(directory, user.pw_uid, user.pw_gid)
    data = os.path.join(directory, "data")
    port = free_port()
    log = os.path.join(directory, "server.log")
    try:
        subprocess.run(
            _as_postgres([initdb, "-D", data, "-A", "trust", "-U", "gearman", "-E", "UTF8"]),
            check=True,
            capture_output=True,
            timeout=120,
        )
        subprocess.run(
            _as_postgres(
                [
                    pg_ctl,
                    "-D",
                    data,
                    "-l",
                    log,
                    "-w",
                    "-t",
                    "60",
                    "-o",
                    f"-p {port} -k {directory} -c listen_addresses=127.0.0.1 -c fsync=on",
                    "start",
                ]
            ),
            check=True,
            capture_output=True,
            timeout=120,
        )
    except (OSError, subprocess.SubprocessError) as e:
        output = getattr(e, "stderr", b"") or b""
        shutil.rmtree(directory, ignore_errors=True)
        raise Unavailable(f"PostgreSQL could not be started: {e} {output[-500:]!r}") from None

    def stop() -> None:
        subprocess.run(
            _as_postgres([pg_ctl, "-D", data, "-m", "immediate", "-w", "stop"]),
            capture_output=True,
            timeout=60,
            check=False,
        )
        shutil.rmtree(directory, ignore_errors=True)

    if not keep:
        atexit.register(stop)
    return f"postgresql://gearman@127.0.0.1:{port}/postgres"


def server_url() -> str:
    """
    The conninfo URL of a running PostgreSQL server.

    @raise Unavailable: when none can be had, saying why.
    """
    if "url" not in _state:
        try:
            url = os.environ.get("TXGEARMAND_TEST_POSTGRESQL")
            if url:
                _check_driver()
            _state["url"] = url or _start()
            _state["why"] = None
        except Unavailable as e:
            _state["url"] = None
            _state["why"] = str(e)
    url = _state["url"]
    if url is None:
        raise Unavailable(_state["why"] or "PostgreSQL is unavailable")
    return url


def fresh_database() -> str:
    """
    A new, empty database on the test server; its conninfo URL.
    """
    base = server_url()
    name = "t_" + uuid.uuid4().hex[:16]
    query(base, f"CREATE DATABASE {name}")
    return base.rsplit("/", 1)[0] + "/" + name


def query(url: str, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    """
    Run one statement on a connection of its own (with the driver the
    store would use); its rows.
    """
    from txgearmand.store import _pgdriver

    conn = _pgdriver.connect(url, connect_timeout=10)
    try:
        return conn.execute(sql, args).fetchall()
    finally:
        conn.close()


class DriverMixin:
    """
    Runs a test case's tests with the PostgreSQL driver L{driver} names
    (C{TXGEARMAND_PG_DRIVER}, for the test process and the servers it
    starts), or skips them, saying why, where it cannot be used.  Mix in
    before C{TestCase}, and call L{use_driver} first thing in C{setUp}.
    """

    #: One of L{txgearmand.store._pgdriver.DRIVERS}.
    driver = "psycopg"

    def use_driver(self) -> None:
        """
        Use L{driver} until the test ends.
        """
        from twisted.trial.unittest import SkipTest

        from txgearmand.store import _pgdriver

        why = _pgdriver.available(self.driver)
        if why is not None:
            raise SkipTest(why)
        old = os.environ.get(_pgdriver.ENVIRONMENT)
        os.environ[_pgdriver.ENVIRONMENT] = self.driver

        def restore() -> None:
            if old is None:
                os.environ.pop(_pgdriver.ENVIRONMENT, None)
            else:
                os.environ[_pgdriver.ENVIRONMENT] = old

        self.addCleanup(restore)  # type: ignore[attr-defined]


class Cluster:
    """
    A private PostgreSQL cluster that a test may stop and start again (the
    shared one of L{server_url} must stay up for the other tests): made in
    a temporary directory, listening on a free loopback port, removed by
    L{destroy}.

    @ivar url: its conninfo URL (database C{postgres}).
    """

    def __init__(self) -> None:
        self._initdb = _binary("initdb")
        self._pg_ctl = _binary("pg_ctl")
        self.directory = tempfile.mkdtemp(prefix="txgearmand-pg-")
        if os.geteuid() == 0:
            import pwd

            try:
                user = pwd.getpwnam("postgres")
            except KeyError:
                shutil.rmtree(self.directory, ignore_errors=True)
                raise Unavailable("there is no postgres user to run PostgreSQL as") from None
            os.chown(self.directory, user.pw_uid, user.pw_gid)
        self.data = os.path.join(self.directory, "data")
        self.port = free_port()
        self.url = f"postgresql://gearman@127.0.0.1:{self.port}/postgres"
        try:
            self._run([self._initdb, "-D", self.data, "-A", "trust", "-U", "gearman", "-E", "UTF8"])
        except Unavailable:
            shutil.rmtree(self.directory, ignore_errors=True)
            raise

    def _run(self, argv: list[str]) -> None:
        try:
            subprocess.run(_as_postgres(argv), check=True, capture_output=True, timeout=120)
        except (OSError, subprocess.SubprocessError) as e:
            output = getattr(e, "stderr", b"") or b""
            raise Unavailable(f"PostgreSQL: {e} {output[-500:]!r}") from None

    def start(self) -> None:
        """
        Start it (on the same port each time); return once it takes
        connections.
        """
        options = f"-p {self.port} -k {self.directory} -c listen_addresses=127.0.0.1"
        log = os.path.join(self.directory, "server.log")
        argv = [self._pg_ctl, "-D", self.data, "-l", log, "-w", "-t", "60", "-o", options]
        self._run([*argv, "start"])

    def stop(self, mode: str = "fast") -> None:
        """
        Stop it: C{fast} (sessions are ended, as by an operator) or
        C{immediate} (as by a crash).
        """
        self._run([self._pg_ctl, "-D", self.data, "-m", mode, "-w", "stop"])

    def destroy(self) -> None:
        """
        Stop it if it runs, and remove its files.
        """
        subprocess.run(
            _as_postgres([self._pg_ctl, "-D", self.data, "-m", "immediate", "-w", "stop"]),
            capture_output=True,
            timeout=60,
            check=False,
        )
        shutil.rmtree(self.directory, ignore_errors=True)


if __name__ == "__main__":
    # For CI: start a cluster that outlives this process; print its URL.
    import sys

    try:
        print(_start(keep=True))
    except Unavailable as e:
        sys.exit(f"no PostgreSQL: {e}")
