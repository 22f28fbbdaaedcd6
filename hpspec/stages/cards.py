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
from hpspec.plan.schemes import QUANTIZE_SCHEMES
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


def pruned_card(plan: Plan, source: Path, layout: str = "diffusers") -> str:
    """README.md of a pruned directory: what was done, and how to load it (`layout`: what `--to` wrote)."""
    family = family_class(plan)
    parts = any(op.kind == "drop_part" for op in plan.ops)
    if layout != "diffusers":
        loading = single_file_loading(plan, layout)
    elif parts:
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
            *(LOAD_WITH_HPSPEC if layout == "diffusers" else ()),
            "",
        ]
    )


def comfyui_sd3_note(plan: Plan, layout: str) -> str | None:
    """Stock ComfyUI counts an SD3 single file's blocks from its hidden width (depth = width / 64),
    so a depth-pruned SD3 file does not load there; None where that does not apply."""
    depth_changed = any(stack.after != stack.before for stack in plan.stacks.values())
    if plan.target.family != "sd3" or layout in ("diffusers", "gguf") or not depth_changed:
        return None
    return (
        "Stock ComfyUI builds an SD3 single file's block count from its hidden width, not from the blocks in the "
        "file, so this depth-pruned file will not load there as is. Use the diffusers folder instead "
        "(`hpspec compile ... --to diffusers`, loaded with `hpspec.load_pretrained`), or diffusers' "
        f"`{family_class(plan)}.from_single_file(FILE, config=DIR)` with the config.json beside it."
    )


def single_file_loading(plan: Plan, layout: str) -> str:
    """How a single-file output (bfl, sai, comfyui, gguf) loads."""
    family = family_class(plan)
    if layout.startswith("gguf"):
        how = (
            f"`transformer.gguf` ({layout}) loads in ComfyUI-GGUF, and in diffusers with "
            f'`{family}.from_single_file("transformer.gguf", config=DIR, '
            "quantization_config=GGUFQuantizationConfig(compute_dtype=torch.bfloat16))`."
        )
    else:
        how = (
            f"`transformer.safetensors` is in the {layout} layout, blocks numbered contiguously; diffusers loads it "
            f'with `{family}.from_single_file("transformer.safetensors", config=DIR)` (DIR: this directory, for its '
            "config.json)."
        )
    note = comfyui_sd3_note(plan, layout)
    back = " `hpspec convert FILE --to diffusers -o DIR2` turns it into a diffusers folder."
    return how + back + (f"\n\n{note}" if note else "")


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
    if written.diffusers_readable and QUANTIZE_SCHEMES[q.scheme].backend == "optimum-quanto":
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
