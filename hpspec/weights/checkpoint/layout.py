"""layout: a plan applied to a checkpoint's names and byte ranges, without torch.

Which tensors a plan removes, which it renames (blocks renumbered) and which the last-block
conversion rewrites; then, per output shard, the byte ranges of the source files that make each
output tensor (`pruned_layout`), and the output shards' file names.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from hpspec.core.errors import CheckpointError
from hpspec.core.paths import WEIGHTS_NAME
from hpspec.model.arch import LastBlockRule, architecture
from hpspec.model.conversion import split_trimmed
from hpspec.model.graph import ModelGraph
from hpspec.model.safetensors_header import TensorEntry
from hpspec.plan.plan import Plan
from hpspec.plan.quantize_layout import under  # a name at or below one of some module paths
from hpspec.weights.checkpoint.source import Source

# --------------------------------------------------------------------------------------------
# Plan -> names: which tensors go, which are renamed, which are converted


def renamed(plan: Plan, name: str) -> str | None:
    """A tensor or module name after pruning: its block renumbered; None if its block is dropped."""
    for stack in plan.stacks.values():
        prefix = stack.module + "."
        if name.startswith(prefix):
            index, dot, rest = name[len(prefix) :].partition(".")
            if not index.isdigit():
                return name
            new = stack.index_map.get(index)
            return None if new is None else f"{stack.module}.{new}{dot}{rest}"
    return name


def dropped_part_modules(plan: Plan) -> list[str]:
    """Module paths (original names) the plan's part drops remove."""
    return [m for op in plan.ops if op.kind == "drop_part" for m in op.modules]


def removed_modules(plan: Plan) -> list[str]:
    """Module paths (original names) whose tensors a plan removes inside kept blocks."""
    return dropped_part_modules(plan) + split_trimmed(architecture(plan.target.family), _conversion_modules(plan))[0]


def converted_modules(plan: Plan) -> list[str]:
    """The modules the last-block conversion rewrites rather than removes."""
    return split_trimmed(architecture(plan.target.family), _conversion_modules(plan))[1]


def _conversion_modules(plan: Plan) -> list[str]:
    return [m for op in plan.ops if op.kind == "convert_last_block" for m in op.modules]


# --------------------------------------------------------------------------------------------
# The output layout: which byte ranges make each output tensor


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


def pruned_layout(plan: Plan, source: Source) -> list[list[OutTensor]]:
    """Output tensors per output shard: each source shard's kept tensors, in file order."""
    removed, converted = removed_modules(plan), converted_modules(plan)
    rule = architecture(plan.target.family).last_block
    shards = []
    for header in source.headers:
        kept = []
        for entry in sorted(header.tensors.values(), key=lambda e: e.begin):
            new = renamed(plan, entry.name)
            if new is None or under(entry.name, removed):
                continue
            if under(entry.name, converted):
                assert rule is not None  # a conversion module is one of the family's [last_block]
                kept.append(_converted(entry, new, header.path, rule))
            else:
                kept.append(OutTensor(new, entry.dtype, entry.shape, (Segment(header.path, entry.begin, entry.end),)))
        if kept:
            shards.append(kept)
    return shards


def _converted(entry: TensorEntry, name: str, path: Path, rule: LastBlockRule) -> OutTensor:
    """AdaLayerNormZero rows (shift, scale, gate, ...) -> AdaLayerNormContinuous rows (scale, shift).

    The chunks kept are [last_block] `keeps`; each is a contiguous row range (the tensor is
    row-major), so this is one byte range per kept chunk.
    """
    rows = entry.shape[0] if entry.shape else 0
    if rows == 0 or rows % rule.chunks:
        raise CheckpointError(
            f"{path}: {entry.name!r} has shape {list(entry.shape)}; a {rule.chunks}-chunk modulation was expected"
        )
    chunk = (entry.end - entry.begin) // rule.chunks
    segments = tuple(Segment(path, entry.begin + k * chunk, entry.begin + (k + 1) * chunk) for k in rule.keeps)
    return OutTensor(name, entry.dtype, (rule.kept_rows(rows), *entry.shape[1:]), segments)


def buffer_names(graph: ModelGraph) -> set[str]:
    """Stored tensors that are buffers, not parameters (SD3's positional table)."""
    return {t.name for o in graph.outside for t in o.tensors if t.buffer}


def shard_names(count: int) -> list[str]:
    if count == 1:
        return [f"{WEIGHTS_NAME}.safetensors"]
    return [f"{WEIGHTS_NAME}-{i:05d}-of-{count:05d}.safetensors" for i in range(1, count + 1)]
