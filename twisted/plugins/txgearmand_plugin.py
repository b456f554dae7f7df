"""
The C{twistd gearmand} plugin.

Imports nothing but ServiceMaker: twistd imports every plugin to list its
sub-commands, before it installs the reactor chosen with C{-r}.
"""

from twisted.application.service import ServiceMaker

gearmand = ServiceMaker(
    "txgearmand",
    "txgearmand.tap",
    "A Gearman job server.",
    "gearmand",
)
