"""scikit-learn's 8x8 handwritten digits (shipped inside scikit-learn: no download)."""

from __future__ import annotations

from functools import lru_cache

import torch


@lru_cache(maxsize=1)
def _digits() -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    data = load_digits()
    images = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16.0
    return images, torch.tensor(data.target, dtype=torch.int64)


def digits_unit() -> tuple[torch.Tensor, torch.Tensor]:
    """All 1797 digits as (N, 1, 8, 8) in [0, 1] (the scorer's space), and their labels (N,)."""
    images, labels = _digits()
    return images.clone(), labels.clone()


def digits_model_space() -> tuple[torch.Tensor, torch.Tensor]:
    """The same digits in [-1, 1] (the diffusion model's space)."""
    images, labels = digits_unit()
    return images * 2 - 1, labels
