#!/usr/bin/env python3
"""
Write the seed inputs of both fuzz targets: C{fuzz/corpus/protocol/seed-*}
and C{fuzz/corpus/parser/seed-*}, from the scenarios below.  The output
is deterministic; inputs the fuzzer found (named by their SHA-1) are left
alone, and stale C{seed-*} files are removed.

    python3 fuzz/make_corpus.py
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Union

if __name__ == "__main__":
    # Run as a script: this checkout's packages, not an installed copy.
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fuzz import parser, protocol
from fuzz.protocol import Admin, Advance, Close, Config, Connect, FuzzInput, Packet, Raw, Step
from txgearmand import wire

__all__ = ["main", "parser_seeds", "protocol_seeds"]

P = wire.PacketType
FUZZ = Path(__file__).resolve().parent
H1, H2, H3 = b"fuzz:1", b"fuzz:2", b"fuzz:3"


def _admin(slot: int, *words: Union[bytes, str], crlf: bool = False) -> Admin:
    """
    An admin step from its words: literal words pick the template, the
    others fill its argument kinds.
    """
    parts = [w.encode() if isinstance(w, str) else w for w in words]
    for index, template in enumerate(protocol.ADMIN_TEMPLATES):
        if len(template) != len(parts):
            continue
        if all(isinstance(t, int) or t == w for t, w in zip(template, parts)):
            args = tuple(w for t, w in zip(template, parts) if isinstance(t, int))
            return Admin(slot, index, args, crlf)
    raise ValueError(f"no admin template for {words!r}")


def _p(slot: int, ptype: int, *args: bytes, **options: Any) -> Packet:
    return Packet(slot, int(ptype), args, **options)


def protocol_seeds() -> dict[str, FuzzInput]:
    """
    Scenarios for the protocol target, by name.  Slot 0 is a worker and
    slot 1 a client unless said otherwise.
    """
    w, c, x = 0, 1, 2
    seeds: dict[str, tuple[Config, list[Step]]] = {
        "foreground-cycle": (
            Config(connections=2),
            [
                _p(w, P.CAN_DO, b"f"),
                _p(w, P.PRE_SLEEP),
                _p(c, P.SUBMIT_JOB, b"f", b"u", b"x"),
                _p(w, P.GRAB_JOB_UNIQ),
                _p(w, P.WORK_STATUS, H1, b"1", b"2"),
                _p(c, P.GET_STATUS, H1),
                _p(w, P.WORK_DATA, H1, b"x"),
                _p(w, P.WORK_WARNING, H1, b"y"),
                _p(w, P.WORK_COMPLETE, H1, b"y"),
                _p(c, P.GET_STATUS, H1),
                _admin(c, "status"),
            ],
        ),
        "background-store": (
            Config(connections=2, store=protocol.MEMORY_STORE),
            [
                _p(c, P.SUBMIT_JOB_BG, b"f", b"u", b"x"),
                _p(c, P.SUBMIT_JOB_HIGH_BG, b"g", b"", b"y"),
                _p(c, P.SUBMIT_JOB_LOW_BG, b"f", b"v", b"x"),
                _p(c, P.SUBMIT_JOB_BG, b"f", b"u", b"x"),
                _admin(x, "prioritystatus"),
                _p(w, P.CAN_DO, b"f"),
                _p(w, P.GRAB_JOB),
                _p(w, P.WORK_FAIL, H1),
                _p(w, P.GRAB_JOB),
                _admin(c, "show", "jobs"),
                _admin(c, "show", "unique", "jobs"),
            ],
        ),
        "can-do-timeout": (
            Config(connections=2, timeout_unit="seconds"),
            [
                _p(w, P.CAN_DO_TIMEOUT, b"f", b"1"),
                _p(c, P.SUBMIT_JOB, b"f", b"", b"x"),
                _p(w, P.GRAB_JOB),
                Advance(protocol.DELAYS.index(1.5)),
                _p(w, P.WORK_COMPLETE, H1, b"late"),
                _p(w, P.GRAB_JOB),
                _p(w, P.CAN_DO, b"f"),
                _p(w, P.WORK_COMPLETE, H1, b"y"),
            ],
        ),
        "retries": (
            Config(connections=3, job_retries=2),
            [
                _p(w, P.CAN_DO, b"f"),
                _p(c, P.SUBMIT_JOB, b"f", b"", b"x"),
                _p(c, P.SUBMIT_JOB_BG, b"f", b"", b"y"),
                _p(w, P.GRAB_JOB),
                Close(w),
                Connect(w),
                _p(w, P.CAN_DO, b"f"),
                _p(w, P.GRAB_JOB),
                _p(w, P.GRAB_JOB),
                Close(w),
                _p(x, P.CAN_DO, b"f"),
                _p(x, P.GRAB_JOB_UNIQ),
            ],
        ),
        "epoch": (
            Config(connections=2, store=protocol.MEMORY_STORE),
            [
                _p(c, P.SUBMIT_JOB_EPOCH, b"f", b"u", b"2", b"x"),
                _p(c, P.SUBMIT_JOB_EPOCH, b"g", b"", b"0", b"y"),
                _p(c, P.SUBMIT_JOB_EPOCH, b"f", b"", b"x", b"y"),
                _admin(c, "status"),
                Advance(protocol.DELAYS.index(2.0)),
                _p(w, P.CAN_DO, b"f"),
                _p(w, P.GRAB_JOB_ALL),
                _admin(c, "cancel", "job", H2),
            ],
        ),
        "coalesce": (
            Config(connections=3, store=protocol.MEMORY_STORE),
            [
                _p(c, P.SUBMIT_JOB, b"f", b"u", b"x"),
                _p(x, P.SUBMIT_JOB, b"f", b"u", b"y"),
                _p(x, P.SUBMIT_JOB_BG, b"f", b"u", b"x"),
                _p(c, P.SUBMIT_JOB, b"g", b"-", b"x"),
                _p(x, P.SUBMIT_JOB_HIGH, b"g", b"-", b"x"),
                _p(c, P.GET_STATUS_UNIQUE, b"u"),
                Close(c),
                _admin(x, "jobs"),
                Close(x),
                _p(w, P.CAN_DO, b"f"),
                _p(w, P.GRAB_JOB_UNIQ),
                _p(w, P.WORK_COMPLETE, H1, b""),
            ],
        ),
        "client-leaves": (
            Config(connections=2),
            [
                _p(c, P.SUBMIT_JOB, b"f", b"", b"x"),
                _p(c, P.SUBMIT_JOB_LOW, b"f", b"v", b"x"),
                _p(w, P.CAN_DO, b"f"),
                _p(w, P.GRAB_JOB),
                Close(c),
                _admin(w, "status"),
                _p(w, P.WORK_COMPLETE, H1, b"x"),
                _p(w, P.GRAB_JOB),
            ],
        ),
        "cancel": (
            Config(connections=2),
            [
                _p(c, P.SUBMIT_JOB, b"f", b"", b"x"),
                _p(c, P.SUBMIT_JOB_BG, b"f", b"", b"x"),
                _admin(c, "cancel", "job", H1),
                _p(w, P.CAN_DO, b"f"),
                _p(w, P.GRAB_JOB),
                _admin(c, "cancel", "job", H2),
                _p(w, P.WORK_STATUS, H2, b"1", b"2"),
                _p(w, P.WORK_COMPLETE, H2, b"x"),
                _p(w, P.WORK_COMPLETE, H2, b"x"),
                _admin(c, "cancel", "job", H3),
            ],
        ),
        "max-queue": (
            Config(connections=2, max_queue=1),
            [
                _p(c, P.SUBMIT_JOB_BG, b"f", b"", b"x"),
                _p(c, P.SUBMIT_JOB_BG, b"f", b"", b"y"),
                _admin(c, "maxqueue", b"g", b"1"),
                _p(c, P.SUBMIT_JOB_BG, b"g", b"", b"x"),
                _p(c, P.SUBMIT_JOB_BG, b"g", b"", b"x"),
                _admin(c, "maxqueue", b"f", b"0", b"2", b"1"),
                _p(c, P.SUBMIT_JOB_LOW_BG, b"f", b"", b"x"),
                _p(c, P.SUBMIT_JOB_HIGH_BG, b"f", b"", b"x"),
                _admin(c, "maxqueue", b"f", b"x"),
                _admin(c, "maxqueue", b"h"),
                _admin(c, "status"),
            ],
        ),
        "functions": (
            Config(connections=2),
            [
                _admin(c, "create", "function", b"h"),
                _admin(c, "drop", "function", b"F"),
                _admin(c, "create", "function", b"F"),
                _admin(c, "drop", "function", b"f"),
                _p(w, P.CAN_DO, b"h"),
                _admin(c, "drop", "function", b"h"),
                _p(w, P.CANT_DO, b"h"),
                _admin(c, "drop", "function", b"h"),
                _admin(c, "status"),
            ],
        ),
        "shutdown-graceful": (
            Config(connections=2, admin_shutdown="any", shutdown_action=True),
            [
                _p(c, P.SUBMIT_JOB_BG, b"f", b"", b"x"),
                _admin(c, "shutdown", "graceful"),
                Connect(x),
                _p(w, P.CAN_DO, b"f"),
                _p(w, P.GRAB_JOB),
                _p(w, P.WORK_COMPLETE, H1, b"x"),
                _admin(c, "shutdown"),
            ],
        ),
        "shutdown-refused": (
            Config(connections=1),
            [_admin(0, "shutdown"), _admin(0, "shutdown", b"x"), _admin(0, "verbose")],
        ),
        "exceptions": (
            Config(connections=3),
            [
                _p(c, P.OPTION_REQ, b"exceptions"),
                _p(c, P.SUBMIT_JOB, b"f", b"u", b"x"),
                _p(x, P.SUBMIT_JOB, b"f", b"u", b"x"),
                _p(w, P.CAN_DO, b"f"),
                _p(w, P.GRAB_JOB),
                _p(w, P.WORK_EXCEPTION, H1, b"boom"),
                _p(w, P.WORK_FAIL, H1),
                _p(w, P.WORK_FAIL, H1),
                _p(x, P.OPTION_REQ, b"other"),
            ],
        ),
        "reduce": (
            Config(connections=2, store=protocol.MEMORY_STORE),
            [
                _p(c, P.SUBMIT_REDUCE_JOB, b"f", b"u", b"g", b"", b"x"),
                _p(c, P.SUBMIT_REDUCE_JOB_BACKGROUND, b"f", b"", b"g", b"", b"y"),
                _p(w, P.CAN_DO, b"f"),
                _p(w, P.GRAB_JOB_ALL),
                _p(w, P.GRAB_JOB_ALL),
                _p(w, P.WORK_COMPLETE, H2, b"x"),
                _p(w, P.RESET_ABILITIES),
            ],
        ),
        "cant-do-holding": (
            Config(connections=2),
            [
                _p(w, P.CAN_DO, b"f"),
                _p(w, P.CAN_DO, b"g"),
                _p(c, P.SUBMIT_JOB, b"f", b"", b"x"),
                _p(c, P.SUBMIT_JOB_HIGH, b"g", b"", b"x"),
                _p(w, P.GRAB_JOB),
                _p(w, P.GRAB_JOB),
                _p(w, P.CANT_DO, b"g"),
                _p(w, P.WORK_DATA, H2, b"x"),
                _p(w, P.RESET_ABILITIES),
                _p(w, P.WORK_COMPLETE, H1, b"x"),
                _p(w, P.CAN_DO, b"f"),
                _p(w, P.GRAB_JOB),
            ],
        ),
        "wakeup-delay": (
            Config(connections=3, wakeup=1, wakeup_delay=0.1),
            [
                _p(w, P.CAN_DO, b"f"),
                _p(x, P.CAN_DO, b"f"),
                _p(w, P.PRE_SLEEP),
                _p(x, P.PRE_SLEEP),
                _p(c, P.SUBMIT_JOB_BG, b"f", b"", b"x"),
                _p(c, P.SUBMIT_JOB_BG, b"f", b"", b"y"),
                Advance(protocol.DELAYS.index(0.1)),
                _p(w, P.GRAB_JOB),
                _p(x, P.GRAB_JOB),
            ],
        ),
        "wake-all": (
            Config(connections=3, wakeup=-1, wakeup_delay=0.0),
            [
                _p(w, P.CAN_DO, b"f"),
                _p(x, P.CAN_DO, b"f"),
                _p(w, P.PRE_SLEEP),
                _p(x, P.PRE_SLEEP),
                _p(c, P.SUBMIT_JOB, b"f", b"", b"x"),
                _p(w, P.GRAB_JOB_UNIQ),
                _p(x, P.PRE_SLEEP),
                _p(x, P.CAN_DO, b"g"),
            ],
        ),
        "requests-misc": (
            Config(connections=1),
            [
                _p(0, P.ECHO_REQ, b"x\0y"),
                _p(0, P.SET_CLIENT_ID, b"a b"),
                _p(0, P.ALL_YOURS),
                _p(0, P.OPTION_REQ, b"EXCEPTIONS"),
                _p(0, P.GRAB_JOB),
                _p(0, P.PRE_SLEEP),
                _p(0, P.GET_STATUS, H3),
                _p(0, P.GET_STATUS_UNIQUE, b"v"),
                _p(0, P.WORK_COMPLETE, H1, b"x"),
            ],
        ),
        "admin-listings": (
            Config(connections=3),
            [
                _p(w, P.CAN_DO, b"f"),
                _p(w, P.SET_CLIENT_ID, b"w1"),
                _p(c, P.SUBMIT_JOB, b"f", b"u", b"x"),
                _p(w, P.GRAB_JOB),
                _admin(x, "workers", crlf=True),
                _admin(x, "clients"),
                _admin(x, "jobs"),
                _admin(x, "getpid"),
                _admin(x, "version"),
                _admin(x, "show", b"x"),
                _admin(x, b"x"),
                _admin(x, b""),
                _admin(x, b"x", b"x", b"x", b"x", b"x", b"x"),
            ],
        ),
        "framing-bad-magic": (
            Config(connections=2),
            [
                _p(w, P.CAN_DO, b"f"),
                Raw(w, b"\0XYZ\0\0\0\x01\0\0\0\x01f"),
                _p(c, P.SUBMIT_JOB, b"f", b"", b"x"),
            ],
        ),
        "framing-bad-type": (
            Config(connections=1),
            [Raw(0, b"\0REQ\0\0\0\x63\0\0\0\0"), _p(0, P.ECHO_REQ, b"x")],
        ),
        "framing-too-large": (
            Config(connections=2, max_packet_size=64),
            [
                _p(c, P.SUBMIT_JOB, b"f", b"", b"x"),
                Raw(c, b"\0REQ\0\0\0\x07\0\0\0\x41"),
                _p(w, P.CAN_DO, b"f"),
                _p(w, P.GRAB_JOB),
            ],
        ),
        "framing-shapes": (
            Config(connections=1),
            [
                _p(0, P.SUBMIT_JOB, b"f", b"", b"x", shape=protocol.SHORT),
                _p(0, P.WORK_STATUS, H1, b"1", b"2", shape=protocol.SHORT),
                _p(0, P.CAN_DO_TIMEOUT, b"f", b"1000", shape=protocol.SHORT),
                _p(0, P.SUBMIT_JOB_EPOCH, b"f", b"", b"1", b"x", shape=protocol.SHORT),
                _p(0, P.CAN_DO, b"f", shape=protocol.LONG),
                _p(0, P.ECHO_REQ, b"x", shape=protocol.RESPONSE_MAGIC),
                _p(0, P.JOB_CREATED, b"x"),
                _p(0, P.SUBMIT_JOB_SCHED, b"", b"", b"", b"", b"", b"", b"", b""),
                _p(0, P.CAN_DO, b""),
                _p(0, P.SUBMIT_JOB, b"", b"", b"x"),
                _p(0, P.SUBMIT_JOB, b"f", b"U" * 65, b"x"),
                _p(0, P.CAN_DO_TIMEOUT, b"f", b"nan"),
            ],
        ),
        "split-and-pipelined": (
            Config(connections=2),
            [
                _p(w, P.CAN_DO, b"f", cut=5),
                _p(c, P.SUBMIT_JOB, b"f", b"", b"x", cut=12, flush=False),
                _p(c, P.SUBMIT_JOB_BG, b"f", b"", b"y", flush=False),
                _admin(c, "status", crlf=True),
                _p(w, P.GRAB_JOB, cut=3, flush=False),
                _p(w, P.GRAB_JOB),
                _p(w, P.WORK_COMPLETE, H1, b"x", cut=14),
            ],
        ),
        "read-timeout": (
            Config(connections=2, read_timeout=1.0),
            [
                _p(w, P.CAN_DO, b"f"),
                _p(c, P.SUBMIT_JOB, b"f", b"", b"x"),
                _p(w, P.GRAB_JOB),
                Raw(w, b"\0REQ\0\0\0\x0d\0\0\0\x10fuzz"),
                Raw(c, b"stat"),
                Advance(protocol.DELAYS.index(0.5)),
                Raw(w, b":1"),
                Advance(protocol.DELAYS.index(1.5)),
                Advance(protocol.DELAYS.index(1.5)),
            ],
        ),
        "memory-budget": (
            Config(connections=2, max_memory=3000),
            [
                _p(c, P.SUBMIT_JOB_BG, b"f", b"", b"x"),
                _p(c, P.SUBMIT_JOB_BG, b"f", b"", b"y"),
                _p(c, P.SUBMIT_JOB_BG, b"f", b"", b"x"),
                _p(c, P.SUBMIT_JOB_BG, b"f", b"", b"y"),
                _p(c, P.SUBMIT_JOB_BG, b"f", b"", b"x"),
                _p(w, P.CAN_DO, b"f"),
                _p(w, P.GRAB_JOB),
                _p(w, P.WORK_COMPLETE, H1, b""),
                Raw(w, b"\0REQ\0\0\0\x10\0\x10\0\0x"),
                Advance(protocol.DELAYS.index(1.0)),
                _admin(c, "status"),
            ],
        ),
        "raw-text": (
            Config(connections=1),
            [Raw(0, b"status\r\nworkers\n\n \r\nshow jobs\n"), Raw(0, b"versi"), Raw(0, b"on\n")],
        ),
        "store-slow": (
            Config(connections=2, store=protocol.SLOW_STORE),
            [
                _p(c, P.SUBMIT_JOB_BG, b"f", b"u", b"x", flush=False),
                _p(c, P.ECHO_REQ, b"x", flush=False),
                _p(c, P.SUBMIT_JOB, b"f", b"v", b"x", flush=False),
                _p(c, P.SUBMIT_JOB_BG, b"f", b"v", b"x"),
                _p(w, P.CAN_DO, b"f"),
                _p(w, P.GRAB_JOB),
                _p(w, P.WORK_COMPLETE, H1, b""),
                Close(c),
            ],
        ),
        "store-flaky": (
            Config(connections=3, store=protocol.FLAKY_STORE),
            [
                _p(c, P.SUBMIT_JOB_BG, b"f", b"", b"y"),
                _p(c, P.SUBMIT_JOB_BG, b"f", b"", b"x"),
                _p(x, P.SUBMIT_JOB, b"f", b"u", b"y"),
                _p(c, P.SUBMIT_JOB_BG, b"f", b"v", b"y", flush=False),
                _p(c, P.SUBMIT_JOB_LOW_BG, b"g", b"v", b"x"),
                _p(w, P.CAN_DO, b"f"),
                _p(w, P.GRAB_JOB),
                _p(w, P.WORK_COMPLETE, H3, b""),
            ],
        ),
        "reconnect": (
            Config(connections=1, wakeup=0),
            [
                _p(0, P.CAN_DO, b"f"),
                _p(0, P.PRE_SLEEP),
                Close(0),
                Connect(0),
                Connect(1),
                _p(1, P.SUBMIT_JOB_BG, b"f", b"", b"x"),
                _p(0, P.CAN_DO, b"f"),
                _p(0, P.PRE_SLEEP),
                _p(0, P.GRAB_JOB),
            ],
        ),
    }
    out: dict[str, FuzzInput] = {}
    for name, (config, steps) in seeds.items():
        out[name] = FuzzInput(config, tuple(steps))
    return out


def _packets(*packets: bytes) -> bytes:
    return b"".join(packets)


def parser_seeds() -> dict[str, parser.ParserInput]:
    """
    Streams for the parser target, by name.
    """
    req = wire.encode_request
    res = wire.encode
    default = wire.DEFAULT_MAX_PACKET_SIZE
    line = wire.DEFAULT_MAX_LINE_LENGTH
    cycle = _packets(
        req(P.CAN_DO, b"f"),
        req(P.SUBMIT_JOB, b"f", b"u", b"x\0y"),
        req(P.GRAB_JOB_UNIQ),
        req(P.WORK_COMPLETE, b"H:1", b"done"),
    )
    replies = _packets(
        res(P.JOB_CREATED, b"H:1"),
        res(P.JOB_ASSIGN_UNIQ, b"H:1", b"f", b"u", b"x"),
        res(P.NO_JOB),
        res(P.WORK_COMPLETE, b"H:1", b"done"),
    )
    seeds = {
        "requests": (False, default, line, (), cycle),
        "requests-cut": (False, default, line, (1, 11, 12, 13, 0, 5), cycle),
        "replies": (True, default, line, (), replies),
        "replies-cut": (True, default, line, (3, 9, 40), replies),
        "replies-to-server": (False, default, line, (), replies),
        "requests-to-client": (True, default, line, (7,), cycle),
        "admin-lines": (False, default, line, (), b"status\r\nworkers\n\n\r\nshow jobs\n"),
        "admin-lines-cut": (False, default, line, (2, 0, 7, 1), b"status\r\nworkers\nver"),
        "mixed": (False, default, line, (14,), b"status\n" + cycle + b"version\r\n"),
        "empty-body": (False, default, line, (), req(P.GRAB_JOB) + req(P.PRE_SLEEP)),
        "partial-header": (False, default, line, (3,), b"\0REQ\0\0"),
        "partial-body": (False, default, line, (20,), req(P.ECHO_REQ, b"x" * 40)[:30]),
        "too-large": (False, 16, line, (), req(P.ECHO_REQ, b"x" * 17)),
        "too-large-cut": (False, 16, line, (6, 6), req(P.ECHO_REQ, b"x" * 17)),
        "at-limit": (False, 16, line, (), req(P.ECHO_REQ, b"x" * 16)),
        "zero-limit": (False, 0, line, (), req(P.GRAB_JOB) + req(P.CAN_DO, b"f")),
        "bad-magic": (False, default, line, (), b"\0XYZ\0\0\0\x01\0\0\0\x01f"),
        "bad-type": (False, default, line, (), b"\0REQ\0\0\0\x00\0\0\0\0"),
        "bad-type-high": (True, default, line, (), b"\0RES\0\0\0\x2b\0\0\0\0"),
        "bad-magic-and-type": (False, default, line, (), b"\0ABC\0\0\0\x63\0\0\0\0"),
        "line-too-long": (False, default, 8, (), b"abcdefghij\n"),
        "line-at-limit": (False, default, 8, (4,), b"abcdefgh\nabcdefgh\r\n"),
        "line-too-long-cut": (False, default, 8, (3, 3, 3), b"abcdefghijk"),
        "line-cr-at-limit": (False, default, 8, (), b"abcdefg\r\n"),
        "line-zero-limit": (False, default, 0, (), b"\n\r\nx\n"),
        "after-error": (False, 8, line, (12, 1), req(P.ECHO_REQ, b"x" * 9) + b"status\n"),
        "bytewise": (False, default, line, tuple([1] * 15), cycle),
        "big-limits": (True, 2**32 - 1, 1000, (), res(P.ERROR, b"X", b"y") + b"OK\n"),
        "header-max-size": (False, 2**32 - 1, line, (), b"\0REQ\0\0\0\x10\xff\xff\xff\xff"),
    }
    return {name: parser.ParserInput(*spec) for name, spec in seeds.items()}


def _write(directory: Path, seeds: dict[str, bytes]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for stale in directory.glob("seed-*"):
        if stale.name[len("seed-") :] not in seeds:
            stale.unlink()
    for name, data in seeds.items():
        (directory / f"seed-{name}").write_bytes(data)


def main() -> None:
    """
    Write the seeds (and check that each reads back as written).
    """
    protocol_files = {}
    for name, spec in protocol_seeds().items():
        data = protocol.encode_input(spec)
        if protocol.decode_input(data) != spec:
            raise AssertionError(f"protocol seed {name} does not read back")
        protocol_files[name] = data
    parser_files = {}
    for name, pspec in parser_seeds().items():
        data = parser.encode_input(pspec)
        if parser.decode_input(data) != pspec:
            raise AssertionError(f"parser seed {name} does not read back")
        parser_files[name] = data
    _write(FUZZ / "corpus" / "protocol", protocol_files)
    _write(FUZZ / "corpus" / "parser", parser_files)
    print(f"{len(protocol_files)} protocol seeds, {len(parser_files)} parser seeds")


if __name__ == "__main__":
    main()
