"""prune: a plan applied to a live diffusers transformer (module surgery), and pruned checkpoints
loaded back.

Semantics are METHOD §3's, pinned: a dropped block leaves its ModuleList (the rest renumber); a
dropped part is replaced in place by a parameter-free stand-in that keeps the block's forward
running (attention and MLPs become identities on their normalised inputs, adaptive norms become a
plain LayerNorm with shift = scale = 0 and gates = 1); dropping the last SD3 block turns the new
last block into the context-pre-only kind diffusers builds for that position, exactly.

`apply` checks the plan's fingerprint before it cuts and the parameter count after. `load_pretrained`
rebuilds the pruned architecture from the rewritten config.json, puts the same stand-ins in place,
and loads every parameter from the files, strictly.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from hpspec.core.paths import CONFIG_NAME, PLAN_NAME
from hpspec.weights.checkpoint import check_fingerprint, dropped_part_modules, renamed
from hpspec.core.errors import CheckpointError, PlanError
from hpspec.plan.plan import FreezePlan, Plan

NORM_EPS = 1e-6  # every adaptive norm in SD3 and FLUX blocks normalises with this epsilon

# What each adaptive norm returns, as a layout of the stand-in's outputs: "x" LN(input),
# "1" a gate of ones, "0" a shift or scale of zeros (diffusers 0.42's return signatures).
NORM_LAYOUTS: dict[str, tuple[str, ...]] = {
    "AdaLayerNormZero": ("x", "1", "0", "0", "1"),  # x, gate_msa, shift_mlp, scale_mlp, gate_mlp
    "SD35AdaLayerNormZeroX": ("x", "1", "0", "0", "1", "x", "1"),  # ..., norm_hidden_states2, gate_msa2
    "AdaLayerNormZeroSingle": ("x", "1"),  # x, gate
    "AdaLayerNormContinuous": ("x",),  # the context-pre-only block's context norm: LN(c) alone
}


# --------------------------------------------------------------------------------------------
# Stand-ins for dropped parts (no parameters)


class ParameterFreeAdaNorm(nn.Module):
    """An adaptive norm without its modulation: LN(x) with shift = scale = 0 and every gate = 1."""

    def __init__(self, layout: Sequence[str]):
        super().__init__()
        self.layout = tuple(layout)

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor | tuple[torch.Tensor, ...]:
        normed = F.layer_norm(x, (x.shape[-1],), eps=NORM_EPS)
        if self.layout == ("x",):
            return normed
        ones = x.new_ones(x.shape[0], x.shape[-1])
        zeros = x.new_zeros(x.shape[0], x.shape[-1])
        return tuple({"x": normed, "1": ones, "0": zeros}[slot] for slot in self.layout)

    def extra_repr(self) -> str:
        return f"layout={','.join(self.layout)}, eps={NORM_EPS}"


class IdentityAttention(nn.Module):
    """An attention that returns its (normalised) inputs: one tensor, or (image, context) when joint."""

    def forward(
        self, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None, **kwargs: Any
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        if encoder_hidden_states is None:
            return hidden_states
        return hidden_states, encoder_hidden_states


class FirstChannels(nn.Module):
    """FLUX single-block `proj_out` without its MLP: cat[attn, mlp] cut to the attention's channels."""

    def __init__(self, channels: int):
        super().__init__()
        self.channels = channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[..., : self.channels]

    def extra_repr(self) -> str:
        return f"channels={self.channels}"


def _stand_in(name: str, module: nn.Module) -> nn.Module:
    """The stand-in for one module a part drop removes, by its name inside the block."""
    if name in ("attn", "attn2"):
        return IdentityAttention()
    if name in ("ff", "ff_context", "proj_mlp"):
        return nn.Identity()
    if name == "proj_out" and isinstance(module, nn.Linear):  # FLUX single block
        return FirstChannels(module.out_features)
    layout = NORM_LAYOUTS.get(type(module).__name__)
    if layout is not None:  # the norm itself (its `.linear` is what the plan names)
        return ParameterFreeAdaNorm(layout)
    raise PlanError(f"the plan drops `{name}` ({type(module).__name__}), which hpspec has no stand-in for")


# --------------------------------------------------------------------------------------------
# Module paths


def _parent(model: nn.Module, path: str) -> tuple[nn.Module, str]:
    parent_path, _, name = path.rpartition(".")
    try:
        return (model.get_submodule(parent_path) if parent_path else model), name
    except AttributeError:
        raise PlanError(f"the plan names `{path}`, which this model does not have") from None


def _replace_part(model: nn.Module, path: str) -> None:
    """Swap the module a part drop names for its stand-in (an adaptive norm's `.linear`: the norm)."""
    if path.endswith(".linear"):
        path = path.removesuffix(".linear")
    parent, name = _parent(model, path)
    module = getattr(parent, name, None)
    if module is None:  # already gone (a context-pre-only block has no ff_context)
        return
    setattr(parent, name, _stand_in(name, module))


# --------------------------------------------------------------------------------------------
# apply


def apply(plan: Plan, model: nn.Module) -> nn.Module:
    """Prune `model` in place as `plan` says and return it.

    Raises PlanError when the plan was compiled for another model (fingerprints differ) or when the
    result does not hold exactly `plan.params.after_prune` parameters.
    """
    from hpspec.model.graph import graph_from_module

    check_fingerprint(plan, graph_from_module(model), f"module:{type(model).__name__}")
    # The conversion first, while the block still holds the weights it keeps; then part drops
    # (a dropped context_norm of the new last block takes the converted norm's form: LN(c) alone).
    for op in plan.ops:
        if op.kind == "convert_last_block":
            _convert_to_context_pre_only(model.get_submodule(f"{plan.stacks[op.stack].module}.{op.block}"))
    for path in dropped_part_modules(plan):
        _replace_part(model, path)
    for stack in plan.stacks.values():
        if stack.dropped:
            blocks = model.get_submodule(stack.module)
            parent, name = _parent(model, stack.module)
            setattr(parent, name, nn.ModuleList(block for i, block in enumerate(blocks) if i not in stack.dropped))
    if plan.config:
        model.register_to_config(**plan.config)
    _finish(plan, model, f"module:{type(model).__name__}")
    return model


def _convert_to_context_pre_only(block: nn.Module) -> None:
    """Make a joint block the last one: its text stream ends at the attention (METHOD §3).

    Nothing after the last block reads the text stream, so its text output projection, text MLP
    and text gates are dead. The text modulation keeps the rows of scale_msa then shift_msa
    (AdaLayerNormZero chunks: shift, scale, gate, shift_mlp, scale_mlp, gate_mlp; the
    AdaLayerNormContinuous diffusers builds for the last block chunks as scale, shift).
    """
    from diffusers.models.normalization import AdaLayerNormContinuous

    weight, bias = block.norm1_context.linear.weight, block.norm1_context.linear.bias
    dim = weight.shape[1]
    new = AdaLayerNormContinuous(dim, dim, elementwise_affine=False, eps=NORM_EPS, bias=True, norm_type="layer_norm")
    new = new.to(device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        new.linear.weight.copy_(torch.cat([weight[dim : 2 * dim], weight[:dim]]))
        new.linear.bias.copy_(torch.cat([bias[dim : 2 * dim], bias[:dim]]))
    block.norm1_context = new  # a dropped context_norm then replaces it like any other norm
    block.attn.to_add_out = None
    block.attn.context_pre_only = True
    block.ff_context = None
    block.norm2_context = None
    block.context_pre_only = True


def _finish(plan: Plan, model: nn.Module, where: str) -> None:
    count = sum(p.numel() for p in model.parameters())
    if count != plan.params.after_prune:
        raise PlanError(f"{where}: the pruned model holds {count} parameters, the plan says {plan.params.after_prune}")
    apply_freeze(model, plan.freeze)


def apply_freeze(model: nn.Module, freeze: FreezePlan) -> None:
    """PWP: `requires_grad` off under the frozen module paths, on under the trainable ones."""
    for name, parameter in model.named_parameters():
        frozen = _covers(freeze.frozen, name)
        if not frozen and not _covers(freeze.trainable, name):
            raise PlanError(f"the plan's freeze set names neither frozen nor trainable for parameter `{name}`")
        parameter.requires_grad_(not frozen)


def _covers(paths: Iterable[str], name: str) -> bool:
    return any(name.startswith(path + ".") for path in paths)


# --------------------------------------------------------------------------------------------
# load_pretrained


def load_pretrained(path: str | Path, torch_dtype: torch.dtype | None = None) -> nn.Module:
    """A pruned transformer from a directory hpspec wrote (`OUT/pruned`), every parameter from its files.

    `torch_dtype` casts floating-point weights as they are loaded (as in diffusers' `from_pretrained`).

    The pruned config.json makes diffusers build the kept blocks (renumbered, the new last block
    context-pre-only); the plan's part drops are then put in place as stand-ins, and the weights
    are loaded shard by shard: a tensor missing from the files, or one the model has no place for,
    is an error.
    """
    from hpspec.model.graph import find_transformer, read_config
    from hpspec.plan.schema import load_plan_file

    directory = Path(path)
    if not (directory / PLAN_NAME).is_file():
        raise CheckpointError(f"{directory}: no {PLAN_NAME}; not a directory hpspec wrote (for OUT, load OUT/pruned)")
    plan = load_plan_file(directory / PLAN_NAME)
    config = read_config(directory / CONFIG_NAME)
    if "quantization_config" in config:  # written by the quantize stage (OUT/quantized)
        from hpspec.weights.quantize import load_quantized

        return load_quantized(directory, plan, config, torch_dtype)
    model = _empty_model(config, directory)
    for old in dropped_part_modules(plan):
        new = renamed(plan, old)
        if new is not None:
            _replace_part(model, new)
    _, shards = find_transformer(directory)
    _load_weights(model, shards, directory, torch_dtype)
    _finish(plan, model, str(directory))
    return model.eval()


def _empty_model(config: dict[str, Any], directory: Path) -> nn.Module:
    """The architecture config.json describes, with parameters on the meta device (no memory)."""
    import diffusers
    from accelerate import init_empty_weights

    class_name = config.get("_class_name")
    cls = getattr(diffusers, str(class_name), None) if class_name in ("SD3Transformer2DModel", "FluxTransformer2DModel") else None
    if cls is None:
        raise CheckpointError(f"{directory / CONFIG_NAME}: _class_name {class_name!r}; hpspec loads SD3Transformer2DModel and FluxTransformer2DModel")
    with init_empty_weights():
        return cls.from_config(config)


def _load_weights(model: nn.Module, shards: Sequence[Path], directory: Path, dtype: torch.dtype | None) -> None:
    from safetensors.torch import load_file

    expected = set(model.state_dict())
    loaded: set[str] = set()
    for shard in shards:
        state = load_file(shard)
        if dtype is not None:  # cast per shard, as diffusers' torch_dtype does: never two copies of the model
            state = {name: t.to(dtype) if t.is_floating_point() else t for name, t in state.items()}
        unexpected = sorted(set(state) - expected)
        if unexpected:
            raise CheckpointError(f"{shard}: holds {unexpected[0]!r}, which the pruned model has no place for")
        try:
            model.load_state_dict(state, strict=False, assign=True)
        except RuntimeError as error:
            raise CheckpointError(f"{shard}: does not fit the pruned model: {str(error).splitlines()[-1].strip()}") from None
        loaded.update(state)
    # A persistent buffer the files lack keeps the value diffusers computes from the config.
    built = {n for n, b in model.named_buffers() if not b.is_meta}
    missing = sorted(expected - loaded - built)
    if missing:
        raise CheckpointError(f"{directory}: the files lack {missing[0]!r} ({len(missing)} tensors in all)")
    require_loaded(model, directory)


def require_loaded(model: nn.Module, directory: Path) -> None:
    """Every parameter and buffer came from the files (none left on the meta device)."""
    on_meta = next((n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta), None)
    if on_meta is not None:
        raise CheckpointError(f"{directory}: {on_meta!r} was not loaded from the files")
