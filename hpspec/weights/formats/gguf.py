"""gguf: GGUF files as ComfyUI-GGUF (city96) and diffusers read them, written and read streamed.

Written: architecture key `flux` or `sd3`, tensor names in the original layout (bfl, sai), one
tensor at a time and a few MB of its rows at a time: read the byte ranges, widen to float32,
quantize with the `gguf` package's own `gguf.quants.quantize` (the K-quants: `kquants`), write
(peak memory: tens of MB, whatever the model's size). Bytes already in the wanted type are copied
as they are (`checkpoint.writer.copy_ranges`); bf16 -> f16 is cast in integer arithmetic, exactly
as through float32 (`floats.bf16_to_f16`), 1 MB at a time.
Which tensors stay unquantized follows city96's converter and llama.cpp patch: 1-D and tiny
tensors in F32 (F16 for float16 sources), the embedders and the final layer, and anything not 2-D or whose rows do not fill
whole quantization blocks, in the float type of the source (F16 for float32 sources).

Read: the header through `gguf.GGUFReader`; tensors are byte ranges of the file, so renaming and
whole-block drops copy quantized bytes as they are, with no dequantization.

Type names are written lowercase (`q8_0`) and read case-insensitively. numpy and gguf are imported
where used.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

from hpspec.core.errors import LayoutError
from hpspec.core.io import FileState, atomic_file, file_states, parse_json
from hpspec.model.formats.gguf_header import read_gguf
from hpspec.model.formats.infer import METADATA_CONFIG
from hpspec.model.formats.keymap import block_indices, renumber
from hpspec.model.formats.rules import key_map_of_family
from hpspec.weights.checkpoint.tensors import OutTensor, Segment, byte_range
from hpspec.weights.checkpoint.writer import copy_ranges
from hpspec.weights.formats.convert import Model, layout_tensors, open_model, require_sources_unchanged, source_states
from hpspec.weights.formats.floats import bf16_to_f16, decode, read_into
from hpspec.weights.formats.kquants import quantize_q4_k, quantize_q5_k, quantize_q6_k

TYPES = ("f32", "f16", "bf16", "q8_0", "q5_0", "q5_1", "q4_0", "q4_1", "q4_k", "q5_k", "q6_k")  # what hpspec writes
FLOAT_TYPES = ("f32", "f16", "bf16")
TINY = 1024  # tensors of at most this many elements stay in F32 (city96's QUANTIZATION_THRESHOLD)
KEEP = {  # name prefixes kept unquantized, per architecture (city96's llama.cpp patch)
    "flux": ("txt_in.", "img_in.", "time_in.", "vector_in.", "guidance_in.", "final_layer."),
    "sd3": ("final_layer.", "t_embedder.", "y_embedder.", "x_embedder.", "context_embedder.", "pos_embed"),
}
SAME_TYPE = {"F32": "f32", "F16": "f16", "BF16": "bf16"}  # safetensors dtype -> the GGML type of the same bytes
ENCODERS = {"q4_k": quantize_q4_k, "q5_k": quantize_q5_k, "q6_k": quantize_q6_k}  # hpspec's own (kquants)
CHUNK_ELEMENTS = 4 << 20  # rows are read and quantized about this many elements at a time
CAST_ELEMENTS = 1 << 18  # bf16 -> f16 is read, cast and written this many elements at a time
WRITE_BYTES = 1 << 20  # the most one write() of the output is given


def parse_type(text: str) -> str:
    """`Q8_0`, `q8_0`, `gguf:Q8_0` -> `q8_0`; LayoutError for a type hpspec cannot write."""
    name = text.lower().removeprefix("gguf:").strip()
    if name not in TYPES:
        hint = (
            " (hpspec writes q4_k, q5_k, q6_k; the gguf package can read the other K-quants but not write them)"
            if name.endswith("_k") or "_k_" in name
            else ""
        )
        raise LayoutError(f"GGUF type {text!r} cannot be written{hint}; known: {', '.join(TYPES)}")
    return name


def _ggml(name: str) -> Any:
    import gguf

    return gguf.GGMLQuantizationType[name.upper()]


# --------------------------------------------------------------------------------------------
# Writing


def tensor_type(
    arch: str, name: str, shape: Sequence[int], source_dtype: str, wanted: str, keep_float: bool = False
) -> str:
    """The GGML type one tensor is written in, for a requested file type (city96's rules);
    `keep_float`: a tensor the spec's `quantize ... except` keeps unquantized."""
    import gguf

    fallback = (
        "bf16"
        if source_dtype == "BF16" and wanted not in FLOAT_TYPES
        else ("f16" if wanted not in FLOAT_TYPES else wanted)
    )
    if len(shape) <= 1 or math.prod(shape) <= TINY:
        return "f32" if source_dtype in ("F32", "BF16") or wanted == "f32" else fallback
    if wanted in FLOAT_TYPES:
        return wanted
    block = gguf.GGML_QUANT_SIZES[_ggml(wanted)][0]
    if keep_float or len(shape) != 2 or shape[-1] % block or name.startswith(KEEP.get(arch, ())):
        return fallback
    return wanted


def write_gguf(
    model: Model,
    out: Path,
    wanted: str,
    force: bool = False,
    fields: Mapping[str, str] | None = None,
    keep: Collection[str] = (),
) -> Path:
    """`model` as one GGUF file of type `wanted`, names in the family's original layout; `fields`
    are extra string fields (the prune stage's provenance); `keep`: diffusers tensor names kept
    unquantized, and with them every tensor fused from any of their rows (BFL's q/k/v)."""
    import gguf

    wanted = parse_type(wanted)
    rule = key_map_of_family(model.family)
    arch = model.family
    tensors = layout_tensors(model, rule.layout)
    floats = _fused_from(tensors, [model.tensors[name] for name in keep])
    types = [tensor_type(arch, t.name, t.shape, t.dtype, wanted, t.name in floats) for t in tensors]
    states = source_states(model)
    with atomic_file(out, force) as tmp:
        writer = gguf.GGUFWriter(path=None, arch=arch)
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        writer.add_file_type(_file_type(wanted))
        writer.add_string(METADATA_CONFIG, _config_json(model.config))
        for key, value in (fields or {}).items():
            writer.add_string(key, value)
        for tensor, kind in zip(tensors, types):
            writer.add_tensor_info(
                tensor.name, tensor.shape, _np_float32(), _nbytes(tensor.shape, kind), raw_dtype=_ggml(kind)
            )
        writer.write_header_to_file(path=tmp)
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for tensor, kind in zip(tensors, types):
            _write_tensor(writer, tensor, kind)
        writer.close()
        require_sources_unchanged(states)
    return Path(out)


def _write_tensor(writer: Any, tensor: OutTensor, kind: str) -> None:
    """One tensor cast or quantized and written a few rows at a time (blocks never span rows, so the
    bytes are those of quantizing it whole), aligned as the gguf writer aligns them."""
    (fout,) = writer.fout
    writer.write_padding(fout, fout.tell())
    if SAME_TYPE.get(tensor.dtype) == kind:  # its bytes as they are
        fout.flush()
        copy_ranges(tensor.segments, fout.fileno(), lambda _: None)
    elif (tensor.dtype, kind) == ("BF16", "f16"):
        _write_bf16_as_f16(fout, tensor)
    else:
        _write_quantized(fout, tensor, kind)
    writer.write_padding(fout, _nbytes(tensor.shape, kind))


def _write_quantized(fout: Any, tensor: OutTensor, kind: str) -> None:
    """Rows read into one buffer, widened into another (both reused: no fresh pages per chunk),
    quantized and written."""
    import gguf
    import numpy as np

    rows = tensor.shape[0] if tensor.shape else 1
    per_row = math.prod(tensor.shape[1:])
    step = min(rows, max(1, CHUNK_ELEMENTS // max(1, per_row)))
    raw, wide = np.empty(tensor.nbytes // rows * step, np.uint8), np.empty(step * per_row, np.float32)
    for first in range(0, rows, step):
        last = min(rows, first + step)
        segments = _rows(tensor, first, last, rows)
        size = sum(s.end - s.begin for s in segments)
        read_into(segments, raw.data[:size])
        data = decode(raw[:size], tensor.dtype, wide[: (last - first) * per_row])
        data = data.reshape((last - first, *tensor.shape[1:]) if tensor.shape else ())
        if kind in ENCODERS:  # what the gguf package cannot quantize (K-quants)
            encoded = ENCODERS[kind](data)
        else:
            encoded = np.ascontiguousarray(gguf.quants.quantize(data, _ggml(kind)))
        _write_bytes(fout, memoryview(encoded).cast("B"))


def _write_bf16_as_f16(fout: Any, tensor: OutTensor) -> None:
    """bf16 -> f16 through two buffers that stay in a core's cache (`floats.bf16_to_f16`)."""
    import numpy as np

    raw, out = np.empty(CAST_ELEMENTS, np.uint16), np.empty(CAST_ELEMENTS, np.uint16)
    for begin in range(0, tensor.nbytes, CAST_ELEMENTS * 2):
        end = min(tensor.nbytes, begin + CAST_ELEMENTS * 2)
        read_into(byte_range(tensor.segments, begin, end), raw.data.cast("B"))
        count = (end - begin) // 2
        fout.write(memoryview(bf16_to_f16(raw[:count], out[:count])).cast("B"))


def _write_bytes(fout: Any, data: memoryview) -> None:
    for begin in range(0, len(data), WRITE_BYTES):  # large writes are slower (see checkpoint.copy_ranges)
        fout.write(data[begin : begin + WRITE_BYTES])


def _fused_from(tensors: Sequence[OutTensor], sources: Sequence[OutTensor]) -> set[str]:
    """Names of `tensors` holding any byte of `sources`."""
    taken = [(s.path, s.begin, s.end) for t in sources for s in t.segments]
    return {
        t.name
        for t in tensors
        if any(s.path == path and s.begin < end and begin < s.end for s in t.segments for path, begin, end in taken)
    }


def _rows(tensor: OutTensor, first: int, last: int, rows: int) -> tuple[Segment, ...]:
    row = tensor.nbytes // rows
    return byte_range(tensor.segments, first * row, last * row)


def convert_to_gguf(
    source: Path, out: Path, wanted: str, force: bool = False, hints: Mapping[str, Any] | None = None
) -> Path:
    """A single file or diffusers folder written as GGUF (`hpspec convert IN --to gguf:q8_0`)."""
    parse_type(wanted)
    return write_gguf(open_model(source, hints), out, wanted, force)


def _config_json(config: Mapping[str, Any]) -> str:
    return json.dumps(dict(config), sort_keys=True)


def _np_float32() -> Any:
    import numpy as np

    return np.dtype(np.float32)


def _file_type(wanted: str) -> int:
    import gguf

    named = {"f32": "ALL_F32", "q4_k": "MOSTLY_Q4_K_S", "q5_k": "MOSTLY_Q5_K_S"}  # every tensor one K type: _S
    return int(gguf.LlamaFileType[named.get(wanted, f"MOSTLY_{wanted.upper()}")])


def _nbytes(shape: Sequence[int], kind: str) -> int:
    import gguf

    block, size = gguf.GGML_QUANT_SIZES[_ggml(kind)]
    return math.prod(shape) // block * size


# --------------------------------------------------------------------------------------------
# Reading, renaming and dropping without dequantizing


def rewrite_gguf(
    source: Path,
    out: Path,
    rename: Callable[[str], str | None],
    force: bool = False,
    strings: Mapping[str, str] | None = None,
    states: dict[Path, FileState] | None = None,
) -> Path:
    """A copy of a GGUF with tensors renamed (None: dropped), quantized bytes copied as they are;
    `strings` replace (or add) string fields. `states`: the source's, taken before the caller read
    it (default: now); checked again before the copy is committed."""
    import gguf

    states = states or file_states([source])
    found = read_gguf(source)
    reader = gguf.GGUFReader(source)
    kept = [(rename(t.name), t) for t in reader.tensors]
    with atomic_file(out, force) as tmp:
        writer = gguf.GGUFWriter(path=None, arch=found.arch)
        _copy_fields(reader, writer, set(strings or ()))
        for key, value in (strings or {}).items():
            writer.add_string(key, value)
        for name, t in kept:
            if name is not None:
                writer.add_tensor_info(
                    name, tuple(found.tensors[t.name].shape), _np_float32(), int(t.n_bytes), raw_dtype=t.tensor_type
                )
        writer.write_header_to_file(path=tmp)
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for name, t in kept:
            if name is not None:
                writer.write_tensor_data(t.data)
        writer.close()
        require_sources_unchanged(states)
    return Path(out)


def _copy_fields(reader: Any, writer: Any, replaced: set[str]) -> None:
    """Every key-value field but the file's own (GGUF.*), the architecture the writer sets, and `replaced`."""
    for name, field in reader.fields.items():
        if name.startswith("GGUF.") or name == "general.architecture" or name in replaced:
            continue
        kind = field.types[0]
        sub = field.types[-1] if len(field.types) > 1 else None
        writer.add_key_value(name, field.contents(), kind, sub_type=sub)


def drop_blocks(source: Path, out: Path, drops: Mapping[str, Collection[int]], force: bool = False) -> Path:
    """Whole blocks dropped from a GGUF (quantized or not) and the rest renumbered contiguously.

    `drops[count]` are block numbers as the file has them, per stack (`num_layers`: FLUX's double or
    SD3's joint blocks; `num_single_layers`). SD3's last block cannot go here: the new last block
    would need the last-block conversion of its rows.
    """
    found = read_gguf(source)
    rule = key_map_of_family(found.arch)
    counts = block_indices(rule, list(found.tensors))
    for key, numbers in drops.items():
        unknown = sorted(set(numbers) - set(counts.get(key, ())))
        if unknown:
            raise LayoutError(
                f"{source}: no {key} block {unknown[0]} to drop; the file has {list(counts.get(key, ()))}"
            )
    layers = counts.get("num_layers", ())
    if found.arch == "sd3" and layers and layers[-1] in drops.get("num_layers", ()):
        raise LayoutError(
            f"{source}: dropping SD3's last block {layers[-1]} needs the last-block conversion; not done on a GGUF"
        )
    kept = {
        key: [n for n in found_numbers if n not in set(drops.get(key, ()))] for key, found_numbers in counts.items()
    }
    strings = {}
    config = found.fields.get(METADATA_CONFIG)
    if isinstance(config, str):
        strings[METADATA_CONFIG] = _config_json(
            _dropped_config(parse_json(config, str(found.path), METADATA_CONFIG, LayoutError), kept)
        )
    return rewrite_gguf(source, out, lambda name: renumber(rule, name, kept), force, strings)


def _dropped_config(config: dict[str, Any], kept: Mapping[str, Sequence[int]]) -> dict[str, Any]:
    """The block counts, and SD3.5 Medium's dual-attention indices, after a drop."""
    out = {**config, **{key: len(numbers) for key, numbers in kept.items()}}
    if config.get("dual_attention_layers") is not None:
        layers = list(kept.get("num_layers", ()))
        out["dual_attention_layers"] = [layers.index(i) for i in config["dual_attention_layers"] if i in layers]
    return out
