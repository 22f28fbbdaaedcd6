"""The shapes demo: a compositional text-to-image task with an exact judge (GenEval on shapes).

``import hpspec.demo.shapes`` is cheap (prompts and paths); the rest is imported on first use.

- ``ShapesScorer()``: ``.score(images (N, 3, H, W) in [0, 1], prompts) -> {"overall", <category>}``.
- ``eval_prompts()``, ``split_prompts(split, category=None)``, ``requirement_of(prompt)``.
- ``layout(requirement, rng)`` and ``render(shapes)``: the seeded scenes the model is trained on.
- ``load_shapes_transformer(path=None)``: the shipped 32x32 RGB SD3.5-style transformer.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from hpspec.demo.lazy import lazy_attributes
from hpspec.demo.shapes.paths import SHAPES_TRAINING_RECORD, SHAPES_TRANSFORMER_DIR, SHAPES_WEIGHTS_DIR
from hpspec.demo.shapes.prompts import CATEGORIES, eval_prompts, requirement_of, split_prompts

if TYPE_CHECKING:
    from hpspec.demo.shapes.model import load_shapes_transformer as load_shapes_transformer
    from hpspec.demo.shapes.scenes import layout as layout
    from hpspec.demo.shapes.scenes import render as render
    from hpspec.demo.shapes.scorer import ShapesScorer as ShapesScorer

_LAZY = {
    "ShapesScorer": "hpspec.demo.shapes.scorer",
    "layout": "hpspec.demo.shapes.scenes",
    "render": "hpspec.demo.shapes.scenes",
    "load_shapes_transformer": "hpspec.demo.shapes.model",
}

__all__ = [
    "CATEGORIES",
    "SHAPES_TRAINING_RECORD",
    "SHAPES_TRANSFORMER_DIR",
    "SHAPES_WEIGHTS_DIR",
    "eval_prompts",
    "requirement_of",
    "split_prompts",
    *_LAZY,
]


__getattr__ = lazy_attributes(globals(), _LAZY)
