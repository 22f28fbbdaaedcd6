"""checkpoints: saving and resuming a distill run (accelerate's `save_state`).

Checkpoints go to a hidden sibling of the output, `.NAME.checkpoints/<run key>/step-N/`, which the
stage's atomic output does not sweep and which is removed when the stage finishes. A checkpoint
is complete once its progress file (step, loss curve, run key) is written; only the latest stays.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from hpspec.core.io import dumps_json, read_json_input

if TYPE_CHECKING:
    from accelerate import Accelerator

PROGRESS_NAME = "hpspec-progress.json"


def checkpoint_root(out: Path) -> Path:
    """Beside the output, outside the temporary siblings the stage sweeps: `.NAME.checkpoints`."""
    return out.parent / f".{out.name}.checkpoints"


def save_checkpoint(
    accelerator: Accelerator, checkpoints: Path, step: int, curve: list[dict[str, float]], run_key: str
) -> None:
    """accelerate's state at `step` (every process), then the progress file; older checkpoints go."""
    target = checkpoints / f"step-{step:09d}"
    accelerator.save_state(str(target))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (target / PROGRESS_NAME).write_text(
            dumps_json({"step": step, "curve": curve, "run_key": run_key}), encoding="utf-8"
        )
        for older in checkpoints.glob("step-*"):  # the one just written is complete: older ones go
            if older != target:
                shutil.rmtree(older, ignore_errors=True)
    accelerator.wait_for_everyone()


def resume(checkpoints: Path, accelerator: Accelerator) -> tuple[int, list[dict[str, float]]]:
    """The latest complete checkpoint of this run (same plan, inputs, teacher, table, data), if any."""
    complete = sorted(p for p in checkpoints.glob("step-*") if (p / PROGRESS_NAME).is_file())
    if not complete:
        return 0, []
    latest = complete[-1]
    progress = read_json_input(latest / PROGRESS_NAME, PROGRESS_NAME)
    accelerator.load_state(str(latest))
    return int(progress["step"]), list(progress["curve"])
