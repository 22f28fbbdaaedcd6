"""The embedded demo models, as data: which transformer, how to load it, its generator settings,
its scorer and prompts, and where its distillation data come from.

Every place that runs a demo (analysis, evaluation, distillation, `hpspec demo`, the evidence
bench) takes one of these instead of asking which demo it is. Names of code are given as
``"module:attribute"`` strings, imported on first use, so reading the table loads no torch.
"""

from __future__ import annotations

import importlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hpspec.demo.paths import TRANSFORMER_DIR
from hpspec.demo.shapes.paths import SHAPES_TRANSFORMER_DIR


@dataclass(frozen=True)
class DemoModel:
    """One embedded demo model (see the module doc)."""

    name: str
    subject: str  # what a sensitivity table calls the model
    description: str
    transformer_dir: Path
    loader: str  # "module:function": a transformer directory (None: the shipped one) -> nn.Module
    scorer: str  # "module:Class", constructed with no arguments
    prompts: str  # "module:function" -> the fixed evaluation prompt list
    analysis_prompts: str  # "module:function" -> the prompts `analyze` removes each block and part over
    steps: int  # sampler defaults
    guidance: float
    scorer_label: str  # how a sensitivity table names the scorer
    metrics: tuple[str, ...]  # the scorer's metrics, in the order tables show them
    # None: the distill stage's built-in digits (`--data demo`); else "module:function" -> (images
    # (N, C, H, W) in model space, their prompts), which the distill step encodes into a data folder.
    distill_examples: str | None = None

    @property
    def target(self) -> str:
        """What `--target`/`--model` call it: `demo` for the digits, the shipped directory otherwise."""
        return "demo" if self.name == "digits" else str(self.transformer_dir)

    def load_transformer(self, path: str | Path | None = None) -> Any:
        return _attribute(self.loader)(path)

    def make_scorer(self) -> Any:
        return _attribute(self.scorer)()

    def default_prompts(self) -> list[str]:
        return list(_attribute(self.prompts)())

    def analysis_set(self) -> list[str]:
        return list(_attribute(self.analysis_prompts)())

    def distill_set(self) -> tuple[Any, list[str]] | None:
        """(images, prompts) to distil on; None for the built-in digits."""
        return None if self.distill_examples is None else _attribute(self.distill_examples)()


def _attribute(name: str) -> Any:
    module, attribute = name.split(":")
    return getattr(importlib.import_module(module), attribute)


DIGITS = DemoModel(
    name="digits",
    subject="demo",
    description="8x8 handwritten digits, one per image; judged by a digit classifier and an FD",
    transformer_dir=TRANSFORMER_DIR,
    loader="hpspec.demo.model:load_demo_transformer",
    scorer="hpspec.demo.scorer:DemoScorer",
    prompts="hpspec.demo.prompts:default_prompts",
    analysis_prompts="hpspec.demo.prompts:default_prompts",
    steps=10,
    guidance=1.5,
    scorer_label="demo-digits",
    metrics=("prompt_accuracy", "quality"),
)

SHAPES = DemoModel(
    name="shapes",
    subject="demo-shapes",
    description="32x32 scenes of 1-4 coloured shapes; judged exactly, GenEval's six categories",
    transformer_dir=SHAPES_TRANSFORMER_DIR,
    loader="hpspec.demo.shapes.model:load_shapes_transformer",
    scorer="hpspec.demo.shapes.scorer:ShapesScorer",
    prompts="hpspec.demo.shapes.prompts:demo_prompts",
    analysis_prompts="hpspec.demo.shapes.prompts:analysis_prompts",
    steps=10,
    guidance=3.0,
    scorer_label="shapes-geneval",
    metrics=("overall", "single_object", "two_object", "counting", "colors", "position", "color_attr"),
    distill_examples="hpspec.demo.shapes.training:distill_examples",
)

DEMO_MODELS: dict[str, DemoModel] = {m.name: m for m in (DIGITS, SHAPES)}

SHAPE_KEYS = ("_class_name", "in_channels", "out_channels", "joint_attention_dim", "pooled_projection_dim")
"""The config keys that say which demo a transformer directory is shaped like (its image and its text)."""


def _config(directory: Path) -> dict[str, Any]:
    try:
        data = json.loads((directory / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def demo_model_of(directory: str | Path) -> DemoModel | None:
    """The demo whose shipped transformer `directory` (a pruned or trained one too) is shaped like.

    >>> demo_model_of(SHAPES_TRANSFORMER_DIR).name
    'shapes'
    """
    config = _config(Path(directory))
    if not config:
        return None
    for model in DEMO_MODELS.values():
        shipped = _config(model.transformer_dir)
        if all(config.get(key) == shipped.get(key) for key in SHAPE_KEYS):
            return model
    return None
