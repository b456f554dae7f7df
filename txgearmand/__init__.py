"""
txgearmand: a Gearman job server on Twisted.

Run it with C{twistd -n gearmand}, or put a L{JobServer} and a
L{GearmanServerFactory} into your own Twisted application.
"""

__version__ = "0.1.0"

__all__ = ["GearmanServerFactory", "JobServer", "__version__"]


def __getattr__(name: str) -> object:
    # Lazy, so that "import txgearmand" (twistd's plugin scan) stays light.
    if name == "JobServer":
        from txgearmand.server import JobServer

        return JobServer
    if name == "GearmanServerFactory":
        from txgearmand.protocol import GearmanServerFactory

        return GearmanServerFactory
    raise AttributeError(f"module 'txgearmand' has no attribute {name!r}")
