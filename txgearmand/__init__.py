"""
txgearmand: a Gearman job server on Twisted.

Run it with C{twistd -n gearmand}, or put a L{JobServer} and a
L{GearmanServerFactory} into your own Twisted application.  Importing the
package imports nothing else (C{import txgearmand.wire} loads no Twisted);
the names below are loaded on first use, and no reactor is installed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from txgearmand._version import __version__

if TYPE_CHECKING:
    from txgearmand.protocol import GearmanServerFactory
    from txgearmand.server import JobServer

__all__ = ["GearmanServerFactory", "JobServer", "__version__"]

_LAZY = {
    "GearmanServerFactory": "txgearmand.protocol",
    "JobServer": "txgearmand.server",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'txgearmand' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
