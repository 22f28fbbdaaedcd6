"""The embedded demo: a tiny SD3.5-style text-to-image transformer for 8x8 digits, and its judge.

``import hpspec.demo`` is cheap (paths and prompts only); the model-side names below are imported
on first use, since they pull in torch, diffusers and transformers.

- ``transformer_dir()``: the shipped diffusers transformer directory.
- ``load_demo_transformer(path=None)``: that (or another) directory as an SD3Transformer2DModel.
- ``load_text_encoder()``: the MiniLM prompt encoder, cached per process.
- ``DemoGenerator(transformer, encoder=None, steps=10, guidance=1.5, skip_layers=())``:
  ``.generate(prompts, seed) -> (N, 1, 8, 8)`` images in [0, 1].
- ``DemoScorer()``: ``.score(images, prompts) -> {"prompt_accuracy", "quality"}``, both in [0, 1].
- ``default_prompts()``: the fixed evaluation prompt set (``PROMPTS_FILE``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from hpspec.demo.lazy import lazy_attributes
from hpspec.demo.paths import (
    CLASSIFIER_FILE,
    DEMO_DIR,
    REAL_STATS_FILE,
    TRAINING_RECORD,
    TRANSFORMER_DIR,
    WEIGHTS_DIR,
    transformer_dir,
)
from hpspec.demo.prompts import PROMPTS_FILE, default_prompts, digit_of, read_prompts

if TYPE_CHECKING:
    from hpspec.demo.model import load_demo_transformer as load_demo_transformer
    from hpspec.demo.sampler import DemoGenerator as DemoGenerator
    from hpspec.demo.scorer import DemoScorer as DemoScorer
    from hpspec.demo.text import load_text_encoder as load_text_encoder

_LAZY = {
    "load_demo_transformer": "hpspec.demo.model",
    "DemoGenerator": "hpspec.demo.sampler",
    "DemoScorer": "hpspec.demo.scorer",
    "load_text_encoder": "hpspec.demo.text",
}

__all__ = [
    "CLASSIFIER_FILE",
    "DEMO_DIR",
    "PROMPTS_FILE",
    "REAL_STATS_FILE",
    "TRAINING_RECORD",
    "TRANSFORMER_DIR",
    "WEIGHTS_DIR",
    "default_prompts",
    "digit_of",
    "read_prompts",
    "transformer_dir",
    *_LAZY,
]


__getattr__ = lazy_attributes(globals(), _LAZY)
