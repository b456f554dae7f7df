"""
Helpers for tests against real processes: a C{twistd gearmand} on a free
loopback port, other Gearman servers, and client programs.

Every wait is bounded; every process is killed at cleanup.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import txgearmand
from txgearmand import wire
from txgearmand.wire import PacketType

#: The directory that holds the txgearmand package under test.
PACKAGE_ROOT = str(Path(txgearmand.__file__).resolve().parent.parent)

#: Generous limits: PyPy and loaded CI machines are slow to start.
START_TIMEOUT = 30.0
STOP_TIMEOUT = 15.0

_TWISTD = "import sys; from twisted.scripts.twistd import run; sys.argv[0] = 'twistd'; run()"


def free_port() -> int:
    """
    A TCP port on 127.0.0.1 that nothing listens on right now.
    """
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def environment() -> dict[str, str]:
    """
    The environment for child processes: they import this txgearmand.
    """
    env = dict(os.environ)
    paths = [PACKAGE_ROOT]
    if env.get("PYTHONPATH"):
        paths.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(paths)
    return env


def wait_for_port(port: int, process: subprocess.Popen[bytes], timeout: float) -> None:
    """
    Wait until a server answers the admin C{version} command on a port.

    @raise RuntimeError: if the process exits or the time runs out.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode} before listening")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                s.sendall(b"version\r\n")
                s.settimeout(2)
                if s.recv(100):
                    return
        except OSError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"server did not listen on {port} within {timeout}s")


class Server:
    """
    A Gearman server process on a loopback port.

    @ivar port: its port.
    @ivar log_path: where its log goes.
    """

    def __init__(self, argv: Sequence[str], port: int, log_path: Path, cwd: Path) -> None:
        self.argv = list(argv)
        self.port = port
        self.log_path = log_path
        self.cwd = cwd
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = START_TIMEOUT) -> Server:
        """
        Start it and wait until it answers, at most C{timeout} seconds.
        """
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                self.argv,
                cwd=self.cwd,
                env=environment(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        try:
            wait_for_port(self.port, self.process, timeout)
        except RuntimeError as e:
            self.kill()
            raise RuntimeError(f"{e}\n--- log ---\n{self.log()}") from None
        return self

    def log(self) -> str:
        """
        What it logged so far.
        """
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def stop(self) -> int | None:
        """
        SIGTERM, then SIGKILL if it does not exit in time; its exit code.
        """
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else None
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.kill()
            return None

    def kill(self) -> None:
        """
        SIGKILL, and reap.
        """
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(STOP_TIMEOUT)

    def wait(self, timeout: float) -> int | None:
        """
        Wait for it to exit by itself; its exit code, or L{None}.
        """
        assert self.process is not None
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            return None


def twistd_gearmand(
    workdir: Path, *options: str, python: str | None = None, twistd: Sequence[str] = ()
) -> Server:
    """
    A C{twistd -n gearmand} process (not started) on a free port, with
    its log in C{workdir}, and C{twistd}'s own options if given.
    """
    port = free_port()
    argv = [
        python or sys.executable,
        "-c",
        _TWISTD,
        "-n",
        "--pidfile=",
        f"--logfile={workdir / 'twistd.log'}",
        *twistd,
        "gearmand",
        f"--port=tcp:{port}:interface=127.0.0.1",
        *options,
    ]
    return Server(argv, port, workdir / "twistd.log", workdir)


def c_gearmand(workdir: Path, *options: str) -> Server | None:
    """
    Debian's C gearmand (not started) on a free port, or L{None} when it is
    not installed.
    """
    binary = shutil.which("gearmand", path="/usr/sbin:/usr/local/sbin:" + os.environ["PATH"])
    if binary is None or not _is_c_gearmand(binary):
        return None
    port = free_port()
    argv = [
        binary,
        "--listen=127.0.0.1",
        f"--port={port}",
        f"--log-file={workdir / 'gearmand.log'}",
        f"--pid-file={workdir / 'gearmand.pid'}",
        *options,
    ]
    return Server(argv, port, workdir / "gearmand-stdout.log", workdir)


def _is_c_gearmand(binary: str) -> bool:
    try:
        out = subprocess.run(
            [binary, "--version"], capture_output=True, timeout=10, check=False
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return False
    return out.strip().startswith(b"gearmand ")


def admin(port: int, command: bytes, timeout: float = 5.0) -> bytes:
    """
    Send one admin command; read the reply up to its end (a C{.} line, or
    one line for single-line replies).
    """
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(command + b"\r\n")
        data = b""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
            if data.endswith(b"\n.\n") or data == b".\n":
                break
            if data.endswith(b"\n") and (
                data.startswith((b"OK", b"ERR")) or command.split()[0] == b"version"
            ):
                break
        return data


def request(
    port: int, packets: bytes, replies: int, timeout: float = 5.0
) -> list[tuple[int, bytes]]:
    """
    Send raw request packets; read a number of response packets.
    """
    out: list[tuple[int, bytes]] = []
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(packets)
        data = b""
        while len(out) < replies:
            while len(data) < 12 or len(data) < 12 + struct.unpack(">I", data[8:12])[0]:
                chunk = s.recv(65536)
                if not chunk:
                    raise ConnectionError(f"closed after {out!r}")
                data += chunk
            ptype, size = struct.unpack(">II", data[4:12])
            out.append((ptype, data[12 : 12 + size]))
            data = data[12 + size :]
    return out


def run(argv: Sequence[str], timeout: float = 30.0, input: bytes | None = None) -> bytes:
    """
    Run a program to completion; its standard output.

    @raise AssertionError: on a non-zero exit, with what it printed.
    """
    result = subprocess.run(
        list(argv),
        input=input,
        capture_output=True,
        timeout=timeout,
        env=environment(),
        check=False,
    )
    if result.returncode != 0:
        raise AssertionError(
            f"{argv!r} exited with {result.returncode}\n"
            f"stdout: {result.stdout!r}\nstderr: {result.stderr!r}"
        )
    return result.stdout


def spawn(argv: Sequence[str], log_path: Path) -> subprocess.Popen[bytes]:
    """
    Start a helper program (a worker) with its output in a file.
    """
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            list(argv),
            env=environment(),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )


def reap(process: subprocess.Popen[bytes]) -> None:
    """
    Kill a helper program if it still runs.
    """
    if process.poll() is None:
        process.kill()
    process.wait(STOP_TIMEOUT)


def has_perl_module(module: str) -> bool:
    """
    Whether Perl and a module of it are installed.
    """
    if shutil.which("perl") is None:
        return False
    try:
        return (
            subprocess.run(
                ["perl", f"-M{module}", "-e", "1"], capture_output=True, timeout=30, check=False
            ).returncode
            == 0
        )
    except (OSError, subprocess.TimeoutExpired):
        return False


class PacketConnection:
    """
    A blocking socket speaking Gearman packets, with bounded waits.
    """

    def __init__(self, port: int, timeout: float = 10.0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.parser = wire.PacketParser(max_packet_size=1 << 30, magic=wire.RESPONSE_MAGIC)
        self.pending: list[tuple[int, bytes]] = []

    def send(self, ptype: int, *args: bytes) -> None:
        self.sock.sendall(wire.encode_request(ptype, *args))

    def recv(self) -> tuple[int, bytes]:
        """
        The next packet (or raise if the connection closes or times out).
        """
        while not self.pending:
            data = self.sock.recv(1 << 16)
            if not data:
                raise ConnectionError("closed by the server")
            self.pending.extend(self.parser.feed(data))
        return self.pending.pop(0)

    def expect(self, ptype: int) -> bytes:
        """
        Skip NOOPs; the body of the next packet, which must be C{ptype}.
        """
        while True:
            got, body = self.recv()
            if got != PacketType.NOOP:
                break
        if got != ptype:
            raise AssertionError(f"expected {ptype!r}, got {got!r} {body[:100]!r}")
        return body

    def round_trip(self) -> float:
        """
        Seconds an ECHO takes.
        """
        start = time.monotonic()
        self.send(PacketType.ECHO_REQ, b"ping")
        assert self.expect(PacketType.ECHO_RES) == b"ping"
        return time.monotonic() - start

    def closed_by_server(self, timeout: float) -> bool:
        """
        Whether the server closes the connection within C{timeout}
        (whatever it sends first is read and dropped).
        """
        self.sock.settimeout(timeout)
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                if not self.sock.recv(1 << 16):
                    return True
        except (ConnectionResetError, BrokenPipeError):
            return True
        except OSError:
            return False
        return False

    def close(self) -> None:
        self.sock.close()
