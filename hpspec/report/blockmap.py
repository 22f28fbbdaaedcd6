"""The block map: the fate of every block and part of the original model under a plan.

The parts of each block come from the target's model graph when it can be loaded here and its
fingerprint matches the plan; otherwise from the architecture family's data (every block then shows
every part its stack can have). Plain data for the templates; no HTML here.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from itertools import groupby
from typing import Any

from hpspec.core.errors import HpspecError
from hpspec.method.sensitivity import SensitivityTable
from hpspec.model.arch import architecture, trimmed_modules
from hpspec.model.graph import ModelGraph
from hpspec.model.targets import DEMO, resolve_target
from hpspec.plan.plan import Op, Plan, StackPlan
from hpspec.plan.summary import human_count
from hpspec.report.svg import HeatCell, Heatmap

# The model's structure: which parts each block has (from the graph when it can be found)


@dataclass(frozen=True)
class StackLayout:
    name: str
    singular: str
    module: str
    words: tuple[str, ...]  # every part word of the stack, in registration order
    blocks: tuple[Mapping[str, tuple[str, ...]], ...]  # per original block: word -> modules in it
    params: tuple[Mapping[str, int], ...]  # per block: word -> parameters (empty without a graph)


def stack_layouts(plan: Plan) -> tuple[list[StackLayout], str]:
    """Each stack's blocks and parts, in the architecture's order, and where that came from."""
    graph = _graph(plan)
    if graph is not None:
        layouts = [_graph_layout(graph, name) for name in _stack_order(plan)]
        return layouts, f"parts from the model graph of {plan.target.name} (fingerprint matches the plan)"
    layouts = [_family_layout(plan, name) for name in _stack_order(plan)]
    return layouts, (
        f"the graph of {plan.target.name} ({plan.target.source}) could not be loaded here: every block is shown "
        f"with every part its stack can have in the {plan.target.family} family"
    )


def _graph(plan: Plan) -> ModelGraph | None:
    kind, _, where = plan.target.source.partition(":")
    try:
        if kind == "builtin" or plan.target.name == DEMO:
            graph = resolve_target(plan.target.name)
        elif kind in ("config", "safetensors") and where:
            graph = resolve_target(where, quoted=True)
        else:
            return None
    except (HpspecError, OSError):
        return None
    return graph if graph.fingerprint == plan.target.fingerprint else None


def _stack_order(plan: Plan) -> list[str]:
    try:
        known = [s.name for s in architecture(plan.target.family).stacks]
    except HpspecError:
        known = []
    return [n for n in known if n in plan.stacks] + sorted(set(plan.stacks) - set(known))


def _graph_layout(graph: ModelGraph, name: str) -> StackLayout:
    stack = graph.stack(name)
    assert stack is not None
    words = tuple(dict.fromkeys(w for b in stack.blocks for w in b.words))
    return StackLayout(
        name,
        stack.singular,
        stack.module,
        words,
        tuple({p.word: p.modules for p in b.parts} for b in stack.blocks),
        tuple({p.word: p.params for p in b.parts} for b in stack.blocks),
    )


def _family_layout(plan: Plan, name: str) -> StackLayout:
    stack = plan.stacks[name]
    parts: dict[str, tuple[str, ...]] = {}
    singular = name.removesuffix("s")
    try:
        arch = architecture(plan.target.family)
        singular = arch.stack(name).singular
        kinds = sorted((k for k in arch.kinds if k.stack in (None, name)), key=lambda k: -len(k.parts))
        for kind in kinds:
            rules = arch.part_rules(kind.name)
            parts.update({w: rules[w].modules for w in kind.parts if w not in parts})
    except (HpspecError, StopIteration):
        pass
    for op in plan.ops:  # parts the plan names but the family data does not
        if op.stack == name and op.kind == "drop_part" and op.part and op.part not in parts:
            parts[op.part] = tuple(m.removeprefix(f"{stack.module}.{op.block}.") for m in op.modules)
    return StackLayout(
        name,
        singular,
        stack.module,
        tuple(parts),
        tuple(dict(parts) for _ in range(stack.before)),
        tuple({} for _ in range(stack.before)),
    )


# --------------------------------------------------------------------------------------------
# The fate of every block and part


@dataclass(frozen=True)
class Fates:
    """What the plan does to each original block and part, gathered once from the plan."""

    dropped_blocks: Mapping[tuple[str, int], str]  # -> reason
    dropped_parts: Mapping[tuple[str, int, str], str]
    conversions: Mapping[tuple[str, int], Op]
    removed: Mapping[tuple[str, int], int]  # parameters removed per block
    frozen: frozenset[str]
    trainable: frozenset[str]
    training: bool  # does the plan train at all (freeze rule or distillation)?
    excepted: tuple[str, ...] | None  # full-precision module paths; None: no quantization
    scales: Mapping[str, float]  # SGDistill update scale by module path after pruning
    new: frozenset[tuple[str, int, str | None]]  # newly dropped against the older plan
    restored: frozenset[tuple[str, int, str | None]]

    @staticmethod
    def of(plan: Plan, diff: Mapping[str, Any] | None, scales: Mapping[str, Any] | None = None) -> Fates:
        removed: dict[tuple[str, int], int] = {}
        for op in plan.ops:
            removed[(op.stack, op.block)] = removed.get((op.stack, op.block), 0) + op.params
        return Fates(
            dropped_blocks={(o.stack, o.block): o.reason for o in plan.ops if o.kind == "drop_block"},
            dropped_parts={(o.stack, o.block, o.part or ""): o.reason for o in plan.ops if o.kind == "drop_part"},
            conversions={(o.stack, o.block): o for o in plan.ops if o.kind == "convert_last_block"},
            removed=removed,
            frozen=frozenset(plan.freeze.frozen),
            trainable=frozenset(plan.freeze.trainable),
            training=plan.distill is not None or plan.freeze.rule != "none",
            excepted=tuple(plan.quantize.except_modules) if plan.quantize is not None else None,
            scales=update_scales(scales if scales is not None else getattr(plan.distill, "scales", None)),
            new=frozenset(diff["new"]) if diff else frozenset(),
            restored=frozenset(diff["restored"]) if diff else frozenset(),
        )


def update_scales(scales: Any) -> dict[str, float]:
    """SGDistill's per-module update scales (a distill stage's scales.json, or `distill.scales`).

    Read defensively: a mapping from module path after pruning (a block, or a part's module) to a
    number; anything else is ignored.
    """
    if not isinstance(scales, Mapping):
        return {}
    return {str(k): float(v) for k, v in scales.items() if isinstance(v, (int, float)) and math.isfinite(v)}


@dataclass(frozen=True)
class Cell:
    word: str
    css: str
    title: str
    text: str


@dataclass(frozen=True)
class BlockColumn:
    stack: str
    index: int
    new_index: str
    css: str
    title: str
    cells: list[Cell]


@dataclass(frozen=True)
class StackMap:
    name: str
    title: str
    labels: list[str]
    columns: int
    cell: int  # px width of a block's column (at most; narrow pages shrink it)
    blocks: list[BlockColumn]
    outline: list[str]  # the hierarchy in words: "frozen: 0–13", ...


STATE_LABELS = {
    "frozen": "frozen (PWP)",
    "trainable": "trainable",
    "kept": "kept",
    "converted": "removed by the last-block conversion",
    "part-dropped": "part dropped",
    "dropped": "block dropped",
    "absent": "the block has no such part",
}
MODIFIER_LABELS = {
    "trimmed": "trimmed: the new last block's dead context outputs go",
    "q": "quantized",
    "fp": "kept in full precision",
    "new": "newly dropped against the older plan",
    "restored": "restored against the older plan",
}


def part_label(word: str) -> str:
    return word.replace("context_", "ctx ").replace("_", " ")


def column_pitch(layouts: list[StackLayout]) -> int:
    """px from one block's column to the next: 28 for SD3.5 Large's 38 blocks, wider for fewer
    (44 at most), the same for every stack of a model so that depths compare."""
    longest = max((len(layout.blocks) for layout in layouts), default=1)
    return max(28, min(44, 1000 // max(longest, 1)))


def block_map(plan: Plan, layouts: list[StackLayout], fates: Fates, note: str) -> dict[str, Any]:
    pitch = column_pitch(layouts)
    stacks = [_stack_map(plan.stacks[layout.name], layout, fates, pitch) for layout in layouts]
    used = sorted({c for s in stacks for b in s.blocks for cell in b.cells for c in cell.css.split()[1:]})
    legend = [{"css": f"cell {k}", "label": v} for k, v in STATE_LABELS.items() if k in used and k != "absent"]
    legend += [{"css": f"cell kept {k}", "label": v} for k, v in MODIFIER_LABELS.items() if k in used]
    if "absent" in used:
        legend.append({"css": "cell absent", "label": STATE_LABELS["absent"]})
    return {"stacks": stacks, "legend": legend, "note": note, "scales": bool(fates.scales)}


def _stack_map(stack: StackPlan, layout: StackLayout, fates: Fates, pitch: int) -> StackMap:
    blocks = [_block_column(stack, layout, fates, i) for i in range(stack.before)]
    return StackMap(
        name=layout.name,
        title=f"{layout.name}: {stack.before} → {stack.after} blocks",
        labels=[part_label(w) for w in layout.words],
        columns=stack.before,
        cell=pitch - 2,
        blocks=blocks,
        outline=_outline(blocks, layout),
    )


def _block_column(stack: StackPlan, layout: StackLayout, fates: Fates, i: int) -> BlockColumn:
    name, selector = layout.name, f"{layout.singular}[{i}]"
    cells = [_cell(stack, layout, fates, i, word) for word in layout.words]
    new = stack.index_map.get(str(i))
    facts = [
        f"{selector} → {new}"
        if new is not None
        else f"{selector}: dropped ({reason_text(fates.dropped_blocks[(name, i)])})"
    ]
    parts = [w for w in layout.words if (name, i, w) in fates.dropped_parts]
    if parts:
        facts.append(f"dropped: {', '.join(parts)}")
    if (name, i) in fates.conversions:
        facts.append("converted to the context-pre-only last block")
    if fates.removed.get((name, i)):
        facts.append(f"{human_count(fates.removed[(name, i)])} parameters removed")
    css = "block" + (" dropped" if new is None else "") + (" converted" if (name, i) in fates.conversions else "")
    return BlockColumn(name, i, "–" if new is None else str(new), css, "; ".join(facts), cells)


def _cell(stack: StackPlan, layout: StackLayout, fates: Fates, i: int, word: str) -> Cell:
    modules = layout.blocks[i].get(word)
    where = f"{layout.singular}[{i}].{word}"
    if modules is None:
        return Cell(word, "cell absent", f"{where}: the block has no {word}", "")
    key = (layout.name, i, word)
    params = layout.params[i].get(word)
    size = f" ({human_count(params)} parameters)" if params else ""
    diff = " new" if key in fates.new or (layout.name, i, None) in fates.new else ""
    diff += " restored" if key in fates.restored or (layout.name, i, None) in fates.restored else ""
    if (layout.name, i) in fates.dropped_blocks:
        return Cell(word, f"cell dropped{diff}", f"{where}: dropped with its block{size}", "")
    if key in fates.dropped_parts:
        return Cell(
            word, f"cell part-dropped{diff}", f"{where}: dropped ({reason_text(fates.dropped_parts[key])}){size}", ""
        )
    block_path = f"{stack.module}.{stack.index_map[str(i)]}"
    paths = [f"{block_path}.{m}" for m in modules]
    conversion = _conversion(fates.conversions.get((layout.name, i)), f"{stack.module}.{i}", modules)
    if conversion == "gone":
        return Cell(word, f"cell converted{diff}", f"{where}: removed by the last-block conversion{size}", "")
    state = _training_state(fates, block_path, paths)
    notes = [f"{where} → {paths[0] if len(paths) == 1 else block_path}", STATE_LABELS[state]]
    css = f"cell {state}" + (" trimmed" if conversion == "trimmed" else "") + diff
    scale = next((fates.scales[p] for p in [*paths, block_path] if p in fates.scales), None)
    if scale is not None:
        notes.append(f"update scale {scale:g}")
    if fates.excepted is not None:
        full = any(_covers(e, p) for e in fates.excepted for p in paths)
        css += " fp" if full else " q"
        notes.append("full precision" if full else "quantized")
    return Cell(word, css, "; ".join(notes) + size, f"{scale:.2g}" if scale is not None else "")


def _covers(module: str, path: str) -> bool:
    """Does a module path cover `path` (a part's module), or lie inside it?"""
    return path == module or path.startswith(module + ".") or module.startswith(path + ".")


def _conversion(op: Op | None, block: str, modules: tuple[str, ...]) -> str | None:
    """ "gone" when the last-block conversion removes all of a part, "trimmed" when some of it."""
    if op is None:
        return None
    rests = {m.removeprefix(block + ".") for m in op.modules}
    # The conversion trims the context modulation's Linear (the part stays, trimmed); every other
    # module it names goes entirely.
    if all(m in rests - trimmed_modules() for m in modules):
        return "gone"
    hit = any(r == m or r.startswith(m + ".") for r in rests for m in modules)
    return "trimmed" if hit else None


def _training_state(fates: Fates, block_path: str, paths: list[str]) -> str:
    if not fates.training:
        return "kept"
    for state, chosen in (("frozen", fates.frozen), ("trainable", fates.trainable)):
        if block_path in chosen or all(p in chosen for p in paths):
            return state
    return "kept"


def reason_text(reason: str) -> str:
    if reason.startswith("with_"):
        return f"goes with {reason[5:]}"
    return {"spec": "in the spec", "promoted": "every part dropped: promoted to the whole block",
            "last_block_dropped": "the last block was dropped"}.get(reason, reason)  # fmt: skip


def _outline(blocks: list[BlockColumn], layout: StackLayout) -> list[str]:
    """The hierarchy in words: which blocks are frozen, trainable, cut, dropped."""
    groups: dict[str, list[int]] = {}
    for block in blocks:
        states = {c.css.split()[1] for c in block.cells} - {"absent"}
        if "dropped" in states:
            groups.setdefault("dropped", []).append(block.index)
            continue
        if states & {"part-dropped", "converted"}:
            groups.setdefault("parts dropped", []).append(block.index)
        for state in ("frozen", "trainable"):
            if state in states:
                groups.setdefault(state, []).append(block.index)
    order = ("frozen", "trainable", "parts dropped", "dropped")
    return [f"{name} {layout.name}[{spans(groups[name])}]" for name in order if name in groups]


def spans(indices: Iterable[int]) -> str:
    """`0–13, 25–28, 31` (consecutive runs joined)."""
    values = sorted(set(indices))
    runs = [[v for _, v in run] for _, run in groupby(enumerate(values), key=lambda p: p[1] - p[0])]
    return ", ".join(f"{r[0]}" if len(r) == 1 else f"{r[0]}–{r[-1]}" for r in runs)


def heatmap(table: SensitivityTable, layout: StackLayout, fates: Fates, pitch: int) -> Heatmap:
    entries = {(e.block, e.part): e for e in table.entries if e.stack == layout.name}
    words: list[str | None] = [None] if table.has_block_rows else []
    words += [w for w in layout.words if any(p == w for _, p in entries)]
    words += sorted({p for _, p in entries if p is not None and p not in words})
    count = len(layout.blocks)
    rows = []
    for word in words:
        row = []
        for i in range(count):
            entry = entries.get((i, word))
            dropped = (layout.name, i) in fates.dropped_blocks or (layout.name, i, word or "") in fates.dropped_parts
            where = f"{layout.singular}[{i}]" + (f".{word}" if word else " (whole block)")
            title = f"{where}: score {entry.score:.4g}, ΔP {entry.delta:+.4g}" if entry else f"{where}: no entry"
            row.append(
                HeatCell(entry.delta if entry else None, title + (" · dropped by the plan" if dropped else ""), dropped)
            )
        rows.append(row)
    block = [table.block_delta(layout.name, i) for i in range(count)]
    return Heatmap(
        stack=layout.name,
        row_labels=["whole block" if w is None else part_label(w) for w in words],
        cells=rows,
        block_values=[b[0] if b else None for b in block],
        block_titles=[f"{layout.singular}[{i}]: ΔP {b[0]:+.4g} ({b[1]})" if b else "" for i, b in enumerate(block)],
        dropped_blocks=[(layout.name, i) in fates.dropped_blocks for i in range(count)],
        pitch=pitch,
    )
