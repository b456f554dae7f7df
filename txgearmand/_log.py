# -*- test-case-name: txgearmand.test.test_tap -*-
"""
Logging: every txgearmand logger goes through one level filter, which
C{--verbose} sets.
"""

from __future__ import annotations

from twisted.logger import (
    FilteringLogObserver,
    Logger,
    LogLevel,
    LogLevelFilterPredicate,
    globalLogPublisher,
)

__all__ = ["LEVELS", "debugging", "logger", "set_level"]

#: C gearmand's verbosity names and the Twisted level each one shows.
LEVELS: dict[str, LogLevel] = {
    "FATAL": LogLevel.critical,
    "ALERT": LogLevel.critical,
    "CRITICAL": LogLevel.critical,
    "ERROR": LogLevel.error,
    "WARNING": LogLevel.warn,
    "NOTICE": LogLevel.info,
    "INFO": LogLevel.info,
    "DEBUG": LogLevel.debug,
}

_predicate = LogLevelFilterPredicate(defaultLogLevel=LogLevel.info)

#: Whether DEBUG events pass the filter: per-job events are only built
#: when they do (read on the hot path, so a plain module attribute).
debugging = False


_observer = FilteringLogObserver(globalLogPublisher, [_predicate])


def logger(namespace: str) -> Logger:
    """
    A logger whose events pass the C{--verbose} filter.
    """
    return Logger(namespace=namespace, observer=_observer)


def set_level(name: str) -> None:
    """
    Show events at this C gearmand level name and above.
    """
    global debugging
    level = LEVELS[name.upper()]
    _predicate.setLogLevelForNamespace("", level)
    debugging = level == LogLevel.debug


def text(value: bytes) -> str:
    """
    Bytes from the wire as text for the log (not a Python repr).
    """
    return value.decode("utf-8", "backslashreplace")


_CONTROL = {i: f"\\x{i:02x}" for i in [*range(32), 127]}
_CONTROL.update({9: "\\t", 10: "\\n", 13: "\\r"})


def printable(value: str) -> str:
    """
    Text with its control characters escaped (C{\\n}, C{\\x05}): a peer's
    text logged on one line stays one line.
    """
    return value.translate(_CONTROL)
