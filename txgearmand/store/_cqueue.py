"""
C gearmand's queue tables, as its libsqlite3 and libpq queues leave them in
a store: how one is recognised, what its imported copy is called, and how
its rows become ours.

Both of C's queues create the same columns (C{unique_key}, C{function_name},
C{priority}, C{data}, C{when_to_run}) in a table whose name the operator
chooses (C{--libsqlite3-table}, default C{gearman_queue}; C{--libpq-table},
default C{queue}), so a table is C's by its columns, whatever its name.
C's priorities are its C{gearman_job_priority_t}: 0 high, 1 normal, 2 low,
as ours.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from typing import Any

from txgearmand.interfaces import StoredJob

__all__ = ["C_COLUMNS", "IMPORTED_SUFFIX", "is_c_queue", "kept_name", "stored_job"]

#: The columns of C gearmand's queue table (libsqlite3 and libpq alike).
C_COLUMNS = frozenset({"unique_key", "function_name", "priority", "data", "when_to_run"})
# A table without when_to_run (as C gearmand's from before epoch jobs may
# have) is taken too; its jobs run now.
_C_COLUMNS_OLD = C_COLUMNS - {"when_to_run"}

#: How the name of an imported C table ends once it is renamed.
IMPORTED_SUFFIX = "_imported_by_txgearmand"


def is_c_queue(name: str, columns: Iterable[str]) -> bool:
    """
    Whether a table is C gearmand's queue, not yet imported: its columns
    are exactly C's (C{when_to_run} may be missing), and its name is not
    one we gave a table already imported.
    """
    found = frozenset(c.lower() for c in columns)
    return found in (C_COLUMNS, _C_COLUMNS_OLD) and not name.endswith(IMPORTED_SUFFIX)


def kept_name(name: str, taken: Collection[str], limit: int | None = None) -> str:
    """
    The name to rename an imported C table to: C{NAME_imported_by_txgearmand},
    or C{NAME_2_imported_by_txgearmand} (and so on) when that is taken.

    @param taken: the names already in use.
    @param limit: the longest name the database keeps, in bytes (PostgreSQL
        cuts longer ones); C{NAME} is shortened to fit.
    """
    n = 1
    while True:
        tail = IMPORTED_SUFFIX if n == 1 else f"_{n}{IMPORTED_SUFFIX}"
        base = name
        if limit is not None:
            room = limit - len(tail.encode("utf-8"))
            base = name.encode("utf-8")[:room].decode("utf-8", "ignore")
        if base + tail not in taken:
            return base + tail
        n += 1


def stored_job(
    id: int,
    handle: bytes,
    unique: object,
    function: object,
    priority: Any,
    data: object,
    when: Any,
) -> StoredJob:
    """
    Our stored job for a row of C's queue table.

    An empty or missing unique key stays empty (C writes none for some
    jobs, as epoch jobs submitted without one); a priority C does not have
    becomes normal; C's C{when_to_run} of 0 (or none) means "now".
    """
    return StoredJob(
        id,
        handle,
        _blob(function),
        _blob(unique),
        _blob(data),
        priority if priority in (0, 1, 2) else 1,
        float(when) if when else None,
        b"",
    )


def _blob(value: object) -> bytes:
    if value is None:
        return b""
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    return str(value).encode("utf-8")
