"""
The documentation's code runs, so it cannot rot: the examples in
C{docs/examples/}, the code in README.rst, and the user guide in
C{docs/guide/}.  They live in the source checkout, next to the package.

How the guide's and the README's blocks are run (C{docs/guide/index.rst}
tells readers the same):

  - a C{.. code-block:: python} block is a whole program named by its
    first line (C{# worker.py: ...}); each name has a test here
    (L{GUIDE_PROGRAMS}, L{README_PROGRAMS}) that saves the block under
    its name and runs it as it is, with C{sys.executable}, against a
    server of its own; where the text that follows says what it
    C{prints::}, its output must match (C{...} matches anything, as in
    doctest).  A block whose first line is C{# not run: REASON} is
    skipped (there are none now).
  - in C{.. code-block:: shell} blocks, every C{twistd} command is parsed
    with twistd's own option parser, C{gearmand}'s options included.
  - in the guide's troubleshooting page, each C{.. code-block:: console}
    block is a C{$ twistd ...} command and what it prints: the command is
    run, and must exit with status 1 and print that.
  - links to files of the checkout, and to README sections, must find them.
"""

from __future__ import annotations

import doctest
import importlib.util
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import textwrap
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import attrs
from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import IService
from twisted.internet import reactor as _reactor
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase

from txgearmand import JobServer
from txgearmand.test import _process
from txgearmand.wire import PacketType

reactor: Any = _reactor
ROOT = Path(_process.PACKAGE_ROOT)
EXAMPLES = ROOT / "docs" / "examples"
GUIDE = ROOT / "docs" / "guide"
README = ROOT / "README.rst"

#: How long a documented program may take (PyPy starts slowly).
PROGRAM_TIMEOUT = 60.0

#: Where a message quoted in the guide comes from a database driver that
#: words it otherwise on PyPy (the guide says so), what PyPy says.
PYPY_WORDING = {"unable to open database file": "Could not open database"}

#: The guide's programs, by name, and the test that runs each.
GUIDE_PROGRAMS = {
    "worker.py": "GuideTests.test_client_and_worker",
    "client.py": "GuideTests.test_client_and_worker",
    "app.py": "GuideTests.test_app",
    "test_reverse.py": "GuideTests.test_unit_tests",
    "restart.py": "GuideTests.test_restart",
}

#: The README's programs, by name, and the test that runs each.
README_PROGRAMS = {
    "gearman.tac": "ReadmeTests.test_embedding",
    "resize.py": "ReadmeTests.test_client_and_worker",
}


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


# -- reading the blocks of a reStructuredText file ---------------------------

_DIRECTIVE = re.compile(r"^\.\. code-block:: *(\S+) *$")
_NAME = re.compile(r"^# ([\w.-]+\.(?:py|tac))(?::|$)")
_NOT_RUN = re.compile(r"^# not run: \S")
_PYTHON_LINE = re.compile(r"^(import \w|from [\w.]+ import |def \w|async def \w|class \w)")


@attrs.frozen
class Block:
    """
    A block of code or output in a reStructuredText file.

    @ivar source: the file.
    @ivar line: the line its content starts on (1-based).
    @ivar kind: the language of a C{code-block} directive (C{python},
        C{shell}, C{console}), or C{literal} for a C{::} block.
    @ivar text: its content, dedented.
    @ivar intro: the paragraph that ends with C{::}, for a literal block.
    """

    source: Path
    line: int
    kind: str
    text: str
    intro: str = ""

    @property
    def where(self) -> str:
        return f"{self.source.name}:{self.line}"

    @property
    def name(self) -> str | None:
        """
        A program's name, from its first line.
        """
        match = _NAME.match(self.text.splitlines()[0]) if self.text else None
        return match.group(1) if match else None

    @property
    def not_run(self) -> bool:
        return bool(self.text) and bool(_NOT_RUN.match(self.text.splitlines()[0]))


def read_blocks(path: Path) -> list[Block]:
    """
    The C{code-block} directives and C{::} literal blocks of a file, in
    order (directives at the start of a line only: the guide nests none).
    """
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        directive = _DIRECTIVE.match(line)
        if directive:
            kind, intro = directive.group(1), ""
        elif line.rstrip().endswith("::") and not line.startswith(".."):
            start = i
            while start > 0 and lines[start - 1].strip():
                start -= 1
            kind, intro = "literal", " ".join(x.strip() for x in lines[start : i + 1])
        else:
            i += 1
            continue
        i += 1
        while i < len(lines) and re.match(r"^\s+:[\w-]+:", lines[i]):
            i += 1
        content: list[str] = []
        first = None
        while i < len(lines) and (not lines[i].strip() or lines[i][0].isspace()):
            if lines[i].strip() and first is None:
                first = i + 1
            content.append(lines[i])
            i += 1
        text = textwrap.dedent("\n".join(content)).strip("\n") + "\n"
        blocks.append(Block(path, first or i, kind, text, intro))
    return blocks


def guide_pages() -> list[Path]:
    """
    The guide's pages, or skip when they are not here.
    """
    if not GUIDE.is_dir():
        raise SkipTest(f"{GUIDE} is not here: run the tests from a source checkout")
    return sorted(GUIDE.glob("*.rst"))


def readme() -> Path:
    """
    README.rst, or skip when it is not here.
    """
    if not README.exists():
        raise SkipTest(f"{README} is not here: run the tests from a source checkout")
    return README


def programs(pages: Sequence[Path]) -> dict[str, tuple[Block, str | None]]:
    """
    The named Python blocks of some pages, by name, each with what the
    text right after it says it prints (or L{None}).
    """
    found: dict[str, tuple[Block, str | None]] = {}
    for page in pages:
        blocks = read_blocks(page)
        for n, block in enumerate(blocks):
            if block.kind != "python" or block.name is None:
                continue
            prints = None
            after = blocks[n + 1] if n + 1 < len(blocks) else None
            if after is not None and after.kind == "literal" and after.intro.endswith("prints::"):
                prints = after.text
            if block.name in found:
                raise AssertionError(f"{block.where}: a second program named {block.name}")
            found[block.name] = (block, prints)
    return found


def twistd_commands(block: Block) -> Iterator[list[str]]:
    """
    The C{twistd} commands of a shell block, as argument lists (lines
    joined at a trailing backslash, comments dropped, split at C{&&},
    C{||}, C{;} and C{|}).
    """
    text = block.text.replace("\\\n", " ")
    for line in text.splitlines():
        lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        command: list[str] = []
        for token in [*lexer, ";"]:
            if token in ("&&", "||", ";", "|"):
                if command and os.path.basename(command[0]) == "twistd":
                    yield command
                command = []
            else:
                command.append(token)


def parse_twistd(argv: Sequence[str]) -> Any:
    """
    Parse a C{twistd} command line as twistd does (C{argv} without
    C{twistd} itself); the options of its C{gearmand} sub-command.

    @raise AssertionError: if twistd or C{gearmand} refuses it.
    """
    from twisted.scripts.twistd import ServerOptions  # type: ignore[attr-defined]

    options = ServerOptions()
    try:
        options.parseOptions(list(argv))
    except SystemExit as e:
        raise AssertionError(f"twistd {shlex.join(argv)}: {e}") from None
    except Exception as e:
        raise AssertionError(f"twistd {shlex.join(argv)}: {e}") from None
    if options.subCommand != "gearmand":
        raise AssertionError(f"twistd {shlex.join(argv)}: not twistd gearmand")
    return options.subOptions


def run_program(
    path: Path, *args: str, cwd: Path, timeout: float = PROGRAM_TIMEOUT
) -> subprocess.CompletedProcess[str]:
    """
    Run a program to its end with this Python and this txgearmand.

    @raise AssertionError: if it is still running after C{timeout}.
    """
    try:
        return subprocess.run(
            [sys.executable, str(path), *args],
            cwd=cwd,
            env=_process.environment(),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as e:
        raise AssertionError(
            f"{path.name} did not finish within {timeout} s: it hangs\n"
            f"stdout: {e.stdout!r}\nstderr: {e.stderr!r}"
        ) from None


class DocTestCase(SynchronousTestCase):
    """
    Helpers for running documented programs: a scratch directory, a
    server, long-running programs stopped at cleanup.
    """

    def setUp(self) -> None:
        self.workdir = Path(self.mktemp()).resolve()
        self.workdir.mkdir(parents=True)

    def save(self, block: Block, name: str | None = None) -> Path:
        """
        Save a block in the scratch directory, under its own name.
        """
        path = self.workdir / (name or block.name or "block.py")
        path.write_text(block.text, encoding="utf-8")
        return path

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

    def assertPrints(
        self, result: subprocess.CompletedProcess[str], expected: str | None, what: str
    ) -> None:
        """
        A program exited with status 0 and printed what its documentation
        says (C{...} matching anything).
        """
        self.assertEqual(result.returncode, 0, f"{what}:\n{result.stdout}\n{result.stderr}")
        if expected is not None:
            self.assertMatches(expected, result.stdout, what)

    def assertMatches(self, expected: str, actual: str, what: str) -> None:
        want = expected.rstrip() + "\n"
        got = actual.rstrip() + "\n"
        if not doctest.OutputChecker().check_output(want, got, doctest.ELLIPSIS):
            self.fail(f"{what} printed:\n{got}\nbut the documentation says:\n{want}")


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


class ReadmeTests(DocTestCase):
    """
    The code and commands in README.rst.
    """

    def program(self, name: str) -> Block:
        block, _ = programs([readme()])[name]
        return block

    def test_programs_are_run(self) -> None:
        """
        Every Python block of the README is a named program that a test
        here runs, and no C{::} block holds Python.
        """
        blocks = read_blocks(readme())
        named = programs([readme()])
        self.assertEqual(set(named), set(README_PROGRAMS))
        for block in blocks:
            if block.kind == "python":
                self.assertTrue(block.name or block.not_run, f"{block.where}: no name")
            if block.kind == "literal":
                self.assertFalse(
                    any(_PYTHON_LINE.match(x) for x in block.text.splitlines()),
                    f"{block.where}: Python in a :: block; make it a code-block",
                )

    def test_embedding(self) -> None:
        """
        The embedding example (a .tac file) builds a service tree with a job
        server and a Gearman port.
        """
        block = self.program("gearman.tac")
        namespace: dict[str, Any] = {}
        exec(compile(block.text, block.where, "exec"), namespace)
        top = namespace["top"]
        self.assertIs(top.parent, IService(namespace["application"]))
        children = list(top)
        self.assertIsInstance(children[0], JobServer)
        self.assertIsInstance(children[1], StreamServerEndpointService)
        self.assertEqual(children[0].settings.wakeup, 1)

    def test_client_and_worker(self) -> None:
        """
        The client and worker program, run as written against a server:
        it ends, having printed the job's result, rather than hanging.
        """
        path = self.save(self.program("resize.py"))
        port = self.server()
        result = run_program(path, f"tcp:127.0.0.1:{port}", cwd=self.workdir)
        self.assertPrints(result, "resized photo-1.jpg\n", "resize.py")

    def setup_command(self, title: str) -> str:
        """
        The one command of the README block introduced by C{title}.
        """
        text = readme().read_text(encoding="utf-8")
        self.assertEqual(text.count(title), 1, title)
        after = [b for b in read_blocks(readme()) if b.kind == "shell"]
        position = text.index(title)
        lines = text[:position].count("\n")
        block = next(b for b in after if b.line > lines)
        commands = block.text.splitlines()
        self.assertEqual(len(commands), 1, block.where)
        return commands[0]

    def test_setup_commands(self) -> None:
        """
        The README's two set-up commands each make a virtual environment
        and use it, in one line (Debian's own Python refuses C{pip install}
        outside one); .ci/run runs the test command as written there.
        """
        server = self.setup_command("Install and run the server")
        tests = self.setup_command("Install and run the tests")
        for command in (server, tests):
            self.assertTrue(command.startswith("python3 -m venv .venv && .venv/bin/pip install "))
        self.assertTrue(server.endswith(" && .venv/bin/twistd -n gearmand --port=4730"))
        self.assertTrue(tests.endswith(" && .venv/bin/python -m twisted.trial txgearmand"), tests)
        ci = ROOT / ".ci" / "run"
        if ci.exists():
            self.assertIn('readme_command "Install and run the tests"', ci.read_text())

    def test_twistd_commands_parse(self) -> None:
        """
        Every twistd command in the README's shell blocks parses.
        """
        commands = [
            argv
            for block in read_blocks(readme())
            if block.kind == "shell"
            for argv in twistd_commands(block)
        ]
        self.assertGreaterEqual(len(commands), 2)
        for argv in commands:
            parse_twistd(argv[1:])


class GuideTests(DocTestCase):
    """
    The user guide, docs/guide/: its programs run and print what it says,
    its twistd commands parse, and its troubleshooting is true.
    """

    def program(self, name: str) -> tuple[Block, str | None]:
        return programs(guide_pages())[name]

    def test_programs_are_run(self) -> None:
        """
        Every Python block of the guide is a named program that a test here
        runs; no C{::} block holds Python; console blocks are only in the
        troubleshooting page, where a test runs them; every code-block
        directive was read.
        """
        pages = guide_pages()
        self.assertEqual(set(programs(pages)), set(GUIDE_PROGRAMS))
        for page in pages:
            blocks = read_blocks(page)
            text = page.read_text(encoding="utf-8")
            self.assertEqual(
                text.count(".. code-block::"),
                sum(b.kind != "literal" for b in blocks),
                f"{page.name}: a code-block directive not at the start of a line",
            )
            for block in blocks:
                self.assertIn(block.kind, ("python", "shell", "console", "literal"), block.where)
                if block.kind == "python":
                    self.assertTrue(block.name or block.not_run, f"{block.where}: no name")
                if block.kind == "console":
                    self.assertEqual(page.name, "troubleshooting.rst", block.where)
                if block.kind == "literal":
                    self.assertFalse(
                        any(_PYTHON_LINE.match(x) for x in block.text.splitlines()),
                        f"{block.where}: Python in a :: block; make it a code-block",
                    )

    def test_links(self) -> None:
        """
        Every link of the guide and the README to a file of the checkout
        finds it, and every link to a README section finds its title.
        """
        titles = readme().read_text(encoding="utf-8").splitlines()
        anchors = {
            re.sub(r"[^\w\- ]", "", title.lower()).replace(" ", "-")
            for title, underline in zip(titles, titles[1:])
            if title and re.fullmatch(r"([-=~])\1+", underline)
        }
        links = 0
        for page in [*guide_pages(), readme()]:
            text = page.read_text(encoding="utf-8")
            for target in re.findall(r"`[^`<]*<([^>`]+)>`_", text):
                if re.match(r"\w+://", target):
                    continue
                path, _, anchor = target.partition("#")
                found = (page.parent / path).resolve()
                self.assertTrue(found.exists(), f"{page.name}: {target}")
                if anchor:
                    self.assertEqual(found, README, f"{page.name}: {target}")
                    self.assertIn(anchor, anchors, f"{page.name}: {target}")
                links += 1
        self.assertGreaterEqual(links, 20)

    def test_twistd_commands_parse(self) -> None:
        """
        Every twistd command in the guide's shell blocks parses, with
        twistd's options and gearmand's.
        """
        commands = [
            (block, argv)
            for page in guide_pages()
            for block in read_blocks(page)
            if block.kind == "shell"
            for argv in twistd_commands(block)
        ]
        self.assertGreaterEqual(len(commands), 10)
        for block, argv in commands:
            try:
                parse_twistd(argv[1:])
            except AssertionError as e:
                self.fail(f"{block.where}: {e}")

    def test_client_and_worker(self) -> None:
        """
        worker.py and client.py: with the worker running against a server,
        the client prints what the guide says; the worker stops on SIGTERM.
        """
        worker_block, _ = self.program("worker.py")
        client_block, prints = self.program("client.py")
        self.assertIsNotNone(prints)
        port = self.server()
        server = f"tcp:127.0.0.1:{port}"
        worker = self.start(self.save(worker_block), server)
        result = run_program(self.save(client_block), server, cwd=self.workdir)
        self.assertPrints(result, prints, "client.py")
        self.stop(worker)

    def test_app(self) -> None:
        """
        app.py serves Gearman on the endpoint it is given, its in-process
        worker does a job submitted over TCP, and it stops on SIGTERM.
        """
        block, _ = self.program("app.py")
        port = _process.free_port()
        app = self.start(self.save(block), f"tcp:{port}:interface=127.0.0.1")
        _process.wait_for_port(port, app, PROGRAM_TIMEOUT)  # type: ignore[arg-type]
        connection = _process.PacketConnection(port, timeout=PROGRAM_TIMEOUT)
        self.addCleanup(connection.close)
        connection.send(PacketType.SUBMIT_JOB, b"reverse", b"", b"stressed")
        connection.expect(PacketType.JOB_CREATED)
        body = connection.expect(PacketType.WORK_COMPLETE)
        self.assertEqual(body.split(b"\0", 1)[1], b"desserts")
        connection.close()
        self.stop(app)
        self.assertTrue((self.workdir / "app-jobs.sqlite").exists())

    def test_unit_tests(self) -> None:
        """
        test_reverse.py passes under trial, as the guide says to run it.
        """
        block, _ = self.program("test_reverse.py")
        self.save(block)
        try:
            result = subprocess.run(
                [sys.executable, "-m", "twisted.trial", "test_reverse"],
                cwd=self.workdir,
                env=_process.environment(),
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=PROGRAM_TIMEOUT,
                check=False,
            )
        except subprocess.TimeoutExpired:
            self.fail("test_reverse.py hangs")
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
        self.assertIn("PASSED (successes=2)", result.stdout)

    def test_restart(self) -> None:
        """
        restart.py prints what the guide says.
        """
        block, prints = self.program("restart.py")
        self.assertIsNotNone(prints)
        result = run_program(self.save(block), cwd=self.workdir)
        self.assertPrints(result, prints, "restart.py")

    def test_troubleshooting(self) -> None:
        """
        Each console block of the troubleshooting page, run in a directory
        of its own (all at once, to be quick): exit status 1, no traceback,
        and what the page says it prints.

        What the page cannot show literally is arranged: port 4730 becomes
        a free port; where the page says the port is in use, this test
        listens on it; where it says another twistd runs from the
        directory, this test's pid is in its C{twistd.pid}; on PyPy, a
        driver's message is expected in PyPy's words (L{PYPY_WORDING}).
        """
        page = GUIDE / "troubleshooting.rst"
        if not page.exists():
            raise SkipTest(f"{page} is not here: run the tests from a source checkout")
        runs = []
        for n, block in enumerate(b for b in read_blocks(page) if b.kind == "console"):
            command, *printed = block.text.splitlines()
            self.assertTrue(command.startswith("$ twistd "), block.where)
            port = str(_process.free_port())
            argv = [a.replace("4730", port) for a in shlex.split(command[2:])]
            expected = "\n".join(printed).replace("4730", port)
            if sys.implementation.name == "pypy":
                for cpython, pypy in PYPY_WORDING.items():
                    expected = expected.replace(cpython, pypy)
            directory = self.workdir / f"run-{n}"
            directory.mkdir()
            if "Address already in use" in expected:
                busy = socket.socket()
                self.addCleanup(busy.close)
                busy.bind(("", int(port)))
                busy.listen()
            if expected.startswith("Another twistd server is running"):
                (directory / "twistd.pid").write_text(str(os.getpid()))
            process = subprocess.Popen(
                [sys.executable, "-c", _process._TWISTD, *argv[1:]],
                cwd=directory,
                env=_process.environment(),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            runs.append((block, process, expected))
        self.assertGreaterEqual(len(runs), 10)
        for block, process, expected in runs:
            try:
                output, _ = process.communicate(timeout=PROGRAM_TIMEOUT)
            except subprocess.TimeoutExpired:
                process.kill()
                output, _ = process.communicate(timeout=_process.STOP_TIMEOUT)
                self.fail(f"{block.where}: still running after {PROGRAM_TIMEOUT} s:\n{output}")
            self.assertEqual(process.returncode, 1, f"{block.where}:\n{output}")
            self.assertNotIn("Traceback", output, block.where)
            self.assertMatches(expected, output, block.where)
