"""surgery: the module surgery a plan does on a live diffusers transformer, shared by `apply`
(prune.py) and the loaders (load.py).

Semantics are METHOD §3's, pinned: a dropped part is replaced in place by a parameter-free stand-in
that keeps the block's forward running (attention and MLPs become identities on their normalised
inputs, adaptive norms become a plain LayerNorm with shift = scale = 0 and gates = 1); dropping the
last SD3 block turns the new last block into the context-pre-only kind diffusers builds for that
position, exactly. The freeze set (PWP) is applied here too.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from hpspec.core.errors import PlanError
from hpspec.model.arch import architecture, norm_layout, stand_in_kind
from hpspec.model.families import sd3
from hpspec.plan.plan import FreezePlan, Plan
from hpspec.weights.checkpoint.layout import dropped_part_modules, renamed

NORM_EPS = 1e-6  # every adaptive norm in SD3 and FLUX blocks normalises with this epsilon


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


def stand_in(name: str, module: nn.Module) -> nn.Module:
    """The stand-in for one module a part drop removes, by its name inside the block ([stand_ins])."""
    kind = stand_in_kind(name)
    if kind == "attention":
        return IdentityAttention()
    if kind == "identity":
        return nn.Identity()
    if kind == "first_channels" and isinstance(module, nn.Linear):  # FLUX single block
        return FirstChannels(module.out_features)
    layout = norm_layout(type(module).__name__)  # [norm_layouts]
    if layout is not None:  # the norm itself (its `.linear` is what the plan names)
        return ParameterFreeAdaNorm(layout)
    raise PlanError(f"the plan drops `{name}` ({type(module).__name__}), which hpspec has no stand-in for")


# --------------------------------------------------------------------------------------------
# Module paths


def parent_of(model: nn.Module, path: str) -> tuple[nn.Module, str]:
    parent_path, _, name = path.rpartition(".")
    try:
        return (model.get_submodule(parent_path) if parent_path else model), name
    except AttributeError:
        raise PlanError(f"the plan names `{path}`, which this model does not have") from None


def replace_part(model: nn.Module, path: str) -> tuple[nn.Module, str, nn.Module] | None:
    """Swap the module a part drop names for its stand-in (an adaptive norm's `.linear`: the norm).

    Returns (parent, attribute, the module replaced), for a caller that puts it back; None when
    there was nothing to replace.
    """
    if path.endswith(".linear"):
        path = path.removesuffix(".linear")
    parent, name = parent_of(model, path)
    module = getattr(parent, name, None)
    if module is None:  # already gone (a context-pre-only block has no ff_context)
        return None
    setattr(parent, name, stand_in(name, module))
    return parent, name, module


def set_module(model: nn.Module, path: str, module: nn.Module) -> None:
    """Put `module` at `path` (a dotted module path) of `model`."""
    parent_path, _, name = path.rpartition(".")
    setattr(model.get_submodule(parent_path) if parent_path else model, name, module)


def put_stand_ins(model: nn.Module, plan: Plan) -> None:
    """The plan's part drops, in a model built from the pruned config (blocks already renumbered)."""
    for old in dropped_part_modules(plan):
        new = renamed(plan, old)
        if new is not None:
            replace_part(model, new)


# --------------------------------------------------------------------------------------------
# The last-block conversion, the parameter count and the freeze set


def convert_to_context_pre_only(block: nn.Module, family: str) -> None:
    """Make a joint block the last one: its text stream ends at the attention (METHOD §3).

    What goes and which rows of the text modulation stay is the family's [last_block] data; the
    surgery itself is `hpspec.model.families.sd3`'s.
    """
    rule = architecture(family).last_block
    if rule is None:
        raise PlanError(f"the plan converts a last block, which {family} models have no conversion for")
    sd3.convert_to_context_pre_only(block, rule, NORM_EPS)


def finish_pruned(plan: Plan, model: nn.Module, where: str) -> None:
    """The parameter count the plan promises, then the plan's freeze set (PWP)."""
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
