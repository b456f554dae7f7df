# -*- test-case-name: txgearmand.test.test_model -*-
"""
The job server's settings: one frozen object, every value checked here
and nowhere else.  C{twistd gearmand} builds it from its command line;
L{txgearmand.server.JobServer} builds it from keyword arguments.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from types import MappingProxyType
from typing import Union

import attrs

from txgearmand import _host, _log, wire
from txgearmand.access import AccessRuleError, AccessRules
from txgearmand.job import MAX_HANDLE_PREFIX, default_handle_prefix

__all__ = [
    "ADMIN_SHUTDOWN_POLICIES",
    "TIMEOUT_UNITS",
    "Limits",
    "Settings",
    "SettingsError",
    "limits_of",
]

#: Who may use the admin C{shutdown} command.
ADMIN_SHUTDOWN_POLICIES = ("never", "local", "any")
#: How the timeout of CAN_DO_TIMEOUT is read, and its factor to seconds.
TIMEOUT_UNITS = {"milliseconds": 0.001, "seconds": 1.0}

#: A function's max-queue limits (high, normal, low; 0 = none).
Limits = tuple[int, int, int]


class SettingsError(ValueError):
    """
    A setting has a value it cannot take.

    @ivar setting: the setting's name (C{wakeup_delay}); the command line
        spells it C{--wakeup-delay}.
    @ivar reason: what is wrong, e.g. C{must be 0 or more}.
    """

    def __init__(self, setting: str, reason: str) -> None:
        super().__init__(f"{setting} {reason}")
        self.setting = setting
        self.reason = reason


def limits_of(value: Union[int, Iterable[int], None]) -> Limits:
    """
    Max-queue limits from one number (every priority) or up to three
    (high, normal, low; those left out are unlimited); negative is 0.
    """
    if value is None:
        return (0, 0, 0)
    if isinstance(value, int):
        numbers = [value, value, value]
    else:
        numbers = [int(n) for n in value]
        if not 1 <= len(numbers) <= 3:
            raise ValueError("max-queue limits are one to three numbers")
        numbers += [0] * (3 - len(numbers))
    return (max(numbers[0], 0), max(numbers[1], 0), max(numbers[2], 0))


def _max_queue(value: Mapping[bytes, Union[int, Iterable[int]]] | None) -> Mapping[bytes, Limits]:
    out: dict[bytes, Limits] = {}
    for name, limit in (value or {}).items():
        limits = limits_of(limit)
        if any(limits):
            out[name] = limits
    return MappingProxyType(out)


def _backoff(value: Union[str, Iterable[float]]) -> tuple[float, float]:
    # FIRST,CAP as the command line spells it, or two numbers.
    try:
        parts = value.split(",") if isinstance(value, str) else list(value)
        first, cap = (float(part) for part in parts)
    except (TypeError, ValueError):
        raise SettingsError("retry_backoff", "must be FIRST,CAP: two numbers of seconds") from None
    return (first, cap)


def _prefix(value: bytes | None) -> bytes:
    return default_handle_prefix() if value is None else value


def _check(name: str, ok: bool, reason: str) -> None:
    if not ok:
        raise SettingsError(name, reason)


def _admin_allow(value: Union[AccessRules, str, Iterable[str], None]) -> AccessRules:
    if isinstance(value, AccessRules):
        return value
    try:
        return AccessRules(() if value is None else value)
    except AccessRuleError as e:
        raise SettingsError("admin_allow", str(e)) from None


def _upper(value: str) -> str:
    return value.upper()


#: The default hard output limit: room for two of the largest packets.
_MIN_DEFAULT_HARD_LIMIT = 128 * 1024**2


def _default_hard_limit(settings: Settings) -> int:
    return max(_MIN_DEFAULT_HARD_LIMIT, 2 * (settings.max_packet_size + wire.HEADER_SIZE))


def _default_soft_limit(settings: Settings) -> int:
    soft = 16 * 1024**2
    hard = settings.output_hard_limit
    return min(soft, hard) if hard else soft


def _default_max_memory() -> int:
    return _host.default_max_memory()


@attrs.frozen
class Settings:
    """
    How a job server behaves.  Every field has the default of
    C{twistd gearmand}; L{SettingsError} says which one is wrong.

    @ivar wakeup: sleepers woken (NOOP) per queued job: C{N}, C{0} for
        none, C{-1} for all.
    @ivar wakeup_delay: seconds between further wake-ups while a function
        still has queued jobs and sleeping workers; C{0} the next reactor
        turn, C{-1} never.
    @ivar job_retries: failed attempts (worker lost, CANT_DO, timeout)
        after which a job fails; C{0} retries forever.
    @ivar retry_failed: times a background job whose worker answered
        WORK_FAIL or WORK_EXCEPTION is queued again (after
        L{retry_backoff}), so that it ends after C{retry_failed + 1} failed
        attempts; C{0}: it ends at once.  Apart from L{job_retries}.
    @ivar retry_backoff: the delay before a background job's first retry
        and the most any retry waits, in seconds: the delay doubles with
        each failed attempt up to the cap, and each is drawn between half
        and all of it (jitter).
    @ivar failed_keep: background jobs kept in the failed list (the
        dead-letter list) once they failed for the last time, at most: the
        oldest beyond it are dropped; C{0}: the list is off, and they end
        as without it.
    @ivar failed_max_age: seconds a job stays in the failed list at most
        (C{0}: no age limit).
    @ivar spill_after: with a store that can give payloads back (SQLite, PostgreSQL),
        queued background jobs beyond this many per function and priority
        keep only a small record in memory, their payload in the store
        (see L{txgearmand.spill}); C{0}: every queued job is whole in
        memory.
    @ivar job_handle_prefix: job handles are C{<prefix>:<n>} (default
        C{H:<hostname>}).
    @ivar max_packet_size: the largest packet body a connection accepts.
    @ivar max_queue: max-queue limits by function at start (a number, or
        high, normal and low), as L{JobServer.set_max_queue} takes them.
    @ivar exceptions: forward WORK_EXCEPTION to every client, not only to
        those that asked with OPTION_REQ.
    @ivar timeout_unit: how CAN_DO_TIMEOUT values are read, a key of
        L{TIMEOUT_UNITS}.
    @ivar admin_shutdown: who may use the admin C{shutdown} command, one of
        L{ADMIN_SHUTDOWN_POLICIES}.
    @ivar admin_allow: who may run mutating admin commands, an
        L{AccessRules} (or the rule strings to parse into one); with no
        rule, everyone (and C{shutdown} as L{admin_shutdown} says).  With
        rules, C{shutdown} needs both a rule and L{admin_shutdown}.
    @ivar verbose: the log level, a C gearmand level name.
    @ivar max_memory: the memory budget in bytes (C{0}: none): payloads of
        the jobs held, partial packets and unsent output.  Above it,
        submissions are refused with C{QUEUE_ERROR}, and so are partial
        packets that would cross it (their connection is closed).
        Default: L{_host.DEFAULT_SHARE} of the machine's (or container's)
        memory.
    @ivar output_hard_limit: a connection whose unsent output passes this
        many bytes is closed at once (C{0}: never).  Default: 128 MiB, or
        twice the largest packet if that is more.
    @ivar output_soft_limit: a connection whose unsent output stays above
        this many bytes for L{output_soft_seconds} is closed (C{0}: never).
        Default: 16 MiB, or the hard limit if that is less.
    @ivar output_soft_seconds: see L{output_soft_limit}.
    @ivar read_timeout: seconds a packet header or an admin line may stay
        incomplete, and a packet body may go without new bytes, before its
        connection is closed (C{0}: forever).  Idle connections are never
        closed for it.
    @ivar tcp_keepalive: seconds of silence after which TCP keep-alive
        probes look for a dead peer (C{0}: no keep-alive).
    @ivar max_connections: connections served at once (C{0}: no limit);
        more are closed as they arrive.
    @ivar stats_interval: seconds between one-line summaries in the log
        (C{0}: none).
    @ivar store_slow_seconds: a store write that takes longer is logged as
        the store being slow, and the next quick one as its recovery
        (C{0}: not watched).
    """

    wakeup: int = 3
    wakeup_delay: float = 0.1
    job_retries: int = 0
    retry_failed: int = 0
    retry_backoff: tuple[float, float] = attrs.field(default=(1.0, 300.0), converter=_backoff)
    failed_keep: int = 1000
    spill_after: int = 1000
    failed_max_age: float = 7 * 86400.0
    job_handle_prefix: bytes = attrs.field(default=None, converter=_prefix)
    max_packet_size: int = wire.DEFAULT_MAX_PACKET_SIZE
    max_queue: Mapping[bytes, Limits] = attrs.field(factory=dict, converter=_max_queue)
    exceptions: bool = False
    timeout_unit: str = "milliseconds"
    admin_shutdown: str = "local"
    admin_allow: AccessRules = attrs.field(factory=AccessRules, converter=_admin_allow)
    verbose: str = attrs.field(default="INFO", converter=_upper)
    max_memory: int = attrs.field(factory=_default_max_memory)
    output_hard_limit: int = attrs.field(
        default=attrs.Factory(_default_hard_limit, takes_self=True)
    )
    output_soft_limit: int = attrs.field(
        default=attrs.Factory(_default_soft_limit, takes_self=True)
    )
    output_soft_seconds: float = 60.0
    read_timeout: float = 60.0
    tcp_keepalive: float = 120.0
    max_connections: int = 0
    stats_interval: float = 0.0
    store_slow_seconds: float = 1.0

    def __attrs_post_init__(self) -> None:
        _check("wakeup", self.wakeup >= -1, "must be -1 (all), 0 (none) or a count")
        delay = self.wakeup_delay
        _check("wakeup_delay", delay >= 0 or delay == -1, "must be -1 (never) or seconds >= 0")
        _check("job_retries", self.job_retries >= 0, "must be 0 (unlimited) or more")
        _check("retry_failed", self.retry_failed >= 0, "must be 0 (no retries) or more")
        first, cap = self.retry_backoff
        _check(
            "retry_backoff",
            0 <= first <= cap,
            "must be FIRST,CAP: seconds, the first at least 0 and at most the cap",
        )
        _check("failed_keep", self.failed_keep >= 0, "must be 0 (no failed list) or a count")
        _check("failed_max_age", self.failed_max_age >= 0, "must be 0 (no age limit) or seconds")
        _check("spill_after", self.spill_after >= 0, "must be 0 (never) or a count of jobs")
        prefix = self.job_handle_prefix
        _check(
            "job_handle_prefix",
            0 < len(prefix) <= MAX_HANDLE_PREFIX,
            f"must be 1 to {MAX_HANDLE_PREFIX} bytes (a job handle has at most 63)",
        )
        _check(
            "job_handle_prefix",
            not any(c <= 32 or c == 127 for c in prefix),
            "must have no spaces or control characters (admin commands split on them)",
        )
        _check("max_packet_size", self.max_packet_size >= 1, "must be positive")
        _check(
            "timeout_unit",
            self.timeout_unit in TIMEOUT_UNITS,
            "must be one of " + ", ".join(TIMEOUT_UNITS),
        )
        _check(
            "admin_shutdown",
            self.admin_shutdown in ADMIN_SHUTDOWN_POLICIES,
            "must be one of " + ", ".join(ADMIN_SHUTDOWN_POLICIES),
        )
        _check("verbose", self.verbose in _log.LEVELS, "must be one of " + ", ".join(_log.LEVELS))
        _check("max_memory", self.max_memory >= 0, "must be 0 (no budget) or a size")
        hard = self.output_hard_limit
        _check(
            "output_hard_limit",
            hard == 0 or hard >= 2 * (self.max_packet_size + wire.HEADER_SIZE),
            "must be 0 (none) or room for two of the largest packets (2 x max_packet_size)",
        )
        soft = self.output_soft_limit
        _check(
            "output_soft_limit",
            soft >= 0 and (hard == 0 or soft <= hard),
            "must be 0 (none) or a size up to output_hard_limit",
        )
        _check("output_soft_seconds", self.output_soft_seconds >= 0, "must be seconds >= 0")
        _check("read_timeout", self.read_timeout >= 0, "must be 0 (none) or seconds")
        _check("tcp_keepalive", self.tcp_keepalive >= 0, "must be 0 (off) or seconds")
        _check("max_connections", self.max_connections >= 0, "must be 0 (no limit) or a count")
        _check("stats_interval", self.stats_interval >= 0, "must be 0 (none) or seconds")
        _check("store_slow_seconds", self.store_slow_seconds >= 0, "must be 0 (off) or seconds")

    def timeout_seconds(self, value: float) -> float | None:
        """
        A CAN_DO_TIMEOUT value in seconds (C{None}: no timeout), read in
        L{timeout_unit}; in milliseconds, under a second counts as one, as
        in C gearmand.
        """
        if value <= 0:
            return None
        if self.timeout_unit == "milliseconds":
            return max(value / 1000.0, 1.0)
        return value * TIMEOUT_UNITS[self.timeout_unit]
