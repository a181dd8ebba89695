from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from p2pkg.core.root import Root, SignedRoot, decode_root, decode_signed_root, parse_pubkey
from p2pkg.errors import DecodeError, KeyFileError

from .strategies import hashes, roots


@given(roots())
def test_root_round_trip(root: Root) -> None:
    data = root.encode()
    assert decode_root(data) == root
    assert decode_root(data).encode() == data


@given(roots(), st.lists(st.tuples(hashes, st.binary(min_size=64, max_size=64)), max_size=4))
def test_signed_root_round_trip(root: Root, sigs: list[tuple[bytes, bytes]]) -> None:
    unique = tuple(sorted(dict(sigs).items()))
    signed = SignedRoot(root.encode(), unique)
    decoded, parsed = decode_signed_root(signed.encode())
    assert decoded == signed and parsed == root


@given(st.binary(max_size=600))
def test_decode_root_arbitrary_bytes(data: bytes) -> None:
    with contextlib.suppress(DecodeError):
        decode_root(b"\x06\x01" + data)


@given(roots(), st.data())
def test_root_truncations_and_mutations(root: Root, data: st.DataObject) -> None:
    encoded = root.encode()
    cut = data.draw(st.integers(0, len(encoded) - 1))
    with pytest.raises(DecodeError):
        decode_root(encoded[:cut])
    mutated = bytearray(encoded)
    i = data.draw(st.integers(0, len(encoded) - 1))
    mutated[i] ^= data.draw(st.integers(1, 255))
    with contextlib.suppress(DecodeError):
        decode_root(bytes(mutated))


@given(st.text(max_size=100))
def test_parse_pubkey_arbitrary_text(text: str) -> None:
    with contextlib.suppress(KeyFileError):
        assert len(parse_pubkey(text)) == 32


def test_root_rejects_impossible_threshold() -> None:
    root = Root("ns", 1, 0, 10, 3, (b"\x01" * 32,), b"\x00" * 32)  # type: ignore[arg-type]
    with pytest.raises(DecodeError, match="threshold"):
        decode_root(root.encode())
