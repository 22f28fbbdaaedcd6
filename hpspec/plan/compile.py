"""compile: a checked spec -> `Plan` (ops, stacks, config, freeze set, quantize, counts).

`compile_plan` is the one entry: every op names resolved indices and module paths of the original
model; counts (parameters, bytes, FLOPs, bytes after quantization) are exact for the graph.
The freeze set (PWP) is `freeze`; the quantized layout is predicted by `quantize_layout`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

from hpspec.core.version import __version__
from hpspec.model.conversion import (
    conversion_cost,
    converts,
    index_list_updates,
    owner,
    removed_amount,
    removed_flops,
)
from hpspec.model.flops import outside_flops, part_flops, tensor_flops, tokens_for
from hpspec.model.graph import ModelGraph
from hpspec.plan.check import CheckedSpec, Item, removed_words
from hpspec.plan.check.selectors import block_of
from hpspec.plan.freeze import Removed, freeze_plan
from hpspec.plan.plan import (
    SCHEMA_VERSION,
    BytesPlan,
    DiagnosticInfo,
    DistillPlan,
    FlopsPlan,
    Op,
    ParamsPlan,
    PartCount,
    Plan,
    QuantizePlan,
    SpecInfo,
    StackPlan,
    TargetInfo,
)
from hpspec.plan.quantize_layout import pruned_tensors, quantized_layout, weight_bytes
from hpspec.plan.schemes import QUANTIZE_BACKENDS


def compile_plan(checked: CheckedSpec) -> Plan:
    graph = checked.graph
    ops = _ops(graph, checked)
    stacks = _stacks(graph, ops)
    removed = _removed_tensors(graph, ops)
    params_after = graph.params - sum(op.params for op in ops)
    quantize = _quantize(graph, checked, stacks)
    return Plan(
        schema_version=SCHEMA_VERSION,
        hpspec_version=__version__,
        target=TargetInfo(graph.name, graph.source, graph.fingerprint, graph.family),
        spec=_spec_info(checked),
        stacks=stacks,
        config=_config_updates(graph, stacks),
        ops=ops,
        freeze=freeze_plan(graph, checked.preserve, ops, stacks, removed),
        distill=DistillPlan(**checked.distill) if checked.distill is not None else None,  # type: ignore[arg-type]
        quantize=quantize,
        params=ParamsPlan(
            before=graph.params,
            after_prune=params_after,
            outside=sum(o.params for o in graph.outside),
            by_part_kind=_by_part_kind(graph, removed),
        ),
        bytes=BytesPlan(
            dtype=graph.dtype,
            before=graph.nbytes,
            after_prune=graph.nbytes - sum(bytes_ for _, bytes_ in removed.values()),
            after_quantize=_quantized_bytes(graph, ops, stacks, quantize),
        ),
        flops=_flops(graph, ops),
    )


def _flops(graph: ModelGraph, ops: list[Op]) -> FlopsPlan | None:
    """The forward FLOPs before and after pruning, at the family's default resolution."""
    tokens = tokens_for(graph)
    if tokens is None:
        return None
    per_part = {(b.stack, b.index, p.word): part_flops(graph, b, p, tokens) for b in graph.blocks for p in b.parts}
    before = outside_flops(graph, tokens) + sum(per_part.values())
    removed = 0
    for op in ops:
        block = block_of(graph, op.stack, op.block)
        if op.kind == "drop_block":
            removed += sum(per_part[(op.stack, op.block, p.word)] for p in block.parts)
        elif op.kind == "drop_part":
            removed += per_part[(op.stack, op.block, op.part or "")]
        else:  # the conversion's dead text outputs, and the modulation chunks it drops
            rule = graph.arch.last_block
            assert rule is not None
            for module in op.modules:
                rest = module[len(block.module) + 1 :]
                dead = tuple(t for p in block.parts for t in p.tensors if t.name.startswith(rest + "."))
                removed += removed_flops(rule, rest, tensor_flops(graph, block, dead, tokens))
    return FlopsPlan(tokens.image, tokens.text, before, before - removed)


def _spec_info(checked: CheckedSpec) -> SpecInfo:
    spec = checked.spec
    return SpecInfo(
        path=spec.path,
        sha256=hashlib.sha256(spec.source.encode()).hexdigest(),
        source=spec.source,
        diagnostics=[
            DiagnosticInfo(
                d.severity, d.message, d.span.line if d.span else None, d.span.column if d.span else None, d.help
            )
            for d in checked.diagnostics
        ],
    )


def _ops(graph: ModelGraph, checked: CheckedSpec) -> list[Op]:
    ops: list[Op] = []
    promoted = set(checked.promoted)
    parts_by_block: dict[tuple[str, int], list[str]] = {}
    for item in checked.drops:
        if item.part is not None:
            parts_by_block.setdefault((item.stack, item.block), []).append(item.part)
    for item in sorted(checked.drops, key=lambda i: _registration_key(graph, i)):
        block = block_of(graph, item.stack, item.block)
        if item.part is None:
            ops.append(
                Op("drop_block", item.stack, item.block, None, [block.module], block.params,
                   "promoted" if item in promoted else "spec")
            )  # fmt: skip
            continue
        for word in removed_words(graph, block, [item.part]):
            if word != item.part and word in parts_by_block[(item.stack, item.block)]:
                continue  # dropped in its own right; listed by its own op
            part = block.part(word)
            assert part is not None
            ops.append(
                Op("drop_part", item.stack, item.block, word, [f"{block.module}.{m}" for m in part.modules], part.params,
                   "spec" if word == item.part else f"with_{item.part}")
            )  # fmt: skip
    ops.extend(_last_block_conversion(graph, ops))
    return ops


def _registration_key(graph: ModelGraph, item: Item) -> tuple[int, int, int]:
    """Stack, block, then parts in the order diffusers registers them."""
    words = block_of(graph, item.stack, item.block).words
    return item.stack_order, item.block, -1 if item.part is None else words.index(item.part)


def _last_block_conversion(graph: ModelGraph, ops: list[Op]) -> list[Op]:
    """Dropping a context-pre-only last block makes the new last block context-pre-only too."""
    conversions = []
    for stack in graph.stacks:
        dropped = {op.block for op in ops if op.kind == "drop_block" and op.stack == stack.name}
        kept = [b for b in stack.blocks if b.index not in dropped]
        if not stack.blocks or not kept or stack.blocks[-1].index not in dropped:
            continue
        new_last = kept[-1]
        rule = converts(graph.arch, stack.blocks[-1].kind, new_last.kind)
        if rule is None:
            continue
        removed_parts = {
            op.part for op in ops if op.kind == "drop_part" and op.stack == stack.name and op.block == new_last.index
        }
        modules, params = conversion_cost(rule, new_last, removed_parts)
        conversions.append(
            Op(
                "convert_last_block",
                stack.name,
                new_last.index,
                None,
                modules,
                params,
                "last_block_dropped",
                len(kept) - 1,
            )
        )
    return conversions


def _removed_tensors(graph: ModelGraph, ops: list[Op]) -> dict[tuple[str, int, str], tuple[int, int]]:
    """(stack, block, part word) -> (parameters, bytes) removed, over every op."""
    removed: dict[tuple[str, int, str], tuple[int, int]] = {}
    for op in ops:
        block = block_of(graph, op.stack, op.block)
        if op.kind == "drop_block":
            for each in block.parts:
                removed[(op.stack, op.block, each.word)] = (each.params, each.nbytes)
        elif op.kind == "drop_part":
            dropped = block.part(op.part or "")
            assert dropped is not None
            removed[(op.stack, op.block, dropped.word)] = (dropped.params, dropped.nbytes)
    for op in ops:
        if op.kind != "convert_last_block":
            continue
        rule = graph.arch.last_block
        assert rule is not None
        block = block_of(graph, op.stack, op.block)
        for module in op.modules:
            rest = module[len(block.module) + 1 :]
            part = owner(block, rest)
            assert part is not None
            tensors = [t for t in part.tensors if t.name.startswith(rest + ".")]
            count = removed_amount(rule, rest, sum(t.numel for t in tensors))
            nbytes = removed_amount(rule, rest, sum(t.nbytes for t in tensors))
            old = removed.get((op.stack, op.block, part.word), (0, 0))
            removed[(op.stack, op.block, part.word)] = (old[0] + count, old[1] + nbytes)
    return removed


def _by_part_kind(graph: ModelGraph, removed: Removed) -> dict[str, PartCount]:
    before: dict[str, int] = {}
    gone: dict[str, int] = {}
    for block in graph.blocks:
        for part in block.parts:
            before[part.word] = before.get(part.word, 0) + part.params
            gone[part.word] = gone.get(part.word, 0) + removed.get((block.stack, block.index, part.word), (0, 0))[0]
    return {word: PartCount(before[word], before[word] - gone[word]) for word in sorted(before)}


def _stacks(graph: ModelGraph, ops: list[Op]) -> dict[str, StackPlan]:
    result = {}
    for stack in graph.stacks:
        dropped = sorted(op.block for op in ops if op.kind == "drop_block" and op.stack == stack.name)
        kept = [b.index for b in stack.blocks if b.index not in dropped]
        result[stack.name] = StackPlan(
            module=stack.module,
            before=len(stack),
            after=len(kept),
            index_map={str(old): new for new, old in enumerate(kept)},
            dropped=dropped,
        )
    return result


def _config_updates(graph: ModelGraph, stacks: Mapping[str, StackPlan]) -> dict[str, Any]:
    updates: dict[str, Any] = {}
    for stack in graph.stacks:
        plan = stacks[stack.name]
        if plan.after != plan.before:
            updates[stack.count_key] = plan.after
    updates.update(index_list_updates(graph, {name: plan.index_map for name, plan in stacks.items()}))
    return updates


def _quantize(graph: ModelGraph, checked: CheckedSpec, stacks: Mapping[str, StackPlan]) -> QuantizePlan | None:
    setting = checked.quantize
    if setting is None:
        return None
    excepted: list[str] = []
    for item in setting.except_items:
        stack = graph.stack(item.stack)
        assert stack is not None
        new = stacks[item.stack].index_map[str(item.block)]
        block = stack.blocks[item.block]
        if item.part is None:
            excepted.append(f"{stack.module}.{new}")
        else:
            part = block.part(item.part)
            assert part is not None
            excepted.extend(f"{stack.module}.{new}.{m}" for m in part.modules)
    for module in setting.except_modules:
        excepted.append(_renumber(graph, module, stacks))
    return QuantizePlan(
        scheme=setting.scheme,
        backend=QUANTIZE_BACKENDS.get(setting.scheme, "unknown"),
        compute=str(setting.options.get("compute", "bf16")),
        except_modules=list(dict.fromkeys(excepted)),
    )


def _quantized_bytes(
    graph: ModelGraph, ops: list[Op], stacks: Mapping[str, StackPlan], quantize: QuantizePlan | None
) -> int | None:
    if quantize is None or quantize.backend == "unknown":
        return None
    layout = quantized_layout(
        pruned_tensors(graph, ops, stacks), quantize.scheme, quantize.compute, quantize.except_modules
    )
    return weight_bytes(layout)


def _renumber(graph: ModelGraph, module: str, stacks: Mapping[str, StackPlan]) -> str:
    for stack in graph.stacks:
        prefix = stack.module + "."
        if module.startswith(prefix):
            index, _, rest = module[len(prefix) :].partition(".")
            new = stacks[stack.name].index_map[index]
            return f"{stack.module}.{new}" + (f".{rest}" if rest else "")
    return module
