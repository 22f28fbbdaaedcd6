"""The shapes demo transformer: a 12-block, 96-wide SD3.5-style MMDiT on 32x32 RGB scenes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from diffusers import SD3Transformer2DModel

from hpspec.demo.model import TRANSFORMER_CONFIG as DIGITS_CONFIG
from hpspec.demo.shapes.paths import transformer_dir
from hpspec.demo.shapes.scenes import IMAGE_SIZE

CHANNELS = 3
PATCH = 4

# The digit demo's transformer (12 blocks, MiniLM text) made 6 heads x 16 = 96 wide, on 32x32 RGB:
# 4x4 patches give 64 image tokens beside the 16 text tokens. 4.04M parameters, shipped in fp16
# (8.1 MB). The first model, 64 wide, drew scattered 4x4 patches (0.21 overall after 4500 steps).
WIDTH = 96
TRANSFORMER_CONFIG: dict[str, Any] = {
    **DIGITS_CONFIG,
    "num_attention_heads": WIDTH // DIGITS_CONFIG["attention_head_dim"],
    "caption_projection_dim": WIDTH,
    "sample_size": IMAGE_SIZE,
    "patch_size": PATCH,
    "in_channels": CHANNELS,
    "out_channels": CHANNELS,
    "pos_embed_max_size": IMAGE_SIZE // PATCH,
}


def build_transformer(**overrides: Any) -> SD3Transformer2DModel:
    """A freshly initialised shapes transformer (the training script's starting point)."""
    return SD3Transformer2DModel(**{**TRANSFORMER_CONFIG, **overrides})


def load_shapes_transformer(path: str | Path | None = None) -> SD3Transformer2DModel:
    """The shipped (or another plain diffusers) shapes transformer directory, eval mode, fp32, CPU
    (the shipped weights are fp16; they are widened on load)."""
    import torch

    model = SD3Transformer2DModel.from_pretrained(path or transformer_dir(), torch_dtype=torch.float32)
    return model.eval()
