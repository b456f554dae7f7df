"""
Replay the fuzz corpora and regressions (C{fuzz/} in the checkout)
through the fuzz targets, without atheris: every input that once found new
coverage, and every input that once broke the server, must run clean.

The targets live beside the package, not in it, so these tests skip in an
installed copy (where there is no C{fuzz/}).
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

from twisted.trial.unittest import SynchronousTestCase

import txgearmand

#: The checkout's fuzz directory.
FUZZ_DIR = Path(txgearmand.__file__).resolve().parent.parent / "fuzz"
#: The targets, by the prefix of their regression files.
TARGETS = ("protocol", "parser")


def load(name: str) -> ModuleType:
    """
    Import C{fuzz.<name>} from L{FUZZ_DIR}, whatever else is on the path.
    """
    package = sys.modules.get("fuzz")
    if package is None:
        spec = importlib.util.spec_from_file_location(
            "fuzz", FUZZ_DIR / "__init__.py", submodule_search_locations=[str(FUZZ_DIR)]
        )
        assert spec is not None and spec.loader is not None
        package = importlib.util.module_from_spec(spec)
        sys.modules["fuzz"] = package
        try:
            spec.loader.exec_module(package)
        except BaseException:
            del sys.modules["fuzz"]
            raise
    elif Path(package.__file__ or "").resolve().parent != FUZZ_DIR:
        raise RuntimeError(f"another 'fuzz' package is imported: {package.__file__}")
    return importlib.import_module(f"fuzz.{name}")


class FuzzTestCase(SynchronousTestCase):
    """
    Skips without the checkout's C{fuzz/} directory.
    """

    def setUp(self) -> None:
        if not (FUZZ_DIR / "__init__.py").is_file():
            self.skipTest(f"no fuzz targets at {FUZZ_DIR} (an installed copy, not a checkout)")

    def replay(self, one_input: Callable[[bytes], None], files: list[Path]) -> None:
        """
        Run every file through C{one_input}; fail naming each file that
        broke, with the first traceback.
        """
        failed: list[str] = []
        first = ""
        for path in files:
            try:
                one_input(path.read_bytes())
            except Exception:
                failed.append(path.name)
                if not first:
                    first = traceback.format_exc()
        if failed:
            self.fail(f"{len(failed)} of {len(files)} inputs failed: {failed}\n{first}")


def _files(directory: Path) -> list[Path]:
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.iterdir() if p.is_file() and not p.name.startswith("."))


class CorpusTests(FuzzTestCase):
    """
    The seed corpora replay clean.
    """

    def test_protocol_corpus(self) -> None:
        """
        Every input of C{fuzz/corpus/protocol} runs through the protocol
        target without breaking the server.
        """
        files = _files(FUZZ_DIR / "corpus" / "protocol")
        self.assertTrue(files, "the protocol corpus is empty")
        self.replay(load("protocol").one_input, files)

    def test_parser_corpus(self) -> None:
        """
        Every input of C{fuzz/corpus/parser} runs through the parser target
        without the parser breaking its contract.
        """
        files = _files(FUZZ_DIR / "corpus" / "parser")
        self.assertTrue(files, "the parser corpus is empty")
        self.replay(load("parser").one_input, files)

    def test_seeds_current(self) -> None:
        """
        The committed seeds are what C{fuzz/make_corpus.py} writes: the
        input encoding has not drifted from them.
        """
        make_corpus = load("make_corpus")
        protocol, parser = load("protocol"), load("parser")
        written = {
            ("protocol", name): protocol.encode_input(spec)
            for name, spec in make_corpus.protocol_seeds().items()
        }
        written.update(
            (("parser", name), parser.encode_input(spec))
            for name, spec in make_corpus.parser_seeds().items()
        )
        for (target, name), data in sorted(written.items()):
            path = FUZZ_DIR / "corpus" / target / f"seed-{name}"
            self.assertTrue(path.is_file(), f"{path} is missing: run fuzz/make_corpus.py")
            self.assertEqual(path.read_bytes(), data, f"{path} is stale: run fuzz/make_corpus.py")


class RegressionTests(FuzzTestCase):
    """
    Inputs that once broke the server, in C{fuzz/regressions}, named
    C{<target>-<name>}, replay clean.
    """

    def test_regressions(self) -> None:
        """
        Every regression input runs clean through the target its name
        starts with.
        """
        files = _files(FUZZ_DIR / "regressions")
        for target in TARGETS:
            mine = [p for p in files if p.name.startswith(target + "-")]
            if mine:
                self.replay(load(target).one_input, mine)
        strays = [p.name for p in files if p.name.split("-", 1)[0] not in TARGETS]
        self.assertEqual(strays, [], f"regression files must start with one of {TARGETS}")


class OracleTests(FuzzTestCase):
    """
    The protocol target notices a broken server.
    """

    def test_logged_failure(self) -> None:
        """
        A handler that raises (the protocol logs it and answers
        C{SERVER_ERROR}) makes the input fail.
        """
        from txgearmand.flow import JobFlow

        protocol = load("protocol")
        seed = load("make_corpus").protocol_seeds()["foreground-cycle"]

        def broken(*args: object) -> None:
            raise ZeroDivisionError("injected")

        self.patch(JobFlow, "work_status", broken)
        with self.assertRaises(protocol.Broken) as caught:
            protocol.one_input(protocol.encode_input(seed))
        self.assertIn("ZeroDivisionError", str(caught.exception))
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)

    def test_broken_count(self) -> None:
        """
        L{check_server} notices a function whose running count disagrees
        with its jobs.
        """
        from twisted.internet.task import Clock

        from txgearmand.testing import MemoryGearmanServer, RecordingPeer

        protocol = load("protocol")
        memory = MemoryGearmanServer(clock=Clock(), job_handle_prefix=b"fuzz")
        server = memory.job_server
        worker = RecordingPeer.join(server, "worker")
        assert worker.participant is not None
        server.workers.can_do(worker.participant, b"f")
        server.submit_job(None, b"f", b"", b"x", background=True)
        self.assertIsNotNone(server.grab_job(worker.participant))
        protocol.check_server(server, memory.clock)
        fq = server.registry.get(b"f")
        assert fq is not None
        fq.running += 1
        with self.assertRaises(protocol.Broken):
            protocol.check_server(server, memory.clock)
