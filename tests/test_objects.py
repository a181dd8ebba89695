from __future__ import annotations

import contextlib

import pytest
import zstandard
from hypothesis import example, given
from hypothesis import strategies as st

from p2pkg.config import Limits
from p2pkg.core.codec import Writer
from p2pkg.core.objects import (
    Blob,
    FileEntry,
    Kind,
    ObjectId,
    Project,
    TreeObject,
    compress,
    decode,
    decompress,
    encode,
    normalize_name,
    object_id,
    open_object,
)
from p2pkg.core.root import decode_signed_root
from p2pkg.errors import DecodeError, IntegrityError

from .strategies import any_object, manifests, projects


@given(any_object)
def test_round_trip(obj: TreeObject) -> None:
    data = encode(obj)
    assert decode(data) == obj
    assert encode(decode(data)) == data  # one encoding per value
    assert open_object(compress(data), object_id(data)) == data


@given(st.binary(max_size=2000))
@example(b"\x02\x01")
@example(b"\x03\x01\x03foo\xff\xff\xff\xff\x0f")
def test_decode_arbitrary_bytes_returns_or_raises_decode_error(data: bytes) -> None:
    with contextlib.suppress(DecodeError):
        decode(data)


@given(st.binary(max_size=2000))
def test_decode_signed_root_arbitrary_bytes(data: bytes) -> None:
    with contextlib.suppress(DecodeError):
        decode_signed_root(data)


@given(st.binary(max_size=500))
def test_decompress_arbitrary_bytes(data: bytes) -> None:
    with contextlib.suppress(DecodeError):
        decompress(data)


@given(any_object, st.data())
def test_every_truncation_is_a_decode_error(obj: TreeObject, data: st.DataObject) -> None:
    encoded = encode(obj)
    cut = data.draw(st.integers(0, len(encoded) - 1))
    with pytest.raises(DecodeError):
        decode(encoded[:cut])


@given(any_object, st.data())
def test_mutations_decode_or_raise(obj: TreeObject, data: st.DataObject) -> None:
    encoded = bytearray(encode(obj))
    i = data.draw(st.integers(0, len(encoded) - 1))
    encoded[i] ^= data.draw(st.integers(1, 255))
    with contextlib.suppress(DecodeError):
        decode(bytes(encoded))


@given(manifests())
def test_trailing_bytes_rejected(m: object) -> None:
    with pytest.raises(DecodeError, match="trailing"):
        decode(encode(m) + b"\x00")  # type: ignore[arg-type]


def test_unsorted_project_files_rejected() -> None:
    w = Writer()
    w.u8(Kind.PROJECT)
    w.u8(1)
    w.text("demo")
    w.uvarint(2)
    for name in ("b.whl", "a.whl"):
        w.text(name)
        w.hash(b"\x00" * 32)
    with pytest.raises(DecodeError, match="sorted"):
        decode(w.getvalue())


@pytest.mark.parametrize("name", ["Demo", "a--b", "-a", "a_b", "", "a.b", "x" * 300])
def test_project_name_must_be_normalized(name: str) -> None:
    data = encode(Project("demo", ()))
    w = Writer()
    w.u8(Kind.PROJECT)
    w.u8(1)
    w.text(name)
    w.uvarint(0)
    assert data != w.getvalue()
    with pytest.raises(DecodeError):
        decode(w.getvalue())


@pytest.mark.parametrize("filename", ["../x.whl", "a/b.whl", ".hidden", "a\\b", "a\x00b", ""])
def test_path_tricks_in_filenames_rejected(filename: str) -> None:
    w = Writer()
    w.u8(Kind.PROJECT)
    w.u8(1)
    w.text("demo")
    w.uvarint(1)
    w.text(filename)
    w.hash(b"\x00" * 32)
    with pytest.raises(DecodeError):
        decode(w.getvalue())


def test_huge_counts_rejected_before_allocation() -> None:
    w = Writer()
    w.u8(Kind.PROJECT)
    w.u8(1)
    w.text("demo")
    w.uvarint(10**15)
    with pytest.raises(DecodeError):
        decode(w.getvalue())


def test_limits_are_enforced() -> None:
    big = encode(Blob(b"x" * 5000))
    with pytest.raises(DecodeError, match="exceeds"):
        decode(big, Limits(max_object_size=4096))
    with pytest.raises(DecodeError, match="exceeds"):
        decompress(compress(big), limit=4096)


def test_zstd_frame_without_content_size_and_bombs_rejected() -> None:
    no_size = zstandard.ZstdCompressor(write_content_size=False).compress(b"x" * 100)
    with pytest.raises(DecodeError, match="content size"):
        decompress(no_size)
    bomb = zstandard.ZstdCompressor().compress(b"\x00" * (64 << 20))
    with pytest.raises(DecodeError, match="exceeds"):
        decompress(bomb)
    with pytest.raises(DecodeError):
        decompress(compress(b"abc") + b"trailing")


@given(projects())
def test_open_object_checks_the_id(p: Project) -> None:
    data = encode(p)
    wrong = ObjectId(bytes(32))
    with pytest.raises(IntegrityError):
        open_object(compress(data), wrong)


def test_normalize_name() -> None:
    assert normalize_name("Foo.Bar__baz") == "foo-bar-baz"
    entry = FileEntry("x.whl", ObjectId(bytes(32)))
    assert Project("foo", (entry,)).lookup("x.whl") == bytes(32)
