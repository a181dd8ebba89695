"""Limits and format parameters, as frozen dataclasses.

Format parameters (chunking, tree fan-out) are part of the wire format:
changing them changes object ids and breaks deduplication, so they are
constants documented in docs/protocol.md, not settings. Limits bound what a
decoder will accept before it allocates anything.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB


@dataclass(frozen=True, slots=True)
class ChunkParams:
    """FastCDC-2020 parameters (docs/protocol.md §2). Part of the format."""

    min_size: int = 16 * KiB
    avg_size: int = 64 * KiB
    max_size: int = 256 * KiB
    normalization: Literal[0, 1, 2, 3] = 1


CHUNK_PARAMS = ChunkParams()


@dataclass(frozen=True, slots=True)
class Limits:
    """Upper bounds every decoder checks before allocating (docs/protocol.md §3.7)."""

    # Encoded (decompressed) object size; also bounds zstd decompression output.
    max_object_size: int = 16 * MiB
    # Largest archive a manifest may describe.
    max_file_size: int = 16 * GiB
    max_chunks_per_file: int = 262_144
    max_files_per_project: int = 100_000
    max_projects_per_leaf: int = 65_536
    max_filename_len: int = 255
    max_name_len: int = 200
    max_version_len: int = 128
    max_text_len: int = 4096
    max_core_metadata_size: int = 8 * MiB
    max_root_size: int = 64 * KiB
    max_keys: int = 16
    max_mirrors: int = 64
    max_url_len: int = 512


LIMITS = Limits()
