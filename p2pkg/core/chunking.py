"""Content-defined chunking and BLAKE3 ids (docs/protocol.md §2).

FastCDC-2020 (``pyfastcdc``, the reference gear table, normalization level 1)
with the parameters in :data:`p2pkg.config.CHUNK_PARAMS`. A chunk id is the
BLAKE3-256 of the chunk's raw bytes. Pure: bytes in, ``(id, length)`` out.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, NewType

import blake3

from p2pkg.config import CHUNK_PARAMS, ChunkParams

if TYPE_CHECKING:
    from pyfastcdc import FastCDC

ChunkId = NewType("ChunkId", bytes)


@dataclass(frozen=True, slots=True)
class ChunkRef:
    """One chunk of a file: its id and length (its offset is the sum before it)."""

    id: ChunkId
    length: int


def b3(data: bytes | memoryview) -> bytes:
    """BLAKE3-256 of ``data``."""
    return blake3.blake3(data).digest()


def make_chunker(params: ChunkParams = CHUNK_PARAMS) -> FastCDC:
    # Imported here: only publishing cuts; a fetch checks chunks by hash alone,
    # and start-up time counts for every small fetch.
    from pyfastcdc import FastCDC

    # pyfastcdc's avg_size is the "expected size after the minimum": its docs note
    # the output average is about avg_size + min_size; the format fixes the inputs.
    return FastCDC(
        params.avg_size,
        min_size=params.min_size,
        max_size=params.max_size,
        normalized_chunking=params.normalization,
    )


def cut(data: bytes | memoryview, params: ChunkParams = CHUNK_PARAMS) -> Iterator[tuple[int, int]]:
    """Yield ``(offset, length)`` of each chunk of ``data``; empty input yields nothing."""
    if not len(data):
        return
    for c in make_chunker(params).cut_buf(data):
        yield c.offset, c.length


def chunk_refs(data: bytes | memoryview, params: ChunkParams = CHUNK_PARAMS) -> list[ChunkRef]:
    """Cut ``data`` and hash every chunk."""
    view = memoryview(data)
    return [ChunkRef(ChunkId(b3(view[o : o + n])), n) for o, n in cut(view, params)]


def offsets(chunks: Iterable[ChunkRef]) -> list[int]:
    """The offset of each chunk in its file."""
    out, pos = [], 0
    for c in chunks:
        out.append(pos)
        pos += c.length
    return out
