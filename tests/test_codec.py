from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from p2pkg.core.codec import MAX_UVARINT, Reader, Writer
from p2pkg.errors import DecodeError


@given(st.integers(min_value=0, max_value=MAX_UVARINT))
def test_uvarint_round_trip(value: int) -> None:
    w = Writer()
    w.uvarint(value)
    r = Reader(w.getvalue())
    assert r.uvarint() == value
    r.end()


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (b"\x80\x00", "trailing zero"),
        (b"\x81\x80\x00", "trailing zero"),
        (b"\xff" * 10, "too long"),
        (b"\x80", "truncated"),
        (b"", "truncated"),
    ],
)
def test_uvarint_rejects_non_canonical(data: bytes, why: str) -> None:
    with pytest.raises(DecodeError):
        Reader(data).uvarint()


def test_limit_checked_before_slicing() -> None:
    w = Writer()
    w.uvarint(1 << 40)  # claims a terabyte
    with pytest.raises(DecodeError, match="exceeds limit"):
        Reader(w.getvalue() + b"x").bytes_(limit=1024)


def test_count_refuses_lists_the_input_cannot_hold() -> None:
    w = Writer()
    w.uvarint(1000)
    with pytest.raises(DecodeError, match="cannot fit"):
        Reader(w.getvalue() + b"\x00" * 10).count(limit=10_000, item_size=33)


def test_flag_and_text() -> None:
    with pytest.raises(DecodeError):
        Reader(b"\x02").flag()
    with pytest.raises(DecodeError, match="UTF-8"):
        Reader(b"\x01\xff").text(10)
    with pytest.raises(DecodeError, match="trailing"):
        r = Reader(b"\x00\x00")
        r.flag()
        r.end()
