"""Evaluation: a generator makes images from prompts, a scorer judges them, against a reference.

A ``Generator`` maps prompts and a seed to images; a ``Scorer`` maps images and their prompts to
metrics, each higher-is-better in [0, 1]. ``evaluate`` runs one over the other for several seeds
and reports the metrics, the sampling latency per image, and (given the reference model's
metrics) the paper's degradation::

    degradation = mean over metrics m of (ref_m - m) / ref_m

Implementations: the embedded demo (``hpspec.demo.DemoGenerator`` / ``DemoScorer``), any
diffusers ``StableDiffusion3Pipeline`` or ``FluxPipeline`` (``hpspec.method.pipelines``), and the
scorers of ``hpspec.method.scorers`` (CLIP score, ...). Images are float tensors (N, C, H, W) in [0, 1].

torch is imported only when something runs, so importing this module stays cheap.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from hpspec.demo.models import DIGITS, DemoModel, demo_model_of
from hpspec.plan.summary import human_bytes, table

if TYPE_CHECKING:
    import torch
    from torch import nn

    from hpspec.method.footprint import PeakMemory

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
    meter: PeakMemory | None = None,
) -> dict[str, Any]:
    """Generates every prompt once per seed, scores all images together.

    Returns a JSON-ready dict: the scorer's metrics (top-level keys), ``latency_s_per_image``
    (generation wall time over images), ``num_images``, ``metrics`` (the metric names), and, when
    ``reference`` (e.g. an earlier ``evaluate`` result of the unpruned model) is given,
    ``degradation`` and ``relative_drop`` (per metric). With a ``meter`` (``method.footprint``)
    around the generation (not the scoring), its ``peak_memory_bytes`` and ``peak_memory_measure``.
    """
    import torch

    if not prompts or not seeds:
        raise ValueError("evaluate needs at least one prompt and one seed")
    batches, seconds = [], 0.0
    if progress:
        from tqdm import tqdm

        seeds = tqdm(seeds, desc=f"generate {len(prompts)} prompts", unit="seed")
    watch: AbstractContextManager[object] = meter if meter is not None else nullcontext()
    with watch:
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
    if meter is not None:
        result.update(meter.result())
    if reference is not None:
        result["relative_drop"] = relative_drops(metrics, reference)
        result["degradation"] = degradation(metrics, reference)
    return result


def is_demo_transformer(model_dir: str | Path) -> bool:
    """A diffusers SD3 transformer directory shaped like one of the embedded demos' (`demo.models`)."""
    return demo_model_of(model_dir) is not None


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
    model: DemoModel | None = None,
) -> dict[str, Any]:
    """Evaluates a demo-shaped transformer directory (default: the shipped model) with its demo's
    scorer (``model``; by default the demo the directory is shaped like, else the digits); with ``reference_dir`` the reference is evaluated first and degradation is reported
    (the result then also holds ``reference``: the reference's own result).

    ``load_transformer`` loads a directory into a module: plain ``from_pretrained`` by default;
    pass hpspec's pruned-checkpoint loader for checkpoints with parts removed.
    """
    # torch and diffusers: imported when a demo model is evaluated
    from hpspec.demo.sampler import DemoGenerator

    demo = model or (demo_model_of(model_dir) if model_dir is not None else None) or DIGITS
    load = load_transformer or demo.load_transformer
    settings = {"steps": steps or demo.steps, "guidance": guidance if guidance is not None else demo.guidance}
    prompt_list = list(prompts) if prompts is not None else demo.default_prompts()
    scorer = demo.make_scorer()

    def run(path: Path, reference: Mapping[str, Any] | None) -> dict[str, Any]:
        generator = DemoGenerator(load(path), **settings)  # type: ignore[arg-type]
        return evaluate(generator, scorer, prompt_list, seeds, reference, progress)

    ref = run(Path(reference_dir), None) if reference_dir is not None else None
    result = run(Path(model_dir) if model_dir is not None else demo.transformer_dir, ref)
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


def format_comparison(result: Mapping[str, Any]) -> str:
    """The paper's table columns for a terminal: each metric beside the reference's and its relative
    drop, then `degradation X%`, latency per image, peak memory (and what was measured), parameters
    and weight bytes, the reference's beside each where there is one."""
    ref: Mapping[str, Any] = result.get("reference") or {}
    drops: Mapping[str, float] = result.get("relative_drop") or {}
    rows = [
        [name, f"{result[name]:.4f}", f"{ref[name]:.4f}" if name in ref else "-",
         f"{100 * drops[name]:.2f}%" if name in drops else "-"]
        for name in result.get("metrics", [])
    ]  # fmt: skip
    lines = [table(rows, ["metric", "model", "reference", "drop"]), ""]
    if "degradation" in result:
        lines.append(f"{'degradation':<22} {100 * result['degradation']:.2f}%")
    facts = (
        ("latency per image", LATENCY_KEY, lambda v: f"{1000 * v:.2f} ms"),
        ("peak memory", "peak_memory_bytes", human_bytes),
        ("parameters", "parameters", lambda v: f"{v:,}"),
        ("weight bytes", "weight_bytes", human_bytes),
        ("images", "num_images", str),
    )
    for label, key, shown in facts:
        if key in result:
            against = f"   (reference {shown(ref[key])})" if key in ref else ""
            lines.append(f"{label:<22} {shown(result[key])}{against}")
    if "peak_memory_measure" in result:
        lines.append(f"{'peak memory is':<22} {result['peak_memory_measure']}")
    return "\n".join(lines)
