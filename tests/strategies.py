"""Hypothesis strategies for valid p2pkg objects."""

from __future__ import annotations

from hypothesis import strategies as st
from packaging.version import Version

from p2pkg.config import CHUNK_PARAMS
from p2pkg.core.chunking import ChunkId, ChunkRef
from p2pkg.core.objects import (
    PROJECT_STATUSES,
    TREE_LEVELS,
    Blob,
    CoreMetadata,
    FileEntry,
    FileManifest,
    Leaf,
    LeafEntry,
    Node,
    NodeEntry,
    ObjectId,
    Project,
    Provenance,
    Tombstone,
    name_hash,
)
from p2pkg.core.root import Root

hashes = st.binary(min_size=32, max_size=32)
oids = hashes.map(ObjectId)
names = st.from_regex(r"\A[a-z0-9](?:[a-z0-9]|-(?=[a-z0-9])){0,30}\Z", fullmatch=True)
filenames = st.from_regex(r"\A[A-Za-z0-9_][A-Za-z0-9_.+-]{0,60}\Z", fullmatch=True)
texts = st.text(max_size=40)


@st.composite
def versions(draw: st.DrawFn) -> str:
    """PEP 440 versions in normalized form, as §3.3 requires of a manifest."""
    small = st.integers(0, 999)
    text = ".".join(str(n) for n in draw(st.lists(small, min_size=1, max_size=4)))
    if draw(st.booleans()):
        text = f"{draw(st.integers(1, 9))}!{text}"
    if draw(st.booleans()):
        text += draw(st.sampled_from(["a", "b", "rc"])) + str(draw(small))
    if draw(st.booleans()):
        text += f".post{draw(small)}"
    if draw(st.booleans()):
        text += f".dev{draw(small)}"
    if draw(st.booleans()):
        local = draw(st.lists(st.from_regex(r"\A[a-z0-9]{1,6}\Z"), min_size=1, max_size=3))
        text += "+" + ".".join(local)
    # Version() spells it the one normalized way (e.g. local "01" is "1").
    return str(Version(text))


# Chunk lengths a manifest may carry (§3.3): FastCDC never cuts above max_size.
chunk_lengths = st.integers(1, CHUNK_PARAMS.max_size)


@st.composite
def manifests(draw: st.DrawFn) -> FileManifest:
    lengths = draw(st.lists(chunk_lengths, max_size=20))
    chunks = tuple(ChunkRef(ChunkId(draw(hashes)), n) for n in lengths)
    core = None
    if draw(st.booleans()):
        core = CoreMetadata(draw(hashes), draw(oids), draw(st.integers(0, 1 << 20)))
    return FileManifest(
        filename=draw(filenames),
        version=draw(versions()),
        size=sum(lengths),
        sha256=draw(hashes),
        blake3=draw(hashes),
        requires_python=draw(texts),
        yanked=draw(st.none() | texts),
        upload_time=draw(st.integers(0, 1 << 40)),
        core_metadata=core,
        chunks=chunks,
        provenance=draw(st.none() | st.builds(Provenance, oids, st.integers(0, 1 << 20))),
    )


@st.composite
def projects(draw: st.DrawFn) -> Project:
    files = draw(st.dictionaries(filenames, oids, max_size=10))
    entries = tuple(FileEntry(f, m) for f, m in sorted(files.items(), key=lambda x: x[0].encode()))
    if not draw(st.booleans()):
        return Project(draw(names), entries)
    gone = draw(st.dictionaries(filenames, st.integers(0, 1 << 40), max_size=4))
    tombstones = tuple(
        Tombstone(f, t, draw(texts))
        for f, t in sorted(gone.items(), key=lambda x: x[0].encode())
        if f not in files
    )
    return Project(
        draw(names),
        entries,
        draw(st.sampled_from(PROJECT_STATUSES)),
        draw(st.none() | texts),
        tombstones,
    )


@st.composite
def leaves(draw: st.DrawFn) -> Leaf:
    prefix = draw(st.binary(min_size=TREE_LEVELS, max_size=TREE_LEVELS))
    # Names must hash into the leaf: keep the drawn ones that do (few), which
    # is fine: most leaves are tiny.
    pool = draw(st.lists(names, max_size=30, unique=True))
    chosen = sorted({n for n in pool if name_hash(n)[:TREE_LEVELS] == prefix})
    return Leaf(prefix, tuple(LeafEntry(n, draw(oids)) for n in chosen))


@st.composite
def nodes(draw: st.DrawFn) -> Node:
    depth = draw(st.integers(0, TREE_LEVELS - 1))
    prefix = draw(st.binary(min_size=depth, max_size=depth))
    slots = draw(st.lists(st.integers(0, 255), unique=True, max_size=20))
    return Node(prefix, tuple(NodeEntry(s, draw(oids)) for s in sorted(slots)))


blobs = st.binary(max_size=500).map(Blob)
any_object = st.one_of(blobs, manifests(), projects(), leaves(), nodes())


@st.composite
def roots(draw: st.DrawFn) -> Root:
    keys = draw(st.lists(hashes, min_size=1, max_size=5, unique=True))
    created = draw(st.integers(0, 1 << 40))
    return Root(
        namespace=draw(st.from_regex(r"\A[a-z0-9](?:[a-z0-9.-]{0,20}[a-z0-9])?\Z", fullmatch=True)),
        version=draw(st.integers(1, 1 << 62)),
        created=created,
        expires=created + draw(st.integers(1, 1 << 30)),
        threshold=draw(st.integers(1, len(keys))),
        keys=tuple(sorted(keys)),
        tree=draw(oids),
        upstream_serial=draw(st.integers(0, 1 << 40)),
        mirrors=tuple(draw(st.lists(st.text(max_size=30), max_size=3))),
    )
