"""Real diffusers pipelines (SD3, SD3.5, FLUX) as ``Generator``s, loaded from a directory or the local cache.

``load_pipeline`` reads a pipeline directory or a hub id: the local cache first, the hub only
where the user's environment allows it (not under ``HF_HUB_OFFLINE``). ``EmbeddedGenerator``
generates from prompt embeddings computed once (``hpspec.method.prompt_cache``), so the text
encoders are not needed, or kept, while a transformer is measured. torch and diffusers are
imported when a pipeline loads, so importing this module stays cheap.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hpspec.core.errors import PipelineError
from hpspec.plan.schemes import COMPUTE

if TYPE_CHECKING:
    import torch
    from torch import nn

    from hpspec.method.prompt_cache import PromptEmbeddings

DTYPES = {name: dtype.torch for name, dtype in COMPUTE.items()}  # --dtype -> torch's name (the compute= table)


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


def torch_dtype(name: str) -> torch.dtype:
    """``bf16``, ``fp16`` or ``fp32`` as a torch dtype."""
    import torch

    if name not in DTYPES:
        raise PipelineError(f"--dtype {name}: expected one of {', '.join(DTYPES)}")
    dtype: torch.dtype = getattr(torch, DTYPES[name])
    return dtype


def load_pipeline(
    model: str | Path,
    *,
    dtype: str | None = None,
    device: str | None = None,
    offload: bool = False,
    components: Mapping[str, Any] | None = None,
) -> Any:
    """A diffusers SD3/FLUX pipeline from a directory or a hub id (the local cache first).

    `components` replace the pipeline's own (``transformer=...``); `offload` runs
    ``enable_model_cpu_offload`` (each component moves to `device` only while it runs).
    """
    import torch
    from diffusers import DiffusionPipeline

    if offload and not torch.cuda.is_available() and not str(device or "").startswith(("xpu", "mps")):
        raise PipelineError("--offload needs a GPU: enable_model_cpu_offload moves each component to it while it runs")
    kwargs: dict[str, Any] = dict(components or {})
    if dtype is not None:
        kwargs["torch_dtype"] = torch_dtype(dtype)
    try:
        pipeline = DiffusionPipeline.from_pretrained(str(model), local_files_only=True, **kwargs)
    except (OSError, ValueError) as local_error:
        if local_only(model):
            where = "HF_HUB_OFFLINE is set" if offline() else "a directory"
            raise PipelineError(
                f"{model}: cannot load a diffusers pipeline ({where}): {first_line(local_error)}"
            ) from None
        try:
            pipeline = DiffusionPipeline.from_pretrained(str(model), **kwargs)
        except (OSError, ValueError) as error:
            raise PipelineError(f"{model}: cannot load a diffusers pipeline: {first_line(error)}") from None
    if getattr(pipeline, "transformer", None) is None or not hasattr(pipeline, "encode_prompt"):
        raise PipelineError(
            f"{model}: a {type(pipeline).__name__}, not a transformer text-to-image pipeline (SD3, SD3.5, FLUX)"
        )
    if offload:
        pipeline.enable_model_cpu_offload(device=device or "cuda")
    elif device is not None:
        pipeline = pipeline.to(device)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def first_line(error: BaseException) -> str:
    """An exception's first line (library errors run to pages), or its class name."""
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


@dataclass(frozen=True)
class Sampling:
    """The generation knobs (``--steps --guidance --size``); None leaves the pipeline's default."""

    steps: int | None = None
    guidance: float | None = None
    size: int | None = None
    batch_size: int = 4

    def call_kwargs(self) -> dict[str, Any]:
        knobs = {"num_inference_steps": self.steps, "guidance_scale": self.guidance,
                 "height": self.size, "width": self.size}  # fmt: skip
        return {k: v for k, v in knobs.items() if v is not None}


class EmbeddedGenerator:
    """A pipeline generating from cached prompt embeddings (its text encoders may be gone).

    Seeded like ``DiffusersPipelineGenerator``: one CPU torch.Generator per seed drives the batches
    in order, so with the same ``batch_size`` both give the same latents. ``batches`` yields each
    batch's images as it is made, for scorers that take them as they come.
    """

    def __init__(self, pipeline: Any, embeddings: PromptEmbeddings, sampling: Sampling) -> None:
        self.pipeline, self.embeddings, self.sampling = pipeline, embeddings, sampling

    def batches(self, prompts: Sequence[str], seed: int) -> Iterator[tuple[torch.Tensor, list[str]]]:
        import torch

        gen = torch.Generator(device="cpu").manual_seed(seed)
        size = self.sampling.batch_size
        device = self.pipeline._execution_device
        for start in range(0, len(prompts), size):
            chunk = list(prompts[start : start + size])
            out = self.pipeline(
                **self.embeddings.call_kwargs(chunk, device),
                **self.sampling.call_kwargs(),
                generator=gen,
                output_type="pt",
            )
            yield out.images.float().cpu().clamp(0, 1), chunk

    def generate(self, prompts: Sequence[str], seed: int) -> torch.Tensor:
        import torch

        return torch.cat([images for images, _ in self.batches(prompts, seed)])
