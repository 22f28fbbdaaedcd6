"""plan: checked spec -> `Plan`, the explicit, deterministic description of what compile will do.

Plan schema v1 is pinned: later versions only add fields. Ops carry resolved indices and module
paths (never the slice a user wrote), so two specs that mean the same compile to the same plan.
The JSON is deterministic: sorted keys, the same bytes for the same spec and graph.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping

from hpspec.core.version import __version__
from hpspec.plan.check import CheckedSpec, Item, removed_words
from hpspec.model.graph import Block, ModelGraph
from hpspec.model.safetensors_header import DTYPE_BYTES
from hpspec.plan.schemes import QUANTIZE_BACKENDS

SCHEMA_VERSION = 1

OpKind = Literal["drop_block", "drop_part", "convert_last_block"]


@dataclass(frozen=True)
class TargetInfo:
    name: str
    source: str
    fingerprint: str
    family: str


@dataclass(frozen=True)
class DiagnosticInfo:
    severity: str
    message: str
    line: int | None
    column: int | None
    help: str | None


@dataclass(frozen=True)
class SpecInfo:
    path: str
    sha256: str
    source: str
    diagnostics: list[DiagnosticInfo]


@dataclass(frozen=True)
class StackPlan:
    module: str
    before: int
    after: int
    index_map: dict[str, int]  # old index -> new index, kept blocks only
    dropped: list[int]


@dataclass(frozen=True)
class Op:
    """One rewrite. `modules` are module paths in the ORIGINAL model; `params` is what goes."""

    kind: OpKind
    stack: str
    block: int
    part: str | None
    modules: list[str]
    params: int
    reason: str  # "spec", "promoted" (every part dropped), or "last_block_dropped"
    new_index: int | None = None


@dataclass(frozen=True)
class FreezePlan:
    rule: str  # "none", "auto", "explicit", "auto+explicit"
    frozen: list[str]  # module paths AFTER pruning
    trainable: list[str]
    frozen_params: int
    trainable_params: int


@dataclass(frozen=True)
class DistillPlan:
    weight: str
    mode: str
    table: str | None
    threshold: float | None
    steps: int
    lr: float
    batch: int
    output: float
    features: float
    task: float
    seed: int


@dataclass(frozen=True)
class QuantizePlan:
    scheme: str
    backend: str
    compute: str
    except_modules: list[str]  # module paths AFTER pruning, kept in full precision


@dataclass(frozen=True)
class PartCount:
    before: int
    after: int


@dataclass(frozen=True)
class ParamsPlan:
    before: int
    after_prune: int
    outside: int
    by_part_kind: dict[str, PartCount]


@dataclass(frozen=True)
class BytesPlan:
    dtype: str
    before: int
    after_prune: int
    unit: str = "bytes of weights (decimal), not peak memory"
    after_quantize: int | None = None  # added in schema v1: exact bytes the quantize stage writes (header apart)


@dataclass(frozen=True)
class FlopsPlan:
    image_tokens: int
    text_tokens: int
    before: int
    after_prune: int
    unit: str = "FLOPs of one forward at batch 1 (2 per multiply-add): matrices and attention, an estimate"


@dataclass(frozen=True)
class Plan:
    schema_version: int
    hpspec_version: str
    target: TargetInfo
    spec: SpecInfo
    stacks: dict[str, StackPlan]
    config: dict[str, Any]  # config.json keys the prune stage rewrites
    ops: list[Op]
    freeze: FreezePlan
    distill: DistillPlan | None
    quantize: QuantizePlan | None
    params: ParamsPlan
    bytes: BytesPlan
    flops: FlopsPlan | None = None  # added in schema v1 (fields only grow)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True, indent=2, ensure_ascii=False) + "\n"

    @property
    def kept_fraction(self) -> float:
        return self.params.after_prune / self.params.before if self.params.before else 1.0

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.to_json().encode()).hexdigest()



# --------------------------------------------------------------------------------------------
# Compilation


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
        freeze=_freeze(graph, checked, ops, stacks, removed),
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
    from hpspec.model.flops import outside_flops, part_flops, tensor_flops, tokens_for

    tokens = tokens_for(graph)
    if tokens is None:
        return None
    per_part = {(b.stack, b.index, p.word): part_flops(graph, b, p, tokens) for b in graph.blocks for p in b.parts}
    before = outside_flops(graph, tokens) + sum(per_part.values())
    removed = 0
    for op in ops:
        block = _block_of(graph, op.stack, op.block)
        if op.kind == "drop_block":
            removed += sum(per_part[(op.stack, op.block, p.word)] for p in block.parts)
        elif op.kind == "drop_part":
            removed += per_part[(op.stack, op.block, op.part or "")]
        else:  # the conversion's dead text outputs, and 4 of the 6 modulation chunks
            for module in op.modules:
                rest = module[len(block.module) + 1 :]
                dead = tuple(t for p in block.parts for t in p.tensors if t.name.startswith(rest + "."))
                share = 2 / 3 if rest == "norm1_context.linear" else 1
                removed += round(tensor_flops(graph, block, dead, tokens) * share)
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


def _block(graph: ModelGraph, item: Item) -> Block:
    stack = graph.stack(item.stack)
    assert stack is not None
    return stack.blocks[item.block]


def _ops(graph: ModelGraph, checked: CheckedSpec) -> list[Op]:
    ops: list[Op] = []
    promoted = set(checked.promoted)
    parts_by_block: dict[tuple[str, int], list[str]] = {}
    for item in checked.drops:
        if item.part is not None:
            parts_by_block.setdefault((item.stack, item.block), []).append(item.part)
    for item in sorted(checked.drops, key=lambda i: _registration_key(graph, i)):
        block = _block(graph, item)
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
    words = _block(graph, item).words
    return item.stack_order, item.block, -1 if item.part is None else words.index(item.part)


def _last_block_conversion(graph: ModelGraph, ops: list[Op]) -> list[Op]:
    """Dropping a context-pre-only last block makes the new last block context-pre-only too."""
    conversions = []
    for stack in graph.stacks:
        dropped = {op.block for op in ops if op.kind == "drop_block" and op.stack == stack.name}
        kept = [b for b in stack.blocks if b.index not in dropped]
        if not stack.blocks or not kept or stack.blocks[-1].index not in dropped:
            continue
        if stack.blocks[-1].kind != "context_pre_only":
            continue
        new_last = kept[-1]
        if new_last.kind == "context_pre_only":
            continue
        removed_parts = {op.part for op in ops if op.kind == "drop_part" and op.stack == stack.name and op.block == new_last.index}
        modules, params = _conversion_cost(new_last, removed_parts)
        conversions.append(
            Op("convert_last_block", stack.name, new_last.index, None, modules, params, "last_block_dropped", len(kept) - 1)
        )
    return conversions


def _conversion_cost(block: Block, removed_parts: set[str | None]) -> tuple[list[str], int]:
    """Modules and parameters the context-pre-only conversion removes from a block.

    Nothing after the last block reads the text stream: its text output projection, text MLP and
    text gates are dead. The text modulation keeps 2 of its 6 chunks (scale and shift of the MSA).
    """
    modules, params = [], 0
    if "attn" not in removed_parts:
        attn = block.part("attn")
        assert attn is not None
        out = [t for t in attn.tensors if t.name.startswith("attn.to_add_out.")]
        if out:
            modules.append(f"{block.module}.attn.to_add_out")
            params += sum(t.numel for t in out)
    context_mlp = block.part("context_mlp")
    if context_mlp is not None and "context_mlp" not in removed_parts:
        modules.append(f"{block.module}.ff_context")
        params += context_mlp.params
    context_norm = block.part("context_norm")
    if context_norm is not None and "context_norm" not in removed_parts:
        modules.append(f"{block.module}.norm1_context.linear")
        params += context_norm.params - context_norm.params // 3
    return modules, params


Removed = Mapping[tuple[str, int, str], tuple[int, int]]


def _removed_tensors(graph: ModelGraph, ops: list[Op]) -> dict[tuple[str, int, str], tuple[int, int]]:
    """(stack, block, part word) -> (parameters, bytes) removed, over every op."""
    removed: dict[tuple[str, int, str], tuple[int, int]] = {}
    for op in ops:
        block = _block_of(graph, op.stack, op.block)
        if op.kind == "drop_block":
            for part in block.parts:
                removed[(op.stack, op.block, part.word)] = (part.params, part.nbytes)
        elif op.kind == "drop_part":
            part = block.part(op.part or "")
            assert part is not None
            removed[(op.stack, op.block, part.word)] = (part.params, part.nbytes)
    for op in ops:
        if op.kind != "convert_last_block":
            continue
        block = _block_of(graph, op.stack, op.block)
        for module in op.modules:
            rest = module[len(block.module) + 1 :]
            part = next(p for p in block.parts if any(rest == m or rest.startswith(m + ".") for m in p.modules))
            tensors = [t for t in part.tensors if t.name.startswith(rest + ".")]
            if rest == "norm1_context.linear":  # keeps 2 of 6 chunks
                count = sum(t.numel for t in tensors) * 2 // 3
                nbytes = sum(t.nbytes for t in tensors) * 2 // 3
            else:
                count, nbytes = sum(t.numel for t in tensors), sum(t.nbytes for t in tensors)
            old = removed.get((op.stack, op.block, part.word), (0, 0))
            removed[(op.stack, op.block, part.word)] = (old[0] + count, old[1] + nbytes)
    return removed


def _block_of(graph: ModelGraph, stack: str, index: int) -> Block:
    found = graph.stack(stack)
    assert found is not None
    return found.blocks[index]


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
    dual = [b.index for b in graph.blocks if b.kind == "joint_dual"]
    if "dual_attention_layers" in graph.config or dual:
        index_map = stacks[graph.stacks[0].name].index_map
        renumbered = [index_map[str(i)] for i in dual if str(i) in index_map]
        if renumbered != dual:
            updates["dual_attention_layers"] = renumbered
    return updates


# --------------------------------------------------------------------------------------------
# Freeze set (PWP) and quantization exceptions, named by module paths after pruning


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
                dropped = (stack.name, block.index, None) in spec_drops or (stack.name, block.index, part.word) in spec_drops
                params = part.params - removed.get((stack.name, block.index, part.word), (0, 0))[0]
                paths = tuple(f"{block_path}.{m}" for m in part.modules) if params else ()
                units.append(_Unit(Item(order[stack.name], stack.name, block.index, part.word), params, dropped, block_path, paths))
    units.extend(after)
    return [u for u in units if u.params or u.dropped]


def _freeze(graph: ModelGraph, checked: CheckedSpec, ops: list[Op], stacks: Mapping[str, StackPlan], removed: Removed) -> FreezePlan:
    units = _units(graph, ops, stacks, removed)
    setting = checked.preserve
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


def _quantized_bytes(graph: ModelGraph, ops: list[Op], stacks: Mapping[str, StackPlan], quantize: QuantizePlan | None) -> int | None:
    from hpspec.plan.quantize_layout import pruned_tensors, quantized_layout, weight_bytes

    if quantize is None or quantize.backend == "unknown":
        return None
    layout = quantized_layout(pruned_tensors(graph, ops, stacks), quantize.scheme, quantize.compute, quantize.except_modules)
    return weight_bytes(layout)


def _renumber(graph: ModelGraph, module: str, stacks: Mapping[str, StackPlan]) -> str:
    for stack in graph.stacks:
        prefix = stack.module + "."
        if module.startswith(prefix):
            index, _, rest = module[len(prefix) :].partition(".")
            new = stacks[stack.name].index_map[index]
            return f"{stack.module}.{new}" + (f".{rest}" if rest else "")
    return module


def weight_bytes(params: int, dtype: str) -> int:
    return params * DTYPE_BYTES[dtype]


def plan_spec(spec_path: str | Path, target: str | None = None) -> Plan:
    """parse -> target -> check -> plan, for one spec file."""
    from hpspec.plan.check import check, load_target
    from hpspec.lang.parse import parse_file

    spec = parse_file(spec_path)
    graph = load_target(spec, target)
    return compile_plan(check(spec, graph))
