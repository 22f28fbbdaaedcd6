"""conversion: what dropping blocks rewrites in a model beyond the blocks, read from the graph alone.

The last-block conversion ([last_block] in the family's data): dropping an SD3 stack's
context-pre-only last block makes the new last block context-pre-only; its dead text modules go
and its text modulation keeps some chunks of rows. Config index lists (SD3.5 Medium's
`dual_attention_layers`) are renumbered. Plans, quantize layouts and checkpoint rewrites all ask
here; the live-module surgery is in `hpspec.model.families.sd3`.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping

from hpspec.model.arch import Architecture, LastBlockRule
from hpspec.model.graph import Block, ModelGraph, Part


def converts(arch: Architecture, last_kind: str, new_last_kind: str) -> LastBlockRule | None:
    """The conversion rule when dropping a last block of `last_kind` converts the new last block."""
    rule = arch.last_block
    if rule is None or last_kind != rule.kind or new_last_kind == rule.kind:
        return None
    return rule


def conversion_cost(rule: LastBlockRule, block: Block, removed_parts: Collection[str | None]) -> tuple[list[str], int]:
    """Module paths and parameters the conversion removes from `block` (parts dropped are gone already).

    Modules that hold no weights in this block are not listed; the trimmed Linear counts only the
    rows it loses.
    """
    modules, params = [], 0
    for module in (*rule.removes, rule.trims):
        part = owner(block, module)
        if part is None or part.word in removed_parts:
            continue
        count = sum(t.numel for t in part.tensors if t.name.startswith(module + "."))
        if count == 0:
            continue
        modules.append(f"{block.module}.{module}")
        params += removed_amount(rule, module, count)
    return modules, params


def owner(block: Block, module: str) -> Part | None:
    """The part of `block` whose modules hold `module` (a path inside the block)."""
    return next((p for p in block.parts if any(module == m or module.startswith(m + ".") for m in p.modules)), None)


def removed_amount(rule: LastBlockRule, module: str, amount: int) -> int:
    """How much of `amount` (parameters, bytes) the conversion removes from `module` (inside a block)."""
    return amount - rule.kept_rows(amount) if module == rule.trims else amount


def removed_flops(rule: LastBlockRule, module: str, flops: int) -> int:
    """The FLOPs the conversion removes from `module`: all of them, or the trimmed rows' share."""
    return round(flops * rule.removed_share) if module == rule.trims else flops


def split_trimmed(arch: Architecture, modules: Iterable[str]) -> tuple[list[str], list[str]]:
    """Conversion module paths -> (removed entirely, trimmed to some rows)."""
    suffix = "." + arch.last_block.trims if arch.last_block is not None else None
    listed = list(modules)
    trimmed = [m for m in listed if suffix is not None and m.endswith(suffix)]
    return [m for m in listed if m not in trimmed], trimmed


def index_list_updates(graph: ModelGraph, index_maps: Mapping[str, Mapping[str, int]]) -> dict[str, list[int]]:
    """Config index lists (a kind's `index_list`) renumbered by the kept blocks, where they change."""
    updates: dict[str, list[int]] = {}
    for kind in graph.arch.kinds:
        if kind.index_list is None:
            continue
        listed = [b.index for b in graph.blocks if b.kind == kind.name]
        if kind.index_list in graph.config or listed:
            index_map = index_maps[kind.stack or graph.stacks[0].name]
            renumbered = [index_map[str(i)] for i in listed if str(i) in index_map]
            if renumbered != listed:
                updates[kind.index_list] = renumbered
    return updates
