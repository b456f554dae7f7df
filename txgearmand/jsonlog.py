# -*- test-case-name: txgearmand.test.test_logs -*-
"""
JSON lines logs for C{twistd gearmand}: one JSON object per event, with
its fields as data (handles, functions, counts), for log collectors.
This writes to standard output::

    twistd -n --logger=txgearmand.jsonlog.observer gearmand ...

and this appends to a file (reopened by nothing: rotate it with
copytruncate)::

    export TXGEARMAND_JSON_LOG=/var/log/gearmand.jsonl
    twistd --logger=txgearmand.jsonlog.observer gearmand ...

Each line is what C{twisted.logger.eventAsJSON} makes; read it back with
C{twisted.logger.eventsFromJSONLogFile}.
"""

from __future__ import annotations

import os
import sys
from typing import IO, Any

from twisted.logger import ILogObserver, jsonFileLogObserver

__all__ = ["observer"]


def observer() -> ILogObserver:
    """
    A log observer writing JSON lines to the file named by
    C{TXGEARMAND_JSON_LOG}, or to standard output.
    """
    path = os.environ.get("TXGEARMAND_JSON_LOG")
    out: IO[Any]
    if path:
        # Kept open for the life of the process.
        out = open(path, "a", encoding="utf-8")
    else:
        out = sys.stdout
    # No record separator: one object per line, as JSON lines tools expect.
    return jsonFileLogObserver(out, recordSeparator="")
