"""Training the demo: the rectified-flow transformer and the digit classifier that scores it.

Both are deterministic under a seed: every random draw (initialisation, data order, templates,
condition dropout, times, noise) comes from seeded generators.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from hpspec.demo.data import digits_model_space, digits_unit
from hpspec.demo.model import build_transformer
from hpspec.demo.prompts import TRAIN_TEMPLATES, prompts_for
from hpspec.demo.sampler import velocity
from hpspec.demo.scorer import DigitClassifier, feature_stats
from hpspec.demo.text import TextEncoder, TextEncoding

Log = Callable[[str], None]


@dataclass(frozen=True)
class TransformerTraining:
    steps: int = 2500
    batch_size: int = 64
    lr: float = 1e-3
    warmup: int = 100
    weight_decay: float = 0.01
    # Fraction of examples trained with the empty prompt: the unconditional branch of CFG.
    cond_dropout: float = 0.1
    ema_decay: float = 0.998
    seed: int = 0
    log_every: int = 100

    def as_dict(self) -> dict[str, float | int]:
        return asdict(self)


@dataclass(frozen=True)
class PromptBank:
    """Every training prompt encoded once: row d * len(TRAIN_TEMPLATES) + k is template k, digit d."""

    text: TextEncoding
    empty: TextEncoding
    templates: int

    @classmethod
    def build(cls, encoder: TextEncoder) -> PromptBank:
        prompts = [p for d in range(10) for p in prompts_for(d)]
        return cls(encoder.encode(prompts), encoder.encode([""]), len(TRAIN_TEMPLATES))

    def draw(self, labels: torch.Tensor, dropout: float, gen: torch.Generator) -> TextEncoding:
        """A random template per label; with probability `dropout`, the empty prompt instead."""
        n = labels.shape[0]
        rows = labels * self.templates + torch.randint(0, self.templates, (n,), generator=gen)
        return drop_condition(self.text.index(rows), self.empty, dropout, gen)


def drop_condition(text: TextEncoding, empty: TextEncoding, dropout: float, gen: torch.Generator) -> TextEncoding:
    """Each row replaced by the empty prompt with probability `dropout` (CFG's unconditional branch)."""
    n = len(text)
    drop = (torch.rand(n, generator=gen) < dropout).view(n, 1)
    return TextEncoding(
        torch.where(drop.view(n, 1, 1), empty.states, text.states),
        torch.where(drop, empty.pooled, text.pooled),
    )


def lr_factor(step: int, cfg: TransformerTraining) -> float:
    """Linear warm-up, then cosine decay to a tenth."""
    if step < cfg.warmup:
        return (step + 1) / cfg.warmup
    progress = (step - cfg.warmup) / max(cfg.steps - cfg.warmup, 1)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))


class EpochSampler:
    """Batches from a fresh seeded permutation each epoch (a deterministic data order)."""

    def __init__(self, n: int, batch_size: int, gen: torch.Generator) -> None:
        self.n, self.batch_size, self.gen = n, batch_size, gen
        self.order = torch.empty(0, dtype=torch.int64)

    def next(self) -> torch.Tensor:
        if self.order.numel() < self.batch_size:
            self.order = torch.cat([self.order, torch.randperm(self.n, generator=self.gen)])
        batch, self.order = self.order[: self.batch_size], self.order[self.batch_size :]
        return batch


def flow_matching_loss(model: nn.Module, x0: torch.Tensor, text: TextEncoding, gen: torch.Generator) -> torch.Tensor:
    """MSE between the predicted and the true velocity eps - x0 at logit-normal times (SD3)."""
    n = x0.shape[0]
    t = torch.sigmoid(torch.randn(n, generator=gen))
    eps = torch.randn(x0.shape, generator=gen)
    tt = t.view(n, 1, 1, 1)
    x_t = (1 - tt) * x0 + tt * eps
    return F.mse_loss(velocity(model, x_t, t, text), eps - x0)


@torch.no_grad()
def ema_update(ema: nn.Module, model: nn.Module, decay: float) -> None:
    for e, p in zip(ema.parameters(), model.parameters()):
        e.lerp_(p, 1 - decay)


# One training example batch: rows of the data set -> (images in [-1, 1], their conditions).
Examples = Callable[[torch.Tensor, torch.Generator], tuple[torch.Tensor, TextEncoding]]
Checkpoint = Callable[[nn.Module, int], None]


def train_flow(
    cfg: TransformerTraining,
    model: nn.Module,
    n_examples: int,
    examples: Examples,
    log: Log = print,
    checkpoint: Checkpoint | None = None,
    checkpoint_every: int = 0,
) -> tuple[nn.Module, dict[str, float]]:
    """Rectified-flow training of `model` on `n_examples` (any data set); returns its EMA copy and a
    short record. `checkpoint(ema, step)` is called every `checkpoint_every` steps (0: never)."""
    model = model.train()
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    gen = torch.Generator().manual_seed(cfg.seed)
    batches = EpochSampler(n_examples, cfg.batch_size, gen)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, cfg))
    start, running, last_loss = time.perf_counter(), 0.0, float("nan")
    for step in range(cfg.steps):
        x0, text = examples(batches.next(), gen)
        loss = flow_matching_loss(model, x0, text, gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        ema_update(ema, model, cfg.ema_decay)
        running += loss.item()
        if (step + 1) % cfg.log_every == 0:
            elapsed = time.perf_counter() - start
            log(f"step {step + 1}/{cfg.steps} loss {running / cfg.log_every:.4f} {elapsed:.0f}s")
            last_loss, running = running / cfg.log_every, 0.0
        if checkpoint is not None and checkpoint_every and (step + 1) % checkpoint_every == 0:
            checkpoint(ema, step + 1)
    seconds = time.perf_counter() - start
    return ema, {"seconds": seconds, "final_loss": last_loss}


def train_transformer(
    cfg: TransformerTraining, encoder: TextEncoder, log: Log = print
) -> tuple[nn.Module, dict[str, float]]:
    """Trains the demo transformer; returns its EMA copy and a short record."""
    torch.manual_seed(cfg.seed)
    model = build_transformer()
    images, labels = digits_model_space()
    bank = PromptBank.build(encoder)

    def examples(rows: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, TextEncoding]:
        return images[rows], bank.draw(labels[rows], cfg.cond_dropout, gen)

    return train_flow(cfg, model, images.shape[0], examples, log)


def train_classifier(seed: int = 0, epochs: int = 600, log: Log = print) -> tuple[DigitClassifier, dict[str, float]]:
    """Full-batch training on 80% of the digits; accuracy measured on the held-out 20%."""
    from sklearn.model_selection import train_test_split

    torch.manual_seed(seed)
    images, labels = digits_unit()
    train_idx, test_idx = train_test_split(
        torch.arange(labels.shape[0]).numpy(),
        test_size=0.2,
        random_state=seed,
        stratify=labels.numpy(),
    )
    train_idx, test_idx = torch.as_tensor(train_idx), torch.as_tensor(test_idx)
    model = DigitClassifier()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    gen = torch.Generator().manual_seed(seed)
    x, y = images[train_idx], labels[train_idx]
    for _ in range(epochs):
        # Light pixel noise: generated digits are not quite as clean as scanned ones.
        noisy = (x + 0.05 * torch.randn(x.shape, generator=gen)).clamp(0, 1)
        loss = F.cross_entropy(model(noisy), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    model.eval().requires_grad_(False)
    with torch.no_grad():
        accuracy = float((model(images[test_idx]).argmax(-1) == labels[test_idx]).float().mean())
    log(f"classifier held-out accuracy {accuracy:.4f}")
    return model, {"held_out_accuracy": accuracy, "epochs": epochs}


@torch.no_grad()
def real_feature_stats(classifier: DigitClassifier) -> tuple[torch.Tensor, torch.Tensor]:
    """Feature mean and covariance of all real digits: the FD reference."""
    images, _ = digits_unit()
    return feature_stats(classifier.features(images))
