"""layout: a plan applied to a checkpoint's names and byte ranges, without torch.

Which tensors a plan removes, which it renames (blocks renumbered) and which the last-block
conversion rewrites; then, per output shard, the byte ranges of the source files that make each
output tensor (`pruned_layout`), and the output shards' file names.
"""

from __future__ import annotations

from pathlib import Path

from hpspec.core.errors import CheckpointError
from hpspec.core.paths import WEIGHTS_NAME
from hpspec.model.arch import LastBlockRule, architecture
from hpspec.model.conversion import split_trimmed
from hpspec.model.graph import ModelGraph
from hpspec.plan.plan import Plan
from hpspec.plan.quantize_layout import under  # a name at or below one of some module paths
from hpspec.weights.checkpoint.source import Source
from hpspec.weights.checkpoint.tensors import OutTensor, Segment, byte_range

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


def source_tensors(source: Source) -> list[list[OutTensor]]:
    """The source's tensors by diffusers name, per shard in file order: a single file in another
    layout comes with them (its fused rows already cut by the key map), a diffusers folder has
    one tensor per header entry."""
    if source.tensors:
        return [list(source.tensors)]
    return [
        [
            OutTensor(e.name, e.dtype, e.shape, (Segment(header.path, e.begin, e.end),))
            for e in sorted(header.tensors.values(), key=lambda e: e.begin)
        ]
        for header in source.headers
    ]


def pruned_layout(plan: Plan, source: Source) -> list[list[OutTensor]]:
    """Output tensors per output shard: each source shard's kept tensors, in file order."""
    removed, converted = removed_modules(plan), converted_modules(plan)
    rule = architecture(plan.target.family).last_block
    shards = []
    for tensors in source_tensors(source):
        kept = []
        for tensor in tensors:
            new = renamed(plan, tensor.name)
            if new is None or under(tensor.name, removed):
                continue
            if under(tensor.name, converted):
                assert rule is not None  # a conversion module is one of the family's [last_block]
                kept.append(_converted(tensor, new, source.directory, rule))
            else:
                kept.append(OutTensor(new, tensor.dtype, tensor.shape, tensor.segments))
        if kept:
            shards.append(kept)
    return shards


def _converted(tensor: OutTensor, name: str, where: Path, rule: LastBlockRule) -> OutTensor:
    """AdaLayerNormZero rows (shift, scale, gate, ...) -> AdaLayerNormContinuous rows (scale, shift).

    The chunks kept are [last_block] `keeps`; each is a contiguous row range (the tensor is
    row-major), so this is one byte range per kept chunk.
    """
    rows = tensor.shape[0] if tensor.shape else 0
    if rows == 0 or rows % rule.chunks:
        raise CheckpointError(
            f"{where}: {tensor.name!r} has shape {list(tensor.shape)}; a {rule.chunks}-chunk modulation was expected"
        )
    chunk = tensor.nbytes // rule.chunks
    segments = tuple(s for k in rule.keeps for s in byte_range(tensor.segments, k * chunk, (k + 1) * chunk))
    return OutTensor(name, tensor.dtype, (rule.kept_rows(rows), *tensor.shape[1:]), segments)


def buffer_names(graph: ModelGraph) -> set[str]:
    """Stored tensors that are buffers, not parameters (SD3's positional table)."""
    return {t.name for o in graph.outside for t in o.tensors if t.buffer}


def shard_names(count: int) -> list[str]:
    if count == 1:
        return [f"{WEIGHTS_NAME}.safetensors"]
    return [f"{WEIGHTS_NAME}-{i:05d}-of-{count:05d}.safetensors" for i in range(1, count + 1)]
