# -*- test-case-name: txgearmand.test.test_store -*-
"""
Job stores: where background jobs survive a restart.

Choose one with a URL (C{--queue URL}, or L{store_from_url}):

  - C{memory}: none, jobs live in memory only;
  - C{sqlite:PATH}: an SQLite file (standard library);
  - C{postgresql://...}: PostgreSQL (psycopg 3, or pg8000 on PyPy: the
    C{postgresql} extra).
"""

from __future__ import annotations

import os
import re
from typing import Any

from txgearmand.interfaces import IJobStore, StoredJob
from txgearmand.store.memory import MemoryStore

__all__ = [
    "IJobStore",
    "MemoryStore",
    "StoredJob",
    "check_store_url",
    "describe",
    "safe_url",
    "store_from_url",
]


def safe_url(url: str) -> str:
    """
    A store URL (or PostgreSQL connection string) without its password.
    """
    url = re.sub(r"(://[^:/@]*):[^@/]*@", r"\1:***@", url)
    return re.sub(r"(password\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)", r"\1***", url)


def describe(store: IJobStore | None) -> tuple[str, str]:
    """
    A store's kind (C{memory}, C{sqlite}, C{postgresql}, or its class
    name) and where it keeps its jobs, without secrets.
    """
    if store is None:
        return "memory", ""
    path = getattr(store, "path", None)
    if isinstance(path, str):
        return "sqlite", path
    conninfo = getattr(store, "conninfo", None)
    if isinstance(conninfo, str):
        return "postgresql", safe_url(conninfo)
    return type(store).__name__, ""


def _kind(url: str) -> tuple[str, str]:
    if url == "memory":
        return "memory", ""
    if url.startswith("sqlite:"):
        path = url[len("sqlite:") :]
        if path.startswith("//"):
            path = path[2:]
        if not path:
            raise ValueError("sqlite: needs a path, as in sqlite:gearmand.sqlite")
        return "sqlite", path
    if url.startswith(("postgresql://", "postgres://")):
        return "postgresql", url
    raise ValueError(f"unknown job store {url!r}: use memory, sqlite:PATH or postgresql://...")


def store_from_url(
    reactor: Any, url: str, node: str | None = None, takeover_after: float = 10.0
) -> IJobStore | None:
    """
    The store a URL names (C{None} for C{memory}: no store at all).

    @param node: this server's node name in a store several servers share
        (PostgreSQL; see L{txgearmand.store.postgresql}); C{None} for the
        store's default.
    @param takeover_after: in such a store, a node silent this many seconds
        is dead, and its jobs are adopted.

    @raise ValueError: for a URL of no known kind.
    """
    kind, where = _kind(url)
    if kind == "memory":
        return None
    if kind == "sqlite":
        from txgearmand.store.sqlite import SQLiteStore

        return SQLiteStore(reactor, where)
    from txgearmand.store.postgresql import PostgreSQLStore

    return PostgreSQLStore(reactor, where, node=node, takeover_after=takeover_after)


def check_store_url(url: str, early: bool = False) -> None:
    """
    Open the store a URL names and close it again, synchronously: call it
    before the reactor runs, to fail at once with a clear message.

    @param early: checked before twistd has changed directory, umask or
        user: an SQLite file is not created (only its directory checked),
        and one at a relative path is not checked at all.
    @raise ValueError: for a URL of no known kind.
    @raise Exception: whatever opening the store raised.
    """
    kind, where = _kind(url)
    if kind == "sqlite":
        from txgearmand.store.sqlite import check_sqlite

        if early and not os.path.isabs(where):
            return
        check_sqlite(where, create=not early)
    elif kind == "postgresql":
        from txgearmand.store.postgresql import check_postgresql

        check_postgresql(where)
