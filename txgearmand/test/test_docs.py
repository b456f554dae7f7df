"""
The examples in C{docs/examples/} and the code in README.rst run, so they
cannot rot.  They live in the source checkout, next to the package.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from types import ModuleType
from typing import Any

from twisted.application.internet import StreamServerEndpointService
from twisted.internet import reactor as _reactor
from twisted.trial.unittest import SkipTest, TestCase

from txgearmand import JobServer
from txgearmand.test import _process

reactor: Any = _reactor
ROOT = Path(_process.PACKAGE_ROOT)
EXAMPLES = ROOT / "docs" / "examples"


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
