"""
txgearmand: a Gearman job server on Twisted.

Run it with C{twistd -n gearmand}, or put a L{JobServer} and a
L{GearmanServerFactory} into your own Twisted application.  Importing the
package does not install a reactor.
"""

__version__ = "0.1.0"

from txgearmand.protocol import GearmanServerFactory
from txgearmand.server import JobServer

__all__ = ["GearmanServerFactory", "JobServer", "__version__"]
