"""cards: the model card (README.md) of every stage directory, written here and nowhere else.

Each card says what was done (the plan's text, the spec), where from, and how to load the result:
`pruned_card` for OUT/pruned, `distilled_card` (the pruned card and a section on the training) for
OUT/distilled, `quantized_card` for OUT/quantized.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from hpspec.core.version import __version__
from hpspec.model.arch import class_name_of
from hpspec.plan.plan import Plan
from hpspec.plan.summary import human_bytes, plan_text

if TYPE_CHECKING:
    from hpspec.weights.quantize import Quantized

# How every stage directory loads, whatever plain diffusers can do with it.
LOAD_WITH_HPSPEC = (
    "```python",
    "import hpspec",
    "",
    'transformer = hpspec.load_pretrained("DIR")  # DIR: this directory',
    "```",
)


def family_class(plan: Plan) -> str:
    """The diffusers class of the plan's transformer, as the cards name it."""
    return class_name_of(plan.target.family) or "transformer"


def pruned_card(plan: Plan, source: Path) -> str:
    """README.md of a pruned directory: what was done, and how to load it."""
    family = family_class(plan)
    parts = any(op.kind == "drop_part" for op in plan.ops)
    if parts:
        loading = (
            "Parts of blocks were replaced by parameter-free stand-ins, so plain diffusers `from_pretrained` "
            "does not rebuild this model (it would re-create the dropped parts with random weights). Load it with hpspec:"
        )
    else:
        loading = f"Only whole blocks were removed: plain diffusers loads it (`{family}.from_pretrained(DIR)`), and so does hpspec:"
    return "\n".join(
        [
            f"# {plan.target.name}, pruned by hpspec",
            "",
            f"A diffusers `{family}` pruned from `{source}` by hpspec {__version__} "
            "(HierarchicalPrune's position pruning). `plan.json` is the exact plan, `provenance.json` and the "
            "safetensors metadata record the sha256 of the source shards.",
            "",
            "```",
            plan_text(plan).rstrip(),
            "```",
            "",
            "Spec:",
            "",
            "```",
            plan.spec.source.rstrip(),
            "```",
            "",
            loading,
            "",
            *LOAD_WITH_HPSPEC,
            "",
        ]
    )


def distilled_card(plan: Plan, teacher: Path, curve: Sequence[Mapping[str, float]], scales: bool) -> str:
    """README.md of a distilled directory: the pruned card (from the teacher), then the training.

    `curve` is the logged loss curve (`provenance.json`), `scales` whether `scales.json` was written.
    """
    first, last = (curve[0], curve[-1]) if curve else ({}, {})
    assert plan.distill is not None
    lines = [
        "",
        "## Distillation",
        "",
        f"Distilled against `{teacher}` for {plan.distill.steps} steps (batch {plan.distill.batch}, lr {plan.distill.lr:g}, "
        f"weight `{plan.distill.weight}`"
        + (f", mode `{plan.distill.mode}`" if plan.distill.weight == "sensitivity" else "")
        + ").",
        f"Loss {first.get('loss', float('nan')):.4g} at step {first.get('step', 0)} -> {last.get('loss', float('nan')):.4g} "
        f"at step {last.get('step', 0)}; `provenance.json` has the curve"
        + (", `scales.json` the update scales." if scales else "."),
        "",
    ]
    return pruned_card(plan, teacher).rstrip("\n") + "\n" + "\n".join(lines)


def quantized_card(plan: Plan, source: Path, written: Quantized) -> str:
    """README.md of a quantized directory: the scheme, what stayed in full precision, who reads it."""
    assert plan.quantize is not None
    q = plan.quantize
    family = family_class(plan)
    if written.diffusers_readable and q.scheme == "int4":
        plain = f"Plain diffusers reads it too (`{family}.from_pretrained(DIR)`, optimum-quanto installed)."
    elif written.diffusers_readable:
        plain = (
            f"On a GPU machine plain diffusers reads it too (`{family}.from_pretrained(DIR)`, bitsandbytes installed)."
        )
    else:
        plain = ("Plain diffusers `from_pretrained` does not rebuild it (parts of blocks were replaced by stand-ins, "
                 "or an exception is one diffusers cannot name): load it with hpspec.")  # fmt: skip
    kept = ", ".join(written.full_precision) or "none"
    return "\n".join([
        f"# {plan.target.name}, pruned and quantized ({q.scheme}) by hpspec",
        "",
        f"Every Linear of the transformer in `{source}` as {q.scheme} weights ({q.backend}), activations and every "
        f"other module at {q.compute}: {written.linears} Linears quantized, kept in full precision: {kept}. "
        f"Weights: {human_bytes(written.weight_bytes)} (`plan.json`: bytes.after_quantize).",
        "",
        "```", plan_text(plan).rstrip(), "```",
        "",
        plain,
        "",
        *LOAD_WITH_HPSPEC,
        "",
    ])  # fmt: skip
