"""draws: every random draw of a training step, a pure function of (seed, step).

The draws are made for the whole global batch from a generator seeded by (seed, step), of which
each process takes its slice: runs are deterministic under a seed, N processes see what one sees,
and a resumed run continues exactly. Each epoch is a fresh permutation of the examples.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class Draws:
    rows: torch.Tensor
    uniform: torch.Tensor
    unconditional: torch.Tensor
    noise: torch.Tensor
    sigma: torch.Tensor

    def slice(self, start: int, stop: int) -> Draws:
        return Draws(*(t[start:stop] for t in (self.rows, self.uniform, self.unconditional, self.noise, self.sigma)))


def _generator(seed: int, stream: int, index: int) -> torch.Generator:
    import torch

    mixed = hashlib.sha256(f"{seed}:{stream}:{index}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(mixed[:8], "little") >> 1)


@lru_cache(maxsize=4)
def _epoch_order(seed: int, epoch: int, count: int) -> torch.Tensor:
    import torch

    return torch.randperm(count, generator=_generator(seed, 0, epoch))


def draws(seed: int, step: int, batch: int, count: int, latent: Sequence[int], unconditional: float) -> Draws:
    """Step `step`'s examples (each epoch a fresh permutation), variants, prompt dropout, noise and σ."""
    import torch

    positions = torch.arange(step * batch, (step + 1) * batch)
    rows = torch.stack([_epoch_order(seed, int(p) // count, count)[int(p) % count] for p in positions])
    gen = _generator(seed, 1, step)
    uniform = torch.rand(batch, generator=gen)
    dropped = torch.rand(batch, generator=gen) < unconditional
    noise = torch.randn((batch, *latent), generator=gen)
    sigma = torch.sigmoid(torch.randn(batch, generator=gen))  # logit-normal(0, 1), SD3's training density
    return Draws(rows, uniform, dropped, noise, sigma)
