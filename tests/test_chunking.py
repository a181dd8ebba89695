from __future__ import annotations

import itertools
import random

import blake3

from p2pkg.config import CHUNK_PARAMS
from p2pkg.core.chunking import chunk_refs, cut


def _data(n: int, seed: int = 7) -> bytes:
    return random.Random(seed).randbytes(n)


def test_chunks_cover_input_within_bounds() -> None:
    data = _data(5_000_000)
    spans = list(cut(data))
    assert spans[0][0] == 0
    assert sum(n for _, n in spans) == len(data)
    for (o1, n1), (o2, _) in itertools.pairwise(spans):
        assert o1 + n1 == o2
    assert all(n <= CHUNK_PARAMS.max_size for _, n in spans)
    assert all(n >= CHUNK_PARAMS.min_size for _, n in spans[:-1])


def test_small_file_is_one_chunk() -> None:
    data = _data(CHUNK_PARAMS.min_size - 1)
    refs = chunk_refs(data)
    assert len(refs) == 1
    assert refs[0].id == blake3.blake3(data).digest()
    assert chunk_refs(b"") == []


def test_content_defined_boundaries_survive_an_insertion() -> None:
    data = _data(4_000_000)
    before = {r.id for r in chunk_refs(data)}
    after = {r.id for r in chunk_refs(b"inserted bytes" + data)}
    shared = len(before & after) / len(before)
    assert shared > 0.9, shared


def test_format_vector_is_stable() -> None:
    """Chunk boundaries are part of the format (docs/protocol.md §2.3): pin them.

    The input is the first 2,000,000 bytes of the BLAKE3 XOF of
    ``b"p2pkg chunking test vector"``, reproducible in any language. If this
    fails, the chunker (library, parameters or gear table) changed and every
    existing namespace would lose deduplication.
    """
    data = blake3.blake3(b"p2pkg chunking test vector").digest(length=2_000_000)
    refs = chunk_refs(data)
    assert [r.length for r in refs] == PINNED_LENGTHS
    assert blake3.blake3(b"".join(r.id for r in refs)).hexdigest() == PINNED_IDS_DIGEST


# fmt: off
PINNED_LENGTHS = [
    72253, 123544, 67061, 81188, 83354, 69560, 83288, 182838, 150395, 67605, 99438, 63070,
    85131, 30801, 81077, 113711, 76786, 87829, 90039, 17918, 80274, 132812, 60028,
]
# fmt: on
PINNED_IDS_DIGEST = "d4375a8d3e2c183575d7cc9c12778c4476ac23fa828381bf090cb3f38b570ddc"
