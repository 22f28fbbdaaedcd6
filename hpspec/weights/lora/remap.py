"""remap: a plan applied to a LoRA adapter's modules, as row ranges of their up weights.

Every module is first seen in diffusers' names of the full model: a diffusers module as it is, an
original-layout module (a fused qkv) as row slices of its up weight, one per diffusers module. Then
the plan, exactly as the checkpoint rewrite applies it (`weights.checkpoint.layout`): a module in a
dropped block or a dropped part goes; a kept one is renumbered; the converted last block's text
modulation keeps the chunks of rows the conversion keeps. The down weight and alpha never change.
What is left is a `RowMap` per module of the pruned model, which `write` turns into output tensors
in diffusers' names or back in the original layout of the pruned model.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from hpspec.core.errors import LoraError
from hpspec.model.arch import architecture
from hpspec.plan.plan import Plan
from hpspec.plan.quantize_layout import under
from hpspec.weights.checkpoint.layout import converted_modules, removed_modules, renamed
from hpspec.weights.lora.adapter import DIFFUSERS, Module, Shapes


@dataclass(frozen=True)
class Rows:
    """Rows [begin, end) of the pruned module come from rows [source, source + end - begin) of `module.up`."""

    begin: int
    end: int
    module: Module
    source: int


@dataclass(frozen=True)
class Fate:
    """What the plan did to one diffusers piece of an adapter module (for the coverage)."""

    module: Module
    full: str  # the diffusers module in the full model
    rows: tuple[int, int]  # its rows in module.up
    kept: tuple[tuple[int, int], ...]  # the rows of module.up that survive
    why: str  # "kept", "converted", "block dropped", "part dropped"


RowMap = dict[str, list[Rows]]  # pruned diffusers module -> where its up rows come from, in order


def remap(plan: Plan, shapes: Shapes, modules: Sequence[Module]) -> tuple[RowMap, list[Fate]]:
    """The pruned model's LoRA rows, and the fate of every piece."""
    removed, converted = removed_modules(plan), converted_modules(plan)
    rule = architecture(plan.target.family).last_block
    rows: RowMap = {}
    fates: list[Fate] = []
    for module in modules:
        for full, begin, end, offset in _pieces(module, shapes):
            new = renamed(plan, full)
            if new is None or under(full, removed):
                why = "block dropped" if new is None else "part dropped"
                fates.append(Fate(module, full, (offset, offset + end - begin), (), why))
                continue
            if under(full, converted) and rule is not None:
                size = shapes.diffusers[full][0]
                if (begin, end) != (0, size) or size % rule.chunks:
                    raise LoraError(f"{module.stem!r}: cannot convert a part of the modulation {full!r}")
                chunk = size // rule.chunks
                taken = [(offset + k * chunk, offset + (k + 1) * chunk) for k in rule.keeps]
                target = rows.setdefault(new, [])
                for i, (lo, _hi) in enumerate(taken):
                    target.append(Rows(i * chunk, (i + 1) * chunk, module, lo))
                fates.append(Fate(module, full, (offset, offset + size), tuple(taken), "converted"))
                continue
            rows.setdefault(new, []).append(Rows(begin, end, module, offset))
            fates.append(Fate(module, full, (offset, offset + end - begin), ((offset, offset + end - begin),), "kept"))
    for entries in rows.values():
        entries.sort(key=lambda r: r.begin)
    return rows, fates


def _pieces(module: Module, shapes: Shapes) -> list[tuple[str, int, int, int]]:
    """(diffusers module, its rows begin, end, the first row in module.up) for each piece of `module`."""
    if module.naming.kind == DIFFUSERS:
        return [(module.name, 0, shapes.diffusers[module.name][0], 0)]
    out, offset = [], 0
    for piece in shapes.pieces[module.name]:
        size = shapes.diffusers[piece.name][0]
        begin, end = (0, size) if piece.begin is None or piece.end is None else (piece.begin, piece.end)
        out.append((piece.name, begin, end, offset))
        offset += end - begin
    return out


def select(entries: Sequence[Rows], begin: int, end: int) -> list[Rows] | None:
    """The entries (cut) that give rows [begin, end) of a pruned module; None unless all are covered."""
    out, cursor = [], begin
    for r in entries:
        lo, hi = max(r.begin, cursor), min(r.end, end)
        if lo >= hi:
            continue
        if lo != cursor:
            return None
        out.append(Rows(lo, hi, r.module, r.source + lo - r.begin))
        cursor = hi
    return out if cursor == end else None


def one_module(name: str, entries: Sequence[Rows]) -> Module:
    """The one adapter module every entry comes from (a module's down weight is shared by its rows)."""
    first = entries[0].module
    if any(r.module.stem != first.stem for r in entries):
        stems = sorted({r.module.stem for r in entries})
        raise LoraError(f"{name!r} would combine the rows of several adapter modules ({', '.join(stems)})")
    return first


def index_of(plan: Plan, module: str) -> Mapping[str, str]:
    """The stack and block number of a full-model module path, or {} outside the blocks."""
    for stack in plan.stacks.values():
        prefix = stack.module + "."
        if module.startswith(prefix):
            number = module[len(prefix) :].partition(".")[0]
            if number.isdigit():
                return {"stack": stack.module, "block": number}
    return {}
