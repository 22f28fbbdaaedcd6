"""tensors: an output tensor as the byte ranges of source files that make it, and ranges of those.

Every rewrite hpspec does without torch (pruning, renaming, a layout's fused rows, the last-block
conversion) is a list of `OutTensor`s, each a concatenation of `Segment`s of source files.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Segment:
    """A byte range [begin, end) of a source file."""

    path: Path
    begin: int
    end: int


@dataclass(frozen=True)
class OutTensor:
    name: str
    dtype: str
    shape: tuple[int, ...]
    segments: tuple[Segment, ...]

    @property
    def nbytes(self) -> int:
        return sum(s.end - s.begin for s in self.segments)

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


def byte_range(segments: Sequence[Segment], begin: int, end: int) -> tuple[Segment, ...]:
    """Bytes [begin, end) of the concatenation of `segments`."""
    out, offset = [], 0
    for s in segments:
        size = s.end - s.begin
        lo, hi = max(begin, offset), min(end, offset + size)
        if lo < hi:
            out.append(Segment(s.path, s.begin + lo - offset, s.begin + hi - offset))
        offset += size
    return tuple(out)
