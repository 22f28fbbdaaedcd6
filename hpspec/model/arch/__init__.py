"""Architecture facts, loaded from the TOML data files beside this module and validated on load.

`sd3.toml` and `flux.toml` say, per model family, which stacks of blocks exist, which parts each
kind of block has, which diffusers modules each part removes, the reference code's name for it,
and the tensor shapes as expressions over config.json. `models.toml` holds the built-in targets.
Nothing here imports torch.
"""

from __future__ import annotations

import ast
import tomllib
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import Any, Mapping

from hpspec.core.errors import HpspecError

FAMILIES = ("sd3", "flux")


@dataclass(frozen=True)
class TensorRule:
    """A tensor a config implies: its name, its shape expression, and when it exists."""

    name: str
    shape: str
    when: str | None = None
    buffer: bool = False


@dataclass(frozen=True)
class PartRule:
    word: str
    modules: tuple[str, ...]  # module prefixes inside a block
    also: tuple[str, ...]  # other parts this one takes with it (attn takes attn2)
    reference: str
    effect: str
    tensors: tuple[TensorRule, ...]


@dataclass(frozen=True)
class StackRule:
    name: str  # the language's plural word: blocks, double_blocks, single_blocks
    singular: str
    module: str  # diffusers ModuleList attribute
    count: str  # config key with the number of blocks


@dataclass(frozen=True)
class KindRule:
    name: str
    parts: tuple[str, ...]  # in registration order
    describe: str
    stack: str | None
    has: tuple[str, ...]
    lacks: tuple[str, ...]
    when: str


@dataclass(frozen=True)
class OutsideRule:
    module: str
    position: str  # "before" or "after" the stacks, in registration order
    tensors: tuple[TensorRule, ...]


@dataclass(frozen=True)
class FlopsRule:
    """Which tokens each module sees, for the plan's FLOP estimate (see the TOML's [flops])."""

    image_tokens: str  # expression over the config
    text_tokens: str
    outside: Mapping[str, str]  # module prefix -> image | text | joint | cond
    block: Mapping[str, str]
    attention: Mapping[str, str]
    single_block: Mapping[str, str]
    single_attention: Mapping[str, str]


TOKEN_CLASSES = ("image", "text", "joint", "cond")


@dataclass(frozen=True)
class Architecture:
    family: str
    class_names: tuple[str, ...]
    stacks: tuple[StackRule, ...]
    derived: tuple[tuple[str, str], ...]
    outside: tuple[OutsideRule, ...]
    kinds: tuple[KindRule, ...]
    kind_values: Mapping[str, Mapping[str, str]]
    absent: Mapping[str, str]
    parts: Mapping[str, PartRule]  # block parts (the double-stream / joint ones)
    single_parts: Mapping[str, PartRule]  # FLUX single-stream blocks
    foreign: Mapping[str, str]  # other tools' names -> the hpspec word
    flops: FlopsRule

    @property
    def words(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys([*self.parts, *self.single_parts]))

    def stack(self, name: str) -> StackRule:
        return next(s for s in self.stacks if s.name == name)

    def kind(self, name: str) -> KindRule:
        return next(k for k in self.kinds if k.name == name)

    def part_rules(self, kind: str) -> Mapping[str, PartRule]:
        return self.single_parts if kind == "flux_single" else self.parts


@lru_cache(maxsize=1)
def flops_tokens() -> Mapping[str, Mapping[str, int]]:
    """Per-target token counts that differ from their family's (models.toml [flops_tokens])."""
    return {name: dict(v) for name, v in _load_toml("models.toml").get("flops_tokens", {}).items()}


@dataclass(frozen=True)
class BuiltinModel:
    name: str
    family: str
    dtype: str
    source: str
    config: Mapping[str, Any]


class ArchitectureDataError(HpspecError):
    """An architecture data file is malformed: a bug in hpspec's data, reported precisely."""


def _load_toml(filename: str) -> dict[str, Any]:
    text = resources.files(__name__).joinpath(filename).read_text(encoding="utf-8")
    return tomllib.loads(text)


@lru_cache(maxsize=None)
def architecture(family: str) -> Architecture:
    if family not in FAMILIES:
        raise ArchitectureDataError(f"unknown model family {family!r}; known: {', '.join(FAMILIES)}")
    return _validate(family, _load_toml(f"{family}.toml"))


@lru_cache(maxsize=1)
def builtin_models() -> Mapping[str, BuiltinModel]:
    data = _load_toml("models.toml")
    models = {}
    for name, entry in _require(data, "models", dict, "models.toml").items():
        where = f"models.toml [{name}]"
        family = _require(entry, "family", str, where)
        if family not in FAMILIES:
            raise ArchitectureDataError(f"{where}: unknown family {family!r}")
        models[name] = BuiltinModel(
            name=name,
            family=family,
            dtype=_require(entry, "dtype", str, where),
            source=_require(entry, "source", str, where),
            config=_require(entry, "config", dict, where),
        )
    return models


def _validate(family: str, data: dict[str, Any]) -> Architecture:
    where = f"{family}.toml"
    if data.get("family") != family:
        raise ArchitectureDataError(f"{where}: `family` must be {family!r}")

    def tensors(entries: list, at: str) -> tuple[TensorRule, ...]:
        rules = []
        for entry in entries:
            if not (isinstance(entry, list) and 2 <= len(entry) <= 3 and all(isinstance(e, str) for e in entry)):
                raise ArchitectureDataError(f"{at}: a tensor is [name, shape] or [name, shape, condition]: {entry!r}")
            name, shape, *rest = entry
            flag = rest[0] if rest else None
            compile_expression(shape, at)
            if flag not in (None, "buffer"):
                compile_expression(flag, at)
            rules.append(TensorRule(name, shape, None if flag == "buffer" else flag, flag == "buffer"))
        return tuple(rules)

    def parts(table: dict[str, Any], at: str) -> dict[str, PartRule]:
        result = {}
        for word, entry in table.items():
            here = f"{at}.{word}"
            result[word] = PartRule(
                word=word,
                modules=tuple(_require(entry, "modules", list, here)),
                also=tuple(entry.get("also", ())),
                reference=_require(entry, "reference", str, here),
                effect=_require(entry, "effect", str, here),
                tensors=tensors(_require(entry, "tensors", list, here), here),
            )
            for module in result[word].modules:
                if not any(t.name.startswith(module + ".") for t in result[word].tensors):
                    raise ArchitectureDataError(f"{here}: no tensor lies under module {module!r}")
        return result

    block_parts = parts(_require(data, "parts", dict, where), f"{where} parts")
    single_parts = parts(data.get("single_parts", {}), f"{where} single_parts")
    stacks = tuple(
        StackRule(
            name=_require(s, "name", str, where),
            singular=_require(s, "singular", str, where),
            module=_require(s, "module", str, where),
            count=_require(s, "count", str, where),
        )
        for s in _require(data, "stacks", list, where)
    )
    kinds = []
    for name, entry in _require(data, "kinds", dict, where).items():
        here = f"{where} kinds.{name}"
        known = single_parts if name == "flux_single" else block_parts
        kind_parts = tuple(_require(entry, "parts", list, here))
        for word in kind_parts:
            if word not in known:
                raise ArchitectureDataError(f"{here}: part {word!r} is not defined")
        compile_expression(_require(entry, "when", str, here), here)
        stack = entry.get("stack")
        if stack is not None and stack not in {s.name for s in stacks}:
            raise ArchitectureDataError(f"{here}: unknown stack {stack!r}")
        kinds.append(
            KindRule(
                name=name,
                parts=kind_parts,
                describe=_require(entry, "describe", str, here),
                stack=stack,
                has=tuple(entry.get("has", ())),
                lacks=tuple(entry.get("lacks", ())),
                when=_require(entry, "when", str, here),
            )
        )
    derived = tuple((k, v) for k, v in data.get("derived", {}).items())
    for name, expression in derived:
        compile_expression(expression, f"{where} derived.{name}")
    outside = tuple(
        OutsideRule(
            module=_require(o, "module", str, where),
            position=_require(o, "position", str, where),
            tensors=tensors(_require(o, "tensors", list, where), f"{where} outside.{o.get('module')}"),
        )
        for o in _require(data, "outside", list, where)
    )
    for rule in outside:
        if rule.position not in ("before", "after"):
            raise ArchitectureDataError(f"{where} outside.{rule.module}: position must be before or after")
    all_words = {*block_parts, *single_parts}
    foreign = dict(data.get("foreign", {}))
    for name, word in foreign.items():
        if word not in all_words:
            raise ArchitectureDataError(f"{where} foreign.{name}: {word!r} is not a part word")
    return Architecture(
        family=family,
        class_names=tuple(_require(data, "class_names", list, where)),
        stacks=stacks,
        derived=derived,
        outside=outside,
        kinds=tuple(kinds),
        kind_values={k: dict(v) for k, v in data.get("kind_values", {}).items()},
        absent=dict(data.get("absent", {})),
        parts=block_parts,
        single_parts=single_parts,
        foreign=foreign,
        flops=_flops(_require(data, "flops", dict, where), where),
    )


def _flops(table: dict[str, Any], where: str) -> FlopsRule:
    here = f"{where} flops"
    maps = {}
    for key in ("outside", "block", "attention", "single_block", "single_attention"):
        mapping = dict(table.get(key, {}))
        for prefix, kind in mapping.items():
            if kind not in TOKEN_CLASSES:
                raise ArchitectureDataError(f"{here}.{key}.{prefix}: {kind!r} is not one of {', '.join(TOKEN_CLASSES)}")
        maps[key] = mapping
    for key in ("image_tokens", "text_tokens"):
        compile_expression(_require(table, key, str, here), f"{here}.{key}")
    return FlopsRule(image_tokens=table["image_tokens"], text_tokens=table["text_tokens"], **maps)


def _require(table: Mapping[str, Any], key: str, kind: type, where: str) -> Any:
    if key not in table:
        raise ArchitectureDataError(f"{where}: missing `{key}`")
    value = table[key]
    if not isinstance(value, kind):
        raise ArchitectureDataError(f"{where}: `{key}` must be a {kind.__name__}")
    return value


# --------------------------------------------------------------------------------------------
# Shape expressions: a tiny, closed arithmetic over config values. Only these node types are
# allowed, so evaluating our own data files can never run code.

_ALLOWED = (
    ast.Expression, ast.Tuple, ast.Name, ast.Load, ast.Constant, ast.BinOp, ast.Add, ast.Sub, ast.Mult,
    ast.FloorDiv, ast.BoolOp, ast.And, ast.Or, ast.UnaryOp, ast.Not, ast.USub, ast.Compare, ast.Eq, ast.NotEq,
    ast.In,
)  # fmt: skip


@lru_cache(maxsize=None)
def compile_expression(text: str, where: str = "expression") -> ast.Expression:
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError:
        raise ArchitectureDataError(f"{where}: cannot parse {text!r}") from None
    for node in ast.walk(tree):
        if not isinstance(node, _ALLOWED):
            raise ArchitectureDataError(f"{where}: {type(node).__name__} is not allowed in {text!r}")
    return tree


def evaluate(text: str, names: Mapping[str, Any]) -> Any:
    """Evaluate a shape or condition expression; unknown names are None (an absent config key)."""
    return _eval(compile_expression(text).body, names)


def _eval(node: ast.AST, names: Mapping[str, Any]) -> Any:
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.Name):
        return {"True": True, "False": False, "None": None}.get(node.id, names.get(node.id))
    if isinstance(node, ast.Tuple):
        return tuple(_eval(e, names) for e in node.elts)
    if isinstance(node, ast.BinOp):
        left, right = _eval(node.left, names), _eval(node.right, names)
        if isinstance(node.op, ast.Add):
            return left + right
        if isinstance(node.op, ast.Sub):
            return left - right
        if isinstance(node.op, ast.Mult):
            return left * right
        return left // right
    if isinstance(node, ast.BoolOp):
        values = [_eval(v, names) for v in node.values]
        result = values[0]
        for value in values[1:]:
            result = (result and value) if isinstance(node.op, ast.And) else (result or value)
        return result
    if isinstance(node, ast.UnaryOp):
        value = _eval(node.operand, names)
        return (not value) if isinstance(node.op, ast.Not) else -value
    if isinstance(node, ast.Compare):
        left = _eval(node.left, names)
        for op, comparator in zip(node.ops, node.comparators):
            right = _eval(comparator, names)
            if isinstance(op, ast.In):
                holds = left in right
            else:
                holds = (left == right) == isinstance(op, ast.Eq)
            if not holds:
                return False
            left = right
        return True
    raise ArchitectureDataError(f"unsupported expression node {type(node).__name__}")
