"""The optimum-quanto backend of the quantize stage: `int4` (qint4, group-wise, 4 bits a weight).

Weights are quantized by quanto's own `MaxOptimizer` and `quantize_weight` into its kernel-agnostic
`WeightQBitsTensor` (two codes a byte), with the group size quanto's `QLinear` picks; the state dict
is what quanto and diffusers' `QuantoConfig` save and read. The device-specific repacking
(`optimized`, TinyGemm on a CPU at bf16) is not used: it converts the shift lossily, so the model
in memory and the one read back from disk would differ.

quanto's CPU kernel for unpacking 4-bit codes is a C++ extension compiled on first use (45-100 s,
and only where a compiler is installed). It is the same two masks and a shift as quanto's own
pure-torch kernel, and measured as fast (11.8M codes: 0.03 s vs 0.05 s), so hpspec registers that
pure-torch kernel for the CPU: int4 never compiles anything.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping

import torch
from torch import nn

with warnings.catch_warnings():
    warnings.simplefilter("ignore", FutureWarning)
    import optimum.quanto as oq

_KERNELS: list[torch.library.Library] = []  # registrations live as long as their Library object


def unpack(packed: torch.Tensor, bits: int) -> torch.Tensor:
    """quanto's `unpack` for uint8 tensors of 2- or 4-bit codes: the low codes first, along dim 0."""
    per_byte, mask = 8 // bits, (1 << bits) - 1
    return torch.cat([(packed >> (bits * i)) & mask for i in range(per_byte)]).to(torch.uint8)


def use_pure_torch_unpack() -> None:
    if _KERNELS:
        return
    library = torch.library.Library("quanto", "IMPL")
    with warnings.catch_warnings():  # torch warns that it replaces quanto's C++ registration
        warnings.simplefilter("ignore", UserWarning)
        library.impl("unpack", unpack, "CPU")
    _KERNELS.append(library)


use_pure_torch_unpack()


class QLinear(oq.QLinear):
    """quanto's QLinear computing as quanto does (dequantize, matmul, then the bias), without its
    tensor-subclass dispatch, which fails under `torch.inference_mode` (samplers run in it)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        output = torch.matmul(x, self.weight.dequantize().t())
        return output if self.bias is None else output + self.bias


def _module(in_features: int, out_features: int, bias: bool, compute: torch.dtype) -> QLinear:
    """A QLinear without allocating a float weight (its quantized weight is assigned next)."""
    module = QLinear(in_features, out_features, bias, dtype=compute, device="meta", weights=oq.qint4)
    module.requires_grad_(False)
    return module


def quantize_linear(linear: nn.Linear, scheme: str, compute: torch.dtype) -> nn.Module:
    module = _module(linear.in_features, linear.out_features, linear.bias is not None, compute)
    weight = linear.weight.data.to(compute)
    group = module.weight_group_size
    scale, shift = oq.MaxOptimizer()(weight, qtype=oq.qint4, axis=0, group_size=group)
    quantized = oq.quantize_weight(
        weight, qtype=oq.qint4, axis=0, scale=scale, shift=shift, group_size=group, optimized=False
    )
    module.weight = nn.Parameter(quantized, requires_grad=False)
    if linear.bias is not None:
        module.bias = nn.Parameter(linear.bias.data.to(compute), requires_grad=False)
    module.input_scale = torch.ones((), dtype=compute)
    module.output_scale = torch.ones((), dtype=compute)
    return module


def empty_linear(in_features: int, out_features: int, bias: bool, scheme: str, compute: torch.dtype) -> nn.Module:
    return _module(in_features, out_features, bias, compute)


def load_linear(module: nn.Module, tensors: Mapping[str, torch.Tensor]) -> None:
    """Fill an `empty_linear` from its saved tensors (names relative to the module), as quanto does."""
    assert isinstance(module, QLinear)
    inner = {name: t for name, t in tensors.items() if name.startswith("weight.")}
    missing: list[str] = []
    weight = oq.WeightQBitsTensor.load_from_state_dict(
        inner, "weight.", qtype=oq.qint4, axis=0, group_size=module.weight_group_size,
        size=(module.out_features, module.in_features), stride=(module.in_features, 1), missing_keys=missing,
    )  # fmt: skip
    if weight is None or missing or inner:
        raise ValueError(f"int4 weight tensors missing {missing} or unexpected {sorted(inner)}")
    module.weight = nn.Parameter(weight, requires_grad=False)
    if "bias" in tensors:
        module.bias = nn.Parameter(tensors["bias"], requires_grad=False)
    module.input_scale = tensors["input_scale"]
    module.output_scale = tensors["output_scale"]


def linear_names(module: nn.Module) -> set[str]:
    names = {"weight._data._data", "weight._scale", "weight._shift", "input_scale", "output_scale"}
    return names | ({"bias"} if getattr(module, "bias", None) is not None else set())


def dequantize(module: nn.Module) -> torch.Tensor:
    return module.weight.dequantize()  # type: ignore[operator]


def quantized_types() -> tuple[type, ...]:
    return (QLinear,)
