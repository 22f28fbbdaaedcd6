"""checkpoint: a plan applied to a diffusers transformer checkpoint on disk, without torch.

`source` reads and validates the input (and hashes its shards), `layout` maps the plan onto its
names and byte ranges, `writer` writes the pruned checkpoint by copying those ranges. The names
below are the package's public API, importable from here.
"""

from __future__ import annotations

from hpspec.weights.checkpoint.layout import (
    buffer_names,
    converted_modules,
    dropped_part_modules,
    pruned_layout,
    removed_modules,
    renamed,
    shard_names,
)
from hpspec.weights.checkpoint.source import (
    Source,
    check_fingerprint,
    hash_cache_dir,
    open_source,
    refuse_foreign_layout,
    sha256_file,
    source_sha256,
)
from hpspec.weights.checkpoint.tensors import OutTensor, Segment, byte_range
from hpspec.weights.checkpoint.writer import Written, checked_layout, write_pruned

__all__ = [
    "OutTensor", "Segment", "Source", "Written", "buffer_names", "byte_range", "check_fingerprint", "checked_layout", "converted_modules",
    "dropped_part_modules", "hash_cache_dir", "open_source", "pruned_layout", "refuse_foreign_layout", "removed_modules",
    "renamed", "sha256_file", "shard_names", "source_sha256", "write_pruned",
]  # fmt: skip
