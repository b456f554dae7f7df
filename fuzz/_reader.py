"""
How the fuzz targets read their choices from an input, and how the corpus
builder writes them.

The targets do not use C{atheris.FuzzedDataProvider}: an input must replay
the same way with or without atheris installed (the test suite replays the
corpus without it), so both modes read inputs with L{ByteReader}.  Its
methods are named after the provider's, but it reads everything from the
front, in a simple encoding that L{ByteWriter} produces exactly, so seed
inputs can be written from a description of what they do.

Encoding: an integer in C{[lo, hi]} takes as many bytes as C{hi - lo}
needs (big-endian, reduced modulo the range size); bytes are taken as
they are.  An exhausted input reads as zeros (C{lo}, C{False}, C{b""}),
so every input is valid and every read terminates.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

__all__ = ["ByteReader", "ByteWriter"]

_T = TypeVar("_T")


def _width(span: int) -> int:
    """
    How many bytes an integer in C{[0, span]} takes.
    """
    return (span.bit_length() + 7) // 8


class ByteReader:
    """
    Reads choices from the front of a fuzz input, deterministically.
    """

    __slots__ = ("_data", "_pos")

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._pos = 0

    def remaining_bytes(self) -> int:
        """
        How many bytes are left.
        """
        return len(self._data) - self._pos

    def ConsumeBytes(self, count: int) -> bytes:
        """
        The next C{count} bytes (fewer if the input ends first).
        """
        start = self._pos
        chunk = self._data[start : start + count]
        self._pos = start + len(chunk)
        return chunk

    def ConsumeIntInRange(self, lo: int, hi: int) -> int:
        """
        An integer in C{[lo, hi]}.
        """
        span = hi - lo
        if span <= 0:
            return lo
        raw = int.from_bytes(self.ConsumeBytes(_width(span)), "big")
        return lo + raw % (span + 1)

    def ConsumeBool(self) -> bool:
        """
        A boolean (one byte, its lowest bit).
        """
        return self.ConsumeIntInRange(0, 1) == 1

    def ConsumeShortBytes(self, max_length: int) -> bytes:
        """
        A length in C{[0, max_length]}, then that many bytes.
        """
        return self.ConsumeBytes(self.ConsumeIntInRange(0, max_length))

    def PickValueInList(self, values: Sequence[_T]) -> _T:
        """
        One of C{values} (not empty).
        """
        return values[self.ConsumeIntInRange(0, len(values) - 1)]

    def ConsumeRemainingBytes(self) -> bytes:
        """
        Everything left.
        """
        return self.ConsumeBytes(self.remaining_bytes())


class ByteWriter:
    """
    Writes the input that makes a L{ByteReader} return given choices: call
    the C{Write} method matching each C{Consume} call, in the same order.
    """

    __slots__ = ("_parts",)

    def __init__(self) -> None:
        self._parts: list[bytes] = []

    def getvalue(self) -> bytes:
        """
        The input written so far.
        """
        return b"".join(self._parts)

    def WriteBytes(self, data: bytes) -> None:
        """
        Bytes that L{ByteReader.ConsumeBytes} takes as they are.
        """
        self._parts.append(data)

    def WriteIntInRange(self, value: int, lo: int, hi: int) -> None:
        """
        What L{ByteReader.ConsumeIntInRange}C{(lo, hi)} reads as C{value}.
        """
        if not lo <= value <= hi:
            raise ValueError(f"{value} is not in [{lo}, {hi}]")
        span = hi - lo
        if span > 0:
            self._parts.append((value - lo).to_bytes(_width(span), "big"))

    def WriteBool(self, value: bool) -> None:
        """
        What L{ByteReader.ConsumeBool} reads as C{value}.
        """
        self.WriteIntInRange(int(value), 0, 1)

    def WriteShortBytes(self, data: bytes, max_length: int) -> None:
        """
        What L{ByteReader.ConsumeShortBytes}C{(max_length)} reads as C{data}.
        """
        self.WriteIntInRange(len(data), 0, max_length)
        self._parts.append(data)

    def WriteValueInList(self, value: _T, values: Sequence[_T]) -> None:
        """
        What L{ByteReader.PickValueInList}C{(values)} reads as C{value}.
        """
        self.WriteIntInRange(list(values).index(value), 0, len(values) - 1)
