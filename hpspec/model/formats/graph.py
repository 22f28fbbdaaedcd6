"""graph: the model graph of a single file (bfl, sai, comfyui-prefixed) or a GGUF, from its header alone.

The diffusers name, shape and dtype of every transformer tensor follow from the key map (a fused
tensor's rows are the sum of its slices'), so `hpspec check` and `plan` read a single file with no
config.json, and the prune stage builds the same graph (the same fingerprint) from the same
function. A GGUF's quantized types have no safetensors dtype: the graph says the float type of
the source the file was made from, BF16 where it cannot tell (its byte counts are then those of
the unquantized model).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from hpspec.core.errors import LayoutError
from hpspec.core.paths import GGUF_SUFFIX, SAFETENSORS_SUFFIX, WEIGHTS_INDEX_SUFFIX
from hpspec.model.formats.detect import DIFFUSERS, SingleFile, detect_file, layout_of, refuse_unreadable
from hpspec.model.formats.gguf_header import gguf_config, is_gguf, read_gguf
from hpspec.model.formats.keymap import block_indices, expand, to_diffusers
from hpspec.model.formats.rules import key_map_of_family
from hpspec.model.graph import ModelGraph, graph_from_tensors
from hpspec.model.safetensors_header import read_header

TensorTable = dict[str, tuple[tuple[int, ...], str]]  # diffusers name -> (shape, dtype)
GGUF_DTYPES = {"f32": "F32", "f16": "F16", "bf16": "BF16"}  # GGML float types as safetensors dtypes


def foreign_kind(path: Path) -> str | None:
    """`gguf`, `single` (a safetensors file not in diffusers' plain layout) or None (read as diffusers)."""
    path = Path(path)
    try:
        regular = path.is_file()
    except OSError:  # a name the system cannot look up (ENAMETOOLONG): not a file here
        return None
    if not regular or path.name.endswith(WEIGHTS_INDEX_SUFFIX):
        return None
    if path.suffix.lower() == GGUF_SUFFIX or is_gguf(path):
        return "gguf"
    if path.suffix.lower() != SAFETENSORS_SUFFIX:
        return None
    refuse_unreadable(path)
    layout, prefix = layout_of(read_header(path))
    return "single" if layout != DIFFUSERS or prefix else None


def diffusers_tensors(found: SingleFile) -> TensorTable:
    """Every transformer tensor of a single file by its diffusers name, with shape and dtype."""
    table = {n: (e.shape, e.dtype) for n, e in found.tensors.items()}
    if found.rule is None:
        return table
    return _through_key_map(table, found.family, found.config, found.counts, str(found.header.path))


def _through_key_map(
    table: TensorTable,
    family: str,
    config: Mapping[str, object],
    counts: Mapping[str, tuple[int, ...]],
    where: str,
) -> TensorTable:
    mapping = to_diffusers(expand(key_map_of_family(family), config, counts))
    missing = sorted({s.name for slices in mapping.values() for s in slices} - set(table))
    if missing:
        raise LayoutError(f"{where}: {len(missing)} tensors the key map needs are missing, e.g. {missing[0]!r}")
    out: TensorTable = {}
    for name, slices in mapping.items():
        shape, dtype = table[slices[0].name]
        rows = sum(table[s.name][0][0] if s.begin is None or s.end is None else s.end - s.begin for s in slices)
        out[name] = ((rows, *shape[1:]) if shape else shape, dtype)
    return out


def graph_of_single_file(path: Path, name: str | None = None) -> ModelGraph:
    """The graph of a single safetensors file in any known layout."""
    found = detect_file(path)
    label = name or Path(path).stem
    return graph_from_tensors(found.family, diffusers_tensors(found), label, f"safetensors:{path}", found.config)


def graph_of_gguf(path: Path, name: str | None = None) -> ModelGraph:
    """The graph of a GGUF file (flux or sd3), from its header."""
    found = read_gguf(path)
    inferred = gguf_config(found)
    counts = block_indices(key_map_of_family(found.arch), list(found.tensors))
    floats = {t.type for t in found.tensors.values() if t.type in GGUF_DTYPES}
    dtype = "BF16" if "bf16" in floats or not floats else GGUF_DTYPES[sorted(floats)[0]]
    table = {n: (t.shape, GGUF_DTYPES.get(t.type, dtype)) for n, t in found.tensors.items()}
    tensors = _through_key_map(table, found.arch, inferred.config, counts, str(path))
    return graph_from_tensors(found.arch, tensors, name or Path(path).stem, f"gguf:{path}", inferred.config)


def graph_of_file(path: Path, name: str | None = None) -> ModelGraph:
    """`graph_of_gguf` or `graph_of_single_file`, by what the file is."""
    return graph_of_gguf(path, name) if foreign_kind(path) == "gguf" else graph_of_single_file(path, name)
