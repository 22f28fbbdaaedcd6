"""Rule: every `drop` selector, resolved; a drop that another drop already covers is a warning.

Example:

    target sd3.5-medium
    drop blocks[3], block[3]
    warning: block[3] is dropped twice
      = help: it is already dropped on line 1
"""

from __future__ import annotations

from hpspec.lang import syntax as s
from hpspec.plan.check.checked import Located
from hpspec.plan.check.context import Context
from hpspec.plan.check.selectors import covering_part, resolve


def check_drops(ctx: Context) -> None:
    """Fills `ctx.drop_spans`: each dropped item and where it is dropped, in source order."""
    for statement in ctx.spec.of_type(s.Drop):
        for selector in statement.selectors:
            for located in resolve(ctx, selector) or ():
                _add_drop(ctx, located)


def _add_drop(ctx: Context, located: Located) -> None:
    seen = ctx.drop_spans
    item = located.item
    whole = item.whole
    if item in seen:
        ctx.sink.warning(
            f"{item.describe()} is dropped twice",
            located.span,
            help=f"it is already dropped on line {seen[item].line}",
        )
        return
    if item.part is not None and whole in seen:
        ctx.sink.warning(
            f"{item.describe()} is already dropped with the whole {ctx.singular(item.stack)} {item.block}",
            located.span,
            help=f"the block is dropped on line {seen[whole].line}",
        )
        return
    covering = covering_part(ctx.graph, item)
    if covering is not None and covering in seen:
        ctx.sink.warning(
            f"{item.describe()} is already dropped with {covering.describe()}",
            located.span,
            help=f"dropping `{covering.part}` removes `{item.part}` too (line {seen[covering].line})",
        )
        return
    seen[item] = located.span
