"""compare: two compiled plans -> `PlanDiff`, what the second does differently, named as the original model's parts.

The diff is semantic: it is computed on plans, never on text, so reordering statements, changing
layout or comments, and writing the same blocks another way (`blocks[25:29]`, `blocks[25, 26, 27,
28]`) change nothing. Blocks keep their ORIGINAL identity: freeze sets and quantization exceptions,
which a plan names by module paths after pruning, are mapped back through each plan's index map
before they are compared, so dropping block 3 does not make every later block look changed.

Inputs are specs (compiled here, no torch) or plan JSON files (`hpspec plan --format json`). A spec
with no `target` (an empty file, `/dev/null`) takes the other side's target: it stands for the
uncompressed model, so a new spec can be diffed against nothing.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from hpspec.core.io import dumps_json, read_text_input
from hpspec.lang import syntax as s
from hpspec.lang.parse import parse
from hpspec.model.graph import ModelGraph
from hpspec.model.targets import resolve_target
from hpspec.plan.check import load_target
from hpspec.plan.compile import compile_plan
from hpspec.plan.front import check_spec
from hpspec.plan.plan import Plan

MAX_INPUT_BYTES = 64 << 20  # plan JSON files are larger than specs


@dataclass(frozen=True)
class Count:
    before: int
    after: int

    @property
    def delta(self) -> int:
        return self.after - self.before


@dataclass(frozen=True)
class Removal:
    """A block or part that newly goes (or comes back), with the parameters that move.

    For a whole block, `parts` lists the block's parts that were gone already (newly dropped) or
    stay gone (restored), so `params` counts only what actually moves."""

    stack: str
    block: int
    part: str | None
    params: int
    parts: tuple[str, ...] = ()

    @property
    def selector(self) -> str:
        return selector_text(self.stack, [self.block]) + (f".{self.part}" if self.part else "")


@dataclass(frozen=True)
class Change:
    what: str
    before: Any
    after: Any


@dataclass(frozen=True)
class FreezeChange:
    """A module of the ORIGINAL model (an outside module or a whole block) whose freezing changed."""

    module: str
    stack: str | None
    block: int | None
    before: str  # "frozen", "trainable", or "partly frozen (module, ...)"
    after: str


@dataclass(frozen=True)
class PlanDiff:
    a: str
    b: str
    target: Change | None
    dropped: tuple[Removal, ...]
    restored: tuple[Removal, ...]
    converted: tuple[Removal, ...]  # newly converted to the context-pre-only last block
    unconverted: tuple[Removal, ...]
    freeze: tuple[FreezeChange, ...]
    settings: tuple[Change, ...]  # freeze rule, distill and quantize settings
    blocks_dropped: dict[str, Count]
    parts_dropped: Count
    params: Count  # after pruning
    bytes: Count  # weight bytes after pruning
    frozen_params: Count
    params_total: int  # the unpruned model's parameters (of b), for percentages
    dtype: str

    @property
    def empty(self) -> bool:
        changes = (
            self.target,
            *self.dropped,
            *self.restored,
            *self.converted,
            *self.unconverted,
            *self.freeze,
            *self.settings,
        )
        counts = (*self.blocks_dropped.values(), self.parts_dropped, self.params, self.bytes, self.frozen_params)
        return not any(changes) and all(c.delta == 0 for c in counts)

    def to_json(self) -> str:
        return dumps_json({**asdict(self), "empty": self.empty})


# --------------------------------------------------------------------------------------------
# Inputs: specs or plans


def load_pair(a: str | Path, b: str | Path, target: str | None = None) -> tuple[Plan, Plan]:
    """Both inputs compiled to plans; `target` overrides the target of spec inputs."""
    first, second = _read(Path(a)), _read(Path(b))
    return _compile(first, second, target), _compile(second, first, target)


def _read(path: Path) -> Plan | s.Spec:
    text = read_text_input(path, "spec or plan", MAX_INPUT_BYTES)
    if text.lstrip().startswith("{"):  # a spec never starts with `{`; a plan always does
        from hpspec.plan.schema import load_plan  # pydantic only for plan inputs

        return load_plan(text, str(path))
    return parse(text, str(path))


def _compile(side: Plan | s.Spec, other: Plan | s.Spec, target: str | None) -> Plan:
    if isinstance(side, Plan):
        return side
    return compile_plan(check_spec(side, target, fallback=lambda: _other_graph(other)))


def _other_graph(other: Plan | s.Spec) -> ModelGraph | None:
    """For a spec with no target: the other side's (a spec's target, a plan's built-in one), if any."""
    if isinstance(other, s.Spec) and other.of_type(s.Target):
        return load_target(other)
    if isinstance(other, Plan) and other.target.source.startswith("builtin:"):
        return resolve_target(other.target.name)
    return None


# --------------------------------------------------------------------------------------------
# The diff


def diff_plans(a: Plan, b: Plan, labels: tuple[str, str] = ("a", "b")) -> PlanDiff:
    dropped, restored = _removals(a, b)
    converted = _conversions(b, a)
    unconverted = _conversions(a, b)
    stacks = sorted(set(a.stacks) | set(b.stacks))
    return PlanDiff(
        a=labels[0],
        b=labels[1],
        target=_target_change(a, b),
        dropped=dropped,
        restored=restored,
        converted=converted,
        unconverted=unconverted,
        freeze=_freeze_changes(a, b),
        settings=(*_freeze_rule(a, b), *_distill_changes(a, b), *_quantize_changes(a, b)),
        blocks_dropped={st: Count(_dropped_count(a, st), _dropped_count(b, st)) for st in stacks},
        parts_dropped=Count(_part_ops(a), _part_ops(b)),
        params=Count(a.params.after_prune, b.params.after_prune),
        bytes=Count(a.bytes.after_prune, b.bytes.after_prune),
        frozen_params=Count(a.freeze.frozen_params, b.freeze.frozen_params),
        params_total=b.params.before,
        dtype=b.bytes.dtype,
    )


def _target_change(a: Plan, b: Plan) -> Change | None:
    for key in ("name", "fingerprint", "source"):
        before, after = getattr(a.target, key), getattr(b.target, key)
        if before != after:
            return Change(f"target {key}" if key != "name" else "target", before, after)
    return None


def _dropped_count(plan: Plan, stack: str) -> int:
    found = plan.stacks.get(stack)
    return len(found.dropped) if found is not None else 0


def _part_ops(plan: Plan) -> int:
    return sum(op.kind == "drop_part" for op in plan.ops)


@dataclass
class _BlockDrops:
    whole: int | None = None  # the block's parameters, when the whole block goes
    parts: dict[str, int] | None = None  # part word -> parameters, when parts go


def _drops(plan: Plan) -> dict[tuple[str, int], _BlockDrops]:
    drops: dict[tuple[str, int], _BlockDrops] = {}
    for op in plan.ops:
        entry = drops.setdefault((op.stack, op.block), _BlockDrops())
        if op.kind == "drop_block":
            entry.whole = op.params
        elif op.kind == "drop_part" and op.part is not None:
            entry.parts = {**(entry.parts or {}), op.part: op.params}
    return drops


def _removals(a: Plan, b: Plan) -> tuple[tuple[Removal, ...], tuple[Removal, ...]]:
    """(newly dropped in b, restored in b), whole blocks and parts, by original block identity."""
    before, after = _drops(a), _drops(b)
    dropped: list[Removal] = []
    restored: list[Removal] = []
    for key in sorted(set(before) | set(after)):
        old, new = before.get(key, _BlockDrops()), after.get(key, _BlockDrops())
        old_parts, new_parts = old.parts or {}, new.parts or {}
        stack, block = key
        if new.whole is not None and old.whole is None:
            dropped.append(Removal(stack, block, None, new.whole - sum(old_parts.values()), tuple(sorted(old_parts))))
        elif old.whole is not None and new.whole is None:
            restored.append(Removal(stack, block, None, old.whole - sum(new_parts.values()), tuple(sorted(new_parts))))
        elif old.whole is None and new.whole is None:
            dropped.extend(Removal(stack, block, w, new_parts[w]) for w in sorted(set(new_parts) - set(old_parts)))
            restored.extend(Removal(stack, block, w, old_parts[w]) for w in sorted(set(old_parts) - set(new_parts)))
    return tuple(dropped), tuple(restored)


def _conversions(plan: Plan, other: Plan) -> tuple[Removal, ...]:
    """Last-block conversions in `plan` that `other` does not make."""
    theirs = {(op.stack, op.block) for op in other.ops if op.kind == "convert_last_block"}
    return tuple(
        Removal(op.stack, op.block, None, op.params)
        for op in plan.ops
        if op.kind == "convert_last_block" and (op.stack, op.block) not in theirs
    )


# -- freeze sets, by original identity ---------------------------------------------------------


def _original(plan: Plan, path: str) -> tuple[str, str | None, int | None, str]:
    """An after-pruning module path -> (original owner path, stack, original block, path inside it)."""
    for name, stack in plan.stacks.items():
        prefix = stack.module + "."
        if path.startswith(prefix):
            new, _, rest = path[len(prefix) :].partition(".")
            old = {n: int(o) for o, n in stack.index_map.items()}[int(new)]
            return f"{stack.module}.{old}", name, old, rest
    return path, None, None, ""


def _freeze_states(plan: Plan) -> dict[str, tuple[str | None, int | None, str]]:
    """Original outside module or block path -> (stack, block, freeze state)."""
    frozen: dict[str, list[str]] = {}
    trainable: set[str] = set()
    owners: dict[str, tuple[str | None, int | None]] = {}
    for is_frozen, paths in ((True, plan.freeze.frozen), (False, plan.freeze.trainable)):
        for path in paths:
            owner, stack, block, rest = _original(plan, path)
            owners[owner] = (stack, block)
            if is_frozen:
                frozen.setdefault(owner, []).append(rest)
            else:
                trainable.add(owner)
    states = {}
    for owner, (stack, block) in owners.items():
        if owner not in frozen:
            state = "trainable"
        elif owner not in trainable:
            state = "frozen"
        else:
            state = f"partly frozen ({', '.join(frozen[owner])})"
        states[owner] = (stack, block, state)
    return states


def _freeze_changes(a: Plan, b: Plan) -> tuple[FreezeChange, ...]:
    """Modules kept on both sides whose freezing differs (a dropped block is the drop's news)."""
    before, after = _freeze_states(a), _freeze_states(b)
    changes = [
        FreezeChange(owner, stack, block, before[owner][2], state)
        for owner, (stack, block, state) in after.items()
        if owner in before and before[owner][2] != state
    ]
    return tuple(sorted(changes, key=lambda c: (c.stack or "", c.block if c.block is not None else -1, c.module)))


# -- settings ----------------------------------------------------------------------------------


def _freeze_rule(a: Plan, b: Plan) -> list[Change]:
    return [Change("preserve", a.freeze.rule, b.freeze.rule)] if a.freeze.rule != b.freeze.rule else []


def _field_changes(prefix: str, before: Any, after: Any, skip: Iterable[str] = ()) -> list[Change]:
    """Field-wise changes of two settings dataclasses; one change when only one side has them."""
    if before is None or after is None:
        if before is after:
            return []
        return [Change(prefix, _as_dict(before, skip), _as_dict(after, skip))]
    return [
        Change(f"{prefix}.{f.name}", getattr(before, f.name), getattr(after, f.name))
        for f in fields(before)
        if f.name not in skip and getattr(before, f.name) != getattr(after, f.name)
    ]


def _as_dict(value: Any, skip: Iterable[str]) -> dict[str, Any] | None:
    return None if value is None else {k: v for k, v in asdict(value).items() if k not in set(skip)}


def _distill_changes(a: Plan, b: Plan) -> list[Change]:
    return _field_changes("distill", a.distill, b.distill)


def _quantize_changes(a: Plan, b: Plan) -> list[Change]:
    changes = _field_changes("quantize", a.quantize, b.quantize, skip=("except_modules",))
    if a.quantize is not None and b.quantize is not None:
        old, new = _kept_full_precision(a), _kept_full_precision(b)
        if old != new:
            changes.append(Change("quantize.except", old, new))
    return changes


def _kept_full_precision(plan: Plan) -> list[str]:
    """Quantization exceptions as ORIGINAL module paths, sorted (their written order is no matter)."""
    assert plan.quantize is not None
    paths = []
    for path in plan.quantize.except_modules:
        owner, _, _, rest = _original(plan, path)
        paths.append(f"{owner}.{rest}" if rest else owner)
    return sorted(paths)


def selector_text(stack: str, blocks: Iterable[int]) -> str:
    """Indices as the language writes them: `block[33]`, `blocks[25:29, 31]`."""
    indices = sorted(set(blocks))
    if len(indices) == 1:
        return f"{stack.removesuffix('s')}[{indices[0]}]"
    runs: list[list[int]] = []
    for i in indices:
        if runs and runs[-1][-1] == i - 1:
            runs[-1].append(i)
        else:
            runs.append([i])
    # Three or more in a row read best as a slice; shorter runs as plain indices.
    text = [f"{r[0]}:{r[-1] + 1}" if len(r) >= 3 else ", ".join(map(str, r)) for r in runs]
    return f"{stack}[{', '.join(text)}]"
