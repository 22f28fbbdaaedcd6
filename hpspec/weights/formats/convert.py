"""convert: a transformer checkpoint rewritten between key layouts as a byte-range copy.

Single file (bfl, sai, comfyui-prefixed, or diffusers-named) <-> diffusers folder, and any layout
to any other of the same family. Every output tensor is a concatenation of contiguous row ranges
of source tensors (the key map in `hpspec.model.formats`), so the output is a new safetensors
header and then file-to-file copies (`copy_ranges`): peak memory stays flat whatever the
model's size, fp8 bytes are carried as they are. Outputs are written into a temporary sibling and
renamed into place. The safetensors metadata says the layout and the diffusers config.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from hpspec.core.errors import LayoutError
from hpspec.core.io import FileState, atomic_directory, atomic_file, dumps_json, file_states, require_unchanged
from hpspec.core.paths import CONFIG_NAME, WEIGHTS_NAME
from hpspec.model.formats.detect import DIFFUSERS, detect_file
from hpspec.model.formats.infer import METADATA_CONFIG, METADATA_LAYOUT, Inferred, with_hints
from hpspec.model.formats.keymap import Slice, expand, to_diffusers, to_original
from hpspec.model.formats.rules import key_map_of_family, layouts
from hpspec.model.graph import family_of_config
from hpspec.model.safetensors_header import read_header
from hpspec.model.targets import find_transformer, read_config
from hpspec.weights.checkpoint.tensors import OutTensor, Segment, byte_range
from hpspec.weights.checkpoint.writer import copy_ranges, header_bytes, runs

TARGETS = ("diffusers", "bfl", "sai", "comfyui")  # what `--to` names for safetensors outputs


@dataclass(frozen=True)
class Model:
    """A transformer checkpoint as diffusers-named tensors whose bytes lie in source files."""

    family: str
    config: Mapping[str, Any]
    tensors: Mapping[str, OutTensor]  # diffusers name -> its byte ranges in the source
    layout: str  # the source's own layout name (bfl, sai, comfyui, diffusers)
    ignored: Mapping[str, int] = field(default_factory=dict)  # all-in-one files: what was not read
    assumed: tuple[str, ...] = ()  # config facts not read from the shapes
    # Each source file's state (inode, size, times) from before its header was read: a writer checks
    # it again after the last byte is read, before the output is committed. Empty: taken at write start.
    states: Mapping[Path, FileState] = field(default_factory=dict)


@dataclass(frozen=True)
class Converted:
    out: Path
    layout: str
    family: str
    config: Mapping[str, Any]
    tensors: int
    nbytes: int
    dtypes: tuple[str, ...]
    ignored: Mapping[str, int]
    assumed: tuple[str, ...]


# --------------------------------------------------------------------------------------------
# Reading: any input as diffusers-named byte ranges


def open_model(path: Path, hints: Mapping[str, Any] | None = None) -> Model:
    """A single safetensors file in any known layout, or a diffusers transformer directory.

    `hints` (a config.json, as diffusers' `from_single_file(config=...)` takes) supplies what a
    single file's shapes cannot say: the head width where there is no qk-norm, the rotary axes."""
    path = Path(path)
    if path.is_dir():
        return _open_diffusers(path)
    states = file_states([path])
    found = detect_file(path)
    written = found.header.metadata.get(METADATA_CONFIG)
    hints = hints or (_json_object(written) if written else None)  # a file hpspec wrote says its config
    if hints:
        better = with_hints(Inferred(found.config, found.assumed), hints, str(path))
        found = replace(found, config=better.config, assumed=better.assumed)
    raw = {n: OutTensor(n, e.dtype, e.shape, (Segment(path, e.begin, e.end),)) for n, e in found.tensors.items()}
    if found.layout == DIFFUSERS:
        tensors = raw
    else:
        assert found.rule is not None
        mapping = to_diffusers(expand(found.rule, found.config, found.counts))
        tensors = assemble(mapping, raw, f"{path} ({found.layout} layout)")
    return Model(found.family, found.config, tensors, found.layout_name, found.ignored, found.assumed, states)


def _json_object(text: str) -> dict[str, Any] | None:
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):  # not JSON, an integer past Python's digit limit, nesting too deep
        return None
    return value if isinstance(value, dict) else None


def _open_diffusers(path: Path) -> Model:
    config_path, shards = find_transformer(path)
    if config_path is None:
        raise LayoutError(f"{path}: a diffusers folder needs its {CONFIG_NAME}")
    config = read_config(config_path)
    family = family_of_config(config, str(config_path))
    states = file_states(shards)
    tensors = {}
    for shard in shards:
        for name, e in read_header(shard).tensors.items():
            tensors[name] = OutTensor(name, e.dtype, e.shape, (Segment(shard, e.begin, e.end),))
    return Model(family, config, tensors, DIFFUSERS, states=states)


# --------------------------------------------------------------------------------------------
# Row slices -> byte ranges


def assemble(
    mapping: Mapping[str, Sequence[Slice]], sources: Mapping[str, OutTensor], where: str
) -> dict[str, OutTensor]:
    """Each target tensor of `mapping` from row slices of `sources`; every source used, none missing."""
    missing = sorted({s.name for slices in mapping.values() for s in slices} - set(sources))
    if missing:
        raise LayoutError(f"{where}: {len(missing)} tensors the key map needs are missing: {_some(missing)}")
    used = {s.name for slices in mapping.values() for s in slices}
    unknown = sorted(set(sources) - used)
    if unknown:
        raise LayoutError(f"{where}: {len(unknown)} tensors the key map does not know: {_some(unknown)}")
    return {
        name: _joined(name, [_cut(sources[s.name], s, where) for s in slices], where)
        for name, slices in mapping.items()
    }


def _some(names: Sequence[str], shown: int = 4) -> str:
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return ", ".join(repr(n) for n in names[:shown]) + more


def _cut(tensor: OutTensor, piece: Slice, where: str) -> OutTensor:
    """Rows [begin, end) of `tensor` (row-major: one contiguous byte range per source segment)."""
    if piece.begin is None or piece.end is None:
        return tensor
    rows = tensor.shape[0] if tensor.shape else 0
    if not 0 <= piece.begin < piece.end <= rows:
        raise LayoutError(f"{where}: {tensor.name!r} has {rows} rows; the key map wants rows {piece.begin}:{piece.end}")
    row = tensor.nbytes // rows
    return OutTensor(
        tensor.name,
        tensor.dtype,
        (piece.end - piece.begin, *tensor.shape[1:]),
        byte_range(tensor.segments, piece.begin * row, piece.end * row),
    )


def _joined(name: str, parts: Sequence[OutTensor], where: str) -> OutTensor:
    first = parts[0]
    if len(parts) == 1:
        return OutTensor(name, first.dtype, first.shape, first.segments)
    for part in parts[1:]:
        if part.dtype != first.dtype or part.shape[1:] != first.shape[1:]:
            raise LayoutError(
                f"{where}: cannot fuse {first.name!r} ({first.dtype} {list(first.shape)}) with {part.name!r} ({part.dtype} {list(part.shape)}) into {name!r}"
            )
    rows = sum(p.shape[0] for p in parts)
    return OutTensor(name, first.dtype, (rows, *first.shape[1:]), tuple(s for p in parts for s in p.segments))


# --------------------------------------------------------------------------------------------
# Writing one layout


def layout_tensors(model: Model, to: str) -> list[OutTensor]:
    """The output tensors of `model` in layout `to` (diffusers, bfl, sai, comfyui), in file order."""
    if to == DIFFUSERS:  # in source order: the copy reads each file front to back, in few runs
        return sorted(
            model.tensors.values(),
            key=lambda t: (str(t.segments[0].path), t.segments[0].begin) if t.segments else ("", 0),
        )
    rule = key_map_of_family(model.family)
    prefix = ""
    if to in {r.name for r in layouts().prefixes}:
        prefix = next(r.prefix for r in layouts().prefixes if r.name == to)
    elif to != rule.layout:
        known = ", ".join(
            t for t in TARGETS if t in (DIFFUSERS, rule.layout) or t in {r.name for r in layouts().prefixes}
        )
        raise LayoutError(f"a {model.family} transformer cannot be written in the {to!r} layout; it can be: {known}")
    mapping = to_original(expand(rule, model.config))
    tensors = assemble(mapping, model.tensors, f"{model.family} -> {to}")
    return [_renamed(t, prefix + t.name) for t in tensors.values()]


def _renamed(tensor: OutTensor, name: str) -> OutTensor:
    return OutTensor(name, tensor.dtype, tensor.shape, tensor.segments)


def metadata(model: Model, to: str) -> dict[str, str]:
    """What a loader needs beside the tensors: the layout, and the diffusers config."""
    return {"format": "pt", METADATA_LAYOUT: to, METADATA_CONFIG: json.dumps(dict(model.config), sort_keys=True)}


def convert(source: Path, out: Path, to: str, force: bool = False, hints: Mapping[str, Any] | None = None) -> Converted:
    """Rewrite `source` (a file or diffusers folder) in layout `to`: a folder for diffusers, else one file."""
    if to not in TARGETS:
        raise LayoutError(f"unknown layout {to!r}; known: {', '.join(TARGETS)}")
    model = open_model(source, hints)
    return write_model(model, Path(out), to, force)


def write_model(model: Model, out: Path, to: str, force: bool = False) -> Converted:
    tensors = layout_tensors(model, to)
    states = source_states(model)
    if to == DIFFUSERS:
        with atomic_directory(out, force) as tmp:
            write_safetensors(tmp / f"{WEIGHTS_NAME}.safetensors", tensors, metadata(model, to))
            (tmp / CONFIG_NAME).write_text(dumps_json(dict(model.config)), encoding="utf-8")
            require_sources_unchanged(states)
    else:
        with atomic_file(out, force) as tmp:
            write_safetensors(tmp, tensors, metadata(model, to))
            require_sources_unchanged(states)
    dtypes = tuple(sorted({t.dtype for t in tensors}))
    nbytes = sum(t.nbytes for t in tensors)
    return Converted(out, to, model.family, model.config, len(tensors), nbytes, dtypes, model.ignored, model.assumed)


def source_states(model: Model) -> dict[Path, FileState]:
    """The state of every file `model`'s bytes come from: as recorded when it was opened, else now."""
    if model.states:
        return dict(model.states)
    return file_states(sorted({s.path for t in model.tensors.values() for s in t.segments}))


def require_sources_unchanged(states: dict[Path, FileState]) -> None:
    """After the last byte is read and before the output is committed: a source rewritten, replaced
    or removed meanwhile is refused (LayoutError), and the caller's atomic output is not committed."""
    require_unchanged(states, "source checkpoint", LayoutError)


def write_safetensors(path: Path, tensors: Sequence[OutTensor], meta: Mapping[str, str]) -> None:
    """A new header, then each tensor's byte ranges copied file-to-file in order."""
    raw = header_bytes(tensors, meta)
    with path.open("wb") as handle:
        handle.write(len(raw).to_bytes(8, "little") + raw)
    with path.open("r+b") as destination:
        destination.seek(0, os.SEEK_END)
        copy_ranges(runs(tensors), destination.fileno(), lambda _: None)
