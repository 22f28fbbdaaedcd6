"""Seeded tiny diffusers transformers (SD3, the SD3.5 Medium layout, FLUX) and helpers for tests.

Shapes are CPU-FACTS' tiny configurations: a few hundred thousand parameters, a forward pass in
milliseconds. Every builder is seeded, so two calls give bit-identical models. Other test modules
may import these.
"""

from __future__ import annotations

import copy
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
import torch
from torch import nn

from hpspec.plan.check import check
from hpspec.model.graph import graph_from_module
from hpspec.model.targets import graph_from_path
from hpspec.lang.parse import parse
from hpspec.plan.compile import compile_plan
from hpspec.plan.plan import Plan

SD3_CONFIG: dict[str, Any] = dict(
    sample_size=16, patch_size=2, in_channels=4, num_layers=6, attention_head_dim=8, num_attention_heads=4,
    joint_attention_dim=32, caption_projection_dim=32, pooled_projection_dim=32, out_channels=4, pos_embed_max_size=16,
)  # fmt: skip
# SD3.5 Medium's layout: dual attention in the first blocks, RMS qk-norm.
SD35_MEDIUM_CONFIG: dict[str, Any] = {**SD3_CONFIG, "dual_attention_layers": (0, 1, 2), "qk_norm": "rms_norm"}
FLUX_CONFIG: dict[str, Any] = dict(
    patch_size=1, in_channels=16, num_layers=3, num_single_layers=4, attention_head_dim=16, num_attention_heads=2,
    joint_attention_dim=32, pooled_projection_dim=32, guidance_embeds=True, axes_dims_rope=(4, 6, 6),
)  # fmt: skip

KINDS = ("sd3", "sd35m", "flux")


@contextmanager
def isolated(cache_dir: Path) -> Iterator[None]:
    """For a test module: hpspec's digest cache in `cache_dir`, and torch on one thread (tiny
    forwards on 2 shared cores run 20x slower when OpenMP spins two threads)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("HPSPEC_CACHE_DIR", str(cache_dir))
            yield
    finally:
        torch.set_num_threads(threads)


@lru_cache(maxsize=None)
def _built(kind: str, seed: int) -> nn.Module:
    from diffusers import FluxTransformer2DModel, SD3Transformer2DModel

    torch.manual_seed(seed)
    if kind == "flux":
        model = FluxTransformer2DModel(**FLUX_CONFIG)
    else:
        model = SD3Transformer2DModel(**(SD3_CONFIG if kind == "sd3" else SD35_MEDIUM_CONFIG))
    with torch.no_grad():  # larger than the default init, so that every part visibly matters
        for parameter in model.parameters():
            parameter.normal_(0.0, 0.2)
    return model.eval()


def build(kind: str, seed: int = 0) -> nn.Module:
    """A fresh copy of the seeded tiny model of `kind` (sd3, sd35m, flux)."""
    return copy.deepcopy(_built(kind, seed))


def tiny_sd3(seed: int = 0) -> nn.Module:
    return build("sd3", seed)


def tiny_sd35_medium(seed: int = 0) -> nn.Module:
    return build("sd35m", seed)


def tiny_flux(seed: int = 0) -> nn.Module:
    return build("flux", seed)


def wide_flux(seed: int = 0) -> nn.Module:
    """A 1 + 1 block FLUX 256 wide: its Linears' rows fill the K-quants' 256-weight blocks (`inputs("flux")` fit)."""
    from diffusers import FluxTransformer2DModel

    config = {**FLUX_CONFIG, "num_layers": 1, "num_single_layers": 1, "attention_head_dim": 128,
              "axes_dims_rope": (16, 56, 56)}  # fmt: skip
    torch.manual_seed(seed)
    return FluxTransformer2DModel(**config).eval()


def inputs(kind: str, seed: int = 1, batch: int = 2) -> dict[str, torch.Tensor]:
    """Seeded forward inputs for a tiny model of `kind`."""
    generator = torch.Generator().manual_seed(seed)

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=generator)

    if kind == "flux":
        tokens, text = 16, 5
        return dict(
            hidden_states=randn(batch, tokens, FLUX_CONFIG["in_channels"]),
            encoder_hidden_states=randn(batch, text, FLUX_CONFIG["joint_attention_dim"]),
            pooled_projections=randn(batch, FLUX_CONFIG["pooled_projection_dim"]),
            timestep=torch.rand(batch, generator=generator),
            img_ids=torch.randint(0, 8, (tokens, 3), generator=generator).float(),
            txt_ids=torch.zeros(text, 3),
            guidance=torch.full((batch,), 3.5),
        )
    return dict(
        hidden_states=randn(batch, SD3_CONFIG["in_channels"], 8, 8),
        encoder_hidden_states=randn(batch, 5, SD3_CONFIG["joint_attention_dim"]),
        pooled_projections=randn(batch, SD3_CONFIG["pooled_projection_dim"]),
        timestep=torch.tensor([3.0, 700.0][:batch]),
    )


def kind_of(model: nn.Module) -> str:
    if type(model).__name__ == "FluxTransformer2DModel":
        return "flux"
    return "sd35m" if model.config.get("dual_attention_layers") else "sd3"


def forward(model: nn.Module, feed: dict[str, torch.Tensor] | None = None, **extra: Any) -> torch.Tensor:
    """The model's output for `feed` (default: the seeded inputs for its kind)."""
    with torch.no_grad():
        return model(**(feed or inputs(kind_of(model))), **extra, return_dict=False)[0]


def save(model: nn.Module, directory: Path, shard_bytes: int | None = None) -> Path:
    """save_pretrained (safetensors); `shard_bytes` splits it into an index and several shards."""
    kwargs = {"max_shard_size": shard_bytes} if shard_bytes else {}
    model.save_pretrained(directory, safe_serialization=True, **kwargs)
    return Path(directory)


def plan_for(model_or_path: nn.Module | Path, spec: str) -> Plan:
    """Compile spec text (no `target` line) against a live model or a checkpoint directory."""
    graph = graph_from_path(Path(model_or_path)) if isinstance(model_or_path, (str, Path)) else graph_from_module(model_or_path)
    return compile_plan(check(parse(spec), graph))


def swap(model: nn.Module, path: str, make: Callable[[nn.Module], nn.Module]) -> None:
    """Replace the submodule at `path` with `make(old)`."""
    parent_path, _, name = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    setattr(parent, name, make(getattr(parent, name)))


def state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def same_tensors(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]) for k in a)
