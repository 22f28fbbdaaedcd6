"""freeze: the freeze set of a plan (`preserve`, PWP), named by module paths after pruning.

Units of training in registration order (outside modules, then one part of one block at a time);
`preserve auto` freezes every unit before the first one the spec removes (PWP), selectors and
quoted paths freeze theirs; a whole block's path stands for it when every kept part is chosen.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from hpspec.model.graph import ModelGraph
from hpspec.plan.check import Item, PreserveSetting
from hpspec.plan.plan import FreezePlan, Op, StackPlan

Removed = Mapping[tuple[str, int, str], tuple[int, int]]  # (stack, block, part word) -> (parameters, bytes) removed


@dataclass(frozen=True)
class _Unit:
    """A unit of training in registration order: an outside module, or one part of one block."""

    item: Item | None
    params: int  # after pruning
    dropped: bool  # removed by the spec (the last-block conversion does not count, as in PWP)
    block_path: str = ""  # after pruning
    module_paths: tuple[str, ...] = field(default=())  # after pruning


def _units(graph: ModelGraph, ops: list[Op], stacks: Mapping[str, StackPlan], removed: Removed) -> list[_Unit]:
    spec_drops = {(op.stack, op.block, op.part) for op in ops if op.kind in ("drop_block", "drop_part")}
    order = {st.name: i for i, st in enumerate(graph.stacks)}
    before = [_Unit(None, o.params, False, "", (o.module,)) for o in graph.outside if o.position == "before"]
    after = [_Unit(None, o.params, False, "", (o.module,)) for o in graph.outside if o.position == "after"]
    units: list[_Unit] = list(before)
    for stack in graph.stacks:
        for block in stack.blocks:
            new = stacks[stack.name].index_map.get(str(block.index))
            block_path = f"{stack.module}.{new}" if new is not None else ""
            for part in block.parts:
                dropped = (stack.name, block.index, None) in spec_drops or (
                    stack.name,
                    block.index,
                    part.word,
                ) in spec_drops
                params = part.params - removed.get((stack.name, block.index, part.word), (0, 0))[0]
                paths = tuple(f"{block_path}.{m}" for m in part.modules) if params else ()
                units.append(
                    _Unit(
                        Item(order[stack.name], stack.name, block.index, part.word), params, dropped, block_path, paths
                    )
                )
    units.extend(after)
    return [u for u in units if u.params or u.dropped]


def freeze_plan(
    graph: ModelGraph, setting: PreserveSetting | None, ops: list[Op], stacks: Mapping[str, StackPlan], removed: Removed
) -> FreezePlan:
    """What distillation trains and what it freezes, by module paths after pruning."""
    units = _units(graph, ops, stacks, removed)
    frozen: set[int] = set()
    rule = "none"
    if setting is not None:
        explicit = bool(setting.items or setting.modules)
        rule = "auto+explicit" if setting.auto and explicit else ("auto" if setting.auto else "explicit")
        if setting.auto:  # PWP: everything before the first removed block or part
            first = next((i for i, u in enumerate(units) if u.dropped), len(units))
            frozen.update(range(first))
        for i, unit in enumerate(units):
            if unit.item is not None and any(_selects(sel, unit.item) for sel in setting.items):
                frozen.add(i)
            if any(_module_selects(m, unit, graph) for m in setting.modules):
                frozen.add(i)
    kept = [(i, u) for i, u in enumerate(units) if u.params]
    return FreezePlan(
        rule=rule,
        frozen=_collapse([u for i, u in kept if i in frozen], [u for _, u in kept]),
        trainable=_collapse([u for i, u in kept if i not in frozen], [u for _, u in kept]),
        frozen_params=sum(u.params for i, u in kept if i in frozen),
        trainable_params=sum(u.params for i, u in kept if i not in frozen),
    )


def _selects(selector: Item, item: Item) -> bool:
    return selector.stack == item.stack and selector.block == item.block and selector.part in (None, item.part)


def _module_selects(module: str, unit: _Unit, graph: ModelGraph) -> bool:
    """Does a quoted module path (a name before pruning) cover this unit?"""
    if unit.item is None:
        return any(p == module or p.startswith(module + ".") for p in unit.module_paths)
    stack = graph.stack(unit.item.stack)
    assert stack is not None
    old_block = f"{stack.module}.{unit.item.block}"
    part = stack.blocks[unit.item.block].part(unit.item.part or "")
    if module == old_block:
        return True
    if part is None or not module.startswith(old_block + "."):
        return False
    rest = module[len(old_block) + 1 :]
    return any(rest == m or rest.startswith(m + ".") or m.startswith(rest + ".") for m in part.modules)


def _collapse(chosen: list[_Unit], kept: list[_Unit]) -> list[str]:
    """Module paths, a whole block's path where every kept part of it is chosen."""
    by_block: dict[str, list[_Unit]] = {}
    for unit in kept:
        if unit.item is not None:
            by_block.setdefault(unit.block_path, []).append(unit)
    chosen_ids = {id(u) for u in chosen}
    paths: list[str] = []
    done: set[str] = set()
    for unit in chosen:
        if unit.item is None:
            paths.extend(unit.module_paths)
            continue
        block_units = by_block[unit.block_path]
        if all(id(u) in chosen_ids for u in block_units):
            if unit.block_path not in done:
                paths.append(unit.block_path)
                done.add(unit.block_path)
        else:
            paths.extend(unit.module_paths)
    return paths
