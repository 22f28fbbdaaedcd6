"""What the measuring commands (`analyze`, `eval`) are pointed at: the model and the prompts."""

from __future__ import annotations

from pathlib import Path

from hpspec.core.errors import UsageError
from hpspec.core.paths import MODEL_INDEX_NAME
from hpspec.demo import default_prompts
from hpspec.demo.models import DIGITS, DemoModel, demo_model_of
from hpspec.method.prompt_sets import prompt_set
from hpspec.model.targets import DEMO


def demo_of(model: str, option: str = "--model") -> tuple[DemoModel, Path | None]:
    """The embedded demo `model` is and its directory: (the digits, None) for `demo`; a directory must be
    shaped like one of the demos' transformers (other models need a pipeline)."""
    if model == DEMO:
        return DIGITS, None
    path = Path(model)
    if not path.exists():
        raise UsageError(f"{option} {model}: no such directory (expected `demo`, a demo-shaped transformer directory, or a "
                         "diffusers pipeline directory or hub id `owner/name`)")  # fmt: skip
    demo = demo_model_of(path)
    if demo is None:
        raise UsageError(
            f"{option} {model}: neither a demo-shaped transformer directory nor a diffusers pipeline directory "
            f"(no {MODEL_INDEX_NAME}); for SD3/FLUX give the pipeline's directory or hub id"
        )
    return demo, path


def is_pipeline(model: str) -> bool:
    """A diffusers pipeline directory (model_index.json), or a hub id (`owner/name`, no such path here)."""
    path = Path(model)
    if path.is_dir():
        return (path / MODEL_INDEX_NAME).is_file()
    return not path.exists() and model.count("/") == 1 and model != DEMO and not model.startswith((".", "/"))


def prompt_list(
    path: str | None, take: int | None = None, seed: int = 0, default: list[str] | None = None
) -> list[str]:
    """--prompts FILE (a text file or a JSON list), --take N of it by --seed; without a file, `default`
    (the digit demo's prompts unless given)."""
    if path is None:
        if take is not None:
            raise UsageError("--take N samples --prompts FILE; give the file")
        return default if default is not None else default_prompts()
    return prompt_set(path, take, seed)
