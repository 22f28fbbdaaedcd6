"""Rule: one `distill` statement, its options checked and completed with their defaults.

Example:

    target sd3.5-medium
    distill weight=uniform mode=inverse
    warning: `mode` has an effect only with `weight=sensitivity`
"""

from __future__ import annotations

from pathlib import Path

from hpspec.lang import syntax as s
from hpspec.plan.check.context import Context
from hpspec.plan.check.options import DISTILL_OPTIONS, read_options


def check_distill(ctx: Context) -> None:
    """Sets `ctx.distill`: every option, by key (None without a `distill` statement)."""
    statements = ctx.spec.of_type(s.Distill)
    if not statements:
        return
    for extra in statements[1:]:
        ctx.sink.error(
            "a spec has one `distill` statement",
            extra.span,
            help=f"put all its options on line {statements[0].span.line}",
        )
    options = statements[0].options
    values = read_options(ctx, options, DISTILL_OPTIONS, "distill")
    if "mode" in values and values.get("weight") != "sensitivity":
        span = next(o.span for o in options if o.key.text == "mode")
        ctx.sink.warning("`mode` has an effect only with `weight=sensitivity`", span)
    if values.get("table") is not None and ctx.spec.path not in ("<spec>", "-"):
        table = Path(ctx.spec.path).parent / str(values["table"])
        if not table.is_file():
            span = next(o.value.span for o in options if o.key.text == "table")
            ctx.sink.warning(
                f"sensitivity table {values['table']!r} does not exist yet",
                span,
                help=f"it is read relative to the spec, as {table}; `hpspec analyze -o` writes one",
            )
    ctx.distill = {key: values.get(key, option.default) for key, option in DISTILL_OPTIONS.items()}
