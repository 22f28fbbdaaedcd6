"""Training the shapes demo: a seeded pool of train-split scenes and the rectified-flow run on it.

The flow matching loss, EMA, learning-rate schedule and data order are the digit demo's
(`hpspec.demo.training.train_flow`); only the data differ.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from hpspec.demo.shapes.model import build_transformer
from hpspec.demo.shapes.prompts import CATEGORIES, prompt_of, requirements_of, split_prompts, split_tuples
from hpspec.demo.shapes.scenes import IMAGE_SIZE, layout, render
from hpspec.demo.text import TextEncoder, TextEncoding
from hpspec.demo.training import Checkpoint, Log, TransformerTraining, drop_condition, train_flow

POOL_SIZE = 100000
DISTILL_SCENES = 1024  # the distill step's data: train-split scenes of another seed
DISTILL_SEED = 1


@dataclass(frozen=True)
class ScenePool:
    """`images` (N, 3, H, W) uint8 and `prompt_rows` (N,) indices into `prompts`."""

    images: torch.Tensor
    prompt_rows: torch.Tensor
    prompts: tuple[str, ...]


def scene_pool(n: int = POOL_SIZE, seed: int = 0, split: str = "train", side: int = IMAGE_SIZE) -> ScenePool:
    """`n` scenes, the categories in turn, each a random tuple and phrasing of the split."""
    rng = np.random.default_rng(seed)
    prompts = tuple(split_prompts(split))
    index = {p: i for i, p in enumerate(prompts)}
    choices = [[r for t in split_tuples(c, split) for r in requirements_of(c, t)] for c in CATEGORIES]
    images = np.empty((n, side, side, 3), dtype=np.uint8)
    rows = np.empty(n, dtype=np.int64)

    for i in range(n):
        pool = choices[i % len(CATEGORIES)]
        req = pool[int(rng.integers(len(pool)))]
        images[i] = render(layout(req, rng, side), side)
        rows[i] = index[prompt_of(req)]
    return ScenePool(torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), torch.from_numpy(rows), prompts)


def model_space(images: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] -> float [-1, 1]."""
    return images.float() / 127.5 - 1


def distill_examples(n: int = DISTILL_SCENES, seed: int = DISTILL_SEED) -> tuple[torch.Tensor, list[str]]:
    """Scenes to distil on, in model space, and their prompts."""
    pool = scene_pool(n, seed=seed)
    return model_space(pool.images), [pool.prompts[int(i)] for i in pool.prompt_rows]


def train_shapes(
    cfg: TransformerTraining,
    encoder: TextEncoder,
    pool: ScenePool,
    log: Log = print,
    checkpoint: Checkpoint | None = None,
    checkpoint_every: int = 0,
) -> tuple[torch.nn.Module, dict[str, float]]:
    """Trains the shapes transformer on the pool; returns its EMA copy and a short record."""
    torch.manual_seed(cfg.seed)
    model = build_transformer()
    text, empty = encoder.encode(pool.prompts), encoder.encode([""])

    def examples(rows: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, TextEncoding]:
        cond = drop_condition(text.index(pool.prompt_rows[rows]), empty, cfg.cond_dropout, gen)
        return model_space(pool.images[rows]), cond

    return train_flow(cfg, model, pool.images.shape[0], examples, log, checkpoint, checkpoint_every)
