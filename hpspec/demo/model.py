"""The demo transformer: a 12-block SD3.5-style MMDiT on 8x8 one-channel digit images."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from diffusers import SD3Transformer2DModel

from hpspec.demo.paths import transformer_dir
from hpspec.demo.text import EMBED_DIM

IMAGE_SIZE = 8
CHANNELS = 1

# 4 heads x 16 = 64 wide; caption_projection_dim must equal that width. 8x8 pixels in 2x2 patches
# give 16 image tokens beside the 16 text tokens.
TRANSFORMER_CONFIG: dict[str, Any] = {
    "sample_size": IMAGE_SIZE,
    "patch_size": 2,
    "in_channels": CHANNELS,
    "out_channels": CHANNELS,
    "num_layers": 12,
    "attention_head_dim": 16,
    "num_attention_heads": 4,
    "joint_attention_dim": EMBED_DIM,
    "caption_projection_dim": 64,
    "pooled_projection_dim": EMBED_DIM,
    "pos_embed_max_size": IMAGE_SIZE,
    "qk_norm": "rms_norm",
}


def build_transformer() -> SD3Transformer2DModel:
    """A freshly initialised demo transformer (the training script's starting point)."""
    return SD3Transformer2DModel(**TRANSFORMER_CONFIG)


def load_demo_transformer(path: str | Path | None = None) -> SD3Transformer2DModel:
    """The shipped (or another plain diffusers) transformer directory, in eval mode, fp32, CPU."""
    model = SD3Transformer2DModel.from_pretrained(path or transformer_dir())
    return model.eval()
