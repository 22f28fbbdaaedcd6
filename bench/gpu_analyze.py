"""The Python half of bench/gpu_analyze.sh: analysis on an SD3.5-Large-shaped transformer, random weights.

Builds ``SD3Transformer2DModel`` from hpspec's arch data (``models.toml``: ``sd3.5-large``, 38 blocks,
2432 wide, 8.1B parameters; nothing downloaded), in bf16 on CUDA, and feeds it random latents and
text embeddings at the family's default resolution (``model.flops.tokens_for``: 4096 image and 333
text tokens, i.e. 1024x1024). Then, as ``hpspec analyze`` does, with the sampler's forwards alone
(no text encoders, no VAE, no scorer):

- one probe pass (``method.probes``: cosine, mse, cka per block over ``--steps`` forwards);
- a few entries (``--entries``): each a one-line spec whose modules are swapped IN PLACE
  (``method.analyze.swapped``) for ``--steps`` forwards, then put back (the state dict is checked).

Prints seconds and peak memory (``torch.cuda.max_memory_allocated``, reset per row) of each row,
and the model's own size. ``--tiny`` runs a 4-block model of the same layout in fp32 on the CPU (the
test suite runs it so that this script is not dead code).

    python bench/gpu_analyze.py [--steps 4] [--batch 1] [--entries "blocks[12];block[20].mlp"]
    python bench/gpu_analyze.py --tiny
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

MODEL = "sd3.5-large"
ENTRIES = "blocks[12];block[20].mlp;block[20].attn;block[30].context_mlp;blocks[36]"
TINY = dict(num_layers=4, num_attention_heads=2, attention_head_dim=16, caption_projection_dim=32,
            joint_attention_dim=32, pooled_projection_dim=32, sample_size=16, pos_embed_max_size=16)  # fmt: skip
TINY_ENTRIES = "blocks[1];block[2].mlp;block[2].attn"


def build(tiny: bool, device: str, dtype: Any) -> tuple[Any, Any, int]:
    """The transformer (random weights, made on `device` in `dtype`), its graph, and the parameter
    count the arch data predicts from the config alone."""
    import torch
    from diffusers import SD3Transformer2DModel

    from hpspec.model.arch import builtin_models
    from hpspec.model.graph import graph_from_config, graph_from_module

    config = {k: v for k, v in builtin_models()[MODEL].config.items() if not k.startswith("_")}
    if tiny:
        config.update(TINY)
    torch.manual_seed(0)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # made in bf16 directly: no fp32 copy of 8B parameters first
    try:
        with torch.device(device):
            model = SD3Transformer2DModel(**config).eval().requires_grad_(False)
    finally:
        torch.set_default_dtype(previous)
    name = MODEL + (" (tiny)" if tiny else "")
    predicted = graph_from_config({"_class_name": "SD3Transformer2DModel", **config}, name, "bench", "BF16").params
    return model, graph_from_module(model, name), predicted


def feed(graph: Any, batch: int, device: str, dtype: Any) -> dict[str, Any]:
    """Random latents and text embeddings at the family's default token counts."""
    import torch

    from hpspec.model.flops import tokens_for

    tokens = tokens_for(graph)
    assert tokens is not None, "the config names its sample and patch size"
    config = graph.config
    side = int(round(tokens.image**0.5)) * int(config["patch_size"])
    generator = torch.Generator(device).manual_seed(1)

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=generator, device=device).to(dtype)

    return dict(
        hidden_states=randn(batch, int(config["in_channels"]), side, side),
        encoder_hidden_states=randn(batch, tokens.text, int(config["joint_attention_dim"])),
        pooled_projections=randn(batch, int(config["pooled_projection_dim"])),
    )


def sample(model: Any, inputs: dict[str, Any], steps: int) -> None:
    """`steps` Euler steps of the flow ODE from the given latents (the sampler's forwards)."""
    import torch

    latents = inputs["hidden_states"]
    for t in torch.linspace(1000.0, 1000.0 / steps, steps).tolist():
        timestep = torch.full((latents.shape[0],), t, device=latents.device)
        velocity = model(**{**inputs, "hidden_states": latents}, timestep=timestep, return_dict=False)[0]
        latents = latents - velocity / steps


def timed(device: str, work: Callable[[], object]) -> tuple[float, int | None]:
    """Seconds of `work` and, on CUDA, the peak memory allocated during it (weights included)."""
    import torch

    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    work()
    if cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - start, int(torch.cuda.max_memory_allocated()) if cuda else None


Row = tuple[str, float, "int | None"]


def run(args: argparse.Namespace) -> tuple[list[Row], int, int]:
    """The rows (the unpruned pass, the probe pass, each entry), the parameters and weight bytes;
    checks that the model holds the graph's count and that every entry puts it back."""
    import torch

    from hpspec.lang.parse import parse
    from hpspec.method.analyze import swapped
    from hpspec.method.probes import PROBES, probe_recorder
    from hpspec.plan.check import check
    from hpspec.plan.compile import compile_plan

    device = "cpu" if args.tiny else args.device
    dtype = torch.float32 if args.tiny else getattr(torch, args.dtype)
    torch.set_num_threads(args.threads)
    model, graph, predicted = build(args.tiny, device, dtype)
    inputs = feed(graph, args.batch, device, dtype)
    before = {name: tensor.clone() for name, tensor in list(model.state_dict().items())[:4]}
    count = sum(p.numel() for p in model.parameters())
    assert count == predicted, f"the live model holds {count} parameters, the arch data says {predicted}"
    nbytes = sum(p.numel() * p.element_size() for p in model.parameters())
    rows: list[Row] = []
    with torch.inference_mode():
        rows.append(("unpruned", *timed(device, lambda: sample(model, inputs, args.steps))))
        with probe_recorder(model, graph, PROBES) as probes:
            rows.append(
                (f"probe pass ({', '.join(PROBES)})", *timed(device, lambda: sample(model, inputs, args.steps)))
            )
        assert len(probes()) == len(graph.stacks[0].blocks), "one probe per block"
        for entry in [e.strip() for e in args.entries.split(";") if e.strip()]:
            plan = compile_plan(check(parse(f"drop {entry}\n", f"<{entry}>"), graph))
            with swapped(model, plan):
                rows.append((f"drop {entry}", *timed(device, lambda: sample(model, inputs, args.steps))))
            assert sum(p.numel() for p in model.parameters()) == count, f"{entry}: the model was not put back"
    assert all(torch.equal(before[n], t) for n, t in list(model.state_dict().items())[:4])
    return rows, count, nbytes


def report(rows: Sequence[Row], args: argparse.Namespace, params: int, nbytes: int) -> str:
    from hpspec.plan.summary import human_bytes, table

    body = [
        [name, f"{seconds:.3f}", human_bytes(peak) if peak is not None else "- (cpu)"] for name, seconds, peak in rows
    ]
    head = f"{MODEL}{' (tiny)' if args.tiny else ''}: {params:,} parameters, {human_bytes(nbytes)} of weights; "
    head += f"{args.steps} steps, batch {args.batch}"
    return head + "\n" + table(body, ["row", "seconds", "peak memory (max_memory_allocated)"])


def main(argv: Sequence[str] | None = None) -> list[Row]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float16", "float32"))
    parser.add_argument("--steps", type=int, default=4, help="sampler forwards per row (the reference: 4)")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--entries", help=f"';'-separated selectors (default {ENTRIES!r})")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (--tiny)")
    parser.add_argument("--tiny", action="store_true", help="a 4-block model of the same layout, fp32 on the CPU")
    args = parser.parse_args(argv)
    args.entries = args.entries or (TINY_ENTRIES if args.tiny else ENTRIES)
    rows, params, nbytes = run(args)
    print(report(rows, args, params, nbytes))
    return rows


if __name__ == "__main__":
    main()
