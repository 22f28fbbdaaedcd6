"""Rule: `preserve` (the freeze set): `auto`, selectors and quoted module paths that survive pruning.

Example:

    target sd3.5-medium
    drop blocks[3]
    preserve blocks[0:4]
    error: block 3 is both dropped and preserved
      = help: a dropped block has nothing to freeze: remove it from `preserve` or from `drop`
"""

from __future__ import annotations

from hpspec.core.diagnostics import Span
from hpspec.lang import syntax as s
from hpspec.plan.check.checked import Item, Located, PreserveSetting
from hpspec.plan.check.context import Context
from hpspec.plan.check.selectors import check_module_path, covering_part, resolve


def check_preserve(ctx: Context) -> None:
    """Sets `ctx.preserve` (None without a `preserve` statement)."""
    statements = ctx.spec.of_type(s.Preserve)
    if not statements:
        return
    dropped = set(ctx.drops)
    auto_span: Span | None = None
    items: list[Item] = []
    modules: list[str] = []
    for statement in statements:
        for entry in statement.items:
            if isinstance(entry, s.Auto):
                if auto_span is not None:
                    ctx.sink.warning("`preserve auto` is written twice", entry.span)
                auto_span = auto_span or entry.span
            elif isinstance(entry, s.String):
                if check_module_path(ctx, entry, dropped, "preserve"):
                    modules.append(entry.value)
            else:
                items.extend(
                    located.item
                    for located in resolve(ctx, entry) or ()
                    if not _preserving_dropped(ctx, located, dropped)
                )
    if auto_span is not None and not ctx.drops:
        ctx.sink.warning(
            "nothing is dropped, so `preserve auto` freezes every parameter",
            auto_span,
            help="PWP freezes everything before the first removed block or part",
        )
    ctx.preserve = PreserveSetting(
        auto_span is not None, tuple(sorted(set(items), key=Item.sort_key)), tuple(dict.fromkeys(modules))
    )


def _preserving_dropped(ctx: Context, located: Located, dropped: set[Item]) -> bool:
    item = located.item
    if item.whole in dropped:
        ctx.sink.error(
            f"{ctx.singular(item.stack)} {item.block} is both dropped and preserved",
            located.span,
            help="a dropped block has nothing to freeze: remove it from `preserve` or from `drop`",
        )
        return True
    if item.part is not None and (item in dropped or (covering_part(ctx.graph, item) in dropped)):
        ctx.sink.error(
            f"{item.describe()} is both dropped and preserved",
            located.span,
            help="a dropped part has nothing to freeze",
        )
        return True
    return False
