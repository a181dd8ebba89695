"""Metadata objects: encode, decode, compress (docs/protocol.md §3).

Every object is ``kind:u8 || format:u8 || body`` in the canonical encoding of
:mod:`p2pkg.core.codec`; its id is the BLAKE3-256 of those bytes. On disk and on the
wire an object travels as one zstd frame that declares its content size.
Decoders check every count and length against :class:`p2pkg.config.Limits`
before allocating and raise :class:`DecodeError` for anything malformed or
non-canonical, so one value has exactly one encoding and one id.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum
from typing import NewType, TypeVar

import zstandard
from packaging.version import InvalidVersion, Version

from p2pkg.config import CHUNK_PARAMS, LIMITS, Limits
from p2pkg.core.chunking import ChunkId, ChunkRef, b3, offsets
from p2pkg.core.codec import HASH_LEN, Reader, Writer, check_strictly_sorted
from p2pkg.errors import DecodeError, IntegrityError

T = TypeVar("T")

ObjectId = NewType("ObjectId", bytes)

FORMAT = 1
#: Format 2 extends file manifests (provenance) and projects (status,
#: tombstones), §3.3-§3.4; an object without those fields is format 1, so
#: every namespace published before keeps its ids.
FORMAT_EXTENDED = 2

#: PEP 792 project statuses (§3.4); "active" is the default and format 1.
PROJECT_STATUSES = ("active", "archived", "quarantined", "deprecated")

# Tree shape (§3.5): two 256-way levels indexed by the first two bytes of
# BLAKE3(normalized name), then leaves that list projects.
TREE_LEVELS = 2
FANOUT = 256

_NAME_RE = re.compile(r"^[a-z0-9](?:[a-z0-9-]*[a-z0-9])?$")
_NORMALIZE_RE = re.compile(r"[-_.]+")


class Kind(IntEnum):
    """Object kinds (docs/protocol.md §3.2)."""

    BLOB = 1
    FILE = 2
    PROJECT = 3
    LEAF = 4
    NODE = 5
    ROOT = 6
    SIGNED_ROOT = 7


def object_id(encoded: bytes) -> ObjectId:
    """The id of an encoded object: BLAKE3-256 of its canonical bytes."""
    return ObjectId(b3(encoded))


def normalize_name(name: str) -> str:
    """PEP 503 normalization: runs of ``-_.`` become ``-``, lower case."""
    return _NORMALIZE_RE.sub("-", name).lower()


def check_normalized_name(name: str, limits: Limits = LIMITS) -> None:
    if len(name) > limits.max_name_len or not _NAME_RE.match(name) or "--" in name:
        raise DecodeError(f"not a normalized project name: {name!r}")


def check_filename(name: str, limits: Limits = LIMITS) -> None:
    """A filename must be a single safe path component (no path tricks)."""
    if (
        not name
        or len(name.encode()) > limits.max_filename_len
        or name.startswith(".")
        or any(c in name for c in "/\\")
        or any(ord(c) < 0x20 or ord(c) == 0x7F for c in name)
    ):
        raise DecodeError(f"unsafe or invalid filename: {name!r}")


def is_normalized_version(text: str) -> bool:
    """Whether ``text`` is a PEP 440 version in its normalized form (§3.3).

    One release has one spelling, so ``1.0-alpha1`` and ``1.0a1`` cannot be two
    files' versions with different ids; ``str(Version(...))`` is that spelling.
    """
    try:
        return str(Version(text)) == text
    except InvalidVersion:
        return False


def check_version(text: str, limits: Limits = LIMITS) -> None:
    if len(text.encode()) > limits.max_version_len or not is_normalized_version(text):
        raise DecodeError(f"not a normalized PEP 440 version: {text!r}")


def name_hash(name: str) -> bytes:
    """Where a project lives in the tree: BLAKE3 of its normalized name."""
    return b3(name.encode("utf-8"))


# --------------------------------------------------------------------------- values


@dataclass(frozen=True, slots=True)
class Blob:
    """Opaque bytes, used for a wheel's METADATA file (PEP 658)."""

    data: bytes


@dataclass(frozen=True, slots=True)
class CoreMetadata:
    """Where a file's core metadata lives and what pip checks it against."""

    sha256: bytes
    blob: ObjectId
    size: int


@dataclass(frozen=True, slots=True)
class Provenance:
    """Where a file's PEP 740 provenance document lives (a blob) and its size."""

    blob: ObjectId
    size: int


@dataclass(frozen=True, slots=True)
class FileManifest:
    """One archive: identity, hashes, chunk list and the index-page data."""

    filename: str
    version: str
    size: int
    sha256: bytes
    blake3: bytes
    requires_python: str
    yanked: str | None
    upload_time: int
    core_metadata: CoreMetadata | None
    chunks: tuple[ChunkRef, ...]
    provenance: Provenance | None = None  # PEP 740, mirrored from an upstream index

    def chunk_offsets(self) -> list[int]:
        """Offset of each chunk in the file."""
        return offsets(self.chunks)


@dataclass(frozen=True, slots=True)
class FileEntry:
    filename: str
    manifest: ObjectId


@dataclass(frozen=True, slots=True)
class Tombstone:
    """A file the namespace once listed and no longer does (it vanished upstream).

    Kept so that mirrors and lockfiles can tell "removed at ``removed`` because
    ``reason``" from "never existed"; never a silent deletion.
    """

    filename: str
    removed: int  # seconds since the epoch
    reason: str


@dataclass(frozen=True, slots=True)
class Project:
    """A project: its normalized name and its files, sorted by filename.

    ``status`` and ``status_reason`` are PEP 792's; ``tombstones`` lists files
    removed from the namespace (§3.4).
    """

    name: str
    files: tuple[FileEntry, ...]
    status: str = "active"
    status_reason: str | None = None
    tombstones: tuple[Tombstone, ...] = ()

    @property
    def extended(self) -> bool:
        """Whether this project needs format 2 (status, reason or tombstones)."""
        return self.status != "active" or self.status_reason is not None or bool(self.tombstones)

    def lookup(self, filename: str) -> ObjectId | None:
        for f in self.files:
            if f.filename == filename:
                return f.manifest
        return None


@dataclass(frozen=True, slots=True)
class LeafEntry:
    name: str
    project: ObjectId


@dataclass(frozen=True, slots=True)
class Leaf:
    """The projects whose name hash starts with ``prefix`` (2 bytes)."""

    prefix: bytes
    projects: tuple[LeafEntry, ...]


@dataclass(frozen=True, slots=True)
class NodeEntry:
    slot: int
    child: ObjectId


@dataclass(frozen=True, slots=True)
class Node:
    """An interior tree node at depth ``len(prefix)``; only non-empty slots listed."""

    prefix: bytes
    children: tuple[NodeEntry, ...]

    def child(self, slot: int) -> ObjectId | None:
        for e in self.children:
            if e.slot == slot:
                return e.child
        return None


TreeObject = Blob | FileManifest | Project | Leaf | Node


# --------------------------------------------------------------------------- encode


def _header(w: Writer, kind: Kind, fmt: int = FORMAT) -> None:
    w.u8(kind)
    w.u8(fmt)


def encode(obj: TreeObject) -> bytes:
    """Canonical bytes of ``obj``. Raises ValueError for values that break the format."""
    w = Writer()
    match obj:
        case Blob():
            _header(w, Kind.BLOB)
            w.bytes_(obj.data)
        case FileManifest():
            _encode_file(w, obj)
        case Project():
            _encode_project(w, obj)
        case Leaf():
            _header(w, Kind.LEAF)
            w.raw(obj.prefix)
            entries = sorted(obj.projects, key=lambda p: p.name.encode())
            w.uvarint(len(entries))
            for p in entries:
                w.text(p.name)
                w.hash(p.project)
        case Node():
            _header(w, Kind.NODE)
            w.u8(len(obj.prefix))
            w.raw(obj.prefix)
            children = sorted(obj.children, key=lambda c: c.slot)
            w.uvarint(len(children))
            for c in children:
                w.u8(c.slot)
                w.hash(c.child)
    return w.getvalue()


def _encode_project(w: Writer, p: Project) -> None:
    if p.status not in PROJECT_STATUSES:
        raise ValueError(f"project status {p.status!r} is not one of {PROJECT_STATUSES}")
    files = sorted(p.files, key=lambda f: f.filename.encode())
    gone = sorted(p.tombstones, key=lambda t: t.filename.encode())
    if {f.filename for f in files} & {t.filename for t in gone}:
        raise ValueError("a filename is both listed and tombstoned")
    _header(w, Kind.PROJECT, FORMAT_EXTENDED if p.extended else FORMAT)
    w.text(p.name)
    w.uvarint(len(files))
    for f in files:
        w.text(f.filename)
        w.hash(f.manifest)
    if p.extended:
        w.text(p.status)
        w.flag(p.status_reason is not None)
        if p.status_reason is not None:
            w.text(p.status_reason)
        w.uvarint(len(gone))
        for t in gone:
            w.text(t.filename)
            w.uvarint(t.removed)
            w.text(t.reason)


def _encode_file(w: Writer, m: FileManifest) -> None:
    # Refuse what the decoder refuses (§3.3), so no id is ever minted for a
    # manifest nobody can read back.
    if not is_normalized_version(m.version):
        raise ValueError(f"version is not normalized PEP 440: {m.version!r}")
    for c in m.chunks:
        if not 1 <= c.length <= CHUNK_PARAMS.max_size:
            raise ValueError(f"chunk length {c.length} outside 1..{CHUNK_PARAMS.max_size}")
    write_manifest_fields(w, m)


def write_manifest_fields(w: Writer, m: FileManifest) -> None:
    """A manifest's kind-2 bytes field by field (§3.3), without the format checks."""
    _header(w, Kind.FILE, FORMAT if m.provenance is None else FORMAT_EXTENDED)
    w.text(m.filename)
    w.text(m.version)
    w.uvarint(m.size)
    w.hash(m.sha256)
    w.hash(m.blake3)
    w.text(m.requires_python)
    w.flag(m.yanked is not None)
    if m.yanked is not None:
        w.text(m.yanked)
    w.uvarint(m.upload_time)
    w.flag(m.core_metadata is not None)
    if m.core_metadata is not None:
        w.hash(m.core_metadata.sha256)
        w.hash(m.core_metadata.blob)
        w.uvarint(m.core_metadata.size)
    w.uvarint(len(m.chunks))
    for c in m.chunks:
        w.hash(c.id)
        w.uvarint(c.length)
    if m.provenance is not None:
        w.hash(m.provenance.blob)
        w.uvarint(m.provenance.size)


# --------------------------------------------------------------------------- decode


def peek_kind(data: bytes) -> Kind:
    """The kind of an encoded object, checking the format byte."""
    if len(data) < 2:
        raise DecodeError("object shorter than its header")
    try:
        kind = Kind(data[0])
    except ValueError:
        raise DecodeError(f"unknown object kind {data[0]}") from None
    extendable = kind in (Kind.FILE, Kind.PROJECT)
    if data[1] != FORMAT and not (extendable and data[1] == FORMAT_EXTENDED):
        raise DecodeError(f"unsupported format version {data[1]} for {kind.name}")
    return kind


def decode(data: bytes, limits: Limits = LIMITS) -> TreeObject:
    """Decode any tree object. Raises :class:`DecodeError` for anything malformed."""
    if len(data) > limits.max_object_size:
        raise DecodeError(f"object of {len(data)} bytes exceeds {limits.max_object_size}")
    kind = peek_kind(data)
    decoder = _DECODERS.get(kind)
    if decoder is None:
        raise DecodeError(f"{kind.name} is not a tree object")
    r = Reader(data)
    r.raw(2)
    obj = decoder(r, limits, data[1])
    r.end()
    return obj


def decode_as(data: bytes, cls: type[T], limits: Limits = LIMITS) -> T:
    """Decode and require a specific kind (e.g. a project where a project is due)."""
    obj = decode(data, limits)
    if not isinstance(obj, cls):
        raise DecodeError(f"expected {cls.__name__}, got {type(obj).__name__}")
    return obj


def _decode_blob(r: Reader, limits: Limits, fmt: int) -> Blob:
    return Blob(r.bytes_(limits.max_core_metadata_size))


def _filename(r: Reader, limits: Limits) -> str:
    name = r.text(limits.max_filename_len)
    check_filename(name, limits)
    return name


def _decode_file(r: Reader, limits: Limits, fmt: int) -> FileManifest:
    filename = _filename(r, limits)
    version = r.text(limits.max_version_len)
    check_version(version, limits)  # §3.3: PEP 440 normalized (so never empty)
    size = r.uvarint(limits.max_file_size)
    sha256 = r.hash()
    blake3_ = r.hash()
    requires_python = r.text(limits.max_text_len)
    yanked = r.text(limits.max_text_len) if r.flag() else None
    upload_time = r.uvarint()
    core = None
    if r.flag():
        core = CoreMetadata(r.hash(), ObjectId(r.hash()), r.uvarint(limits.max_core_metadata_size))
    n = r.count(limits.max_chunks_per_file, HASH_LEN + 1)
    chunks = []
    total = 0
    for _ in range(n):
        cid = ChunkId(r.hash())
        # §3.3/§3.7: 1..max chunk size (FastCDC never cuts longer, §2.1); the
        # bound is checked as the varint is read, before anyone sizes a buffer.
        length = r.uvarint(CHUNK_PARAMS.max_size)
        if length == 0:
            raise DecodeError("zero-length chunk")
        total += length
        chunks.append(ChunkRef(cid, length))
    if total != size:
        raise DecodeError(f"chunk lengths sum to {total}, file size is {size}")
    provenance = None
    if fmt == FORMAT_EXTENDED:  # §3.3: format 2 exactly when provenance is present
        provenance = Provenance(ObjectId(r.hash()), r.uvarint(limits.max_core_metadata_size))
    return FileManifest(
        filename,
        version,
        size,
        sha256,
        blake3_,
        requires_python,
        yanked,
        upload_time,
        core,
        tuple(chunks),
        provenance,
    )


def _decode_project(r: Reader, limits: Limits, fmt: int) -> Project:
    name = r.text(limits.max_name_len)
    check_normalized_name(name, limits)

    def entry(r: Reader) -> FileEntry:
        return FileEntry(_filename(r, limits), ObjectId(r.hash()))

    files = r.items(limits.max_files_per_project, HASH_LEN + 2, entry)
    check_strictly_sorted([f.filename.encode() for f in files], "project files")
    if fmt != FORMAT_EXTENDED:
        return Project(name, tuple(files))
    status = r.text(limits.max_text_len)
    if status not in PROJECT_STATUSES:
        raise DecodeError(f"unknown project status {status!r}")
    reason = r.text(limits.max_text_len) if r.flag() else None

    def tombstone(r: Reader) -> Tombstone:
        return Tombstone(_filename(r, limits), r.uvarint(), r.text(limits.max_text_len))

    gone = r.items(limits.max_files_per_project, 3, tombstone)
    check_strictly_sorted([t.filename.encode() for t in gone], "project tombstones")
    if {f.filename for f in files} & {t.filename for t in gone}:
        raise DecodeError("a filename is both listed and tombstoned")
    project = Project(name, tuple(files), status, reason, tuple(gone))
    if not project.extended:  # canonical: nothing extended is format 1
        raise DecodeError("format 2 project without status, reason or tombstones")
    return project


def _decode_leaf(r: Reader, limits: Limits, fmt: int) -> Leaf:
    prefix = r.raw(TREE_LEVELS)

    def entry(r: Reader) -> LeafEntry:
        name = r.text(limits.max_name_len)
        check_normalized_name(name, limits)
        if name_hash(name)[:TREE_LEVELS] != prefix:
            raise DecodeError(f"project {name!r} does not belong in leaf {prefix.hex()}")
        return LeafEntry(name, ObjectId(r.hash()))

    projects = r.items(limits.max_projects_per_leaf, HASH_LEN + 2, entry)
    check_strictly_sorted([p.name.encode() for p in projects], "leaf projects")
    return Leaf(prefix, tuple(projects))


def _decode_node(r: Reader, limits: Limits, fmt: int) -> Node:
    depth = r.u8()
    if depth >= TREE_LEVELS:
        raise DecodeError(f"node depth {depth} out of range")
    prefix = r.raw(depth)

    def entry(r: Reader) -> NodeEntry:
        return NodeEntry(r.u8(), ObjectId(r.hash()))

    children = r.items(FANOUT, HASH_LEN + 1, entry)
    check_strictly_sorted([bytes([c.slot]) for c in children], "node slots")
    return Node(prefix, tuple(children))


_DECODERS: dict[Kind, Callable[[Reader, Limits, int], TreeObject]] = {
    Kind.BLOB: _decode_blob,
    Kind.FILE: _decode_file,
    Kind.PROJECT: _decode_project,
    Kind.LEAF: _decode_leaf,
    Kind.NODE: _decode_node,
}


# --------------------------------------------------------------------------- compression

_ZSTD_LEVEL = 3


def compress(encoded: bytes) -> bytes:
    """The stored / wire form of an object: one zstd frame with its content size."""
    return zstandard.ZstdCompressor(level=_ZSTD_LEVEL, write_content_size=True).compress(encoded)


def decompress(data: bytes, limit: int = LIMITS.max_object_size) -> bytes:
    """Inverse of :func:`compress`, refusing frames larger than ``limit`` before inflating."""
    try:
        size = zstandard.frame_content_size(data)
    except zstandard.ZstdError as exc:
        raise DecodeError(f"not a zstd frame: {exc}") from None
    if size < 0:
        raise DecodeError("zstd frame does not declare its content size")
    if size > limit:
        raise DecodeError(f"object of {size} bytes exceeds limit {limit}")
    try:
        out = zstandard.ZstdDecompressor().decompress(
            data, max_output_size=max(size, 1), allow_extra_data=False
        )
    except zstandard.ZstdError as exc:
        raise DecodeError(f"corrupt zstd frame: {exc}") from None
    if len(out) != size:
        raise DecodeError("zstd frame content size mismatch")
    return out


def open_object(data: bytes, expected: ObjectId, limits: Limits = LIMITS) -> bytes:
    """Decompress a stored/wire object and check it hashes to ``expected``.

    Returns the canonical bytes. Raises DecodeError or IntegrityError.
    """
    encoded = decompress(data, limits.max_object_size)
    actual = object_id(encoded)
    if actual != expected:
        raise IntegrityError(f"object {expected.hex()}", expected.hex(), actual.hex())
    return encoded
