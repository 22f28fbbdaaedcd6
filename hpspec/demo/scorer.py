"""The demo's judge: a small digit classifier, and the two metrics it gives.

prompt_accuracy
    Fraction of images the classifier assigns to the digit their prompt names (GenEval's analogue).
quality
    ``clip(1 - FD(gen) / FD_noise, 0, 1)``, where ``FD(x) = |mu_x - mu_r|^2 + tr(S_x + S_r -
    2 (S_x S_r)^(1/2))`` is the Frechet distance between Gaussians fitted to the classifier's
    hidden-layer features of images ``x`` and of the real digits ``r`` (statistics shipped), and
    ``FD_noise`` is the FD of noise images: the sampler's starting noise shown as an image,
    ``clip((eps + 1) / 2, 0, 1)`` with ``eps ~ N(0, 1)``, ``NOISE_IMAGES`` of them from seed
    ``NOISE_SEED``. Real-looking digits score near 1, noise near 0.

Both are higher-is-better and lie in [0, 1].
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from hpspec.demo.paths import CLASSIFIER_FILE, REAL_STATS_FILE
from hpspec.demo.prompts import digit_of

PIXELS = 64
HIDDEN = 128
FEATURES = 32
NOISE_IMAGES = 2000
NOISE_SEED = 1234


class DigitClassifier(nn.Module):
    """MLP 64 -> 128 -> 32 -> 10 on 8x8 images in [0, 1]; the 32 wide layer is the FD feature."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(PIXELS, HIDDEN), nn.GELU(), nn.Linear(HIDDEN, FEATURES), nn.GELU())
        self.head = nn.Linear(FEATURES, 10)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        return self.body(images.reshape(images.shape[0], PIXELS))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images))


def load_classifier(path: str | Path = CLASSIFIER_FILE) -> DigitClassifier:
    model = DigitClassifier()
    model.load_state_dict(load_file(str(path)))
    return model.eval().requires_grad_(False)


def save_classifier(model: DigitClassifier, path: str | Path = CLASSIFIER_FILE) -> None:
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(path))


def feature_stats(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and (unbiased) covariance of (N, D) features, in float64."""
    x = features.double()
    return x.mean(0), torch.cov(x.T)


def save_stats(mu: torch.Tensor, sigma: torch.Tensor, path: str | Path = REAL_STATS_FILE) -> None:
    save_file({"mu": mu.contiguous(), "sigma": sigma.contiguous()}, str(path))


def _sqrt_psd(matrix: torch.Tensor) -> torch.Tensor:
    values, vectors = torch.linalg.eigh((matrix + matrix.T) / 2)
    return (vectors * values.clamp(min=0).sqrt()) @ vectors.T


def frechet_distance(mu1: torch.Tensor, sigma1: torch.Tensor, mu2: torch.Tensor, sigma2: torch.Tensor) -> float:
    """FD between N(mu1, sigma1) and N(mu2, sigma2).

    tr((S1 S2)^(1/2)) is computed as tr((S1^(1/2) S2 S1^(1/2))^(1/2)), a symmetric PSD matrix, so
    rank-deficient covariances (few images) need no complex sqrtm.
    """
    root1 = _sqrt_psd(sigma1)
    cross = torch.linalg.eigvalsh(root1 @ sigma2 @ root1).clamp(min=0).sqrt().sum()
    value = (mu1 - mu2).pow(2).sum() + sigma1.trace() + sigma2.trace() - 2 * cross
    return max(float(value), 0.0)


def noise_images(n: int = NOISE_IMAGES, seed: int = NOISE_SEED) -> torch.Tensor:
    """What a generator that learned nothing shows: its starting noise, as (n, 1, 8, 8) in [0, 1]."""
    eps = torch.randn((n, 1, 8, 8), generator=torch.Generator().manual_seed(seed))
    return ((eps + 1) / 2).clamp(0, 1)


class DemoScorer:
    """Scores (N, 1, 8, 8) or (N, 8, 8) images in [0, 1] against their prompts (see module doc)."""

    def __init__(
        self,
        classifier: DigitClassifier | None = None,
        real_mu: torch.Tensor | None = None,
        real_sigma: torch.Tensor | None = None,
    ) -> None:
        self.classifier = classifier if classifier is not None else load_classifier()
        if real_mu is None or real_sigma is None:
            stats = load_file(str(REAL_STATS_FILE))
            real_mu, real_sigma = stats["mu"], stats["sigma"]
        self.real_mu, self.real_sigma = real_mu.double(), real_sigma.double()
        self.noise_fd = self.frechet_to_real(noise_images())

    @torch.inference_mode()
    def features(self, images: torch.Tensor) -> torch.Tensor:
        return self.classifier.features(images.float())

    @torch.inference_mode()
    def predict(self, images: torch.Tensor) -> torch.Tensor:
        """The classifier's digit for each image, (N,) int64."""
        return self.classifier(images.float()).argmax(-1)

    def frechet_to_real(self, images: torch.Tensor) -> float:
        mu, sigma = feature_stats(self.features(images))
        return frechet_distance(mu, sigma, self.real_mu, self.real_sigma)

    def prompt_accuracy(self, images: torch.Tensor, prompts: Sequence[str]) -> float:
        if len(prompts) != images.shape[0]:
            raise ValueError(f"{images.shape[0]} images but {len(prompts)} prompts")
        wanted = torch.tensor([digit_of(p) for p in prompts])
        return float((self.predict(images) == wanted).float().mean())

    def quality(self, images: torch.Tensor) -> float:
        if images.shape[0] < 2:
            raise ValueError("quality needs at least 2 images (it fits a covariance)")
        return min(max(1.0 - self.frechet_to_real(images) / self.noise_fd, 0.0), 1.0)

    def score(self, images: torch.Tensor, prompts: Sequence[str]) -> dict[str, float]:
        return {
            "prompt_accuracy": self.prompt_accuracy(images, prompts),
            "quality": self.quality(images),
        }
