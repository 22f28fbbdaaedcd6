"""Rule: a spec keeps at least one block.

Example:

    target sd3.5-medium
    drop blocks[:]
    error: this spec drops every block of sd3.5-medium
      = help: keep at least one block
"""

from __future__ import annotations

from hpspec.lang import syntax as s
from hpspec.plan.check.context import Context


def check_keeps_a_block(ctx: Context) -> None:
    whole = {(i.stack, i.block) for i in ctx.drops if i.part is None}
    if ctx.graph.blocks and len(whole) == len(ctx.graph.blocks):
        statements = ctx.spec.of_type(s.Drop)
        ctx.sink.error(
            f"this spec drops every block of {ctx.graph.name}",
            statements[-1].span if statements else None,
            help="keep at least one block",
        )
