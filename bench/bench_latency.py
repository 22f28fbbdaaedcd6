"""Forward latency of pruned SD3 transformers against the original, beside the FLOPs each plan removes.

A mid-size SD3 (24 heads x 64 = 1536 wide, 8 blocks, random weights, fp32) at 256 image tokens and
the plan's 333 text tokens; plans drop 1 to 3 middle blocks (12.5% to 37.5%). Each model is timed
as the minimum of several forward passes, the models alternating so that drift hits all alike.
Goal: latency reduction >= 0.9 x FLOP reduction.

    python bench/bench_latency.py [--repeats 3] [--threads 2]
"""

from __future__ import annotations

import argparse
import copy
import time

import torch
from diffusers import SD3Transformer2DModel

import hpspec
from hpspec.plan.check import check
from hpspec.model.flops import tokens_for
from hpspec.model.graph import graph_from_module
from hpspec.lang.parse import parse
from hpspec.plan.compile import compile_plan

CONFIG = dict(
    sample_size=32, patch_size=2, in_channels=16, num_layers=8, attention_head_dim=64, num_attention_heads=24,
    joint_attention_dim=4096, caption_projection_dim=1536, pooled_projection_dim=2048, out_channels=16,
    pos_embed_max_size=32,
)  # fmt: skip
SPECS = {"drop 1 of 8": "drop blocks[4]", "drop 2 of 8": "drop blocks[3:5]", "drop 3 of 8": "drop blocks[2:5]"}


def inputs(image_tokens: int, text_tokens: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    side = int(image_tokens**0.5) * CONFIG["patch_size"]
    return dict(
        hidden_states=torch.randn(1, CONFIG["in_channels"], side, side, generator=generator),
        encoder_hidden_states=torch.randn(1, text_tokens, CONFIG["joint_attention_dim"], generator=generator),
        pooled_projections=torch.randn(1, CONFIG["pooled_projection_dim"], generator=generator),
        timestep=torch.tensor([500.0]),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    original = SD3Transformer2DModel(**CONFIG).eval()
    graph = graph_from_module(original, "sd3-mid")
    tokens = tokens_for(graph)
    assert tokens is not None
    feed = inputs(tokens.image, tokens.text)
    models = {"original": (original, None)}
    for name, spec in SPECS.items():
        plan = compile_plan(check(parse(spec + "\n"), graph))
        models[name] = (hpspec.apply(plan, copy.deepcopy(original)), plan)
    best = {name: float("inf") for name in models}
    with torch.no_grad():
        for model, _ in models.values():
            model(**feed)  # warm-up
        for _ in range(args.repeats):
            for name, (model, _) in models.items():
                start = time.perf_counter()
                model(**feed)
                best[name] = min(best[name], time.perf_counter() - start)
    print(f"SD3 1536 wide, 8 blocks, {tokens.image} image + {tokens.text} text tokens, {args.threads} threads, "
          f"min of {args.repeats}")  # fmt: skip
    print(f"{'plan':<14}{'latency':>10}{'latency cut':>13}{'FLOPs cut':>11}{'ratio':>8}  goal >= 0.9")
    print(f"{'original':<14}{best['original'] * 1000:>8.0f}ms{'-':>13}{'-':>11}{'-':>8}")
    for name, (_, plan) in models.items():
        if plan is None:
            continue
        latency_cut = 1 - best[name] / best["original"]
        flops_cut = 1 - plan.flops.after_prune / plan.flops.before
        ratio = latency_cut / flops_cut
        print(f"{name:<14}{best[name] * 1000:>8.0f}ms{latency_cut:>12.1%}{flops_cut:>11.1%}{ratio:>8.2f}  "
              f"{'met' if ratio >= 0.9 else 'MISSED'}")  # fmt: skip


if __name__ == "__main__":
    main()
