from __future__ import annotations

import contextlib
import dataclasses

import pytest
import zstandard
from hypothesis import example, given
from hypothesis import strategies as st
from packaging.version import InvalidVersion, Version

from p2pkg.config import CHUNK_PARAMS, Limits
from p2pkg.core.chunking import ChunkId, ChunkRef
from p2pkg.core.codec import Writer
from p2pkg.core.objects import (
    Blob,
    FileEntry,
    FileManifest,
    Kind,
    ObjectId,
    Project,
    Provenance,
    Tombstone,
    TreeObject,
    compress,
    decode,
    decompress,
    encode,
    normalize_name,
    object_id,
    open_object,
    write_manifest_fields,
)
from p2pkg.core.root import decode_signed_root
from p2pkg.errors import DecodeError, IntegrityError

from .strategies import any_object, manifests, projects, versions


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


# --------------------------------------------------------------------------- manifest rules (§3.3)


def _unchecked(m: FileManifest) -> bytes:
    """``m``'s kind-2 encoding written field by field (§3.3), bypassing encode()'s checks."""
    w = Writer()
    write_manifest_fields(w, m)
    return w.getvalue()


def _manifest(version: str = "1.0", lengths: tuple[int, ...] = (3,)) -> FileManifest:
    chunks = tuple(ChunkRef(ChunkId(b"\x03" * 32), n) for n in lengths)
    return FileManifest(
        "demo-1.0.tar.gz",
        version,
        sum(lengths),
        b"\x01" * 32,
        b"\x02" * 32,
        "",
        None,
        0,
        None,
        chunks,
    )


def _raw_manifest(version: str = "1.0", lengths: tuple[int, ...] = (3,)) -> bytes:
    return _unchecked(_manifest(version, lengths))


@given(manifests())
def test_unchecked_helper_matches_encode(m: FileManifest) -> None:
    assert _unchecked(m) == encode(m)


@pytest.mark.parametrize(
    "version",
    ["1.0", "1.0a1", "1.0.0a1", "1.0.0.0", "0", "1!1.0", "1.0.post0", "1.0rc1.dev2+abc.1"],
)
def test_normalized_versions_accepted(version: str) -> None:
    assert decode(_raw_manifest(version)) == _manifest(version)


@pytest.mark.parametrize(
    "version",
    [
        "1.0-alpha1",  # 1.0a1
        "v1.0",  # 1.0
        "01.0",  # 1.0
        "1.0RC1",  # 1.0rc1
        "1.0-1",  # 1.0.post1
        "1.0.dev",  # 1.0.dev0
        "1.0+Local",  # 1.0+local
        "0!1.0",  # 1.0
        " 1.0",
        "1.0\n",
        "",  # §3.3: non-empty
        "not a version",
        "1.0.",
        "\u0661.0",  # a non-ASCII digit
    ],
)
def test_non_normalized_versions_rejected(version: str) -> None:
    with pytest.raises(DecodeError, match="version"):
        decode(_raw_manifest(version))
    with pytest.raises(ValueError, match="version"):
        encode(_manifest(version))


def test_version_length_limit() -> None:
    long = "1." + ".".join(["0"] * 70)  # normalized, 142 bytes > §3.7's 128
    assert str(Version(long)) == long
    with pytest.raises(DecodeError):
        decode(_raw_manifest(long))


@given(st.text(max_size=30))
@example("1.0")
@example("1.0-alpha1")
def test_version_decodes_iff_normalized(version: str) -> None:
    try:
        normalized = str(Version(version)) == version
    except InvalidVersion:
        normalized = False
    data = _raw_manifest(version)
    if normalized:
        assert decode(data) == _manifest(version)
    else:
        with pytest.raises(DecodeError):
            decode(data)


@given(versions())
def test_generated_versions_are_normalized(version: str) -> None:
    assert str(Version(version)) == version
    assert len(version.encode()) <= Limits().max_version_len


def test_chunk_of_max_size_accepted() -> None:
    lengths = (CHUNK_PARAMS.max_size, 1, CHUNK_PARAMS.max_size)
    assert decode(_raw_manifest(lengths=lengths)) == _manifest(lengths=lengths)


@pytest.mark.parametrize("length", [CHUNK_PARAMS.max_size + 1, 1 << 40, (1 << 63) - 1])
def test_chunk_longer_than_max_rejected(length: int) -> None:
    with pytest.raises(DecodeError, match="exceeds limit"):
        decode(_raw_manifest(lengths=(length,)))
    with pytest.raises(ValueError, match="chunk length"):
        encode(_manifest(lengths=(length,)))


def test_zero_length_chunk_rejected() -> None:
    with pytest.raises(DecodeError, match="zero-length"):
        decode(_raw_manifest(lengths=(3, 0)))
    with pytest.raises(ValueError, match="chunk length"):
        encode(_manifest(lengths=(3, 0)))


def test_huge_varint_chunk_length_rejected_while_reading() -> None:
    # A 9-byte varint whose value (2^63 - 1) no buffer could hold, and one that
    # does not even end within 9 bytes: both refused at the length field.
    body = _raw_manifest(lengths=(3,))[:-1]
    for tail in (b"\xff" * 8 + b"\x7f", b"\xff" * 9, b"\x81\x80\x80\x80\x80\x80\x80\x80\x01"):
        with pytest.raises(DecodeError):
            decode(body + tail)


@given(manifests(), st.data())
def test_oversized_chunk_in_any_manifest_rejected(m: FileManifest, data: st.DataObject) -> None:
    if not m.chunks:
        return
    i = data.draw(st.integers(0, len(m.chunks) - 1))
    big = data.draw(st.integers(CHUNK_PARAMS.max_size + 1, 1 << 34))
    chunks = list(m.chunks)
    chunks[i] = ChunkRef(chunks[i].id, big)
    # Sizes still add up: the only fault is the one chunk's length.
    bad = dataclasses.replace(m, chunks=tuple(chunks), size=m.size - m.chunks[i].length + big)
    with pytest.raises(ValueError, match="chunk length"):
        encode(bad)
    with pytest.raises(DecodeError, match="exceeds limit"):
        decode(_unchecked(bad))


# ---------------------------------------------------------------------- format 2 (§3.3, §3.4)


def _plain_manifest(**change: object) -> FileManifest:
    base = FileManifest(
        "demo-1.0-py3-none-any.whl",
        "1.0",
        3,
        b"s" * 32,
        b"b" * 32,
        "",
        None,
        0,
        None,
        (ChunkRef(ChunkId(b"c" * 32), 3),),
    )
    return dataclasses.replace(base, **change)  # type: ignore[arg-type]


def test_format_1_objects_keep_their_bytes_and_ids() -> None:
    """Nothing published before format 2 changes id: plain objects stay format 1."""
    assert encode(_plain_manifest())[1] == 1
    assert encode(Project("demo", ()))[1] == 1
    assert (
        object_id(encode(Project("demo", ()))).hex()
        == object_id(bytes([3, 1]) + b"\x04demo\x00").hex()
    )


def test_provenance_makes_a_manifest_format_2_and_round_trips() -> None:
    m = _plain_manifest(provenance=Provenance(ObjectId(b"p" * 32), 1234))
    data = encode(m)
    assert data[:2] == bytes([2, 2])
    assert decode(data) == m


def test_status_and_tombstones_make_a_project_format_2_and_round_trip() -> None:
    p = Project(
        "demo",
        (FileEntry("demo-2.0.tar.gz", ObjectId(b"m" * 32)),),
        "deprecated",
        "use demo2",
        (Tombstone("demo-1.0.tar.gz", 1_700_000_000, "removed upstream"),),
    )
    data = encode(p)
    assert data[:2] == bytes([3, 2])
    assert decode(data) == p
    for plain in (dataclasses.replace(p, status="archived", status_reason=None, tombstones=()),):
        assert decode(encode(plain)) == plain


def test_format_2_without_an_extension_is_not_canonical() -> None:
    plain = encode(Project("demo", ()))
    # The same fields as format 2 with every extension at its default.
    forged = bytes([3, 2]) + plain[2:] + b"\x06active" + b"\x00" + b"\x00"
    with pytest.raises(DecodeError, match="format 2 project without"):
        decode(forged)


def test_format_2_is_only_for_manifests_and_projects() -> None:
    data = bytearray(encode(Blob(b"x")))
    data[1] = 2
    with pytest.raises(DecodeError, match="unsupported format version 2 for BLOB"):
        decode(bytes(data))


def test_a_filename_both_listed_and_tombstoned_is_refused() -> None:
    p = Project(
        "demo",
        (FileEntry("demo-1.0.tar.gz", ObjectId(b"m" * 32)),),
        tombstones=(Tombstone("demo-1.0.tar.gz", 1, "gone"),),
    )
    with pytest.raises(ValueError, match="both listed and tombstoned"):
        encode(p)


def test_unknown_project_status_is_refused() -> None:
    with pytest.raises(ValueError, match="status"):
        encode(Project("demo", (), "frobnicated"))
