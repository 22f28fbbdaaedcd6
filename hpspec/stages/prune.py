"""The prune stage: a checkpoint into OUT/pruned, at the speed of a file copy and without torch.

Every check (the checkpoint's validity, the plan's fingerprint, every tensor the plan rewrites)
is made before anything is written; the writer is `hpspec.weights.checkpoint.writer.write_pruned`
for a diffusers folder, `hpspec.weights.formats.pruned` for one file in another layout or GGUF
(`--to`; by default the input's own layout).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from hpspec.core.paths import CARD_NAME
from hpspec.model.formats.detect import DIFFUSERS
from hpspec.model.formats.graph import foreign_kind
from hpspec.stages.cards import pruned_card
from hpspec.stages.engine import Stage, StageInput, Writer
from hpspec.weights.checkpoint.layout import pruned_layout
from hpspec.weights.checkpoint.source import check_fingerprint
from hpspec.weights.checkpoint.writer import Written, write_pruned
from hpspec.weights.formats.pruned import GGUF, open_any, parse_to, prune_gguf, refuse_part_drops, write_layout
from hpspec.weights.verify import verify_finite


def prepare_prune(given: StageInput) -> Writer:
    """Validate the checkpoint against the plan now; the returned writer only copies bytes.

    >>> write = prepare_prune(StageInput(plan, Path("model")))  # raises before any write
    >>> write(tmp)["files"]  # tmp: the temporary directory run_stage renames into place
    ['diffusion_pytorch_model.safetensors']
    """
    wanted = given.options.prune.to
    if foreign_kind(given.source) == GGUF:
        to = parse_to(wanted or GGUF)
        return _writer(given, given.source, to, lambda tmp: prune_gguf(given.plan, given.source, tmp, to))
    source = open_any(given.source)
    to = parse_to(wanted or source.layout)
    refuse_part_drops(given.plan, to)
    if given.options.prune.verify:  # opt in: reads every byte, where pruning copies in the kernel
        verify_finite(source.headers)
    check_fingerprint(given.plan, source.graph, str(source.directory))
    pruned_layout(given.plan, source)  # raises on a tensor the plan cannot rewrite
    if to == DIFFUSERS:
        return _writer(given, source.directory, to, lambda tmp: write_pruned(given.plan, source, tmp, given.progress))
    return _writer(given, source.directory, to, lambda tmp: write_layout(given.plan, source, tmp, to))


def _writer(given: StageInput, source: Path, to: str, write_weights: Callable[[Path], Written]) -> Writer:
    def write(tmp: Path) -> dict[str, Any]:
        written = write_weights(tmp)
        (tmp / CARD_NAME).write_text(pruned_card(given.plan, source, to), encoding="utf-8")
        return written.record(source, to)

    return write


PRUNE = Stage("prune", "pruned", lambda plan: True, prepare_prune,
              depends=("target", "stacks", "config", "ops", "freeze", "params", "bytes"), keyed=("to",))  # fmt: skip
"""The prune stage, which every spec declares: the model -> OUT/pruned."""
