"""load: a directory hpspec wrote, loaded back as a live transformer (`hpspec.load_pretrained`).

One loader for both kinds of stage directory. A pruned one (`OUT/pruned`, `OUT/distilled`): the
pruned config.json makes diffusers build the kept blocks (renumbered, the new last block
context-pre-only), the plan's part drops are put in place as stand-ins (`surgery`), and every
parameter is loaded from the files, strictly. A quantized one (`OUT/quantized`, `quantization_config`
in config.json): the same architecture, its Linears rebuilt through each quantization library's
own loader for pre-quantized weights. Both end with the same check: nothing left on the meta device.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from torch import nn

from hpspec.core.errors import CheckpointError, PlanError
from hpspec.core.paths import CONFIG_NAME, PLAN_NAME
from hpspec.model.arch import class_names
from hpspec.model.targets import find_transformer, read_config
from hpspec.plan.plan import Plan
from hpspec.plan.quantize_layout import under
from hpspec.plan.schema import load_plan_file
from hpspec.weights.quantize import TORCH_DTYPES, backend, linears
from hpspec.weights.surgery import finish_pruned, put_stand_ins, set_module


def load_pretrained(path: str | Path, torch_dtype: torch.dtype | None = None) -> nn.Module:
    """A pruned transformer from a directory hpspec wrote (`OUT/pruned`), every parameter from its files.

    `torch_dtype` casts floating-point weights as they are loaded (as in diffusers' `from_pretrained`).

    The pruned config.json makes diffusers build the kept blocks (renumbered, the new last block
    context-pre-only); the plan's part drops are then put in place as stand-ins, and the weights
    are loaded shard by shard: a tensor missing from the files, or one the model has no place for,
    is an error.
    """
    directory = Path(path)
    if not (directory / PLAN_NAME).is_file():
        raise CheckpointError(f"{directory}: no {PLAN_NAME}; not a directory hpspec wrote (for OUT, load OUT/pruned)")
    plan = load_plan_file(directory / PLAN_NAME)
    config = read_config(directory / CONFIG_NAME)
    if "quantization_config" in config:  # written by the quantize stage (OUT/quantized)
        return load_quantized(directory, plan, config, torch_dtype)
    model = _skeleton(config, plan, directory)
    _, shards = find_transformer(directory)
    _load_weights(model, shards, directory, torch_dtype)
    finish_pruned(plan, model, str(directory))
    return model.eval()


def _skeleton(config: Mapping[str, Any], plan: Plan, directory: Path) -> nn.Module:
    """The pruned architecture config.json describes, the plan's stand-ins in place, with
    parameters on the meta device (no memory): what both loaders fill from the files."""
    import diffusers
    from accelerate import init_empty_weights

    class_name = config.get("_class_name")
    cls = getattr(diffusers, str(class_name), None) if class_name in class_names() else None
    if cls is None:
        raise CheckpointError(
            f"{directory / CONFIG_NAME}: _class_name {class_name!r}; hpspec loads {' and '.join(class_names())}"
        )
    with init_empty_weights():
        model = cls.from_config(config)
    put_stand_ins(model, plan)
    return model


def _load_weights(model: nn.Module, shards: Sequence[Path], directory: Path, dtype: torch.dtype | None) -> None:
    from safetensors.torch import load_file

    expected = set(model.state_dict())
    loaded: set[str] = set()
    for shard in shards:
        state = load_file(shard)
        if dtype is not None:  # cast per shard, as diffusers' torch_dtype does: never two copies of the model
            state = {name: t.to(dtype) if t.is_floating_point() else t for name, t in state.items()}
        _assign(model, state, expected, shard, "pruned")
        loaded.update(state)
    # A persistent buffer the files lack keeps the value diffusers computes from the config.
    built = {n for n, b in model.named_buffers() if not b.is_meta}
    missing = sorted(expected - loaded - built)
    if missing:
        raise CheckpointError(f"{directory}: the files lack {missing[0]!r} ({len(missing)} tensors in all)")
    require_loaded(model, directory)


def _assign(model: nn.Module, state: Mapping[str, torch.Tensor], expected: set[str], where: Path, kind: str) -> None:
    """`state` into `model`, strictly: a tensor the model has no place for, or one that does not fit it, is an error."""
    unexpected = sorted(set(state) - expected)
    if unexpected:
        raise CheckpointError(f"{where}: holds {unexpected[0]!r}, which the {kind} model has no place for")
    try:
        model.load_state_dict(state, strict=False, assign=True)
    except RuntimeError as error:
        raise CheckpointError(
            f"{where}: does not fit the {kind} model: {str(error).splitlines()[-1].strip()}"
        ) from None


def require_loaded(model: nn.Module, directory: Path) -> None:
    """Every parameter and buffer came from the files (none left on the meta device)."""
    on_meta = next((n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta), None)
    if on_meta is not None:
        raise CheckpointError(f"{directory}: {on_meta!r} was not loaded from the files")


# --------------------------------------------------------------------------------------------
# Quantized directories


def load_quantized(
    directory: Path, plan: Plan, config: Mapping[str, Any], torch_dtype: torch.dtype | None = None
) -> nn.Module:
    """A quantized transformer from a directory the quantize stage wrote, every tensor from its files.

    The pruned architecture is rebuilt as `load_pretrained` does; the Linears the plan quantizes
    become empty quantized modules filled through each library's own loader for pre-quantized
    weights; every other tensor is assigned strictly (a missing or unexpected tensor is an error).
    """
    quantize = plan.quantize
    if quantize is None:
        raise CheckpointError(f"{directory}: config.json says quantized, but its {PLAN_NAME} has no `quantize`")
    compute = TORCH_DTYPES[quantize.compute]
    if torch_dtype is not None and torch_dtype != compute:
        raise CheckpointError(f"{directory}: is quantized with compute {quantize.compute}; it loads at that dtype only")
    module = backend(quantize.scheme)
    model = _skeleton({k: v for k, v in config.items() if k != "quantization_config"}, plan, directory)
    quantized = {}
    for path, linear in list(linears(model)):
        if not under(path, quantize.except_modules):
            empty = module.empty_linear(
                linear.in_features, linear.out_features, linear.bias is not None, quantize.scheme, compute
            )
            set_module(model, path, empty)
            quantized[path] = empty
    _load_tensors(model, quantized, module, directory)
    _check_count(model, quantized, plan, directory)
    return model.requires_grad_(False).eval()


def _load_tensors(model: nn.Module, quantized: Mapping[str, nn.Module], module: ModuleType, directory: Path) -> None:
    from safetensors.torch import load_file

    _, shards = find_transformer(directory)
    state: dict[str, torch.Tensor] = {}
    for shard in shards:
        state.update(load_file(shard))
    for path, empty in quantized.items():
        prefix = path + "."
        own = {name[len(prefix) :]: state.pop(name) for name in [n for n in state if n.startswith(prefix)]}
        missing = sorted(module.linear_names(empty) - set(own))
        if missing:
            raise CheckpointError(f"{directory}: the files lack {prefix}{missing[0]} of the quantized {path}")
        try:
            module.load_linear(empty, own)
        except (ValueError, KeyError, RuntimeError) as error:
            raise CheckpointError(f"{directory}: {path} does not load as {type(empty).__name__}: {error}") from None
    expected = {n for n in model.state_dict() if not any(n.startswith(p + ".") for p in quantized)}
    _assign(model, state, expected, directory, "quantized")
    require_loaded(model, directory)


def _check_count(model: nn.Module, quantized: Mapping[str, nn.Module], plan: Plan, directory: Path) -> None:
    """The weights the quantized Linears stand for, plus every other parameter: the plan's count."""
    inside = {id(p) for m in quantized.values() for p in m.parameters()}
    count = sum(p.numel() for p in model.parameters() if id(p) not in inside)
    count += sum(
        m.in_features * m.out_features + (m.bias.numel() if m.bias is not None else 0) for m in quantized.values()
    )  # type: ignore[operator,misc]
    if count != plan.params.after_prune:
        raise PlanError(
            f"{directory}: the quantized model stands for {count} parameters, the plan says {plan.params.after_prune}"
        )
