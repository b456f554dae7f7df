"""
The API reference builds from the epytext docstrings with pydoctor, with
no warning: a link that does not resolve, or broken markup, fails here
rather than in a browser.

To build it by hand, from the source checkout (the settings are
C{[tool.pydoctor]} in pyproject.toml)::

    python3 -m pip install pydoctor
    python3 -m pydoctor

which writes C{build/apidocs/index.html}.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

from twisted.trial.unittest import SkipTest, SynchronousTestCase

from txgearmand.test import _process

ROOT = Path(_process.PACKAGE_ROOT)


class APIDocsTests(SynchronousTestCase):
    """
    C{python -m pydoctor}, with the project's settings, to a scratch
    directory.
    """

    def test_no_warnings(self) -> None:
        """
        pydoctor writes the index page and warns about nothing (it is run
        with C{--warnings-as-errors}; with C{--quiet} it prints only
        warnings).
        """
        if importlib.util.find_spec("pydoctor") is None:
            raise SkipTest(
                "pydoctor is not installed (pip install '.[docs]'; the test extra"
                " installs it on CPython only)"
            )
        config = ROOT / "pyproject.toml"
        if not config.exists():
            raise SkipTest(f"{config} is not here: run the tests from a source checkout")
        output = os.path.abspath(self.mktemp())
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "pydoctor",
                f"--config={config}",
                "--quiet",
                "--warnings-as-errors",
                f"--html-output={output}",
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        warnings = result.stdout.strip()
        if result.returncode or warnings:
            self.fail(
                f"pydoctor exited {result.returncode}; fix these docstrings:\n"
                f"{warnings}\n{result.stderr}"
            )
        self.assertTrue(os.path.isfile(os.path.join(output, "index.html")))
