"""A real SD3/SD3.5/FLUX pipeline as an analysis ``Subject``: prompts encoded once, encoders released.

``pipeline_subject`` loads the pipeline (``hpspec.method.pipelines.load_pipeline``), encodes every
prompt once into the cache beside the output (``hpspec.method.prompt_cache``), drops the text
encoders, and hands ``analyze`` the pipeline's own transformer: each entry swaps modules of that
one object in place, and every generation reads the cached embeddings.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hpspec.core.errors import PipelineError, TargetError
from hpspec.method.analyze import Subject
from hpspec.method.pipelines import EmbeddedGenerator, Sampling, load_pipeline
from hpspec.method.prompt_cache import prompt_embeddings, release_encoders

if TYPE_CHECKING:
    from torch import nn

    from hpspec.method.evaluate import Generator, Scorer


@dataclass(frozen=True)
class PipelineRequest:
    """What the command line asks of a real pipeline (``--model --device --dtype --offload ...``)."""

    model: str
    sampling: Sampling
    device: str | None = None
    dtype: str | None = None
    offload: bool = False
    max_sequence_length: int | None = None

    def knobs(self, family: str) -> dict[str, Any]:
        """The settings a table records (and its hash covers); the device and offloading change no number."""
        s = self.sampling
        return {"model": self.model, "family": family, "steps": s.steps, "guidance": s.guidance, "size": s.size,
                "batch_size": s.batch_size, "dtype": self.dtype, "max_sequence_length": self.max_sequence_length}  # fmt: skip


def pipeline_subject(
    request: PipelineRequest,
    scorer: Scorer | None,
    scorer_name: str,
    prompts: Sequence[str],
    output: Path,
    *,
    rank: int = 0,
    barrier: Callable[[], None] = lambda: None,
) -> tuple[Subject, dict[str, Any]]:
    """The pipeline's transformer and a generator over cached embeddings; the text encoders are gone."""
    from hpspec.model.graph import graph_from_module

    pipeline = load_pipeline(request.model, dtype=request.dtype, device=request.device, offload=request.offload)
    try:
        family = graph_from_module(pipeline.transformer).family
    except TargetError as error:
        raise PipelineError(f"{request.model}: its transformer is not one hpspec measures: {error}") from None
    guidance = request.sampling.guidance
    cfg = guidance is not None and guidance > 1 or guidance is None and _default_cfg(pipeline)
    embeddings = prompt_embeddings(
        pipeline, family, prompts, output, max_sequence_length=request.max_sequence_length, cfg=cfg,
        rank=rank, barrier=barrier,
    )  # fmt: skip
    release_encoders(pipeline)

    def generator_for(module: nn.Module) -> Generator:
        if module is not pipeline.transformer:
            raise PipelineError("analyze: a pipeline subject measures its own transformer, swapped in place")
        return EmbeddedGenerator(pipeline, embeddings, request.sampling)

    knobs = {**request.knobs(family), "scorer": scorer_name}
    name = Path(request.model).name or request.model
    return Subject(name, pipeline.transformer, generator_for, scorer, scorer_name), knobs  # type: ignore[arg-type]


def _default_cfg(pipeline: Any) -> bool:
    """Whether the pipeline's own default guidance_scale guides over a negative prompt (> 1)."""
    import inspect

    default = inspect.signature(pipeline.__call__).parameters.get("guidance_scale")
    return default is not None and isinstance(default.default, (int, float)) and default.default > 1
