"""adapter: a LoRA file's tensors read as modules of one model, without torch.

A LoRA module is a down/up pair (and kohya's optional alpha) under a name that is a module of
diffusers' naming or of the family's original layout (BFL, SAI), dressed by one of the naming
rules of `lora.toml` (peft's and diffusers' prefixes, kohya's underscores, `diffusion_model.`).
Every module is checked against the model's shapes; keys hpspec cannot place are sorted out by
what they are (text encoder, LyCORIS, DoRA, no module of this model), never dropped.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from hpspec.core.diagnostics import did_you_mean
from hpspec.core.errors import ArchitectureDataError, LoraError
from hpspec.model.formats.keymap import Slice, expand, to_original
from hpspec.model.formats.lora_rules import LoraRules, Pair, lora_rules
from hpspec.model.formats.rules import key_map_of_family
from hpspec.model.graph import ModelGraph
from hpspec.model.safetensors_header import Header, TensorEntry, read_header

DIFFUSERS = "diffusers"
ORIGINAL = "original"
NO_MODULE = "names no module"


@dataclass(frozen=True)
class Naming:
    """How a module's name is written in the file: `prefix` + the name (kohya: separators replaced)."""

    kind: str  # DIFFUSERS or ORIGINAL: whose module names
    prefix: str
    kohya: bool = False

    def stem(self, module: str) -> str:
        rules = lora_rules()
        return rules.kohya.name(module) if self.kohya else self.prefix + module


@dataclass(frozen=True)
class Module:
    """One LoRA module as the file holds it."""

    stem: str  # the name before `.lora_A.weight` / `.alpha`
    naming: Naming
    name: str  # the module's name in its own naming (diffusers' or the original layout's)
    pair: Pair
    down: TensorEntry
    up: TensorEntry
    alpha: TensorEntry | None

    @property
    def rank(self) -> int:
        return self.down.shape[0]


@dataclass(frozen=True)
class Adapter:
    path: Path
    header: Header
    modules: tuple[Module, ...]
    text_keys: tuple[str, ...]  # text-encoder keys: they still apply, copied unchanged
    apart: Mapping[str, str]  # other keys hpspec does not place -> why


@dataclass(frozen=True)
class Shapes:
    """The model's Linear modules in both namings: name -> (out features, in features)."""

    diffusers: Mapping[str, tuple[int, int]]
    original: Mapping[str, tuple[int, int]]
    pieces: Mapping[str, tuple[Slice, ...]]  # original module -> its diffusers row slices (module names)


def model_shapes(graph: ModelGraph, config: Mapping[str, object] | None = None) -> Shapes:
    """The Linear modules of `graph` (2-D `.weight` tensors), and of its original layout."""
    weight = "." + lora_rules().weight
    found = {o_t.name: o_t.shape for o in graph.outside for o_t in o.tensors}
    found.update({f"{b.module}.{t.name}": t.shape for b in graph.blocks for p in b.parts for t in p.tensors})
    linear = {n[: -len(weight)]: (s[0], s[1]) for n, s in found.items() if n.endswith(weight) and len(s) == 2}
    try:
        fused = expand(key_map_of_family(graph.family), dict(config if config is not None else graph.config))
    except (ArchitectureDataError, TypeError):  # a config that cannot expand the original layout: diffusers' names only
        fused = ()
    original: dict[str, tuple[int, int]] = {}
    pieces: dict[str, tuple[Slice, ...]] = {}
    for name, parts in to_original(fused).items():
        modules = tuple(Slice(p.name[: -len(weight)], p.begin, p.end) for p in parts if p.name.endswith(weight))
        if not name.endswith(weight) or len(modules) != len(parts) or any(m.name not in linear for m in modules):
            continue
        rows = sum(linear[m.name][0] if m.begin is None or m.end is None else m.end - m.begin for m in modules)
        original[name[: -len(weight)]] = (rows, linear[modules[0].name][1])
        pieces[name[: -len(weight)]] = modules
    return Shapes(linear, original, pieces)


def read_adapter(path: Path, graph: ModelGraph, shapes: Shapes) -> Adapter:
    """The modules of the LoRA file at `path`, placed on `graph` and checked against its shapes."""
    header = read_header(path)
    rules = lora_rules()
    stems, apart, text = _split(header, rules)
    kohya = _kohya_names(shapes, rules)
    modules = []
    for stem, roles in stems.items():
        placed = _place(stem, shapes, rules, kohya)
        pair = next((p for p in rules.pairs if p.down in roles and p.up in roles), None)
        if placed is None or pair is None:
            why = (
                "a down or up weight is missing"
                if placed is not None
                else f"names no module of this {graph.family} model"
            )
            apart.update({e.name: why for e in roles.values()})
            continue
        naming, name = placed
        module = Module(stem, naming, name, pair, roles[pair.down], roles[pair.up], roles.get(rules.alpha))
        _fits(path, module, shapes)
        modules.append(module)
    if not modules and apart and all(why.startswith(NO_MODULE) for why in apart.values()):
        _refuse_foreign(path, graph, shapes, apart)
    if not header.tensors:
        raise LoraError(f"{path}: holds no tensors; a LoRA adapter (.safetensors) was expected")
    return Adapter(path, header, tuple(modules), tuple(text), apart)


def _split(header: Header, rules: LoraRules) -> tuple[dict[str, dict[str, TensorEntry]], dict[str, str], list[str]]:
    """Tensor names -> {stem: {role: entry}}; keys that are no LoRA module are sorted out."""
    suffixes = {f".{name}.{rules.weight}": name for p in rules.pairs for name in (p.down, p.up)}
    suffixes[f".{rules.alpha}"] = rules.alpha
    stems: dict[str, dict[str, TensorEntry]] = {}
    apart: dict[str, str] = {}
    text: list[str] = []
    for name, entry in header.tensors.items():
        if name.startswith(rules.apart.text_encoder):
            text.append(name)
            continue
        parts = name.split(".")
        if any(marker in parts for marker in rules.apart.lycoris):
            apart[name] = "a LyCORIS (LoHa/LoKr) weight"
        elif any(marker in parts for marker in rules.apart.dora):
            apart[name] = "a DoRA magnitude"
        elif (suffix := next((s for s in suffixes if name.endswith(s)), None)) is not None:
            stems.setdefault(name[: -len(suffix)], {})[suffixes[suffix]] = entry
        else:
            apart[name] = f"{NO_MODULE}: not a LoRA down, up or alpha tensor"
    return stems, apart, sorted(text)


def _kohya_names(shapes: Shapes, rules: LoraRules) -> dict[str, tuple[str, str]]:
    """kohya name -> (naming kind, module), by the rule, for every module in both namings."""
    out = {rules.kohya.name(m): (DIFFUSERS, m) for m in shapes.diffusers}
    out.update({rules.kohya.name(m): (ORIGINAL, m) for m in shapes.original})
    return out


def _place(
    stem: str, shapes: Shapes, rules: LoraRules, kohya: Mapping[str, tuple[str, str]]
) -> tuple[Naming, str] | None:
    """The naming and module a stem names, or None."""
    if stem in kohya:
        kind, module = kohya[stem]
        return Naming(kind, rules.kohya.prefix, kohya=True), module
    prefix, rest = "", stem
    for candidate in rules.diffusers.prefixes:
        if rest.startswith(candidate):
            prefix, rest = prefix + candidate, rest[len(candidate) :]
    if rest in shapes.diffusers:
        return Naming(DIFFUSERS, prefix), rest
    for candidate in ("", *rules.original.prefixes):
        if stem.startswith(candidate) and stem[len(candidate) :] in shapes.original:
            return Naming(ORIGINAL, candidate), stem[len(candidate) :]
    return None


def _fits(path: Path, module: Module, shapes: Shapes) -> None:
    """down is [rank, in], up is [out, rank] for this module of the model, or a LoraError."""
    table = shapes.diffusers if module.naming.kind == DIFFUSERS else shapes.original
    out, inp = table[module.name]
    down, up = module.down.shape, module.up.shape
    if len(down) != 2 or len(up) != 2 or down[1] != inp or up[0] != out or up[1] != down[0]:
        raise LoraError(
            f"{path}: {module.stem!r} does not fit this model: {module.pair.down} is {list(down)} and "
            f"{module.pair.up} is {list(up)}, but the model's {module.name!r} is a Linear of {inp} -> {out} "
            f"(expected [rank, {inp}] and [{out}, rank]); the adapter is for another architecture or width"
        )


def _refuse_foreign(path: Path, graph: ModelGraph, shapes: Shapes, apart: Mapping[str, str]) -> None:
    """An adapter none of whose modules is one of this model's: an error, with the nearest name."""
    first = next(iter(sorted(apart)))
    stem = first.rsplit(".", 2)[0]
    guess = did_you_mean(stem, [*shapes.diffusers, *shapes.original])
    hint = f"; did you mean {guess!r}?" if guess else ""
    raise LoraError(
        f"{path}: no key names a LoRA module of this {graph.family} model; the first is {first!r} "
        f"({apart[first]}){hint}"
    )
