"""SGDistill: how much each trainable block or part of the pruned model may learn, from the
sensitivity table (METHOD §6). Torch-free: it works on plan, graph, table and parameter names.

- `weight=uniform`: no guidance, every trainable parameter learns at the plan's learning rate.
- `mode=binary` (the reference code): every row of the table whose ΔP is above the threshold
  freezes what it names (a part's modules, or a whole block); the rest learns at full rate. With
  no `threshold` in the spec, the threshold is the median ΔP of the rated trainable units.
- `mode=inverse` (the paper): each trainable block learns at a rate ∝ 1 / max(ΔP, ε), normalised
  to mean 1 over the trainable blocks. A block's ΔP is its row, or the sum of its parts' rows when
  the table has parts only (`SensitivityTable.block_delta`); ε is `EPSILON_FRACTION` of the largest
  block ΔP, so the fastest block learns at most 1 / EPSILON_FRACTION times the slowest, and a block
  whose removal helped (ΔP <= 0) is treated as barely sensitive rather than dividing by zero.
  Modules outside the blocks (`norm_out`, `proj_out`) keep scale 1.

A scale is a per-block learning-rate factor: Adam divides each parameter's step by its gradient's
running magnitude, so scaling gradients would be normalised away; scaling the learning rate is not.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from hpspec.core.errors import GuidanceError
from hpspec.method.sensitivity import Entry, SensitivityTable
from hpspec.model.graph import ModelGraph
from hpspec.plan.plan import Plan
from hpspec.plan.quantize_layout import under  # a name at or below one of some module paths

EPSILON_FRACTION = 0.05


@dataclass(frozen=True)
class Guidance:
    """Update scales by module path after pruning (0: frozen by SGDistill), and how they were found."""

    scales: dict[str, float]
    record: dict[str, Any]

    def scale_of(self, name: str) -> float:
        """A parameter's scale: that of the longest module path it lies under; 1 when none."""
        best, length = 1.0, -1
        for path, scale in self.scales.items():
            if (name == path or name.startswith(path + ".")) and len(path) > length:
                best, length = scale, len(path)
        return best


@dataclass(frozen=True)
class KeptBlock:
    stack: str
    old: int
    path: str  # after pruning


def kept_blocks(plan: Plan) -> list[KeptBlock]:
    """Every kept block of every stack, in model order, with its path after pruning."""
    return [
        KeptBlock(name, int(old), f"{stack.module}.{new}")
        for name, stack in plan.stacks.items()
        for old, new in sorted(stack.index_map.items(), key=lambda item: item[1])
    ]


def guidance(plan: Plan, graph: ModelGraph, table: SensitivityTable | None, trainable: Sequence[str]) -> Guidance:
    """The plan's SGDistill scales for a student whose trainable parameters are named `trainable`."""
    assert plan.distill is not None
    if plan.distill.weight == "uniform":
        return Guidance({}, {"weight": "uniform"})
    if table is None:
        raise GuidanceError(
            "distill weight=sensitivity needs a sensitivity table: `table=` in the spec, or --sensitivity"
        )
    if plan.distill.mode == "binary":
        return _binary(plan, graph, table, trainable)
    return _inverse(plan, table, trainable)


# --------------------------------------------------------------------------------------------
# binary


@dataclass(frozen=True)
class _Rated:
    entry: Entry
    paths: tuple[str, ...]  # after pruning: the block, or the part's modules
    label: str


def _binary(plan: Plan, graph: ModelGraph, table: SensitivityTable, trainable: Sequence[str]) -> Guidance:
    rated = [r for r in _rated_units(plan, graph, table) if any(under(n, r.paths) for n in trainable)]
    if not rated:
        raise GuidanceError("the sensitivity table rates none of the trainable blocks or parts; nothing to guide")
    threshold, said = _threshold(plan, rated)
    frozen_blocks = {r.paths[0] for r in rated if r.entry.part is None and r.entry.delta > threshold}
    scales: dict[str, float] = {}
    units = []
    for unit in rated:
        inside_frozen = any(under(p, frozen_blocks) for p in unit.paths)
        scale = 0.0 if unit.entry.delta > threshold or inside_frozen else 1.0
        scales.update({path: scale for path in unit.paths})
        units.append({"unit": unit.label, "paths": list(unit.paths), "delta": unit.entry.delta, "scale": scale})
    frozen = [u["unit"] for u in units if u["scale"] == 0.0]
    record = {"weight": "sensitivity", "mode": "binary", "threshold": threshold, "threshold_from": said,
              "units": units, "frozen": frozen}  # fmt: skip
    return Guidance(scales, record)


def _rated_units(plan: Plan, graph: ModelGraph, table: SensitivityTable) -> list[_Rated]:
    """The table's rows for kept blocks and parts, with their module paths after pruning."""
    kept = {(b.stack, b.old): b.path for b in kept_blocks(plan)}
    rated = []
    for entry in table.entries:
        path = kept.get((entry.stack, entry.block))
        stack = graph.stack(entry.stack)
        if path is None or stack is None:
            continue
        label = f"{stack.singular}[{entry.block}]"
        if entry.part is None:
            rated.append(_Rated(entry, (path,), label))
            continue
        part = stack.blocks[entry.block].part(entry.part)
        if part is not None:
            rated.append(_Rated(entry, tuple(f"{path}.{m}" for m in part.modules), f"{label}.{entry.part}"))
    return rated


def _threshold(plan: Plan, rated: Sequence[_Rated]) -> tuple[float, str]:
    assert plan.distill is not None
    if plan.distill.threshold is not None:
        return float(plan.distill.threshold), "spec"
    median = statistics.median(r.entry.delta for r in rated)
    return float(median), f"median ΔP of the {len(rated)} rated trainable units (the spec gives no threshold)"


# --------------------------------------------------------------------------------------------
# inverse


def _inverse(plan: Plan, table: SensitivityTable, trainable: Sequence[str]) -> Guidance:
    blocks = [b for b in kept_blocks(plan) if any(under(n, (b.path,)) for n in trainable)]
    if not blocks:
        raise GuidanceError("no kept block has trainable parameters; SGDistill has nothing to scale")
    deltas: list[tuple[KeptBlock, float, str]] = []
    for block in blocks:
        found = table.block_delta(block.stack, block.old)
        if found is None:
            raise GuidanceError(
                f"the sensitivity table has no row for {block.stack}[{block.old}] (trainable as {block.path}); "
                "mode=inverse needs every trainable block rated"
            )
        deltas.append((block, found[0], found[1]))
    largest = max(delta for _, delta, _ in deltas)
    epsilon = EPSILON_FRACTION * largest if largest > 0 else 1.0
    raw = [1.0 / max(delta, epsilon) for _, delta, _ in deltas]
    mean = sum(raw) / len(raw)
    scales = {block.path: value / mean for (block, _, _), value in zip(deltas, raw)}
    units = [
        {"block": f"{b.stack}[{b.old}]", "path": b.path, "delta": d, "delta_from": source, "scale": scales[b.path]}
        for b, d, source in deltas
    ]
    record = {"weight": "sensitivity", "mode": "inverse", "epsilon": epsilon,
              "epsilon_from": f"{EPSILON_FRACTION} x the largest trainable block ΔP" if largest > 0 else "no block has ΔP > 0",
              "delta_from": sorted({source for _, _, source in deltas}), "units": units}  # fmt: skip
    return Guidance(scales, record)


def groups(names: Iterable[str], guide: Guidance) -> dict[float, list[str]]:
    """Trainable parameter names by scale, in first-seen order; scale-0 names are left out."""
    grouped: dict[float, list[str]] = {}
    for name in names:
        scale = guide.scale_of(name)
        if scale > 0:
            grouped.setdefault(scale, []).append(name)
    return grouped


def frozen_by(names: Iterable[str], guide: Guidance) -> list[str]:
    return [n for n in names if guide.scale_of(n) == 0.0]


def report_scales(guide: Guidance) -> Mapping[str, float]:
    """The shape the report reads as `distill.scales`: module path after pruning -> scale."""
    return dict(sorted(guide.scales.items()))
