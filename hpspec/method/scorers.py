"""Scorers behind the ``Scorer`` protocol (``hpspec.method.evaluate``): images and prompts -> metrics.

torch and transformers are imported when a scorer loads, so importing this module stays cheap.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hpspec.method.pipelines import local_only

if TYPE_CHECKING:
    import torch


# OpenAI CLIP's pixel normalisation (what its image processor uses).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class CLIPScorer:
    """CLIP score: the mean over images of max(cos(image, prompt), 0), in [0, 1].

    Images are resized (shortest side, bicubic) and centre-cropped to the vision tower's size and
    normalised with CLIP's constants here, so no image-processor files are needed; one-channel
    images are repeated to three.
    """

    def __init__(self, model: Any, tokenizer: Any, batch_size: int = 32) -> None:
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.batch_size = batch_size

    @classmethod
    def from_pretrained(cls, model: str | Path, *, device: str | torch.device | None = None) -> CLIPScorer:
        from transformers import AutoTokenizer, CLIPModel

        local = local_only(model)
        clip = CLIPModel.from_pretrained(str(model), local_files_only=local)
        if device is not None:
            clip = clip.to(device)
        return cls(clip, AutoTokenizer.from_pretrained(str(model), local_files_only=local))

    def _pixels(self, images: torch.Tensor) -> torch.Tensor:
        import torch
        import torch.nn.functional as F

        size = self.model.config.vision_config.image_size
        x = images.float()
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        scale = size / min(x.shape[-2:])
        h, w = max(size, round(x.shape[-2] * scale)), max(size, round(x.shape[-1] * scale))
        x = F.interpolate(x, size=(h, w), mode="bicubic", antialias=True, align_corners=False)
        top, left = (h - size) // 2, (w - size) // 2
        x = x[..., top : top + size, left : left + size].clamp(0, 1)
        mean = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(CLIP_STD).view(1, 3, 1, 1)
        return (x - mean) / std

    def similarities(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        """Cosine similarity of each image with its own prompt, (N,)."""
        import torch

        if len(prompts) != images.shape[0]:
            raise ValueError(f"{images.shape[0]} images but {len(prompts)} prompts")
        device = next(self.model.parameters()).device
        max_len = self.model.config.text_config.max_position_embeddings
        sims = []
        with torch.inference_mode():
            for start in range(0, len(prompts), self.batch_size):
                stop = start + self.batch_size
                text = self.tokenizer(
                    list(prompts[start:stop]),
                    padding=True,
                    truncation=True,
                    max_length=max_len,
                    return_tensors="pt",
                ).to(device)
                img = self.model.get_image_features(pixel_values=self._pixels(images[start:stop]).to(device))
                txt = self.model.get_text_features(**text)
                img, txt = _embeds(img), _embeds(txt)
                sims.append(torch.cosine_similarity(img, txt, dim=-1).float().cpu())
        return torch.cat(sims)

    def score(self, images: torch.Tensor, prompts: Sequence[str]) -> dict[str, float]:
        return {"clip_score": float(self.similarities(images, prompts).clamp(min=0).mean())}


def _embeds(output: Any) -> torch.Tensor:
    """get_*_features returns a tensor in older transformers, an output object in newer ones."""
    return output if not hasattr(output, "pooler_output") else output.pooler_output
