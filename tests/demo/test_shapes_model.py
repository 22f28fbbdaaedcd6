"""The shipped shapes model: what the package ships, read by diffusers itself, and a short generation."""

from __future__ import annotations

import json
from fnmatch import fnmatch

import tomllib
import torch
from diffusers import SD3Transformer2DModel

from hpspec.demo.models import SHAPES
from hpspec.demo.sampler import DemoGenerator
from hpspec.demo.shapes import SHAPES_TRAINING_RECORD, SHAPES_TRANSFORMER_DIR, ShapesScorer
from hpspec.demo.shapes.model import TRANSFORMER_CONFIG
from hpspec.demo.shapes.prompts import SPLITS, split_prompts
from hpspec.demo.text import MAX_TOKENS, load_text_encoder
from tests.conftest import REPO


def test_shipped_weights_are_small_and_packaged() -> None:
    files = sorted(p for p in SHAPES_TRANSFORMER_DIR.parent.rglob("*") if p.is_file())
    assert sum(p.stat().st_size for p in files) <= 10 * 1024 * 1024
    patterns = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    shipped = patterns["hpspec.demo.shapes"]
    package = REPO / "hpspec" / "demo" / "shapes"
    for path in files:
        assert any(fnmatch(str(path.relative_to(package)), pattern) for pattern in shipped), path
    assert json.loads(SHAPES_TRAINING_RECORD.read_text())["transformer"]["steps"] > 0


def test_diffusers_reads_the_shipped_model_as_configured() -> None:
    model = SD3Transformer2DModel.from_pretrained(SHAPES_TRANSFORMER_DIR)
    assert all(model.config[k] == v for k, v in TRANSFORMER_CONFIG.items())
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_every_prompt_fits_the_text_encoders_16_tokens() -> None:
    tokenizer = load_text_encoder().tokenizer
    prompts = {p for s in SPLITS for p in split_prompts(s)}
    longest = max(len(tokenizer(p)["input_ids"]) for p in prompts)  # with [CLS] and [SEP], untruncated
    assert longest <= MAX_TOKENS


def test_a_short_generation_is_seeded_and_judged() -> None:
    torch.set_num_threads(1)
    prompts = SHAPES.analysis_set()[::2]  # one prompt per category
    generator = DemoGenerator(SHAPES.load_transformer(), steps=SHAPES.steps, guidance=SHAPES.guidance)
    images = generator.generate(prompts, seed=0)
    assert images.shape == (len(prompts), 3, 32, 32) and 0 <= images.min() and images.max() <= 1
    assert torch.equal(images, generator.generate(prompts, seed=0))
    scores = ShapesScorer().score(images, prompts)
    assert set(scores) == {"overall", *SHAPES.metrics[1:]}
