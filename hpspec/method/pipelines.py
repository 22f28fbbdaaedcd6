"""Real diffusers pipelines (SD3, SD3.5, FLUX) as ``Generator``s, loaded from a directory or the local cache.

torch and diffusers are imported when a pipeline loads, so importing this module stays cheap.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from torch import nn


def offline() -> bool:
    """HF_HUB_OFFLINE is set: nothing may reach the hub."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in {"1", "ON", "YES", "TRUE"}


def local_only(model: str | Path) -> bool:
    """Never reach the hub for a local directory or when HF_HUB_OFFLINE is set."""
    return offline() or Path(model).is_dir()


class DiffusersPipelineGenerator:
    """A diffusers text-to-image pipeline (SD3, SD3.5, FLUX) as a Generator.

    A pruned transformer can replace the pipeline's own (``transformer=``). Images come from the
    pipeline with ``output_type="pt"``: (N, 3, H, W) in [0, 1]. One torch.Generator seeded per call
    drives every batch, so results depend on the seed and ``batch_size`` only.
    """

    def __init__(
        self,
        pipeline: Any,
        *,
        steps: int = 28,
        guidance: float = 3.5,
        height: int | None = None,
        width: int | None = None,
        batch_size: int = 4,
        call_kwargs: Mapping[str, Any] | None = None,
    ) -> None:
        self.pipeline = pipeline
        self.steps = steps
        self.guidance = guidance
        self.height = height
        self.width = width
        self.batch_size = batch_size
        self.call_kwargs = dict(call_kwargs or {})

    @classmethod
    def from_pretrained(
        cls,
        model: str | Path,
        *,
        transformer: nn.Module | None = None,
        dtype: torch.dtype | None = None,
        device: str | torch.device | None = None,
        pipeline_kwargs: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> DiffusersPipelineGenerator:
        """Loads a pipeline from a local directory or hub id (local files only when offline).

        ``pipeline_kwargs`` go to ``DiffusionPipeline.from_pretrained``: e.g. ``{"text_encoder_3":
        None, "tokenizer_3": None}`` runs SD3 without T5; ``kwargs`` go to the constructor.
        """
        from diffusers import DiffusionPipeline

        parts: dict[str, Any] = dict(pipeline_kwargs or {})
        if transformer is not None:
            parts["transformer"] = transformer
        if dtype is not None:
            parts["torch_dtype"] = dtype
        pipeline = DiffusionPipeline.from_pretrained(str(model), local_files_only=local_only(model), **parts)
        if device is not None:
            pipeline = pipeline.to(device)
        pipeline.set_progress_bar_config(disable=True)
        return cls(pipeline, **kwargs)

    def generate(self, prompts: Sequence[str], seed: int) -> torch.Tensor:
        import torch

        gen = torch.Generator(device="cpu").manual_seed(seed)
        chunks = []
        for start in range(0, len(prompts), self.batch_size):
            out = self.pipeline(
                prompt=list(prompts[start : start + self.batch_size]),
                num_inference_steps=self.steps,
                guidance_scale=self.guidance,
                height=self.height,
                width=self.width,
                generator=gen,
                output_type="pt",
                **self.call_kwargs,
            )
            chunks.append(out.images.float().cpu())
        return torch.cat(chunks).clamp(0, 1)
