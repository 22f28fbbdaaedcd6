"""The plan's FLOP estimate against torch's own FLOP counter on real forward passes."""

from __future__ import annotations

import copy

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from hpspec import apply
from hpspec.model.flops import tokens_for
from hpspec.model.graph import graph_from_module

from tests.tiny_models import FLUX_CONFIG, SD3_CONFIG, build, plan_for


def counted_flops(model: torch.nn.Module, kind: str, image: int, text: int) -> int:
    """torch's count of one forward at batch 1 with the given token counts."""
    generator = torch.Generator().manual_seed(0)
    if kind == "flux":
        feed = dict(
            hidden_states=torch.randn(1, image, FLUX_CONFIG["in_channels"], generator=generator),
            encoder_hidden_states=torch.randn(1, text, FLUX_CONFIG["joint_attention_dim"], generator=generator),
            pooled_projections=torch.randn(1, FLUX_CONFIG["pooled_projection_dim"], generator=generator),
            timestep=torch.tensor([0.5]), guidance=torch.tensor([3.5]),
            img_ids=torch.zeros(image, 3), txt_ids=torch.zeros(text, 3),
        )  # fmt: skip
    else:
        side = int(image**0.5) * SD3_CONFIG["patch_size"]
        feed = dict(
            hidden_states=torch.randn(1, SD3_CONFIG["in_channels"], side, side, generator=generator),
            encoder_hidden_states=torch.randn(1, text, SD3_CONFIG["joint_attention_dim"], generator=generator),
            pooled_projections=torch.randn(1, SD3_CONFIG["pooled_projection_dim"], generator=generator),
            timestep=torch.tensor([500.0]),
        )
    counter = FlopCounterMode(display=False)
    # The math backend computes attention as matmuls, which the counter sees (CPU flash does not).
    with counter, torch.no_grad(), sdpa_kernel(SDPBackend.MATH):
        model(**feed)
    return counter.get_total_flops()


@pytest.mark.parametrize(
    ("kind", "spec"),
    [
        ("sd3", "drop blocks[1, 5]\ndrop block[2].mlp, block[3].attn"),
        ("sd35m", "drop block[0].attn, block[1].attn2, block[4].context_mlp"),
        ("flux", "drop single_blocks[0, 3]\ndrop double_block[1].context_mlp, single_block[2].mlp"),
    ],
)
def test_estimate_equals_torch_flop_counter_before_and_after(kind: str, spec: str) -> None:
    torch.set_num_threads(1)
    model = build(kind)
    plan = plan_for(model, spec)
    assert plan.flops is not None
    tokens = tokens_for(graph_from_module(model))
    assert (plan.flops.image_tokens, plan.flops.text_tokens) == (tokens.image, tokens.text)
    assert plan.flops.before == counted_flops(model, kind, tokens.image, tokens.text)
    pruned = apply(plan, copy.deepcopy(model))
    assert plan.flops.after_prune == counted_flops(pruned, kind, tokens.image, tokens.text)
