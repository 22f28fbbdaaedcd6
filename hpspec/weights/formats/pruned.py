"""pruned: the prune stage on a single file or a GGUF, and into any layout (`--to`).

A single safetensors file in another layout (bfl, sai, comfyui) becomes a checkpoint `Source`
whose tensors are already named as diffusers names them (`open_any`): the same `pruned_layout`
and plan checks then apply as to a diffusers folder, and `write_pruned` writes a diffusers folder
from it. For a single-file output (`write_layout`), the pruned diffusers-named tensors are renamed
into the output layout by the key map (`layout_tensors`) and copied as byte ranges into one
.safetensors file, or quantized into one .gguf. A GGUF input is pruned as GGUF (`prune_gguf`):
whole blocks dropped and renumbered, its quantized bytes copied as they are.

Part drops need hpspec's loader (its identity stand-ins), so they are refused for any layout but
diffusers, naming the parts.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

from hpspec.core.errors import LayoutError
from hpspec.core.io import dumps_json, file_states, parse_json
from hpspec.core.paths import CONFIG_NAME, GGUF_SUFFIX, PLAN_NAME, SAFETENSORS_SUFFIX, SINGLE_FILE_NAME
from hpspec.model.formats.detect import DIFFUSERS
from hpspec.model.formats.gguf_header import read_gguf
from hpspec.model.formats.graph import foreign_kind, graph_of_gguf, graph_of_single_file
from hpspec.model.formats.infer import METADATA_CONFIG
from hpspec.model.formats.keymap import block_indices, renumber
from hpspec.model.formats.rules import key_map_of_family
from hpspec.model.graph import ModelGraph
from hpspec.model.safetensors_header import read_header
from hpspec.model.targets import require_regular
from hpspec.plan.plan import Plan
from hpspec.weights.checkpoint.source import Source, check_fingerprint, open_source, refuse_lora, source_sha256
from hpspec.weights.checkpoint.writer import Written, checked_layout, provenance_metadata
from hpspec.weights.formats.convert import (
    TARGETS,
    Model,
    layout_tensors,
    metadata,
    open_model,
    require_sources_unchanged,
    write_safetensors,
)
from hpspec.weights.formats.gguf import parse_type, rewrite_gguf, write_gguf

GGUF = "gguf"
DEFAULT_GGUF_TYPE = "f16"  # `--to gguf` from a safetensors input


def parse_to(text: str) -> str:
    """`--to`: diffusers, bfl, sai, comfyui, or gguf[:TYPE] (lowercased); LayoutError otherwise."""
    name = text.strip().lower()
    if name == GGUF or name.startswith(GGUF + ":"):
        return name if name == GGUF else f"{GGUF}:{parse_type(name)}"
    if name not in TARGETS:
        raise LayoutError(f"unknown layout {text!r} for --to; known: {', '.join(TARGETS)}, gguf[:TYPE]")
    return name


def open_any(path: Path) -> Source:
    """A diffusers folder (`open_source`), or a single safetensors file in any known layout."""
    path = Path(path)
    _refuse_adapter(path)
    if foreign_kind(path) is None:
        return open_source(path)
    if foreign_kind(path) == GGUF:
        raise LayoutError(f"{path}: a GGUF file; it is pruned as GGUF (prune_gguf)")
    require_regular(path)
    model = open_model(path)
    tensors = sorted(model.tensors.values(), key=lambda t: t.segments[0].begin if t.segments else 0)
    graph = graph_of_single_file(path)
    return Source(path, path, model.config, (read_header(path),), graph, tuple(tensors), model.layout)


def source_graph(path: Path) -> ModelGraph:
    """The graph of a model the prune stage reads, as it reads it: a GGUF, a single file, a folder."""
    _refuse_adapter(path)
    return graph_of_gguf(path) if foreign_kind(path) == GGUF else open_any(path).graph


def _refuse_adapter(path: Path) -> None:
    """A LoRA file, said as such before its names are read as a layout (they are of none)."""
    if path.is_file() and path.suffix.lower() == SAFETENSORS_SUFFIX:
        refuse_lora(read_header(path))


def refuse_part_drops(plan: Plan, to: str) -> None:
    """Part drops are rebuilt by hpspec's loader only: an error for any output but a diffusers folder."""
    parts = [f"{op.stack}[{op.block}].{op.part}" for op in plan.ops if op.kind == "drop_part"]
    if parts and to != DIFFUSERS:
        shown = ", ".join(parts[:4]) + (f" and {len(parts) - 4} more" if len(parts) > 4 else "")
        raise LayoutError(
            f"the plan drops parts of blocks ({shown}): only hpspec's loader rebuilds those (identity stand-ins "
            f"where the parts were), which no {to} loader has; write --to diffusers and load it with "
            "hpspec.load_pretrained, or drop whole blocks only"
        )


def write_layout(plan: Plan, source: Source, out: Path, to: str) -> Written:
    """The pruned model as one file in layout `to` (bfl, sai, comfyui, gguf[:TYPE]) in the directory
    `out`, with config.json and plan.json beside it."""
    states = file_states(source.shards)  # checked again after the last byte is read
    layout, params = checked_layout(plan, source)
    tensors = {t.name: t for shard in layout for t in shard}
    config = {**source.config, **plan.config}
    model = Model(plan.target.family, config, tensors, source.layout, states=states)
    hashes = {p.name: source_sha256(p) for p in source.shards}
    provenance = provenance_metadata(plan, hashes)
    if to.startswith(GGUF):
        name = SINGLE_FILE_NAME + GGUF_SUFFIX
        kind = to.partition(":")[2] or DEFAULT_GGUF_TYPE
        write_gguf(model, out / name, kind, fields=provenance)
        count = len(tensors)
    else:
        name = SINGLE_FILE_NAME + SAFETENSORS_SUFFIX
        written = layout_tensors(model, to)
        write_safetensors(out / name, written, {**metadata(model, to), **provenance})
        require_sources_unchanged(states)  # before run_stage renames the output into place
        read_header(out / name)  # the output is read back through the same validation as any input
        count = len(written)
    _beside(out, config, plan)
    return Written((name,), count, params, (out / name).stat().st_size, hashes)


def prune_gguf(plan: Plan, path: Path, out: Path, to: str) -> Written:
    """Whole-block drops on a GGUF (quantized or not), renumbered, its bytes copied as they are."""
    path = Path(path)
    states = file_states([path])  # checked again when the copy is done, before it is committed
    found = read_gguf(path)
    if not to.startswith(GGUF) or to.partition(":")[2] not in ("", *{t.type for t in found.tensors.values()}):
        raise LayoutError(
            f"{path}: a GGUF input is written as GGUF, its quantized bytes as they are (`--to gguf`); "
            f"--to {to} would need dequantizing it, which hpspec does not do"
        )
    check_fingerprint(plan, graph_of_gguf(path), str(path))
    refuse_part_drops(plan, GGUF)
    if any(op.kind == "convert_last_block" for op in plan.ops):
        raise LayoutError(
            f"{path}: the plan drops SD3's last block, whose successor needs its modulation rows converted; "
            "that is not done on a GGUF: keep the last block, or prune the safetensors model"
        )
    rule = key_map_of_family(found.arch)
    counts = block_indices(rule, list(found.tensors))
    kept = _kept_numbers(plan, counts)
    written = parse_json(found.fields.get(METADATA_CONFIG) or "{}", str(found.path), METADATA_CONFIG, LayoutError)
    config = {**written, **plan.config}
    hashes = {path.name: source_sha256(path)}
    strings = {**provenance_metadata(plan, hashes), METADATA_CONFIG: json.dumps(config, sort_keys=True)}
    name = SINGLE_FILE_NAME + GGUF_SUFFIX
    rewrite_gguf(path, out / name, lambda tensor: renumber(rule, tensor, kept), strings=strings, states=states)
    _beside(out, config, plan)
    tensors = sum(1 for t in found.tensors if renumber(rule, t, kept) is not None)
    return Written((name,), tensors, plan.params.after_prune, (out / name).stat().st_size, hashes)


def _kept_numbers(plan: Plan, counts: Mapping[str, tuple[int, ...]]) -> dict[str, list[int]]:
    """Per count key (num_layers, ...), the file's block numbers the plan keeps, in their new order."""
    module_count = {
        g.diffusers.split(".", 1)[0]: g.count
        for g in key_map_of_family(plan.target.family).groups
        if g.count is not None
    }
    kept: dict[str, list[int]] = {}
    for stack in plan.stacks.values():
        key = module_count[stack.module]
        numbers = counts.get(key, ())
        order = sorted(stack.index_map.items(), key=lambda item: item[1])
        kept[key] = [numbers[int(old)] for old, _ in order]
    return kept


def _beside(out: Path, config: Mapping[str, object], plan: Plan) -> None:
    """config.json (what `from_single_file(FILE, config=DIR)` reads) and plan.json beside the file."""
    (out / CONFIG_NAME).write_text(dumps_json(dict(config)), encoding="utf-8")
    (out / PLAN_NAME).write_text(plan.to_json(), encoding="utf-8")
