"""What the measuring commands (`analyze`, `eval`) are pointed at: the model and the prompts."""

from __future__ import annotations

from pathlib import Path

from hpspec.core.errors import UsageError
from hpspec.demo import default_prompts, read_prompts
from hpspec.method.evaluate import is_demo_transformer
from hpspec.model.targets import DEMO


def demo_dir(model: str) -> Path | None:
    """None for the shipped demo; a directory must be demo-shaped (other models need a pipeline)."""
    if model == DEMO:
        return None
    path = Path(model)
    if not is_demo_transformer(path):
        raise UsageError(
            f"{model}: not a demo-shaped transformer directory; measuring SD3/FLUX needs their pipeline and a "
            "CLIP scorer (hpspec.method.pipelines, hpspec.method.scorers) through the Python API"
        )
    return path


def prompt_list(path: str | None) -> list[str]:
    return read_prompts(path) if path else default_prompts()
