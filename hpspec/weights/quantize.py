"""quantize: a live pruned transformer quantized, and its tensors as the quantize stage writes them.

Every `nn.Linear` of a pruned transformer becomes 4-bit (or
8-bit) weights with 16-bit activations; what the spec's `except` names and every non-Linear module
(patch embedding, norms, biases) stay unquantized at the compute dtype.

The output is a diffusers checkpoint in the layout diffusers writes for pre-quantized models
(`quantization_config` in config.json), so plain `from_pretrained` reads it (bitsandbytes schemes
on a GPU machine; int4 anywhere) when only whole blocks were dropped and the exceptions are ones
diffusers can name; `hpspec.load_pretrained` rebuilds it exactly on any machine. A plain
`load_state_dict` into a quantized model would silently give wrong numbers: loading goes through
each library's own constructors for pre-quantized weights.

What the stage writes is predicted tensor by tensor, without torch, by `quantize_layout`; the plan's
`bytes.after_quantize` is that prediction, and the stage checks every written tensor against it.
The stage itself (validation, the output directory) is `hpspec.stages.quantize`; loading a
quantized directory back is `load.load_quantized`.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from torch import nn

from hpspec.core.errors import HpspecError, PlanError
from hpspec.core.io import dumps_json
from hpspec.core.paths import CONFIG_NAME, PLAN_NAME, WEIGHTS_INDEX_SUFFIX, WEIGHTS_NAME
from hpspec.core.version import __version__
from hpspec.model.safetensors_header import TORCH_DTYPES as NAMES
from hpspec.plan.plan import Plan, QuantizePlan
from hpspec.plan.quantize_layout import LayoutTensor, SourceTensor, quant_state_width, under, weight_bytes
from hpspec.plan.schemes import COMPUTE, QUANTIZE_BACKENDS, QUANTIZE_SCHEMES
from hpspec.weights.checkpoint.layout import shard_names
from hpspec.weights.surgery import set_module

TORCH_DTYPES: Mapping[str, torch.dtype] = {name: getattr(torch, dtype.torch) for name, dtype in COMPUTE.items()}
MAX_SHARD_BYTES = 10 * 10**9  # diffusers' default `max_shard_size` ("10GB")
BACKEND_MODULES = {"bitsandbytes": "bnb", "optimum-quanto": "quanto"}  # library -> its module in `backends/`


# --------------------------------------------------------------------------------------------
# Backends


def backend(scheme: str) -> ModuleType:
    """The module that quantizes and loads Linears for `scheme` (bitsandbytes or optimum-quanto)."""
    library = QUANTIZE_BACKENDS.get(scheme)
    if library is None:
        raise PlanError(f"unknown quantization scheme {scheme!r}; hpspec knows {', '.join(QUANTIZE_BACKENDS)}")
    try:  # the library itself is imported with its back end, on first use
        return importlib.import_module(f"hpspec.weights.backends.{BACKEND_MODULES[library]}")
    except ImportError as error:
        raise HpspecError(
            f"quantize {scheme} needs {library} ({error}); install {QUANTIZE_SCHEMES[scheme].install}"
        ) from None


def quantized_types() -> tuple[type, ...]:
    """The classes of quantized Linears of every backend that is installed."""
    found: list[type] = []
    for scheme in {library: scheme for scheme, library in QUANTIZE_BACKENDS.items()}.values():  # one per library
        try:
            found.extend(backend(scheme).quantized_types())
        except HpspecError:
            continue
    return tuple(found)


def linears(model: nn.Module) -> Iterator[tuple[str, nn.Linear]]:
    """Every plain `nn.Linear` (quantized Linears subclass it, so the type is compared exactly)."""
    for path, module in model.named_modules():
        if type(module) is nn.Linear:
            yield path, module


# --------------------------------------------------------------------------------------------
# Quantizing a live model


def quantize_model(model: nn.Module, quantize: QuantizePlan) -> list[str]:
    """Quantize `model` in place: parameters and buffers at the compute dtype, then every Linear
    outside the exceptions replaced. Returns the replaced module paths."""
    module = backend(quantize.scheme)
    compute = TORCH_DTYPES[quantize.compute]
    model.to(compute)
    replaced = []
    for path, linear in list(linears(model)):
        if under(path, quantize.except_modules):
            continue
        set_module(model, path, module.quantize_linear(linear, quantize.scheme, compute))
        replaced.append(path)
    model.requires_grad_(False)
    return replaced


def source_tensors(model: nn.Module) -> list[SourceTensor]:
    """The tensors of an unquantized model, as `quantize_layout` reads them."""
    buffers = {name for name, _ in model.named_buffers()}
    return [SourceTensor(name, tuple(t.shape), name in buffers) for name, t in model.state_dict().items()]


def quantized_state(model: nn.Module, scheme: str) -> dict[str, torch.Tensor]:
    """The state dict to write: contiguous CPU tensors, the bitsandbytes quant states padded."""
    state = {}
    for name, tensor in model.state_dict().items():
        tensor = tensor.detach().to("cpu").contiguous()
        if ".quant_state.bitsandbytes__" in name:
            tensor = _padded_quant_state(tensor, scheme)
        state[name] = tensor
    return state


def _padded_quant_state(tensor: torch.Tensor, scheme: str) -> torch.Tensor:
    """The quant state's JSON with trailing spaces up to its fixed width (`quantize_layout`)."""
    data = json.loads(bytes(tensor.numpy()).decode("utf-8"))
    width = quant_state_width(scheme, data["shape"], data["dtype"])
    raw = bytes(tensor.numpy())
    if len(raw) > width:
        raise HpspecError(f"a quant state of {len(raw)} bytes exceeds its width {width}: {raw!r}")
    return torch.tensor(list(raw + b" " * (width - len(raw))), dtype=torch.uint8)


def check_layout(state: Mapping[str, torch.Tensor], layout: Sequence[LayoutTensor]) -> None:
    """Every tensor as `quantize_layout` predicted it (name, dtype, shape), no more, no fewer."""
    expected = {t.name: (t.dtype, tuple(t.shape)) for t in layout}
    actual = {name: (NAMES[str(t.dtype).removeprefix("torch.")], tuple(t.shape)) for name, t in state.items()}
    if actual != expected:
        differ = sorted(set(actual.items()) ^ set(expected.items()))[:3]
        raise HpspecError(f"the quantized model differs from its predicted layout (a bug in hpspec): {differ}")


# --------------------------------------------------------------------------------------------
# config.json: what diffusers reads


def quantization_config(quantize: QuantizePlan, skipped: Sequence[str]) -> dict[str, Any]:
    """The `quantization_config` diffusers writes for the same settings (its `to_dict()`)."""
    skip = list(skipped) or None
    layout = QUANTIZE_SCHEMES[quantize.scheme].layout
    if layout == "quanto_int4":
        return {"quant_method": "quanto", "weights_dtype": "int4", "modules_to_not_convert": skip}
    four_bit = layout == "bnb_4bit"
    return {
        "_load_in_4bit": four_bit,
        "_load_in_8bit": not four_bit,
        "bnb_4bit_compute_dtype": COMPUTE[quantize.compute].torch if four_bit else "float32",
        "bnb_4bit_quant_storage": "uint8",
        "bnb_4bit_quant_type": quantize.scheme if four_bit else "fp4",
        "bnb_4bit_use_double_quant": four_bit,
        "llm_int8_enable_fp32_cpu_offload": False,
        "llm_int8_has_fp16_weight": False,
        "llm_int8_skip_modules": skip,
        "llm_int8_threshold": 6.0,
        "load_in_4bit": four_bit,
        "load_in_8bit": not four_bit,
        "quant_method": "bitsandbytes",
    }


def diffusers_skips(scheme: str, paths: Sequence[str], skipped: Sequence[str]) -> set[str]:
    """The Linears diffusers leaves unquantized for a skip list: bitsandbytes matches a module's
    own name or a path prefix, quanto only a module's own name."""
    names = set(skipped)
    found = set()
    for path in paths:
        own = path.rpartition(".")[2]
        by_path = QUANTIZE_SCHEMES[scheme].backend == "bitsandbytes" and any(
            path == key or key + "." in path for key in names
        )
        if own in names or by_path:
            found.add(path)
    return found


def diffusers_readable(plan: Plan, paths: Sequence[str], skipped: Sequence[str]) -> bool:
    """Would plain diffusers rebuild exactly this model? Not with dropped parts (their stand-ins
    are hpspec's), nor when its skip rule would leave other Linears unquantized."""
    assert plan.quantize is not None
    no_parts = not any(op.kind == "drop_part" for op in plan.ops)
    return no_parts and diffusers_skips(plan.quantize.scheme, paths, skipped) == set(skipped)


# --------------------------------------------------------------------------------------------
# Writing


@dataclass(frozen=True)
class Quantized:
    files: tuple[str, ...]
    tensors: int
    nbytes: int  # tensor bytes written (headers apart), buffers included
    weight_bytes: int  # the plan's measure: buffers apart
    linears: int
    full_precision: tuple[str, ...]  # Linears kept unquantized
    diffusers_readable: bool


def write_quantized(model: nn.Module, plan: Plan, out: Path, source_config: Mapping[str, Any], layout: Sequence[LayoutTensor],
                    replaced: Sequence[str], kept: Sequence[str]) -> Quantized:  # fmt: skip
    """Write the quantized model into the (empty) directory `out`: shards, index, config, plan."""
    from safetensors.torch import save_file

    assert plan.quantize is not None
    state = quantized_state(model, plan.quantize.scheme)
    check_layout(state, layout)
    shards = _shards(state)
    names = shard_names(len(shards))
    metadata = {
        "format": "pt",
        "hpspec_version": __version__,
        "hpspec_plan_sha256": plan.sha256,
        "hpspec_quantize": plan.quantize.scheme,
    }
    for name, shard in zip(names, shards):
        save_file({key: state[key] for key in shard}, str(out / name), metadata=metadata)
    if len(names) > 1:
        weight_map = {key: name for name, shard in zip(names, shards) for key in shard}
        index = {
            "metadata": {"total_size": sum(t.nbytes for t in layout)},
            "weight_map": dict(sorted(weight_map.items())),
        }
        (out / f"{WEIGHTS_NAME}{WEIGHTS_INDEX_SUFFIX}").write_text(dumps_json(index), encoding="utf-8")
    config = {**source_config, "quantization_config": quantization_config(plan.quantize, kept)}
    (out / CONFIG_NAME).write_text(dumps_json(config), encoding="utf-8")
    (out / PLAN_NAME).write_text(plan.to_json(), encoding="utf-8")
    paths = [*replaced, *kept]
    readable = diffusers_readable(plan, paths, kept)
    return Quantized(
        tuple(names),
        len(state),
        sum(t.nbytes for t in layout),
        weight_bytes(layout),
        len(replaced),
        tuple(kept),
        readable,
    )


def _shards(state: Mapping[str, torch.Tensor]) -> list[list[str]]:
    """Tensor names per shard, in order, each shard under diffusers' default size."""
    shards: list[list[str]] = [[]]
    size = 0
    for name, tensor in state.items():
        nbytes = tensor.numel() * tensor.element_size()
        if shards[-1] and size + nbytes > MAX_SHARD_BYTES:
            shards.append([])
            size = 0
        shards[-1].append(name)
        size += nbytes
    return shards
