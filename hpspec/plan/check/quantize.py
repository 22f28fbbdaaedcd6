"""Rule: one `quantize SCHEME` statement; its exceptions must survive pruning.

Example:

    target sd3.5-medium
    drop blocks[3]
    quantize nf4 except blocks[3]
    error: the quantize exception names block[3], which this spec drops
      = help: only what survives pruning can stay in full precision
"""

from __future__ import annotations

from hpspec.lang import syntax as s
from hpspec.plan.check.checked import Item, QuantizeSetting
from hpspec.plan.check.context import Context
from hpspec.plan.check.options import QUANTIZE_OPTIONS, read_options
from hpspec.plan.check.selectors import check_module_path, is_dropped, resolve
from hpspec.plan.schemes import SCHEMES


def check_quantize(ctx: Context) -> None:
    """Sets `ctx.quantize` (None without a `quantize` statement)."""
    statements = ctx.spec.of_type(s.Quantize)
    if not statements:
        return
    for extra in statements[1:]:
        ctx.sink.error(
            "a spec has one `quantize` statement", extra.span, help=f"the first is on line {statements[0].span.line}"
        )
    statement = statements[0]
    scheme = statement.scheme.text
    if scheme not in SCHEMES:
        ctx.unknown("quantization scheme", statement.scheme, SCHEMES, "schemes are")
    dropped = set(ctx.drops)
    items, modules = [], []
    for entry in statement.exceptions:
        if isinstance(entry, s.String):
            if check_module_path(ctx, entry, dropped, "quantize except"):
                modules.append(entry.value)
            continue
        for located in resolve(ctx, entry) or ():
            if is_dropped(ctx.graph, located.item, dropped):
                ctx.sink.error(
                    f"the quantize exception names {located.item.describe()}, which this spec drops",
                    located.span,
                    help="only what survives pruning can stay in full precision",
                )
                continue
            items.append(located.item)
    options = read_options(ctx, statement.options, QUANTIZE_OPTIONS, "quantize")
    resolved = {key: options.get(key, option.default) for key, option in QUANTIZE_OPTIONS.items()}
    ctx.quantize = QuantizeSetting(
        scheme, tuple(sorted(set(items), key=Item.sort_key)), tuple(dict.fromkeys(modules)), resolved
    )
