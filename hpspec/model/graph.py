"""graph: a model description -> `ModelGraph` (stacks, blocks, kinds, parts, exact parameter counts).

Four sources describe the same model and give the same graph (and fingerprint): a built-in target,
a diffusers `config.json`, safetensors headers (one file or a sharded index), and a live
`nn.Module`. All of them are reduced to one thing, a table of tensor names and shapes, which
`graph_from_tensors` reads with the architecture's data file. No weights are needed; torch is
never imported (a live module's state dict is only read). Finding a target on disk: `targets`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from hpspec.core.errors import TargetError
from hpspec.model.arch import (
    Architecture,
    architecture,
    builtin_models,
    class_names,
    evaluate,
    family_of_class,
    family_of_tensors,
)
from hpspec.model.safetensors_header import DTYPE_BYTES, TORCH_DTYPES, Header


@dataclass(frozen=True)
class Tensor:
    name: str  # relative to its block (inside a block) or to the model (outside)
    shape: tuple[int, ...]
    dtype: str  # safetensors name: BF16, F32, ...
    buffer: bool = False  # a persistent buffer (SD3's positional table): stored, not a parameter

    @property
    def numel(self) -> int:
        count = 1
        for d in self.shape:
            count *= d
        return count

    @property
    def nbytes(self) -> int:
        return self.numel * DTYPE_BYTES[self.dtype]


def _params(tensors: Iterable[Tensor]) -> int:
    return sum(t.numel for t in tensors if not t.buffer)


def _bytes(tensors: Iterable[Tensor]) -> int:
    return sum(t.nbytes for t in tensors if not t.buffer)


class _Counted:
    """Parameter and byte totals of a group of tensors (buffers excluded)."""

    tensors: tuple[Tensor, ...]

    @property
    def params(self) -> int:
        return _params(self.tensors)

    @property
    def nbytes(self) -> int:
        return _bytes(self.tensors)


@dataclass(frozen=True)
class Part(_Counted):
    word: str
    modules: tuple[str, ...]
    tensors: tuple[Tensor, ...]


@dataclass(frozen=True)
class Block:
    stack: str
    index: int
    kind: str
    module: str  # e.g. transformer_blocks.3
    parts: tuple[Part, ...]  # in registration order

    def part(self, word: str) -> Part | None:
        return next((p for p in self.parts if p.word == word), None)

    @property
    def words(self) -> tuple[str, ...]:
        return tuple(p.word for p in self.parts)

    @property
    def params(self) -> int:
        return sum(p.params for p in self.parts)

    @property
    def nbytes(self) -> int:
        return sum(p.nbytes for p in self.parts)


@dataclass(frozen=True)
class Stack:
    name: str
    singular: str
    module: str
    count_key: str
    blocks: tuple[Block, ...]

    def __len__(self) -> int:
        return len(self.blocks)


@dataclass(frozen=True)
class Outside(_Counted):
    module: str
    position: str  # before / after the stacks
    tensors: tuple[Tensor, ...]


@dataclass(frozen=True)
class ModelGraph:
    name: str
    source: str  # builtin:NAME, config:PATH, safetensors:PATH, module:CLASS
    family: str
    dtype: str
    stacks: tuple[Stack, ...]
    outside: tuple[Outside, ...]
    config: Mapping[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @property
    def arch(self) -> Architecture:
        return architecture(self.family)

    def stack(self, name: str) -> Stack | None:
        return next((s for s in self.stacks if s.name == name), None)

    @property
    def blocks(self) -> tuple[Block, ...]:
        return tuple(b for s in self.stacks for b in s.blocks)

    @property
    def params(self) -> int:
        return sum(o.params for o in self.outside) + sum(b.params for b in self.blocks)

    @property
    def nbytes(self) -> int:
        return sum(o.nbytes for o in self.outside) + sum(b.nbytes for b in self.blocks)

    @property
    def fingerprint(self) -> str:
        """A hash of the structure: stacks, kinds, parts, parameter shapes; not names, not dtype."""
        structure = {
            "family": self.family,
            "stacks": [
                [stack.name, [[b.kind, [[p.word, _shapes(p.tensors)] for p in b.parts]] for b in stack.blocks]]
                for stack in self.stacks
            ],
            "outside": sorted(_shapes(t for o in self.outside for t in o.tensors)),
        }
        digest = hashlib.sha256(json.dumps(structure, separators=(",", ":")).encode()).hexdigest()
        return f"sha256:{digest[:32]}"


def _shapes(tensors: Iterable[Tensor]) -> list[list[int]]:
    return sorted(list(t.shape) for t in tensors if not t.buffer)


# --------------------------------------------------------------------------------------------
# Tensor table -> graph


def graph_from_tensors(
    family: str,
    tensors: Mapping[str, tuple[tuple[int, ...], str]],
    name: str,
    source: str,
    config: Mapping[str, Any] | None = None,
) -> ModelGraph:
    """Build the graph from `{full tensor name: (shape, dtype)}` with the family's data file."""
    arch = architecture(family)
    buffers = {t.name for o in arch.outside for t in o.tensors if t.buffer}
    known = {o.module for o in arch.outside}
    per_stack: dict[str, dict[int, dict[str, tuple[tuple[int, ...], str]]]] = {s.name: {} for s in arch.stacks}
    outside: dict[str, list[Tensor]] = {}
    for full, (shape, dtype) in tensors.items():
        stack, index, rest = _split_block_name(arch, full)
        if stack is None:
            module = full.split(".", 1)[0]
            # as the prune stage refuses it: `check` must not accept what `compile` cannot write
            if module not in known:
                raise TargetError(
                    f"{source}: holds tensor {full!r}, which no {family} model has "
                    f"(its top-level modules are {', '.join(sorted(known))})"
                )
            outside.setdefault(module, []).append(Tensor(full, tuple(shape), dtype, full in buffers))
        else:
            per_stack[stack].setdefault(index, {})[rest] = (tuple(shape), dtype)

    stacks = []
    for rule in arch.stacks:
        found = per_stack[rule.name]
        require_sane_count(max(found, default=-1) + 1, f"{rule.module}.N", source)
        missing = sorted(set(range(len(found))) - set(found))
        if missing or (found and max(found) != len(found) - 1):
            gap = missing[0] if missing else len(found)
            raise TargetError(f"{source}: {rule.module}.{gap} is missing: blocks must be numbered 0..n-1 without gaps")
        blocks = tuple(_block(arch, rule.name, rule.module, i, found[i], source) for i in range(len(found)))
        stacks.append(Stack(rule.name, rule.singular, rule.module, rule.count, blocks))
    positions = {o.module: o.position for o in arch.outside}
    order = [o.module for o in arch.outside]
    outside_groups = tuple(
        Outside(module, positions.get(module, "after"), tuple(sorted(ts, key=lambda t: t.name)))
        for module, ts in sorted(
            outside.items(), key=lambda kv: (order.index(kv[0]) if kv[0] in order else len(order), kv[0])
        )
    )
    dtypes = [dtype for _, dtype in tensors.values()]
    dtype = max(set(dtypes), key=dtypes.count) if dtypes else "BF16"
    return ModelGraph(name, source, family, dtype, tuple(stacks), outside_groups, dict(config or {}))


def _split_block_name(arch: Architecture, full: str) -> tuple[str | None, int, str]:
    for rule in arch.stacks:
        prefix = rule.module + "."
        if full.startswith(prefix):
            index, _, rest = full[len(prefix) :].partition(".")
            if index.isdigit():
                return rule.name, int(index), rest
    return None, -1, full


def _block(arch: Architecture, stack: str, module: str, index: int, tensors: Mapping[str, Any], source: str) -> Block:
    def under(prefix: str) -> bool:
        return any(name.startswith(prefix + ".") for name in tensors)

    kind = next(
        (
            k
            for k in arch.kinds
            if (k.stack in (None, stack)) and all(under(m) for m in k.has) and not any(under(m) for m in k.lacks)
        ),
        None,
    )
    if kind is None:
        raise TargetError(f"{source}: {module}.{index} matches no known {arch.family} block kind")
    rules = arch.part_rules(kind.name)
    parts, claimed = [], set()
    for word in kind.parts:
        rule = rules[word]
        names = sorted(n for n in tensors if any(n.startswith(m + ".") for m in rule.modules))
        claimed.update(names)
        parts.append(Part(word, rule.modules, tuple(Tensor(n, *tensors[n]) for n in names)))
    stray = sorted(set(tensors) - claimed)
    if stray:
        raise TargetError(f"{source}: {module}.{index}.{stray[0]} belongs to no known part of a {kind.name} block")
    return Block(stack, index, kind.name, f"{module}.{index}", tuple(parts))


# --------------------------------------------------------------------------------------------
# Sources


MAX_BLOCKS = 10_000  # a sanity bound on a stack's blocks (the largest real model has 57), checked before expanding


def require_sane_count(count: int, what: str, where: str) -> None:
    """Refuse a block count no real model has before anything is built from it (a config saying a
    million layers would otherwise take minutes and gigabytes to expand)."""
    if count > MAX_BLOCKS:
        raise TargetError(
            f"{where}: {what} gives {count:,} blocks; hpspec accepts at most {MAX_BLOCKS:,} in a stack "
            "(a sanity bound: no real model is near it)"
        )


def family_of_config(config: Mapping[str, Any], where: str) -> str:
    class_name = config.get("_class_name")
    family = family_of_class(class_name)
    if family is None:
        raise TargetError(f"{where}: unsupported model class {class_name!r}; hpspec knows {', '.join(class_names())}")
    return family


def tensors_from_config(
    config: Mapping[str, Any], where: str, dtype: str = "BF16"
) -> dict[str, tuple[tuple[int, ...], str]]:
    """Every tensor a diffusers config implies, with its shape, from the architecture's rules."""
    family = family_of_config(config, where)
    arch = architecture(family)
    names: dict[str, Any] = dict(config)
    try:
        for key, expression in arch.derived:
            names[key] = evaluate(expression, names)
        tensors: dict[str, tuple[tuple[int, ...], str]] = {}
        for rule in arch.outside:
            for t in rule.tensors:
                if t.when is None or evaluate(t.when, names):
                    tensors[t.name] = (_shape(evaluate(t.shape, names)), "F32" if t.buffer else dtype)
        for stack in arch.stacks:
            count = config.get(stack.count)
            if not isinstance(count, int) or isinstance(count, bool) or count < 0:
                raise TargetError(f"{where}: `{stack.count}` must be a non-negative integer, got {count!r}")
            require_sane_count(count, f"`{stack.count}`", where)
            for index in range(count):
                scope = {**names, "index": index, "count": count}
                kind = next(k for k in arch.kinds if k.stack in (None, stack.name) and evaluate(k.when, scope))
                scope.update({k: evaluate(v, scope) for k, v in arch.kind_values.get(kind.name, {}).items()})
                rules = arch.part_rules(kind.name)
                for word in kind.parts:
                    for t in rules[word].tensors:
                        if t.when is None or evaluate(t.when, scope):
                            tensors[f"{stack.module}.{index}.{t.name}"] = (_shape(evaluate(t.shape, scope)), dtype)
    except TargetError:
        raise
    except Exception as error:  # noqa: BLE001  a config missing a key or holding a wrong type
        raise TargetError(
            f"{where}: config does not describe a {family} model: {type(error).__name__}: {error}"
        ) from None
    return tensors


def _shape(value: Any) -> tuple[int, ...]:
    shape = value if isinstance(value, tuple) else (value,)
    if not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise TypeError(f"shape {shape!r} is not a tuple of non-negative integers")
    return shape


def graph_from_config(config: Mapping[str, Any], name: str, source: str, dtype: str = "BF16") -> ModelGraph:
    family = family_of_config(config, source)
    return graph_from_tensors(family, tensors_from_config(config, source, dtype), name, source, config)


def graph_from_builtin(name: str) -> ModelGraph:
    model = builtin_models()[name]
    dtype = TORCH_DTYPES[model.dtype]
    return graph_from_config(model.config, name, f"builtin:{name}", dtype)


def graph_from_headers(
    headers: Iterable[Header], name: str, source: str, config: Mapping[str, Any] | None
) -> ModelGraph:
    tensors = {e.name: (e.shape, e.dtype) for h in headers for e in h.tensors.values()}
    by_names = family_of_tensors(tensors)
    family = family_of_config(config, source) if config is not None else by_names
    if family is None:
        raise TargetError(f"{source}: its tensor names match no model family hpspec knows, and there is no config.json")
    if by_names is not None and by_names != family:  # a mislabelled config, said as such (not as a TypeError later)
        assert config is not None
        raise TargetError(
            f"{source}: config.json's `_class_name` {config.get('_class_name')!r} is a {family} model's, but the "
            f"weights' tensor names are a {by_names} model's; config.json should say "
            f"{' or '.join(architecture(by_names).class_names)}"
        )
    return graph_from_tensors(family, tensors, name, source, config)


def graph_from_module(module: Any, name: str | None = None) -> ModelGraph:
    """The graph of a live diffusers transformer (reads shapes only; imports nothing heavy itself)."""
    config = dict(getattr(module, "config", {}) or {})
    config.setdefault("_class_name", type(module).__name__)
    family = family_of_config(config, f"module:{type(module).__name__}")
    tensors = {
        n: (tuple(t.shape), TORCH_DTYPES.get(str(t.dtype).removeprefix("torch."), "F32"))
        for n, t in module.state_dict().items()
    }
    return graph_from_tensors(family, tensors, name or type(module).__name__, f"module:{type(module).__name__}", config)
