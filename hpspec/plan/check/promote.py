"""Rule: a block whose every part is dropped becomes a whole-block drop, with a warning.

Example:

    target sd3.5-medium
    drop block[20].norm, block[20].context_norm, block[20].attn, block[20].mlp, block[20].context_mlp
    warning: every part of block 20 is dropped: it becomes a whole-block drop
      = help: a whole-block drop adds nothing to the streams, while identity parts still add ...
"""

from __future__ import annotations

from hpspec.plan.check.checked import Item
from hpspec.plan.check.context import Context
from hpspec.plan.check.selectors import removed_words


def promote_whole_blocks(ctx: Context) -> None:
    """Sets `ctx.drops` (sorted, unique, after promotion) and `ctx.promoted` from `ctx.drop_spans`."""
    seen = ctx.drop_spans
    items = set(seen)
    promoted = []
    by_block: dict[tuple[int, str, int], list[Item]] = {}
    for item in items:
        if item.part is not None:
            by_block.setdefault((item.stack_order, item.stack, item.block), []).append(item)
    for (order, stack, index), parts in sorted(by_block.items()):
        block = ctx.graph.stack(stack).blocks[index]  # type: ignore[union-attr]
        gone = set(removed_words(ctx.graph, block, [p.part for p in parts if p.part]))
        whole = Item(order, stack, index)
        if whole in items or gone != set(block.words):
            continue
        last = max((seen[p] for p in parts), key=lambda sp: sp.start)
        ctx.sink.warning(
            f"every part of {ctx.singular(stack)} {index} is dropped: it becomes a whole-block drop",
            last,
            help="a whole-block drop adds nothing to the streams, while identity parts still add their gated, "
            "normalised inputs: the function changes (as in the reference code)",
        )
        items.difference_update(parts)
        items.add(whole)
        promoted.append(whole)
    ctx.drops, ctx.promoted = tuple(sorted(items, key=Item.sort_key)), tuple(promoted)
