"""keymap: a layout's key map expanded for one model, as row slices between tensor names.

`expand` turns the data of a key map (`bfl.toml`, `sai.toml`) into one `Fused` per tensor of the
original layout for a given config; `to_original` and `to_diffusers` give, for every tensor of the
target naming, the row slices of source tensors whose concatenation it is. Both directions are
therefore a list of contiguous row ranges, which a writer copies as byte ranges. Nothing here
reads a file or imports torch.

    >>> fused = expand(key_map("bfl"), {"num_attention_heads": 1, "attention_head_dim": 2, "num_layers": 1, "num_single_layers": 0})
    >>> to_diffusers(fused)["transformer_blocks.0.attn.to_k.weight"]
    (Slice(name='double_blocks.0.img_attn.qkv.weight', begin=2, end=4),)
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from hpspec.core.errors import ArchitectureDataError
from hpspec.model.arch import evaluate
from hpspec.model.formats.rules import Group, KeyMap, key_map

INDEX = "{i}"


@dataclass(frozen=True)
class Slice:
    """Rows [begin, end) of the tensor `name`; None: the whole tensor."""

    name: str
    begin: int | None = None
    end: int | None = None


@dataclass(frozen=True)
class Fused:
    """One tensor of the original layout: its diffusers slices, concatenated in order."""

    original: str
    pieces: tuple[Slice, ...]


def facts(rule: KeyMap, config: Mapping[str, Any]) -> dict[str, Any]:
    """The config with the key map's [derived] values added."""
    names = dict(config)
    for key, expression in rule.derived.items():
        names[key] = evaluate(expression, names)
    return names


def expand(
    rule: KeyMap, config: Mapping[str, Any], index: Mapping[str, Sequence[int]] | None = None
) -> tuple[Fused, ...]:
    """Every tensor of the original layout for `config`. `index[count]` maps diffusers block i to the
    original layout's block number (a file with gaps); by default they are equal."""
    names = facts(rule, config)
    out: list[Fused] = []
    for group in rule.groups:
        for i in _indices(group, names):
            local = {**names, "i": i}
            if not evaluate(group.when, local):
                continue
            number = (
                i
                if i is None or index is None or group.count is None or group.count not in index
                else index[group.count][i]
            )
            out.extend(_rows(group, local, i, number))
    return tuple(out)


def _indices(group: Group, names: Mapping[str, Any]) -> Sequence[int | None]:
    if group.count is None:
        return (None,)
    count = names.get(group.count)
    if not isinstance(count, int):
        raise ArchitectureDataError(f"key map group {group.original!r}: config has no count {group.count!r}")
    return range(count)


def _rows(group: Group, names: Mapping[str, Any], i: int | None, number: int | None) -> list[Fused]:
    original = group.original.replace(INDEX, str(number))
    diffusers = group.diffusers.replace(INDEX, str(i))
    rows = []
    for row in group.tensors:
        for suffix in group.suffixes:
            tail = f".{suffix}" if suffix else ""
            pieces = tuple(
                Slice(
                    f"{diffusers}{p.name}{tail}",
                    None if p.begin is None else int(evaluate(p.begin, names)),
                    None if p.end is None else int(evaluate(p.end, names)),
                )
                for p in row.pieces
            )
            rows.append(Fused(f"{original}{row.original}{tail}", pieces))
    return rows


def to_original(fused: Sequence[Fused]) -> dict[str, tuple[Slice, ...]]:
    """Original-layout name -> the diffusers slices it is made of."""
    return {f.original: f.pieces for f in fused}


def to_diffusers(fused: Sequence[Fused]) -> dict[str, tuple[Slice, ...]]:
    """Diffusers name -> the original-layout slices it is made of, in its own row order."""
    parts: dict[str, list[tuple[int, Slice]]] = {}
    for f in fused:
        offset = 0
        for piece in f.pieces:
            if piece.begin is None or piece.end is None:  # a whole tensor, renamed
                parts.setdefault(piece.name, []).append((0, Slice(f.original)))
                continue
            size = piece.end - piece.begin
            parts.setdefault(piece.name, []).append((piece.begin, Slice(f.original, offset, offset + size)))
            offset += size
    out = {}
    for name, found in parts.items():
        found.sort(key=lambda item: item[0])
        _check_tiles(name, found)
        out[name] = tuple(s for _, s in found)
    return out


def _check_tiles(name: str, found: Sequence[tuple[int, Slice]]) -> None:
    """The slices of one diffusers tensor cover its rows once each, without gaps (a data bug otherwise)."""
    if len(found) == 1:
        return
    cursor = 0
    for begin, piece in found:
        if piece.begin is None or piece.end is None or begin != cursor:
            raise ArchitectureDataError(f"key map: the pieces of {name!r} do not tile its rows (at row {cursor})")
        cursor += piece.end - piece.begin


def block_pattern(template: str) -> re.Pattern[str]:
    """`double_blocks.{i}.` -> a pattern whose group 1 is the block number."""
    return re.compile("^" + re.escape(template).replace(re.escape(INDEX), r"(\d+)"))


def block_indices(rule: KeyMap, names: Sequence[str], side: str = "original") -> dict[str, tuple[int, ...]]:
    """The block numbers present, per count key (`num_layers`, ...), sorted; side: original|diffusers."""
    found: dict[str, set[int]] = {}
    for group in rule.groups:
        if group.count is None:
            continue
        pattern = block_pattern(group.original if side == "original" else group.diffusers)
        numbers = found.setdefault(group.count, set())
        for name in names:
            match = pattern.match(name)
            if match:
                numbers.add(int(match.group(1)))
    return {key: tuple(sorted(numbers)) for key, numbers in found.items()}


def renumber(rule: KeyMap, name: str, kept: Mapping[str, Sequence[int]], side: str = "original") -> str | None:
    """`name` with its block renumbered contiguously: `kept[count]` lists the old block numbers kept,
    in order; a block not kept gives None. Names outside the blocks come back as they are.

    >>> renumber(key_map("bfl"), "double_blocks.3.img_mlp.0.weight", {"num_layers": [0, 3]})
    'double_blocks.1.img_mlp.0.weight'
    """
    for group in rule.groups:
        if group.count is None:
            continue
        template = group.original if side == "original" else group.diffusers
        match = block_pattern(template).match(name)
        if match is None:
            continue
        numbers = list(kept.get(group.count, ()))
        old = int(match.group(1))
        if group.count not in kept:
            return name
        if old not in numbers:
            return None
        return template.replace(INDEX, str(numbers.index(old))) + name[match.end() :]
    return name


__all__ = [
    "Fused",
    "Slice",
    "block_indices",
    "block_pattern",
    "expand",
    "facts",
    "key_map",
    "renumber",
    "to_diffusers",
    "to_original",
]
