"""quantize_layout: the exact tensors a quantized checkpoint holds, predicted without torch.

The quantize stage writes every `nn.Linear` weight of the transformer in its scheme's own layout
(the one diffusers reads for pre-quantized models) and everything else at the compute dtype:

- `nf4`, `fp4` (bitsandbytes `Linear4bit`, double quantization as the reference code's default):
  two 4-bit codes a byte, one 8-bit absmax per block of 64 weights, one fp32 absmax per 256 of
  those, the two code books, and the quant state's JSON (padded to a fixed width, see below).
- `int8` (bitsandbytes `Linear8bitLt`): int8 weights, one fp32 scale per output row, a format byte.
- `int4` (optimum-quanto `qint4`): two 4-bit codes a byte, a scale and a shift per group of
  quanto's group size (128 where it divides the input width), quanto's input/output scales.

`plan` uses this to state `bytes.after_quantize`; the stage checks what it writes against it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from hpspec.model.conversion import split_trimmed
from hpspec.model.graph import ModelGraph
from hpspec.model.safetensors_header import DTYPE_BYTES
from hpspec.plan.plan import Op, StackPlan
from hpspec.plan.schemes import COMPUTE, QUANTIZE_SCHEMES, Scheme

# repr of the widest double (`-1.2345678901234567e-308`): the quant state's `nested_offset` is a
# data-dependent float, so its JSON is padded with spaces to this width and every size is known
# before anything is quantized (JSON ignores trailing whitespace; bitsandbytes reads it back).
OFFSET_WIDTH = 24


@dataclass(frozen=True)
class LayoutTensor:
    name: str
    dtype: str
    shape: tuple[int, ...]
    buffer: bool = False  # stored, but not a weight (SD3's positional table): outside weight bytes

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * DTYPE_BYTES[self.dtype]


@dataclass(frozen=True)
class SourceTensor:
    """A tensor of the pruned model: name after pruning, shape, and whether it is a buffer."""

    name: str
    shape: tuple[int, ...]
    buffer: bool = False


def is_linear_weight(name: str, shape: Sequence[int]) -> bool:
    """In SD3 and FLUX transformers every 2-D `.weight` is an `nn.Linear`'s (norms are 1-D, the patch
    embedding a 4-D convolution); tests check this against the live modules."""
    return len(shape) == 2 and name.endswith(".weight")


def under(path: str, modules: Iterable[str]) -> bool:
    return any(path == m or path.startswith(m + ".") for m in modules)


def compute_dtype(compute: str) -> str:
    return COMPUTE[compute].safetensors


# --------------------------------------------------------------------------------------------
# One Linear's weight, per scheme


def quant_state_dict(quant_type: str, shape: Sequence[int], dtype_name: str, offset: float) -> dict[str, object]:
    """bitsandbytes' packed quant state of a double-quantized 4-bit weight, in its key order."""
    scheme = QUANTIZE_SCHEMES[quant_type]
    return {
        "quant_type": quant_type,
        "blocksize": scheme.block_size,
        "dtype": dtype_name,
        "shape": list(shape),
        "nested_blocksize": scheme.nested_block_size,
        "nested_dtype": "float32",
        "nested_offset": offset,
    }


def quant_state_width(quant_type: str, shape: Sequence[int], dtype_name: str) -> int:
    """Bytes of the padded quant-state JSON: its text with the widest possible offset."""
    text = json.dumps(quant_state_dict(quant_type, shape, dtype_name, 0.0))
    return len(text.encode()) - len("0.0") + OFFSET_WIDTH


def quanto_group_size(in_features: int, scheme: Scheme = QUANTIZE_SCHEMES["int4"]) -> int | None:
    """optimum-quanto's rule for qint4 weights (QModuleMixin): 128, else the largest multiple of 32
    above it that divides the input width; None (one group per output row) for inputs of 128 or less."""
    assert scheme.block_size is not None and scheme.min_group_size is not None
    group, step = scheme.block_size, scheme.min_group_size
    if in_features <= group:
        return None
    while in_features % group and group > step:
        group -= step
    return group if in_features % group == 0 else None


def linear_weight_tensors(
    scheme: str, module: str, out_features: int, in_features: int, compute: str
) -> list[LayoutTensor]:
    """What one quantized Linear weight is stored as (its bias is stored like any other tensor)."""
    n = out_features * in_features
    found = QUANTIZE_SCHEMES.get(scheme)
    layout = found.layout if found is not None else None
    if found is not None and layout == "bnb_4bit":
        assert found.block_size is not None and found.nested_block_size is not None
        blocks = math.ceil(n / found.block_size)
        width = quant_state_width(scheme, (out_features, in_features), COMPUTE[compute].torch)
        return [
            LayoutTensor(f"{module}.weight", "U8", ((n + 1) // 2, 1)),
            LayoutTensor(f"{module}.weight.absmax", "U8", (blocks,)),
            LayoutTensor(f"{module}.weight.nested_absmax", "F32", (math.ceil(blocks / found.nested_block_size),)),
            LayoutTensor(f"{module}.weight.nested_quant_map", "F32", (found.nested_code_entries,)),
            LayoutTensor(f"{module}.weight.quant_map", "F32", (found.code_entries,)),
            LayoutTensor(f"{module}.weight.quant_state.bitsandbytes__{scheme}", "U8", (width,)),
        ]
    if layout == "bnb_int8":
        return [
            LayoutTensor(f"{module}.weight", "I8", (out_features, in_features)),
            LayoutTensor(f"{module}.SCB", "F32", (out_features,)),
            LayoutTensor(f"{module}.weight_format", "U8", ()),
        ]
    if found is not None and layout == "quanto_int4":
        group = quanto_group_size(in_features, found)
        rows, columns = (n // group, group) if group else (out_features, in_features)
        dtype = compute_dtype(compute)
        return [
            LayoutTensor(f"{module}.weight._data._data", "U8", ((rows + 1) // 2, columns)),
            LayoutTensor(f"{module}.weight._scale", dtype, (rows, 1)),
            LayoutTensor(f"{module}.weight._shift", dtype, (rows, 1)),
            LayoutTensor(f"{module}.input_scale", dtype, ()),
            LayoutTensor(f"{module}.output_scale", dtype, ()),
        ]
    raise ValueError(f"unknown quantization scheme {scheme!r}")


PAYLOAD_SUFFIXES = (
    ".weight",
    ".weight.absmax",
    ".weight.nested_absmax",
    ".SCB",
    ".weight._data._data",
    ".weight._scale",
    ".weight._shift",
)


def payload_bytes(tensors: Sequence[LayoutTensor]) -> int:
    """Bytes that grow with the weight count (codes, per-block statistics), not per-Linear constants."""
    return sum(t.nbytes for t in tensors if t.name.endswith(PAYLOAD_SUFFIXES))


# --------------------------------------------------------------------------------------------
# A whole model


def quantized_layout(
    tensors: Iterable[SourceTensor], scheme: str, compute: str, except_modules: Sequence[str]
) -> list[LayoutTensor]:
    """Every tensor of the quantized checkpoint, in the source's order."""
    dtype = compute_dtype(compute)
    layout: list[LayoutTensor] = []
    for tensor in tensors:
        module = tensor.name.removesuffix(".weight")
        if is_linear_weight(tensor.name, tensor.shape) and not tensor.buffer and not under(module, except_modules):
            layout.extend(linear_weight_tensors(scheme, module, tensor.shape[0], tensor.shape[1], compute))
        else:
            layout.append(LayoutTensor(tensor.name, dtype, tensor.shape, tensor.buffer))
    return layout


def weight_bytes(layout: Iterable[LayoutTensor]) -> int:
    """The plan's measure: bytes of everything stored except buffers (the safetensors header apart)."""
    return sum(t.nbytes for t in layout if not t.buffer)


def quantized_linears(tensors: Iterable[SourceTensor], except_modules: Sequence[str]) -> list[str]:
    """Module paths of the Linears a scheme replaces."""
    return [
        t.name.removesuffix(".weight")
        for t in tensors
        if is_linear_weight(t.name, t.shape)
        and not t.buffer
        and not under(t.name.removesuffix(".weight"), except_modules)
    ]


def pruned_tensors(graph: ModelGraph, ops: Sequence[Op], stacks: Mapping[str, StackPlan]) -> list[SourceTensor]:
    """The tensors a plan's pruned model holds, named after pruning (what `checkpoint` writes)."""
    removed = [m for op in ops if op.kind == "drop_part" for m in op.modules]
    gone, converted = split_trimmed(
        graph.arch, (m for op in ops if op.kind == "convert_last_block" for m in op.modules)
    )
    removed += gone
    result = [
        SourceTensor(t.name, t.shape, t.buffer) for o in graph.outside for t in o.tensors if o.position == "before"
    ]
    for stack in graph.stacks:
        index_map = stacks[stack.name].index_map
        for block in stack.blocks:
            new = index_map.get(str(block.index))
            if new is None:
                continue
            for tensor in (t for part in block.parts for t in part.tensors):
                old = f"{block.module}.{tensor.name}"
                if under(old, removed):
                    continue
                shape = tensor.shape
                if under(old, converted) and graph.arch.last_block is not None:  # the trimmed modulation's rows
                    shape = (graph.arch.last_block.kept_rows(tensor.shape[0]), *tensor.shape[1:])
                result.append(SourceTensor(f"{stack.module}.{new}.{tensor.name}", shape, tensor.buffer))
    result += [
        SourceTensor(t.name, t.shape, t.buffer) for o in graph.outside for t in o.tensors if o.position != "before"
    ]
    return result
