"""Canonical binary encoding primitives (docs/protocol.md §3.1).

One encoding per value: unsigned LEB128 varints in their shortest form,
length-prefixed byte strings, UTF-8 text, 32-byte hashes raw. The reader
checks every length against the remaining input *and* a caller-given limit
before slicing, and raises :class:`DecodeError` for anything else.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import TypeVar

from p2pkg.errors import DecodeError

T = TypeVar("T")

HASH_LEN = 32
MAX_UVARINT = (1 << 63) - 1


class Writer:
    """Appends canonical primitives to a buffer."""

    __slots__ = ("_buf",)

    def __init__(self) -> None:
        self._buf = bytearray()

    def getvalue(self) -> bytes:
        return bytes(self._buf)

    def u8(self, value: int) -> None:
        if not 0 <= value <= 0xFF:
            raise ValueError(f"u8 out of range: {value}")
        self._buf.append(value)

    def uvarint(self, value: int) -> None:
        if not 0 <= value <= MAX_UVARINT:
            raise ValueError(f"uvarint out of range: {value}")
        while value >= 0x80:
            self._buf.append((value & 0x7F) | 0x80)
            value >>= 7
        self._buf.append(value)

    def flag(self, value: bool) -> None:
        self._buf.append(1 if value else 0)

    def raw(self, data: bytes) -> None:
        self._buf += data

    def hash(self, digest: bytes) -> None:
        if len(digest) != HASH_LEN:
            raise ValueError("hash must be 32 bytes")
        self._buf += digest

    def bytes_(self, data: bytes) -> None:
        self.uvarint(len(data))
        self._buf += data

    def text(self, value: str) -> None:
        self.bytes_(value.encode("utf-8"))


class Reader:
    """Reads canonical primitives; every failure is a :class:`DecodeError`."""

    __slots__ = ("_data", "_pos")

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._pos = 0

    @property
    def remaining(self) -> int:
        return len(self._data) - self._pos

    def _take(self, n: int) -> bytes:
        if n > self.remaining:
            raise DecodeError(f"truncated: need {n} bytes, {self.remaining} left")
        out = self._data[self._pos : self._pos + n]
        self._pos += n
        return out

    def u8(self) -> int:
        return self._take(1)[0]

    def uvarint(self, limit: int = MAX_UVARINT) -> int:
        value = 0
        shift = 0
        for i in range(9):
            byte = self.u8()
            value |= (byte & 0x7F) << shift
            if not byte & 0x80:
                if byte == 0 and i > 0:
                    raise DecodeError("non-canonical varint (trailing zero byte)")
                if value > limit:
                    raise DecodeError(f"value {value} exceeds limit {limit}")
                return value
            shift += 7
        raise DecodeError("varint longer than 9 bytes")

    def flag(self) -> bool:
        byte = self.u8()
        if byte > 1:
            raise DecodeError(f"flag must be 0 or 1, got {byte}")
        return byte == 1

    def hash(self) -> bytes:
        return self._take(HASH_LEN)

    def raw(self, n: int) -> bytes:
        return self._take(n)

    def bytes_(self, limit: int) -> bytes:
        n = self.uvarint(limit)
        return self._take(n)

    def text(self, limit: int) -> str:
        data = self.bytes_(limit)
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise DecodeError("invalid UTF-8 in text field") from exc

    def count(self, limit: int, item_size: int = 1) -> int:
        """Read a list length, refusing counts the remaining input cannot hold."""
        n = self.uvarint(limit)
        if n * item_size > self.remaining:
            raise DecodeError(f"list of {n} items cannot fit in {self.remaining} bytes")
        return n

    def items(self, limit: int, item_size: int, read: Callable[[Reader], T]) -> list[T]:
        n = self.count(limit, item_size)
        return [read(self) for _ in range(n)]

    def end(self) -> None:
        if self.remaining:
            raise DecodeError(f"{self.remaining} trailing bytes")


def encode_uvarint(value: int) -> bytes:
    w = Writer()
    w.uvarint(value)
    return w.getvalue()


def check_strictly_sorted(keys: list[bytes], what: str) -> None:
    """Canonical lists are sorted and unique; anything else has two encodings."""
    for a, b in itertools.pairwise(keys):
        if not a < b:
            raise DecodeError(f"{what} not strictly sorted")
