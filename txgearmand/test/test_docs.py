"""
The examples in C{docs/examples/} and the code in README.rst run, so they
cannot rot.  They live in the source checkout, next to the package.
"""

from __future__ import annotations

import importlib.util
import re
import signal
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

from twisted.application.internet import StreamServerEndpointService
from twisted.internet import reactor as _reactor
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase

from txgearmand import JobServer
from txgearmand.test import _process
from txgearmand.wire import PacketType

reactor: Any = _reactor
ROOT = Path(_process.PACKAGE_ROOT)
EXAMPLES = ROOT / "docs" / "examples"

#: How long a documented program may take (PyPy starts slowly).
PROGRAM_TIMEOUT = 60.0


def load(name: str) -> ModuleType:
    """
    Import an example by its file name.
    """
    path = EXAMPLES / f"{name}.py"
    if not path.exists():
        raise SkipTest(f"{path} is not here: run the tests from a source checkout")
    spec = importlib.util.spec_from_file_location(f"txgearmand_example_{name}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class DocTestCase(SynchronousTestCase):
    """
    Helpers for running documented programs: a scratch directory, a
    server, long-running programs stopped at cleanup.
    """

    def setUp(self) -> None:
        self.workdir = Path(self.mktemp()).resolve()
        self.workdir.mkdir(parents=True)

    def server(self) -> int:
        """
        Start a C{twistd gearmand} (no store) for this test; its port.
        """
        directory = self.workdir / "server"
        directory.mkdir()
        server = _process.twistd_gearmand(directory, "--queue=memory").start()
        self.addCleanup(server.stop)
        return server.port

    def start(self, path: Path, *args: str) -> subprocess.Popen[str]:
        """
        Start a long-running program; it is killed at cleanup if it still
        runs.
        """
        process = subprocess.Popen(
            [sys.executable, str(path), *args],
            cwd=self.workdir,
            env=_process.environment(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )

        def kill() -> None:
            if process.poll() is None:
                process.kill()
            process.communicate(timeout=_process.STOP_TIMEOUT)

        self.addCleanup(kill)
        return process

    def stop(self, process: subprocess.Popen[str]) -> str:
        """
        Stop a long-running program with SIGTERM, as Ctrl-C or an operator
        would: it must exit with status 0.  What it printed.
        """
        process.send_signal(signal.SIGTERM)
        try:
            output, _ = process.communicate(timeout=PROGRAM_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            output, _ = process.communicate(timeout=_process.STOP_TIMEOUT)
            self.fail(f"it did not stop on SIGTERM:\n{output}")
        self.assertEqual(process.returncode, 0, output)
        return output


class ExampleTests(TestCase):
    """
    Each example's C{main} does what its docstring says.
    """

    timeout = 60

    async def test_inprocess(self) -> None:
        """
        docs/examples/inprocess.py: a client and a worker in-process.
        """
        self.assertEqual(await load("inprocess").main(reactor), b"4")

    async def test_start_worker(self) -> None:
        """
        docs/examples/start_worker.py: workers as child processes.
        """
        digest = await load("start_worker").main(reactor, _process.environment())
        self.assertEqual(
            digest, b"2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
        )

    async def test_web_app(self) -> None:
        """
        docs/examples/web_app.py: a twisted.web page served through the
        embedded job server.
        """
        self.assertEqual(await load("web_app").main(reactor, "--demo"), b"desserts")
        self.flushWarnings()


class ChildWorkerTests(DocTestCase):
    """
    docs/examples/child_worker.py run by hand, not by a job server.
    """

    def child_worker(self) -> Path:
        path = EXAMPLES / "child_worker.py"
        if not path.exists():
            raise SkipTest(f"{path} is not here: run the tests from a source checkout")
        return path

    def test_alone(self) -> None:
        """
        Run alone, without a server to connect to, it says how to run it
        and exits with status 2; so it does when the environment says a job
        server started it but its standard input is no socket.
        """
        path = self.child_worker()
        for env in ({}, {"GEARMAN_WORKER_USE_STDIO": "1"}):
            result = subprocess.run(
                [sys.executable, str(path)],
                env={**_process.environment(), **env},
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=PROGRAM_TIMEOUT,
                check=False,
            )
            self.assertEqual(result.returncode, 2, result.stderr)
            self.assertTrue(result.stderr.startswith("usage: child_worker.py SERVER\n"), env)
            self.assertNotIn("Traceback", result.stderr)
            self.assertEqual(result.stdout, "")

    def test_with_a_server(self) -> None:
        """
        Given a server, it works for it until SIGTERM stops it.
        """
        port = self.server()
        worker = self.start(self.child_worker(), f"tcp:127.0.0.1:{port}")
        connection = _process.PacketConnection(port, timeout=PROGRAM_TIMEOUT)
        self.addCleanup(connection.close)
        connection.send(PacketType.SUBMIT_JOB, b"sha256", b"", b"hello")
        connection.expect(PacketType.JOB_CREATED)
        body = connection.expect(PacketType.WORK_COMPLETE)
        self.assertEqual(
            body.split(b"\0", 1)[1],
            b"2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824",
        )
        self.stop(worker)


class ReadmeTests(TestCase):
    """
    The code in README.rst.
    """

    def test_embedding(self) -> None:
        """
        The embedding example builds a service tree with a job server and a
        Gearman port.
        """
        readme = ROOT / "README.rst"
        if not readme.exists():
            raise SkipTest(f"{readme} is not here: run the tests from a source checkout")
        text = readme.read_text()
        section = text.split("Embedding it in a Twisted application", 1)[1]
        match = re.search(r"::\n\n((?:    .*\n|\n)+)", section)
        assert match is not None
        code = "\n".join(line[4:] for line in match.group(1).splitlines())
        namespace: dict[str, Any] = {}
        exec(compile(code, str(readme), "exec"), namespace)
        top = namespace["top"]
        children = list(top)
        self.assertIsInstance(children[0], JobServer)
        self.assertIsInstance(children[1], StreamServerEndpointService)
        self.assertEqual(children[0].settings.wakeup, 1)
