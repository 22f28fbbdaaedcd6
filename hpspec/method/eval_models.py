"""eval_models: what `hpspec eval` is pointed at, loaded as a ``Generator`` on a real pipeline.

``--model`` and ``--reference`` name one of three things (``model_ref``):

- a stage directory hpspec wrote (``OUT/pruned``, ``OUT/distilled``, ``OUT/quantized``: plan.json beside
  the weights), loaded by ``weights.load.load_pretrained``, which knows pruned and quantized ones;
- a diffusers transformer directory (config.json naming an SD3 or FLUX transformer class);
- a diffusers pipeline directory (model_index.json) or a hub id, found in the local cache when
  ``HF_HUB_OFFLINE`` is set (``method.pipelines``).

The first two are a transformer alone: ``--pipeline`` supplies the text encoders, the VAE and the
scheduler, the transformer dropped in (``DiffusersPipelineGenerator.from_pretrained(transformer=...)``).
torch and diffusers are imported when a model loads, so importing this module stays cheap.
"""

from __future__ import annotations

import gc
import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hpspec.core.errors import TargetError, UsageError
from hpspec.core.paths import CONFIG_NAME, MODEL_INDEX_NAME, PLAN_NAME
from hpspec.method.evaluate import DEFAULT_SEEDS, Scorer, evaluate
from hpspec.method.footprint import Footprint, PeakMemory, footprint
from hpspec.method.pipelines import DTYPES, DiffusersPipelineGenerator, load_pipeline, offline, torch_dtype
from hpspec.model.arch import class_names
from hpspec.model.targets import read_config
from hpspec.plan.schema import load_plan_file

if TYPE_CHECKING:
    from torch import nn

STAGE, TRANSFORMER, PIPELINE = "stage", "transformer", "pipeline"


@dataclass(frozen=True)
class ModelRef:
    """A ``--model`` or ``--reference`` value, classified: ``kind`` is STAGE, TRANSFORMER or PIPELINE."""

    kind: str
    where: str  # a directory, or a hub id (PIPELINE only)
    option: str  # the option that named it, for messages

    @property
    def path(self) -> Path:
        return Path(self.where)


def model_ref(value: str, option: str = "--model") -> ModelRef:
    """Classifies a directory by the files in it (or a hub id); anything else is a usage error."""
    path = Path(value)
    if path.is_dir():
        if (path / MODEL_INDEX_NAME).is_file():
            return ModelRef(PIPELINE, value, option)
        if (path / PLAN_NAME).is_file():
            return ModelRef(STAGE, value, option)
        if (path / CONFIG_NAME).is_file() and read_config(path / CONFIG_NAME).get("_class_name") in class_names():
            return ModelRef(TRANSFORMER, value, option)
        stages = sorted(d.name for d in path.iterdir() if (d / PLAN_NAME).is_file())
        hint = f"; did you mean {path / stages[-1]}? (a compile output holds {', '.join(stages)})" if stages else ""
        raise TargetError(
            f"{option} {value}: expected a stage directory ({PLAN_NAME}), a transformer directory ({CONFIG_NAME} "
            f"of {' or '.join(class_names())}) or a pipeline directory ({MODEL_INDEX_NAME}){hint}"
        )
    if path.exists():
        raise TargetError(f"{option} {value}: a file; expected a model directory or a hub id")
    if value.count("/") == 1 and not value.startswith((".", "/")) and all(value.split("/")):
        return ModelRef(PIPELINE, value, option)  # owner/name: a hub id
    raise TargetError(f"{option} {value}: no such directory (and not a hub id of the form owner/name)")


def require_pipeline(model: ModelRef, reference: ModelRef | None, pipeline: str | None) -> None:
    """Before anything loads: ``--pipeline`` names a pipeline, and a transformer alone has one around it."""
    if pipeline is not None and model_ref(pipeline, "--pipeline").kind != PIPELINE:
        raise TargetError(f"--pipeline {pipeline}: expected a pipeline directory ({MODEL_INDEX_NAME}) or a hub id")
    for ref in (model, reference, model_ref(pipeline, "--pipeline") if pipeline else None):
        if ref is not None and ref.kind == PIPELINE and not ref.path.is_dir():
            require_cached(ref)
    for ref in (model, reference):
        if ref is not None and ref.kind != PIPELINE and pipeline is None:
            raise UsageError(
                f"{ref.option} {ref.where} is a {ref.kind} directory (a transformer alone): name the pipeline "
                "that supplies its text encoders, VAE and scheduler with --pipeline DIR_OR_ID"
            )


def require_cached(ref: ModelRef) -> None:
    """Offline, a hub id must be in the local cache (its model_index.json there), said before anything loads."""
    if not offline():
        return
    from huggingface_hub import try_to_load_from_cache

    if not isinstance(try_to_load_from_cache(ref.where, MODEL_INDEX_NAME), str):
        raise TargetError(
            f"{ref.option} {ref.where}: not in the local Hugging Face cache, and HF_HUB_OFFLINE is set; "
            "download it first (huggingface-cli download) or name a pipeline directory"
        )


@dataclass(frozen=True)
class Generation:
    """Where and how images are made: the pipeline's device and dtype, and its call's knobs."""

    device: str = "cpu"
    dtype: str | None = (
        None  # bf16, fp16, fp32 (pipelines.DTYPES); None: bf16 on CUDA, fp32 on the CPU (a quantized stage: its compute)
    )
    offload: bool = False  # enable_model_cpu_offload: components visit the GPU one at a time
    steps: int | None = None  # None: the generator's defaults
    guidance: float | None = None
    size: int | None = None  # height = width; None: the pipeline's default
    batch_size: int = 4
    max_sequence_length: int | None = None  # T5's tokens; None: the pipeline's default

    def __post_init__(self) -> None:
        if self.offload and not self.device.startswith("cuda"):
            raise UsageError("--offload moves components between the CPU and a GPU: it needs --device cuda")
        if self.dtype is not None and self.dtype not in DTYPES:
            raise UsageError(f"--dtype {self.dtype}: expected one of {', '.join(DTYPES)}")

    def dtype_name(self) -> str:
        return self.dtype or ("bf16" if self.device.startswith("cuda") else "fp32")

    def knobs(self) -> dict[str, Any]:
        """The DiffusersPipelineGenerator settings these options fix (the rest keep its defaults)."""
        given = {"steps": self.steps, "guidance": self.guidance, "height": self.size, "width": self.size}
        knobs: dict[str, Any] = {"batch_size": self.batch_size, **{k: v for k, v in given.items() if v is not None}}
        if self.max_sequence_length is not None:
            knobs["call_kwargs"] = {"max_sequence_length": self.max_sequence_length}
        return knobs

    def as_dict(self) -> dict[str, Any]:
        knobs = {k: v for k, v in self.knobs().items() if k != "call_kwargs"}
        return {"device": self.device, "dtype": self.dtype_name(), "offload": self.offload,
                "max_sequence_length": self.max_sequence_length, **knobs}  # fmt: skip


@dataclass(frozen=True)
class Loaded:
    """A generator ready to run, and the footprint of the transformer inside it."""

    generator: DiffusersPipelineGenerator
    footprint: Footprint
    generation: Generation  # as it ran (a quantized stage fixes the dtype)


def load_generator(model: ModelRef, pipeline: str | None, generation: Generation) -> Loaded:
    """The model inside a pipeline: its own (PIPELINE), or ``pipeline``'s other components around it."""
    if model.kind == PIPELINE:
        generator = _pipeline(model.where, None, generation)
        return Loaded(generator, footprint(generator.pipeline.transformer), generation)
    require_pipeline(model, None, pipeline)
    assert pipeline is not None
    transformer, parameters, generation = _transformer(model, generation)
    generator = _pipeline(pipeline, transformer, generation)
    return Loaded(generator, footprint(transformer, parameters), generation)


def quantized_compute(model: ModelRef) -> str | None:
    """The compute dtype of a quantized stage directory (None for anything else)."""
    if model.kind != STAGE or "quantization_config" not in read_config(model.path / CONFIG_NAME):
        return None
    quantize = load_plan_file(model.path / PLAN_NAME).quantize
    return quantize.compute if quantize is not None else None


def settled(model: ModelRef, generation: Generation) -> Generation:
    """The generation settings a model runs at: a quantized stage fixes the dtype to its compute dtype
    (and refuses another), for the reference too, so that both sides run alike."""
    compute = quantized_compute(model)
    if compute is None:
        return generation
    if generation.dtype not in (None, compute):
        raise UsageError(
            f"{model.option} {model.where} is quantized with compute {compute}: pass --dtype {compute} "
            "(or leave --dtype out)"
        )
    return replace(generation, dtype=compute)


def _transformer(model: ModelRef, generation: Generation) -> tuple[nn.Module, int | None, Generation]:
    """A stage or transformer directory as a module, the parameters it stands for (a stage's plan),
    and the generation settings it runs at (``settled``)."""
    generation = settled(model, generation)
    if model.kind == STAGE:
        from hpspec.weights.load import load_pretrained  # torch

        plan = load_plan_file(model.path / PLAN_NAME)
        dtype = None if quantized_compute(model) else torch_dtype(generation.dtype_name())
        return load_pretrained(model.path, dtype), plan.params.after_prune, generation
    import diffusers

    cls = getattr(diffusers, str(read_config(model.path / CONFIG_NAME)["_class_name"]))
    return cls.from_pretrained(model.where, torch_dtype=torch_dtype(generation.dtype_name())), None, generation


def _pipeline(where: str, transformer: nn.Module | None, generation: Generation) -> DiffusersPipelineGenerator:
    """``where``'s pipeline (``pipelines.load_pipeline``), ``transformer`` in place of its own when given;
    steps and guidance not given are the pipeline's own defaults (its ``__call__`` signature's)."""
    pipeline = load_pipeline(
        where,
        dtype=generation.dtype_name(),
        device=generation.device,
        offload=generation.offload,
        components={"transformer": transformer} if transformer is not None else None,
    )
    return _generator(pipeline, generation)


def _generator(pipeline: Any, generation: Generation) -> DiffusersPipelineGenerator:
    knobs = generation.knobs()
    for knob, argument in (("steps", "num_inference_steps"), ("guidance", "guidance_scale")):
        default = inspect.signature(pipeline.__call__).parameters.get(argument)
        if knob not in knobs and default is not None and isinstance(default.default, (int, float)):
            knobs[knob] = default.default
    return DiffusersPipelineGenerator(pipeline, **knobs)


def _around(pipeline: Any, model: ModelRef, generation: Generation) -> Loaded:
    """The model's transformer in an already loaded pipeline's components (the reference's, when it is
    the same pipeline as --pipeline): its own transformer released first, so one model is in memory."""
    pipeline.transformer = None
    _collect(generation)
    transformer, parameters, generation = _transformer(model, generation)
    rebuilt = type(pipeline)(**{**pipeline.components, "transformer": transformer.to(generation.device)})
    rebuilt.set_progress_bar_config(disable=True)
    return Loaded(_generator(rebuilt, generation), footprint(transformer, parameters), generation)


def _shares_pipeline(model: ModelRef, reference: ModelRef, pipeline: str | None, generation: Generation) -> bool:
    """The reference is --pipeline itself and the model a transformer for it: load the components once."""
    if pipeline is None or reference.kind != PIPELINE or model.kind == PIPELINE or generation.offload:
        return False
    here, there = Path(reference.where), Path(pipeline)
    return here.resolve() == there.resolve() if here.is_dir() and there.is_dir() else reference.where == pipeline


def release(loaded: Loaded | None) -> None:
    """Drops a generator's pipeline so that the next model loads into the memory it held."""
    if loaded is None:
        return
    loaded.generator.pipeline = None
    _collect(loaded.generation)


def _collect(generation: Generation) -> None:
    gc.collect()
    if generation.device.startswith("cuda"):
        import torch

        torch.cuda.empty_cache()


def describe(model: ModelRef, pipeline: str | None) -> Mapping[str, str]:
    """What was evaluated, for the JSON: the model, its kind, and the pipeline around it."""
    around = {"pipeline": pipeline} if model.kind != PIPELINE and pipeline else {}
    return {"model": model.where, "kind": model.kind, **around}


def evaluate_models(
    model: ModelRef,
    scorer: Scorer,
    prompts: Sequence[str],
    *,
    reference: ModelRef | None = None,
    pipeline: str | None = None,
    seeds: Sequence[int] = DEFAULT_SEEDS,
    generation: Generation = Generation(),
    progress: bool = False,
) -> dict[str, Any]:
    """``evaluate`` on real pipelines: the reference first (when given), then the model, one loaded at a
    time, each with its peak memory during generation, parameters and weight bytes; the result holds
    the reference's own result under ``reference`` and, against it, ``relative_drop`` and ``degradation``."""
    generation = settled(model, generation)
    if reference is None:
        return _measured(lambda: load_generator(model, pipeline, generation), model, None, scorer, prompts, seeds,
                         pipeline, generation, progress)  # fmt: skip
    kept: list[Any] = []  # the reference's pipeline, when the model reuses its components
    share = _shares_pipeline(model, reference, pipeline, generation)
    ref = _measured(lambda: load_generator(reference, pipeline, generation), reference, None, scorer, prompts, seeds,
                    pipeline, generation, progress, kept if share else None)  # fmt: skip
    load = (
        (lambda: _around(kept[0], model, generation))
        if share
        else (lambda: load_generator(model, pipeline, generation))
    )
    result = _measured(load, model, ref, scorer, prompts, seeds, pipeline, generation, progress)
    result["reference"] = ref
    return result


def _measured(
    load: Callable[[], Loaded],
    model: ModelRef,
    reference: Mapping[str, Any] | None,
    scorer: Scorer,
    prompts: Sequence[str],
    seeds: Sequence[int],
    pipeline: str | None,
    generation: Generation,
    progress: bool,
    keep: list[Any] | None = None,
) -> dict[str, Any]:
    """Loads, evaluates with the memory meter, releases (or, with `keep`, hands the pipeline on)."""
    loaded = load()
    try:
        meter = PeakMemory(generation.device)
        result = evaluate(loaded.generator, scorer, prompts, seeds, reference, progress, meter=meter)
    finally:
        if keep is not None:
            keep.append(loaded.generator.pipeline)
        else:
            release(loaded)
    result.update(loaded.footprint.as_dict(), **describe(model, pipeline))
    ran = loaded.generator
    result["settings"] = {**loaded.generation.as_dict(), "steps": ran.steps, "guidance": ran.guidance,
                          "seeds": list(seeds), "prompts": len(prompts)}  # fmt: skip
    return result
