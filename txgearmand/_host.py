# -*- test-case-name: txgearmand.test.test_guard -*-
"""
What the host gives the process, and giving memory back: the machine's
(or the container's) memory, the process's resident size, its file
descriptor limit, and handing freed heap pages back to the kernel.

Every function here degrades to a harmless answer where the platform lacks
the facility (no C{/proc}, no glibc, no C{resource} module).
"""

from __future__ import annotations

import ctypes
import gc
import os
import sys
from pathlib import Path

__all__ = [
    "default_max_memory",
    "memory_available",
    "raise_open_files",
    "release_to_os",
    "rss_bytes",
]

#: The budget's share of the memory available, as RabbitMQ's default
#: high watermark (0.4 in its older releases, 0.6 in newer ones): the
#: counted bytes are payloads and buffers, and the process needs about as
#: much again around them (objects, indexes, the allocator's slack).
DEFAULT_SHARE = 0.4
#: Used when the host's memory cannot be read.
FALLBACK_MAX_MEMORY = 1024**3

_CGROUP_FILES = (
    Path("/sys/fs/cgroup/memory.max"),  # cgroup v2
    Path("/sys/fs/cgroup/memory/memory.limit_in_bytes"),  # cgroup v1
)


def memory_available() -> int | None:
    """
    The memory this process may use: the machine's physical memory, or the
    container's (cgroup) limit when that is lower; C{None} if unknown.
    """
    total: int | None = None
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        pass
    for path in _CGROUP_FILES:
        try:
            text = path.read_text().strip()
        except OSError:
            continue
        if text.isdigit():
            limit = int(text)
            # cgroup v1 says "no limit" with a huge number.
            if limit < 2**60 and (total is None or limit < total):
                total = limit
        break
    return total if total else None


def default_max_memory() -> int:
    """
    The default memory budget: L{DEFAULT_SHARE} of L{memory_available}.
    """
    available = memory_available()
    if available is None:
        return FALLBACK_MAX_MEMORY
    return int(available * DEFAULT_SHARE)


def rss_bytes(pid: int | None = None) -> int | None:
    """
    A process's resident set size (this one by default), from C{/proc};
    C{None} where that cannot be read.
    """
    path = f"/proc/{pid or 'self'}/status"
    try:
        with open(path, "rb") as f:
            for line in f:
                if line.startswith(b"VmRSS:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _load_trim() -> object | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        # Not ctypes.util.find_library: it runs ldconfig.
        libc = ctypes.CDLL("libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


_trim: object | None = None
_trim_loaded = False
_PYPY = sys.implementation.name == "pypy"


def release_to_os() -> bool:
    """
    Hand the C heap's free pages back to the kernel (glibc's
    C{malloc_trim}); C{True} if that was possible here.

    Why: payloads over 512 bytes live in the C heap, and glibc raises its
    mmap threshold as large blocks are freed, so after a burst of large
    jobs the freed memory sits in the heap, counted in the process's RSS,
    until something trims it.  C{malloc_trim} also releases whole free
    pages in the middle of the heap, which the heap's automatic trimming
    (top only) never does.
    """
    if _PYPY:
        # PyPy frees large objects only when its collector runs, which may
        # be long after a spike: run it first.
        gc.collect()
    global _trim, _trim_loaded
    if not _trim_loaded:
        _trim, _trim_loaded = _load_trim(), True
    if _trim is None:
        return _PYPY
    _trim(0)  # type: ignore[operator]
    return True


def raise_open_files(wanted: int) -> tuple[int, int, int]:
    """
    Raise the soft limit on open files towards C{wanted}, as far as the
    hard limit allows (never lowering it).

    @return: the soft limit before, the soft limit now, and the hard limit
        (all C{-1} where there are no such limits).
    """
    try:
        import resource
    except ImportError:
        return (-1, -1, -1)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    before = soft
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and target > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            pass
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return (
        _finite(before, resource.RLIM_INFINITY),
        _finite(soft, resource.RLIM_INFINITY),
        _finite(hard, resource.RLIM_INFINITY),
    )


def _finite(value: int, infinity: int) -> int:
    return -1 if value == infinity else int(value)
