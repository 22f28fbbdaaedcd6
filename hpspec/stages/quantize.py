"""The quantize stage: a stage directory (OUT/pruned, OUT/distilled) into OUT/quantized.

Everything is checked before anything is written: the plan, the input directory (hpspec wrote
it, not yet quantized, pruned by the same plan), its weights against the plan's predicted byte
count. The weights code (torch) is `hpspec.weights.quantize` and `hpspec.weights.load`, imported
when the stage runs: `compile` imports no torch until a stage needs it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hpspec.core.errors import CheckpointError, HpspecError, PlanError
from hpspec.core.io import atomic_directory
from hpspec.core.paths import CARD_NAME, CONFIG_NAME, PLAN_NAME
from hpspec.model.targets import read_config
from hpspec.plan.plan import Plan, QuantizePlan
from hpspec.plan.quantize_layout import LayoutTensor, quantized_layout, under, weight_bytes
from hpspec.plan.schemes import COMPUTE, QUANTIZE_BACKENDS
from hpspec.stages.cards import quantized_card
from hpspec.stages.engine import Stage, StageInput, Writer, require_same_pruning

if TYPE_CHECKING:
    from torch import nn

    from hpspec.weights.quantize import Quantized


@dataclass(frozen=True)
class Prepared:
    """A validated quantize job: the model loaded at the compute dtype, its predicted output."""

    plan: Plan
    source: Path
    model: nn.Module
    config: Mapping[str, Any]
    layout: list[LayoutTensor]


def prepare(plan: Plan, source: Path) -> Prepared:
    """Check everything before anything is written: the plan, the input directory, its weights."""
    from hpspec.weights.load import load_pretrained
    from hpspec.weights.quantize import TORCH_DTYPES, backend, source_tensors

    if plan.quantize is None:
        raise PlanError(f"the plan of {plan.spec.path} has no `quantize` statement")
    backend(plan.quantize.scheme)
    source = Path(source)
    if not (source / PLAN_NAME).is_file():
        raise CheckpointError(
            f"{source}: no {PLAN_NAME}; quantize reads a stage directory hpspec wrote (run `hpspec prune` first)"
        )
    config = read_config(source / CONFIG_NAME)
    if "quantization_config" in config:
        raise CheckpointError(f"{source}: is already quantized ({config['quantization_config'].get('quant_method')})")
    require_same_pruning(plan, source, "quantize")
    model = load_pretrained(source, torch_dtype=TORCH_DTYPES[plan.quantize.compute])
    layout = quantized_layout(
        source_tensors(model), plan.quantize.scheme, plan.quantize.compute, plan.quantize.except_modules
    )
    if plan.bytes.after_quantize is not None and plan.bytes.after_quantize != weight_bytes(layout):
        raise PlanError(
            f"{source}: would quantize to {weight_bytes(layout)} bytes of weights, the plan says "
            f"{plan.bytes.after_quantize}; the plan does not fit this model"
        )
    return Prepared(plan, source, model, config, layout)


def run(prepared: Prepared, out: Path) -> Quantized:
    """Quantize the prepared model and write it into the (empty) directory `out`."""
    from hpspec.weights.quantize import linears, quantize_model, write_quantized

    plan = prepared.plan
    assert plan.quantize is not None
    kept = [path for path, _ in linears(prepared.model) if under(path, plan.quantize.except_modules)]
    replaced = quantize_model(prepared.model, plan.quantize)
    written = write_quantized(prepared.model, plan, Path(out), prepared.config, prepared.layout, replaced, kept)
    (Path(out) / CARD_NAME).write_text(quantized_card(plan, prepared.source, written), encoding="utf-8")
    return written


def prepare_quantize(given: StageInput) -> Writer:
    """Load and validate the input now; the returned writer quantizes and writes.

    >>> write = prepare_quantize(StageInput(plan, Path("OUT/pruned")))  # raises before any write
    >>> write(tmp)["quantized_linears"]  # tmp: the temporary directory run_stage renames into place
    48
    """
    prepared = prepare(given.plan, given.source)

    def write(tmp: Path) -> dict[str, Any]:
        written = run(prepared, tmp)
        return {
            "source_model": str(prepared.source),
            "scheme": prepared.plan.quantize.scheme if prepared.plan.quantize else None,
            "files": list(written.files),
            "tensors": written.tensors,
            "params": prepared.plan.params.after_prune,
            "bytes": written.weight_bytes,
            "quantized_linears": written.linears,
            "full_precision_linears": list(written.full_precision),
            "diffusers_readable": written.diffusers_readable,
        }

    return write


QUANTIZE = Stage(
    "quantize", "quantized", lambda plan: plan.quantize is not None, prepare_quantize, depends=("quantize",)
)
"""The quantize stage, declared by a spec's `quantize` statement: OUT/pruned (or OUT/distilled) -> OUT/quantized."""


def quantize_dir(
    source: str | Path, out: str | Path, plan: Plan, scheme: str | None = None, compute: str = "bf16"
) -> Quantized:
    """Quantize a stage directory (`OUT/pruned`, `OUT/distilled`) into `out` (which must not exist).

    `scheme` quantizes with that scheme (no exceptions) when the plan has no `quantize` of its own;
    `out/plan.json` is then the plan with that quantization and its byte count.
    """
    if scheme is not None:
        plan = with_quantize(plan, scheme, compute)
    prepared = prepare(plan, Path(source))
    if plan.bytes.after_quantize is None:
        plan = replace(plan, bytes=replace(plan.bytes, after_quantize=weight_bytes(prepared.layout)))
        prepared = replace(prepared, plan=plan)
    if Path(out).exists():
        raise HpspecError(f"{out}: already exists")
    with atomic_directory(Path(out)) as tmp:
        return run(prepared, tmp)


def with_quantize(plan: Plan, scheme: str, compute: str = "bf16") -> Plan:
    """The plan with `quantize SCHEME` (nothing excepted); its byte count is left to the stage."""
    if scheme not in QUANTIZE_BACKENDS or compute not in COMPUTE:
        raise PlanError(
            f"quantize {scheme} compute={compute}: schemes are {', '.join(QUANTIZE_BACKENDS)}, compute {', '.join(COMPUTE)}"
        )
    quantize = QuantizePlan(scheme, QUANTIZE_BACKENDS[scheme], compute, [])
    return replace(plan, quantize=quantize, bytes=replace(plan.bytes, after_quantize=None))
