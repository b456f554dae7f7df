"""
txgearmand's opt-in reactor: C{twistd -r txgearmand-epoll}
(L{txgearmand.fastreactor}).

Imports nothing but Twisted's C{Reactor} record: the module it names is
loaded only when the reactor is chosen, so listing plugins installs none.
"""

from twisted.application.reactors import Reactor

txgearmand_epoll = Reactor(
    "txgearmand-epoll",
    "txgearmand.fastreactor",
    "epoll(4) reactor that dispatches Gearman connections without the legacy log context.",
)
