"""The prune stage: a checkpoint into OUT/pruned, at the speed of a file copy and without torch.

Every check (the checkpoint's validity, the plan's fingerprint, every tensor the plan rewrites)
is made before anything is written; the writer is `hpspec.weights.checkpoint.writer.write_pruned`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hpspec.core.paths import CARD_NAME
from hpspec.stages.cards import pruned_card
from hpspec.stages.engine import Stage, StageInput, Writer
from hpspec.weights.checkpoint.layout import pruned_layout
from hpspec.weights.checkpoint.source import check_fingerprint, open_source
from hpspec.weights.checkpoint.writer import write_pruned
from hpspec.weights.verify import verify_finite


def prepare_prune(given: StageInput) -> Writer:
    """Validate the checkpoint against the plan now; the returned writer only copies bytes.

    >>> write = prepare_prune(StageInput(plan, Path("model")))  # raises before any write
    >>> write(tmp)["files"]  # tmp: the temporary directory run_stage renames into place
    ['diffusion_pytorch_model.safetensors']
    """
    source = open_source(given.source)
    if given.options.prune.verify:  # opt in: reads every byte, where pruning copies in the kernel
        verify_finite(source.headers)
    check_fingerprint(given.plan, source.graph, str(source.directory))
    pruned_layout(given.plan, source)  # raises on a tensor the plan cannot rewrite

    def write(tmp: Path) -> dict[str, Any]:
        written = write_pruned(given.plan, source, tmp, progress=given.progress)
        (tmp / CARD_NAME).write_text(pruned_card(given.plan, source.directory), encoding="utf-8")
        return {
            "source_model": str(source.directory),
            "source_sha256": dict(written.source_sha256),
            "files": list(written.files),
            "tensors": written.tensors,
            "params": written.params,
            "bytes": written.nbytes,
        }

    return write


PRUNE = Stage("prune", "pruned", lambda plan: True, prepare_prune,
              depends=("target", "stacks", "config", "ops", "freeze", "params", "bytes"))  # fmt: skip
"""The prune stage, which every spec declares: the model -> OUT/pruned."""
