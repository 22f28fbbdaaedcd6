"""schemes: the one table of quantization schemes (`quantize nf4`, ...) and compute dtypes.

Everything that names a scheme reads it here: `check` (the valid words), `compile` (the plan's
`quantize.backend`), `quantize_layout` (the tensors a quantized Linear is stored as) and the
quantize stage (which library quantizes and loads it, what to install). Torch-free.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

Layout = Literal["bnb_4bit", "bnb_int8", "quanto_int4"]


@dataclass(frozen=True)
class Scheme:
    """One `quantize SCHEME`: the library that stores it and the facts of its stored layout."""

    name: str  # as a spec writes it
    backend: str  # the library that quantizes and loads it (the plan's `quantize.backend`)
    install: str  # the extra that installs that library
    bits: int  # bits of one stored weight code
    layout: Layout  # how one quantized Linear's weight is stored (see quantize_layout)
    # Weights one scale covers: bitsandbytes' 4-bit block, quanto's (largest) group; None: one per output row.
    block_size: int | None
    # Double quantization (bitsandbytes 4-bit): block absmax values per nested fp32 absmax.
    nested_block_size: int | None = None
    nested_bits: int | None = None  # bits of one nested code (bitsandbytes' 8-bit dynamic map)
    min_group_size: int | None = None  # quanto: its group shrinks by this step to divide the input width

    @property
    def code_entries(self) -> int:
        """Entries of the fp32 code book a 4-bit bitsandbytes weight carries (`quant_map`)."""
        return 1 << self.bits

    @property
    def nested_code_entries(self) -> int:
        """Entries of the nested absmax's code book (`nested_quant_map`), double quantization only."""
        assert self.nested_bits is not None, self.name
        return 1 << self.nested_bits


@dataclass(frozen=True)
class ComputeDtype:
    """One `compute=` choice: the dtype of activations and of every tensor left unquantized."""

    name: str  # as a spec writes it
    safetensors: str  # its safetensors dtype
    torch: str  # its torch dtype's name (`torch.bfloat16`, ...)


_BNB, _QUANTO = ("bitsandbytes", "hpspec[bnb]"), ("optimum-quanto", "hpspec[quanto]")

QUANTIZE_SCHEMES: Mapping[str, Scheme] = {
    scheme.name: scheme
    for scheme in (
        Scheme("nf4", *_BNB, bits=4, layout="bnb_4bit", block_size=64, nested_block_size=256, nested_bits=8),
        Scheme("fp4", *_BNB, bits=4, layout="bnb_4bit", block_size=64, nested_block_size=256, nested_bits=8),
        Scheme("int8", *_BNB, bits=8, layout="bnb_int8", block_size=None),
        Scheme("int4", *_QUANTO, bits=4, layout="quanto_int4", block_size=128, min_group_size=32),
    )
}
SCHEMES: tuple[str, ...] = tuple(QUANTIZE_SCHEMES)  # the language's scheme words, in this order
QUANTIZE_BACKENDS: Mapping[str, str] = {name: scheme.backend for name, scheme in QUANTIZE_SCHEMES.items()}

COMPUTE: Mapping[str, ComputeDtype] = {
    dtype.name: dtype
    for dtype in (
        ComputeDtype("bf16", "BF16", "bfloat16"),
        ComputeDtype("fp16", "F16", "float16"),
        ComputeDtype("fp32", "F32", "float32"),
    )
}
COMPUTE_DTYPES: tuple[str, ...] = tuple(COMPUTE)  # the `compute=` words; the first is the default
