"""Evaluation: a generator makes images from prompts, a scorer judges them, against a reference.

A ``Generator`` maps prompts and a seed to images; a ``Scorer`` maps images and their prompts to
metrics, each higher-is-better in [0, 1]. ``evaluate`` runs one over the other for several seeds
and reports the metrics, the sampling latency per image, and (given the reference model's
metrics) the paper's degradation::

    degradation = mean over metrics m of (ref_m - m) / ref_m

Implementations: the embedded demo (``hpspec.demo.DemoGenerator`` / ``DemoScorer``), any
diffusers ``StableDiffusion3Pipeline`` or ``FluxPipeline`` (``DiffusersPipelineGenerator``), and a
CLIP score (``CLIPScorer``). Images are float tensors (N, C, H, W) in [0, 1].

torch is imported only when something runs, so importing this module stays cheap.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from hpspec.core.io import read_json_input
from hpspec.core.paths import CONFIG_NAME
from hpspec.demo import default_prompts, transformer_dir

if TYPE_CHECKING:
    import torch
    from torch import nn

DEFAULT_SEEDS: tuple[int, ...] = (0, 1, 2, 3)
LATENCY_KEY = "latency_s_per_image"


@runtime_checkable
class Generator(Protocol):
    def generate(self, prompts: Sequence[str], seed: int) -> torch.Tensor:
        """(len(prompts), C, H, W) float images in [0, 1]; the same seed gives the same images."""
        ...


@runtime_checkable
class Scorer(Protocol):
    def score(self, images: torch.Tensor, prompts: Sequence[str]) -> dict[str, float]:
        """Metric name -> value in [0, 1], higher is better, over the whole batch."""
        ...


def metric_values(scores: Mapping[str, Any]) -> dict[str, float]:
    """The metrics of a scorer's dict or of an ``evaluate`` result (whose ``metrics`` names them)."""
    names = scores.get("metrics")
    if isinstance(names, list):
        return {name: float(scores[name]) for name in names}
    return {k: float(v) for k, v in scores.items() if isinstance(v, (int, float))}


def relative_drops(metrics: Mapping[str, Any], reference: Mapping[str, Any]) -> dict[str, float]:
    """(ref - m) / ref for each metric the reference also has (and where ref is not zero).

    Either side may be a scorer's dict or a whole ``evaluate`` result.
    """
    now, ref = metric_values(metrics), metric_values(reference)
    return {name: (ref[name] - value) / ref[name] for name, value in now.items() if name in ref and ref[name] != 0}


def degradation(metrics: Mapping[str, Any], reference: Mapping[str, Any]) -> float:
    """Mean relative drop against the reference (the paper's degradation; 0 = no loss)."""
    drops = relative_drops(metrics, reference)
    if not drops:
        raise ValueError(
            f"no metric to compare: scored {sorted(metric_values(metrics))}, "
            f"reference has {sorted(metric_values(reference))}"
        )
    return sum(drops.values()) / len(drops)


def evaluate(
    generator: Generator,
    scorer: Scorer,
    prompts: Sequence[str],
    seeds: Sequence[int] = DEFAULT_SEEDS,
    reference: Mapping[str, Any] | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Generates every prompt once per seed, scores all images together.

    Returns a JSON-ready dict: the scorer's metrics (top-level keys), ``latency_s_per_image``
    (generation wall time over images), ``num_images``, ``metrics`` (the metric names), and, when
    ``reference`` (e.g. an earlier ``evaluate`` result of the unpruned model) is given,
    ``degradation`` and ``relative_drop`` (per metric).
    """
    import torch

    if not prompts or not seeds:
        raise ValueError("evaluate needs at least one prompt and one seed")
    batches, seconds = [], 0.0
    if progress:
        from tqdm import tqdm

        seeds = tqdm(seeds, desc=f"generate {len(prompts)} prompts", unit="seed")
    for seed in seeds:
        start = time.perf_counter()
        batches.append(generator.generate(list(prompts), seed))
        seconds += time.perf_counter() - start
    images = torch.cat(batches)
    metrics = scorer.score(images, list(prompts) * len(seeds))
    result: dict[str, Any] = dict(metrics)
    result.update(
        metrics=sorted(metrics),
        num_images=int(images.shape[0]),
        **{LATENCY_KEY: seconds / images.shape[0]},
    )
    if reference is not None:
        result["relative_drop"] = relative_drops(metrics, reference)
        result["degradation"] = degradation(metrics, reference)
    return result


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in {"1", "ON", "YES", "TRUE"}


def _local_only(model: str | Path) -> bool:
    """Never reach the hub for a local directory or when HF_HUB_OFFLINE is set."""
    return _offline() or Path(model).is_dir()


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
        pipeline = DiffusionPipeline.from_pretrained(str(model), local_files_only=_local_only(model), **parts)
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

        local = _local_only(model)
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


def is_demo_transformer(model_dir: str | Path) -> bool:
    """A diffusers SD3 transformer directory shaped like the demo's (8x8, 1 channel, MiniLM text)."""
    config_file = Path(model_dir) / CONFIG_NAME
    if not config_file.is_file():
        return False
    config = read_json_input(config_file, CONFIG_NAME)
    return (
        config.get("_class_name") == "SD3Transformer2DModel"
        and config.get("in_channels") == 1
        and config.get("joint_attention_dim") == 384
        and config.get("pooled_projection_dim") == 384
    )


def evaluate_demo(
    model_dir: str | Path | None = None,
    *,
    reference_dir: str | Path | None = None,
    prompts: Sequence[str] | None = None,
    seeds: Sequence[int] = DEFAULT_SEEDS,
    steps: int | None = None,
    guidance: float | None = None,
    load_transformer: Callable[[Path], nn.Module] | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Evaluates a demo-shaped transformer directory (default: the shipped model) with the demo
    scorer; with ``reference_dir`` the reference is evaluated first and degradation is reported
    (the result then also holds ``reference``: the reference's own result).

    ``load_transformer`` loads a directory into a module: plain ``from_pretrained`` by default;
    pass hpspec's pruned-checkpoint loader for checkpoints with parts removed.
    """
    # torch and diffusers: imported when a demo model is evaluated
    from hpspec.demo.model import load_demo_transformer
    from hpspec.demo.sampler import DemoGenerator
    from hpspec.demo.scorer import DemoScorer

    load = load_transformer or load_demo_transformer
    settings = {k: v for k, v in (("steps", steps), ("guidance", guidance)) if v is not None}
    prompt_list = list(prompts) if prompts is not None else default_prompts()
    scorer = DemoScorer()

    def run(path: Path, reference: Mapping[str, Any] | None) -> dict[str, Any]:
        generator = DemoGenerator(load(path), **settings)  # type: ignore[arg-type]
        return evaluate(generator, scorer, prompt_list, seeds, reference, progress)

    ref = run(Path(reference_dir), None) if reference_dir is not None else None
    result = run(Path(model_dir) if model_dir is not None else transformer_dir(), ref)
    if ref is not None:
        result["reference"] = ref
    return result


def format_result(result: Mapping[str, Any]) -> str:
    """A few aligned lines for a terminal."""
    lines = [f"{name:<22} {result[name]:.4f}" for name in result.get("metrics", [])]
    if "degradation" in result:
        lines.append(f"{'degradation':<22} {100 * result['degradation']:.2f}%")
    latency = result.get(LATENCY_KEY)
    if isinstance(latency, float) and math.isfinite(latency):
        lines.append(f"{'latency per image':<22} {1000 * latency:.2f} ms")
    lines.append(f"{'images':<22} {result.get('num_images', 0)}")
    return "\n".join(lines)
