"""sd3: the last-block conversion on a live SD3 block (the data, [last_block], says what; this, how).

Diffusers builds the last block of an SD3 stack context-pre-only: its text modulation is an
`AdaLayerNormContinuous` (chunks scale, shift) instead of an `AdaLayerNormZero`, and it has no text
output projection, text MLP or second text norm. `convert_to_context_pre_only` makes a joint block
exactly that, keeping the rows the data names, so a pruned model equals the one diffusers builds
from the pruned config.json.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from hpspec.model.arch import LastBlockRule

if TYPE_CHECKING:
    from torch import nn


def convert_to_context_pre_only(block: nn.Module, rule: LastBlockRule, eps: float) -> None:
    """Make a joint block the last one: its text stream ends at the attention (METHOD §3)."""
    import torch
    from diffusers.models.normalization import AdaLayerNormContinuous

    linear = block.get_submodule(rule.trims)
    assert isinstance(linear, torch.nn.Linear) and linear.bias is not None
    weight, bias = linear.weight, linear.bias
    dim = weight.shape[1]
    rows = weight.shape[0] // rule.chunks
    new = AdaLayerNormContinuous(dim, dim, elementwise_affine=False, eps=eps, bias=True, norm_type="layer_norm")
    new = new.to(device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        new.linear.weight.copy_(torch.cat([weight[k * rows : (k + 1) * rows] for k in rule.keeps]))
        new.linear.bias.copy_(torch.cat([bias[k * rows : (k + 1) * rows] for k in rule.keeps]))
    _set(block, rule.trims.rpartition(".")[0], new)  # a dropped context_norm then replaces it like any other norm
    for module in rule.removes:
        _set(block, module, None)
    for flag in rule.flags:
        _set(block, flag, True)


def _set(block: nn.Module, path: str, value: Any) -> None:
    parent, _, name = path.rpartition(".")
    setattr(block.get_submodule(parent) if parent else block, name, value)
