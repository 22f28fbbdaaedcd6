"""write: a remapped adapter's output tensors, as byte ranges of the input file.

In diffusers' names, one output module per module of the pruned model; in the original layout
(BFL, SAI, kohya's names of it), one per tensor of the pruned model's own layout, its up weight the
concatenation of its pieces' rows. A down weight and an alpha are copied whole; an up weight is
one byte range per run of rows (row-major). `--to diffusers` writes diffusers' names, peft's pair.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from hpspec.core.errors import LoraError
from hpspec.model.formats.keymap import expand, to_original
from hpspec.model.formats.lora_rules import Pair, lora_rules
from hpspec.model.formats.rules import key_map_of_family
from hpspec.model.safetensors_header import TensorEntry
from hpspec.weights.checkpoint.tensors import OutTensor, Segment
from hpspec.weights.lora.adapter import DIFFUSERS, ORIGINAL, Adapter, Module, Naming
from hpspec.weights.lora.remap import RowMap, Rows, one_module, select

FORMATS = ("same", DIFFUSERS)  # `--to`: the input's own naming, or diffusers'


@dataclass(frozen=True)
class Output:
    tensors: tuple[OutTensor, ...]
    modules: int  # LoRA modules written
    alphas: Mapping[str, Module] = field(default_factory=dict)  # --to diffusers: module -> its `.alpha` source


def copied(path: Path, entry: TensorEntry, name: str) -> OutTensor:
    """A whole tensor of the input file, under `name`."""
    return OutTensor(name, entry.dtype, entry.shape, (Segment(path, entry.begin, entry.end),))


def _up(path: Path, name: str, rows: Sequence[Rows]) -> OutTensor:
    up = rows[0].module.up
    size = up.nbytes // up.shape[0]
    segments = tuple(
        Segment(path, up.begin + r.source * size, up.begin + (r.source + r.end - r.begin) * size) for r in rows
    )
    return OutTensor(name, up.dtype, (sum(r.end - r.begin for r in rows), *up.shape[1:]), segments)


def _module(path: Path, stem: str, pair: Pair, rows: Sequence[Rows], alpha_tensor: bool = True) -> list[OutTensor]:
    """The down, up (and alpha) tensors of one output module."""
    module = one_module(stem, rows)
    weight, alpha = lora_rules().weight, lora_rules().alpha
    out = [
        copied(path, module.down, f"{stem}.{pair.down}.{weight}"),
        _up(path, f"{stem}.{pair.up}.{weight}", rows),
    ]
    if module.alpha is not None and alpha_tensor:
        out.append(copied(path, module.alpha, f"{stem}.{alpha}"))
    return out


def output_tensors(adapter: Adapter, rows: RowMap, pruned_config: Mapping[str, object], family: str, to: str) -> Output:
    """Every output tensor of the remapped adapter, text-encoder keys included (unchanged)."""
    if to not in FORMATS:
        raise LoraError(f"unknown --to {to!r}; known: {', '.join(FORMATS)}")
    diffusers_rows = {n: r for n, r in rows.items() if to == DIFFUSERS or r[0].module.naming.kind == DIFFUSERS}
    original_rows = {n: r for n, r in rows.items() if n not in diffusers_rows}
    tensors, count = [], 0
    alphas: dict[str, Module] = {}
    rules = lora_rules()
    for name, entries in diffusers_rows.items():
        module = one_module(name, entries)
        chosen = select(entries, 0, entries[-1].end)
        if chosen is None or entries[0].begin != 0:
            raise LoraError(f"{adapter.path}: the adapter covers only some rows of {name!r}")
        if to == DIFFUSERS and module.naming.kind != DIFFUSERS:
            stem, pair = Naming(DIFFUSERS, rules.diffusers.written).stem(name), rules.diffusers_pair
        else:
            stem, pair = module.naming.stem(name), module.pair
        if to == DIFFUSERS and module.alpha is not None:
            alphas[name] = module  # diffusers' names carry no alpha: it goes to peft's config
        tensors += _module(adapter.path, stem, pair, chosen, alpha_tensor=to != DIFFUSERS)
        count += 1
    if original_rows:
        written = _original(adapter, original_rows, pruned_config, family)
        tensors += written.tensors
        count += written.modules
    tensors += [copied(adapter.path, adapter.header.tensors[k], k) for k in adapter.text_keys]
    return Output(tuple(tensors), count, alphas)


def _original(adapter: Adapter, rows: RowMap, config: Mapping[str, object], family: str) -> Output:
    """Modules in the pruned model's original layout: each its pieces' rows, in the layout's order."""
    weight = "." + lora_rules().weight
    used: set[str] = set()
    tensors: list[OutTensor] = []
    count = 0
    for name, pieces in to_original(expand(key_map_of_family(family), dict(config))).items():
        present = [p for p in pieces if p.name.removesuffix(weight) in rows]
        if not name.endswith(weight) or not present:
            continue
        chosen: list[Rows] = []
        for piece in pieces:
            entries = rows.get(piece.name.removesuffix(weight), [])
            begin = 0 if piece.begin is None else piece.begin
            end = entries[-1].end if piece.end is None and entries else (piece.end or 0)
            found = select(entries, begin, end) if entries else None
            if found is None:
                raise LoraError(
                    f"{adapter.path}: after pruning, {name.removesuffix(weight)!r} keeps only some of its rows "
                    f"({piece.name.removesuffix(weight)!r} is gone); the original layout cannot hold it: use --to diffusers"
                )
            chosen += found
            used.add(piece.name.removesuffix(weight))
        module: Module = one_module(name, chosen)
        tensors += _module(adapter.path, module.naming.stem(name.removesuffix(weight)), module.pair, chosen)
        count += 1
    left = sorted(set(rows) - used)
    if left:
        raise LoraError(f"{adapter.path}: {left[0]!r} has no place in the pruned model's {ORIGINAL} layout")
    return Output(tuple(tensors), count)
