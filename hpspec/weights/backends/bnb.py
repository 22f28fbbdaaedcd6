"""The bitsandbytes backend of the quantize stage: `nf4`, `fp4` (Linear4bit) and `int8` (Linear8bitLt).

Linears are replaced directly, as the reference code does (diffusers' `BitsAndBytesConfig` refuses
to run without a GPU); the state dict is the one diffusers saves and reads for pre-quantized
models. 4-bit weights use double quantization, `Linear4bit`'s default and so the reference code's.

On a CPU both classes compute dequantize-then-matmul with 16-bit activations, one way on every CPU:
- 4-bit: bitsandbytes 0.50's CPU `dequantize_4bit` misplaces blocks when in_features is not a
  multiple of the block size (64): the weight is dequantized as one flat tensor instead (exact for
  every shape), and the AVX512-BF16 repacking path stays off (it fails for in_features < 64).
- int8: `Linear8bitLt` in eval mode runs LLM.int8 (8-bit activations); here the int8 rows are
  dequantized (`int8_vectorwise_dequant`) and multiplied at the compute dtype, as bitsandbytes
  itself does on a CPU while training.
On a GPU both defer to bitsandbytes' own forward.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn


@contextmanager
def _quiet_import() -> Iterator[None]:
    """bitsandbytes logs a warning at import on CPUs without the optional `kernels` package."""
    logger = logging.getLogger("bitsandbytes.backends.cpu.ops")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


with _quiet_import():
    import bitsandbytes as bnb
    import bitsandbytes.functional as bnbf

FORMAT_ROW = 0  # Linear8bitLt's `weight_format`: row-major, the only layout bitsandbytes still writes


def dequantize_4bit(weight: torch.Tensor) -> torch.Tensor:
    """A Params4bit's weight through bitsandbytes' own `dequantize_4bit`, over the flat tensor."""
    state = weight.quant_state  # type: ignore[attr-defined]
    flat = copy.copy(state)
    flat.shape = torch.Size([state.shape.numel()])
    return bnbf.dequantize_4bit(weight.data, flat).reshape(state.shape)


def dequantize_int8(module: Linear8bit) -> torch.Tensor:
    return bnbf.int8_vectorwise_dequant(module.weight.data, module.scales)


class Linear4bit(bnb.nn.Linear4bit):
    """bitsandbytes' Linear4bit; on a CPU, dequantize-then-matmul at the compute dtype."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool,
        compute: torch.dtype,
        scheme: str,
        device: str | None = None,
    ):
        super().__init__(
            in_features, out_features, bias, compute, compress_statistics=True, quant_type=scheme, device=device
        )
        self.support_avx512bf16_for_cpu = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type != "cpu":
            return super().forward(x)
        compute = self.compute_dtype or x.dtype
        bias = None if self.bias is None else self.bias.to(compute)
        return F.linear(x.to(compute), dequantize_4bit(self.weight).to(compute), bias).to(x.dtype)


class Linear8bit(bnb.nn.Linear8bitLt):
    """bitsandbytes' Linear8bitLt (int8 rows, fp32 row scales); on a CPU, 16-bit activations."""

    def __init__(self, in_features: int, out_features: int, bias: bool, device: str | None = None):
        # On a GPU, LLM.int8 with the outlier threshold diffusers' config says (6.0).
        super().__init__(in_features, out_features, bias, has_fp16_weights=False, threshold=6.0, device=device)

    @property
    def scales(self) -> torch.Tensor:
        scb = getattr(self.weight, "SCB", None)
        return scb if scb is not None else self.state.SCB

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type != "cpu":
            return super().forward(x)
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return F.linear(x, dequantize_int8(self).to(x.dtype), bias)


# --------------------------------------------------------------------------------------------
# Quantizing and loading one Linear


def quantize_linear(linear: nn.Linear, scheme: str, compute: torch.dtype) -> nn.Module:
    """A quantized copy of `linear`, from its weight at the compute dtype (as diffusers quantizes)."""
    bias = linear.bias is not None
    weight = linear.weight.data.to(compute)
    module: Linear4bit | Linear8bit
    if scheme == "int8":
        module = Linear8bit(linear.in_features, linear.out_features, bias, device="meta")
        module.weight = bnb.nn.Int8Params(weight, requires_grad=False, has_fp16_weights=False).to(weight.device)
    else:
        module = Linear4bit(linear.in_features, linear.out_features, bias, compute, scheme, device="meta")
        module.weight = bnb.nn.Params4bit(weight, requires_grad=False, quant_type=scheme, module=module).to(
            weight.device
        )
    if linear.bias is not None:
        module.bias = nn.Parameter(linear.bias.data.to(compute), requires_grad=False)
    return module


def empty_linear(in_features: int, out_features: int, bias: bool, scheme: str, compute: torch.dtype) -> nn.Module:
    if scheme == "int8":
        return Linear8bit(in_features, out_features, bias, device="meta")
    return Linear4bit(in_features, out_features, bias, compute, scheme, device="meta")


def load_linear(module: nn.Module, tensors: Mapping[str, torch.Tensor]) -> None:
    """Fill an `empty_linear` from its saved tensors (names relative to the module), as diffusers does."""
    if isinstance(module, Linear8bit):
        fmt = int(tensors["weight_format"].item())
        if fmt != FORMAT_ROW:
            raise ValueError(f"weight_format {fmt}; bitsandbytes reads row-major (0) only")
        module.weight = bnb.nn.Int8Params(
            tensors["weight"], requires_grad=False, has_fp16_weights=False, CB=tensors["weight"], SCB=tensors["SCB"]
        )
    else:
        stats = {name: t for name, t in tensors.items() if name.startswith("weight.")}
        module.weight = bnb.nn.Params4bit.from_prequantized(
            tensors["weight"], stats, requires_grad=False, device="cpu", module=module
        )
    if "bias" in tensors:
        module.bias = nn.Parameter(tensors["bias"], requires_grad=False)


def linear_names(module: nn.Module) -> set[str]:
    """The state-dict names one quantized Linear must be loaded from."""
    names = {"weight", "SCB", "weight_format"} if isinstance(module, Linear8bit) else {"weight"}
    return names | ({"bias"} if module.bias is not None else set())


def dequantize(module: nn.Module) -> torch.Tensor:
    """The weight a quantized Linear multiplies by, through bitsandbytes' own dequantization."""
    return dequantize_int8(module) if isinstance(module, Linear8bit) else dequantize_4bit(module.weight)


def quantized_types() -> tuple[type, ...]:
    return (Linear4bit, Linear8bit)
