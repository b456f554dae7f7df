# -*- test-case-name: txgearmand.test.test_admin -*-
"""
The text administrative protocol, on the same port as the binary one.

C gearmand's commands (C{status}, C{prioritystatus}, C{workers},
C{maxqueue}, C{show jobs}, C{show unique jobs}, C{cancel job},
C{create function}, C{drop function}, C{getpid}, C{verbose}, C{version})
and Gearman::Server's (C{jobs}, C{clients}, C{shutdown [graceful]}), each
answering byte for byte as the peer that has it does.  A reply is built
whole and sent in one write: C{gearadmin} stops reading after 5 ms of
silence.

txgearmand's own: C{limits}, C{retryfailed FUNCTION [N]} (the retry
policy of a function's failed background jobs) and C{show retries}
(a line per function: its name, retry limit, jobs waiting to be tried
again and retries so far, tab-separated); and the failed list
(dead-letter, L{txgearmand.deadletter}):

  - C{show failed [FUNCTION]}: a line per job in the list (all, or one
    function's), oldest landed first, tab-separated: handle, function,
    unique id, failed attempts, first and last failure times (epoch
    seconds with 3 decimals), the reason (tabs and line ends as spaces);
    then C{.};
  - C{failed retry HANDLE}, C{failed retry function FUNCTION}: run the job
    (every job of the function) again, with a fresh attempt count;
  - C{failed drop HANDLE}, C{failed drop function FUNCTION}: forget it
    (them), its row leaving the store.

Each of the last four answers C{OK} (with a function: C{OK N}, how many),
C{ERR UNKNOWN_JOB} for a handle the list does not have (as C{cancel job}),
or C{ERR INVALID_ARGUMENTS ...}.

The commands that change the server (C{shutdown}, C{maxqueue} with
arguments, C{retryfailed}, C{failed}, C{cancel job}, C{create function},
C{drop function}, C{verbose} with arguments) are refused with C{ERR PERMISSION_DENIED ...}
to peers that no C{--admin-allow} rule allows, when there are rules
(L{txgearmand.access.AccessRules}).
"""

from __future__ import annotations

from collections.abc import Callable

from txgearmand import _log
from txgearmand._version import __version__
from txgearmand.access import identity_of_peer
from txgearmand.interfaces import IPeer
from txgearmand.job import JobState
from txgearmand.meters import RETRIED
from txgearmand.server import JobServer
from txgearmand.wire import GearmanError

__all__ = ["COMMANDS", "reply"]

log = _log.logger("txgearmand.admin")

_END = b".\n"
_OK = b"OK\r\n"
_MAX_WORDS = 5


def _err_incomplete(command: bytes) -> bytes:
    return (
        b"ERR INVALID_ARGUMENTS An+incomplete+set+of+arguments+was+sent+to+this+command+%s\r\n"
        % command
    )


def _err_unknown(word: bytes) -> bytes:
    return b"ERR UNKNOWN_COMMAND Unknown+server+command%s\r\n" % word


def _status(server: JobServer, peer: IPeer, args: list[bytes]) -> bytes:
    lines = [
        b"%s\t%d\t%d\t%d\n" % (fq.name, fq.total(), fq.running, len(fq.workers))
        for fq in server.registry.listed()
    ]
    lines.append(_END)
    return b"".join(lines)


def _prioritystatus(server: JobServer, peer: IPeer, args: list[bytes]) -> bytes:
    lines = [
        b"%s\t%d\t%d\t%d\t%d\n"
        % (
            fq.name,
            fq.queued[0],
            fq.queued[1] + fq.scheduled,
            fq.queued[2],
            len(fq.workers),
        )
        for fq in server.registry.listed()
    ]
    lines.append(_END)
    return b"".join(lines)


def _workers(server: JobServer, peer: IPeer, args: list[bytes]) -> bytes:
    lines = []
    numbered = [(p.peer.fileno(), p) for p in server.clients()]
    numbered.sort(key=lambda pair: pair[0])
    for fd, other in numbered:
        functions = b"".join(b" " + name for name in other.abilities)
        host = other.peer.peer_host().encode("ascii")
        lines.append(b"%d %s %s :%s\n" % (fd, host, other.client_id, functions))
    lines.append(_END)
    return b"".join(lines)


def _maxqueue(server: JobServer, peer: IPeer, args: list[bytes]) -> bytes:
    if not args:
        return _err_incomplete(b"maxqueue")
    function, numbers = args[0], args[1:]
    if len(numbers) > 3:
        return b"ERR INVALID_ARGUMENTS Too+many+arguments+were+sent+to+this+command+maxqueue\r\n"
    try:
        limits = [int(n) for n in numbers]
    except ValueError:
        return b"ERR INVALID_ARGUMENTS maxqueue+limits+must+be+integers\r\n"
    if not limits:
        server.set_max_queue(function, 0)
    elif len(limits) == 1:
        server.set_max_queue(function, limits[0])
    elif len(limits) == 2:
        server.set_max_queue(function, limits[0], limits[1], 0)
    else:
        server.set_max_queue(function, limits[0], limits[1], limits[2])
    return _OK


#: How many functions C{retryfailed} keeps a limit for.
MAX_RETRY_LIMITS = 10_000


def _retryfailed(server: JobServer, peer: IPeer, args: list[bytes]) -> bytes:
    # txgearmand's own, in maxqueue's shape: "retryfailed FUNC [N]"; no N
    # goes back to --retry-failed.
    if not args:
        return _err_incomplete(b"retryfailed")
    if len(args) > 2:
        return b"ERR INVALID_ARGUMENTS Too+many+arguments+were+sent+to+this+command+retryfailed\r\n"
    limit = None
    if len(args) == 2:
        try:
            limit = int(args[1])
        except ValueError:
            limit = -1
        if limit < 0:
            return b"ERR INVALID_ARGUMENTS retryfailed+takes+a+count+of+0+or+more\r\n"
    limits = server.flow.retry_limits
    if limit is not None and args[0] not in limits and len(limits) >= MAX_RETRY_LIMITS:
        # A peer may not grow the server without bound, one name at a time.
        return b"ERR TOO_MANY_FUNCTIONS retryfailed+keeps+limits+for+at+most+10000+functions\r\n"
    server.set_retry_failed(args[0], limit)
    return _OK


def _show_retries(server: JobServer) -> list[bytes]:
    # "FUNCTION\tLIMIT\tWAITING\tRETRIED": its retry limit, its jobs waiting
    # for their next attempt, and how many retries since the start.
    waiting: dict[bytes, int] = {}
    for job in server.jobs():
        if job.attempts and job.state is JobState.SCHEDULED:
            waiting[job.queue.name] = waiting.get(job.queue.name, 0) + 1
    return [
        b"%s\t%d\t%d\t%d\n"
        % (
            fq.name,
            server.retry_failed(fq.name),
            waiting.get(fq.name, 0),
            fq.counts[RETRIED],
        )
        for fq in server.registry.listed()
    ]


def _show(server: JobServer, peer: IPeer, args: list[bytes]) -> bytes:
    if not args:
        return _err_unknown(b"show")
    what = [a.lower() for a in args]
    spilled = server.table.spilled.values()
    if what == [b"jobs"]:
        lines = [
            b"%s\t%d\t0\t%d\n" % (job.handle, job.retries, 1 if job.background else 0)
            for job in server.jobs()
        ]
        # Spilled jobs (payload in the store only) are background jobs on
        # their first attempt.
        lines.extend(b"%s\t0\t0\t1\n" % (entry.handle,) for entry in spilled)
    elif what == [b"unique", b"jobs"]:
        lines = [job.unique + b"\n" for job in server.jobs()]
        lines.extend(entry.unique + b"\n" for entry in spilled)
    elif what == [b"retries"]:
        lines = _show_retries(server)
    elif what[0] == b"failed" and len(args) <= 2:
        lines = _show_failed(server, args[1] if len(args) == 2 else None)
    else:
        return b"ERR UNKNOWN_SHOW_ARGUMENTS\r\n"
    lines.append(_END)
    return b"".join(lines)


def _one_line(text: str) -> bytes:
    return " ".join(text.replace("\t", " ").splitlines()).encode("utf-8", "backslashreplace")


def _show_failed(server: JobServer, function: bytes | None) -> list[bytes]:
    # "HANDLE\tFUNCTION\tUNIQUE\tATTEMPTS\tFIRST\tLAST\tREASON".
    return [
        b"%s\t%s\t%s\t%d\t%.3f\t%.3f\t%s\n"
        % (
            job.handle,
            job.function,
            job.unique,
            job.attempts,
            job.first_failed,
            job.last_failed,
            _one_line(job.reason),
        )
        for job in server.failed.list(function)
    ]


def _failed(server: JobServer, peer: IPeer, args: list[bytes]) -> bytes:
    # txgearmand's own: "failed retry|drop HANDLE" or
    # "failed retry|drop function FUNCTION".
    if not args:
        return _err_incomplete(b"failed")
    action = args[0].lower()
    if action not in (b"retry", b"drop"):
        return b"ERR INVALID_ARGUMENTS failed+takes+retry+or+drop\r\n"
    flow = server.flow
    if len(args) == 3 and args[1].lower() == b"function":
        if action == b"retry":
            n = flow.retry_failed_function(args[2])
        else:
            n = flow.drop_failed_function(args[2])
        return b"OK %d\r\n" % (n,)
    if len(args) != 2 or args[1].lower() == b"function":
        return _err_incomplete(b"failed")
    if action == b"retry":
        found = flow.retry_failed_job(args[1])
    else:
        found = flow.drop_failed_job(args[1])
    return _OK if found else b"ERR UNKNOWN_JOB\r\n"


def _cancel(server: JobServer, peer: IPeer, args: list[bytes]) -> bytes:
    if len(args) != 2:
        return _err_unknown(b"cancel")
    if args[0].lower() != b"job":
        return b"ERR UNKNOWN_ERROR\r\n"
    if server.cancel_job(args[1]):
        return _OK
    return b"ERR UNKNOWN_JOB\r\n"


def _create(server: JobServer, peer: IPeer, args: list[bytes]) -> bytes:
    if len(args) != 2 or args[0].lower() != b"function":
        return _err_incomplete(b"create")
    server.registry.create(args[1])
    return _OK


def _drop(server: JobServer, peer: IPeer, args: list[bytes]) -> bytes:
    if len(args) != 2 or args[0].lower() != b"function":
        return _err_incomplete(b"drop")
    try:
        dropped = server.registry.drop(args[1])
    except GearmanError as e:
        return b"ERR %s\r\n" % (e.text,)
    if dropped is None:
        return b"ERR function not found\r\n"
    return _OK


def _getpid(server: JobServer, peer: IPeer, args: list[bytes]) -> bytes:
    return b"OK %d\n" % (server.pid,)


def _verbose(server: JobServer, peer: IPeer, args: list[bytes]) -> bytes:
    return b"OK %s\n" % (server.settings.verbose.encode("ascii"),)


def _version(server: JobServer, peer: IPeer, args: list[bytes]) -> bytes:
    return b"OK %s\n" % (__version__.encode("ascii"),)


def _jobs(server: JobServer, peer: IPeer, args: list[bytes]) -> bytes:
    lines = []
    for job in server.jobs():
        worker = job.worker.describe().encode("ascii") if job.worker is not None else b"-"
        lines.append(b"%s\t%s\t%s\t%d\n" % (job.queue.name, job.unique, worker, len(job.listeners)))
    for entry in server.table.spilled.values():
        lines.append(b"%s\t%s\t-\t0\n" % (entry.queue.name, entry.unique))
    lines.append(_END)
    return b"".join(lines)


def _clients(server: JobServer, peer: IPeer, args: list[bytes]) -> bytes:
    lines = []
    for client in server.clients():
        lines.append(client.describe().encode("ascii") + b"\n")
        for job in client.listening:
            if job.state is JobState.DONE:
                continue
            worker = job.worker.describe().encode("ascii") if job.worker is not None else b"-"
            lines.append(b"\t%s\t%s\t%s\n" % (job.queue.name, job.unique, worker))
    lines.append(_END)
    return b"".join(lines)


def _shutdown(server: JobServer, peer: IPeer, args: list[bytes]) -> bytes:
    policy = server.settings.admin_shutdown
    if policy == "never":
        return _err_unknown(b"shutdown")
    if policy == "local" and not peer.is_local():
        _log_refused(peer, b"shutdown", args, "it is only accepted from local connections")
        return b"ERR PERMISSION_DENIED shutdown+is+only+accepted+from+local+connections\r\n"
    if server.on_shutdown is None:
        return b"ERR NOT_SUPPORTED this+server+has+no+shutdown+action\r\n"
    if args == [b"graceful"]:
        graceful = True
    elif not args:
        graceful = False
    else:
        return b"ERR unknown_args Unknown+arguments+to+server+command\r\n"
    log.info(
        "{how} shutdown requested by {peer}",
        how="Graceful" if graceful else "Immediate",
        peer=peer.describe(),
    )
    server.shutdown(graceful)
    return b"OK\n"


def _limits(server: JobServer, peer: IPeer, args: list[bytes]) -> bytes:
    # txgearmand's own: "NAME\tVALUE" lines (bytes, counts), then ".".
    lines = [b"%s\t%d\n" % (name.encode("ascii"), value) for name, value in server.guard.report()]
    lines.append(_END)
    return b"".join(lines)


#: Command word (lower case) to the function that builds its reply.
COMMANDS: dict[bytes, Callable[[JobServer, IPeer, list[bytes]], bytes]] = {
    b"status": _status,
    b"prioritystatus": _prioritystatus,
    b"workers": _workers,
    b"maxqueue": _maxqueue,
    b"retryfailed": _retryfailed,
    b"failed": _failed,
    b"show": _show,
    b"cancel": _cancel,
    b"create": _create,
    b"drop": _drop,
    b"getpid": _getpid,
    b"verbose": _verbose,
    b"version": _version,
    b"jobs": _jobs,
    b"clients": _clients,
    b"shutdown": _shutdown,
    b"limits": _limits,
}


# -- who may change what (--admin-allow) ----------------------------------

#: The commands that change the server, as a refusal names them.
#: C{maxqueue} and C{verbose} change it only when given arguments.
_MUTATING = {
    b"shutdown": b"shutdown",
    b"maxqueue": b"maxqueue",
    b"retryfailed": b"retryfailed",
    b"failed": b"failed",
    b"cancel": b"cancel+job",
    b"create": b"create+function",
    b"drop": b"drop+function",
    b"verbose": b"verbose",
}
_WITH_ARGUMENTS_ONLY = frozenset({b"maxqueue", b"verbose"})


def _log_refused(peer: IPeer, name: bytes, args: list[bytes], why: str) -> None:
    log.info(
        "Refused admin command {command} from {peer}: {why}",
        command=b" ".join([name, *args]).decode("utf-8", "backslashreplace"),
        peer=peer.describe(),
        why=why,
    )


def _refusal(server: JobServer, peer: IPeer, name: bytes, args: list[bytes]) -> bytes | None:
    """
    The reply refusing a mutating command to a peer that no
    C{--admin-allow} rule allows, or C{None} to go on.
    """
    rules = server.settings.admin_allow
    what = _MUTATING.get(name)
    if what is None or not rules.restricted:
        return None
    if name in _WITH_ARGUMENTS_ONLY and not args:
        return None
    if name == b"shutdown" and server.settings.admin_shutdown == "never":
        return None  # An unknown command, as without rules.
    if rules.allows(identity_of_peer(peer)):
        return None
    _log_refused(peer, name, args, "no --admin-allow rule allows it")
    return b"ERR PERMISSION_DENIED %s+is+not+allowed+from+this+connection+by+--admin-allow\r\n" % (
        what,
    )


def reply(server: JobServer, peer: IPeer, line: bytes) -> bytes:
    """
    The whole reply to one admin text line from C{peer}.
    """
    words = line.split()
    if not words:
        return _err_unknown(b"")
    if len(words) > _MAX_WORDS:
        return b"ERR TOO_MANY_ARGS Too+many+arguments+in+one+command\r\n"
    name = words[0].lower()
    command = COMMANDS.get(name)
    if command is None:
        return _err_unknown(words[0])
    refused = _refusal(server, peer, name, words[1:])
    if refused is not None:
        return refused
    return command(server, peer, words[1:])
