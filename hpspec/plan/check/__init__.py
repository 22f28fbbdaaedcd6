"""check: syntax tree x model graph -> `CheckedSpec`, or every diagnostic at once.

Selectors are resolved against the real graph (slices, negative indices, parts per block kind);
conflicts are errors, not silent precedence; redundancy is a warning. Every message says what
would have been valid.

The checker is an ordered tuple of rules, one per module, each a plain function of the shared
`Context` that reports into its sink and records what it resolved (the way sqlglot's optimizer
lists its rules). `selectors` and `options` are what the rules resolve with; `target` finds the
graph a spec is checked against.
"""

from __future__ import annotations

from collections.abc import Callable

from hpspec.core.errors import SpecError
from hpspec.lang import syntax as s
from hpspec.model.graph import ModelGraph
from hpspec.plan.check import distill, drops, keep_a_block, preserve, promote, quantize
from hpspec.plan.check.checked import (
    CheckedSpec,
    Item,
    Located,
    PreserveSetting,
    QuantizeSetting,
)
from hpspec.plan.check.context import Context
from hpspec.plan.check.options import DISTILL_OPTIONS, QUANTIZE_OPTIONS, DistillOption
from hpspec.plan.check.selectors import removed_words
from hpspec.plan.check.target import load_target
from hpspec.plan.schemes import COMPUTE_DTYPES, SCHEMES

Rule = Callable[[Context], None]

RULES: tuple[Rule, ...] = (
    drops.check_drops,
    promote.promote_whole_blocks,
    keep_a_block.check_keeps_a_block,
    preserve.check_preserve,
    distill.check_distill,
    quantize.check_quantize,
)

__all__ = [
    "COMPUTE_DTYPES", "DISTILL_OPTIONS", "QUANTIZE_OPTIONS", "RULES", "SCHEMES", "CheckedSpec", "Context",
    "DistillOption", "Item", "Located", "PreserveSetting", "QuantizeSetting", "check", "load_target", "removed_words",
]  # fmt: skip


def check(spec: s.Spec, graph: ModelGraph) -> CheckedSpec:
    """Every rule in order; the spec's warnings, or `SpecError` with every diagnostic if any is an error."""
    ctx = Context.start(spec, graph)
    for rule in RULES:
        rule(ctx)
    diagnostics = ctx.sink.sorted()
    if ctx.sink.has_errors:
        raise SpecError(diagnostics, spec.source)
    return CheckedSpec(spec, graph, ctx.drops, ctx.promoted, ctx.preserve, ctx.distill, ctx.quantize, diagnostics)
