"""options: the `key=value` options of `distill` and `quantize`, their kinds and defaults.

Not a rule of its own: the `distill` and `quantize` rules read their options here. Each value is
checked against its option's kind:

    target sd3.5-medium
    distill steps=0
    error: `steps` must be a positive integer
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

from hpspec.core.diagnostics import Span, did_you_mean, one_of
from hpspec.lang import syntax as s
from hpspec.plan.check.context import Context
from hpspec.plan.schemes import COMPUTE_DTYPES


@dataclass(frozen=True)
class DistillOption:
    kind: str  # "choice", "int", "float", "path"
    default: object
    choices: tuple[str, ...] = ()
    minimum: int = 1  # for "int"


# The distill keys of language v1; defaults are the reference recipe's (METHOD §6).
DISTILL_OPTIONS: dict[str, DistillOption] = {
    "weight": DistillOption("choice", "uniform", ("uniform", "sensitivity")),
    "mode": DistillOption("choice", "binary", ("binary", "inverse")),
    "table": DistillOption("path", None),
    "threshold": DistillOption("float", None),
    "steps": DistillOption("int", 64000),
    "lr": DistillOption("float", 1e-4),
    "batch": DistillOption("int", 64),
    "output": DistillOption("float", 1.0),
    "features": DistillOption("float", 1e-4),
    "task": DistillOption("float", 0.0),
    "seed": DistillOption("int", 0, minimum=0),
}
QUANTIZE_OPTIONS: dict[str, DistillOption] = {
    "compute": DistillOption("choice", COMPUTE_DTYPES[0], COMPUTE_DTYPES),
}


def read_options(
    ctx: Context, options: Iterable[s.Option], known: dict[str, DistillOption], statement: str
) -> dict[str, object]:
    """The valid options a statement gives, by key (unknown keys, repeats and bad values reported)."""
    values: dict[str, object] = {}
    spans: dict[str, Span] = {}
    for option in options:
        key = option.key.text
        if key not in known:
            ctx.unknown(f"`{statement}` option", option.key, known, "options are")
            continue
        if key in spans:
            ctx.sink.error(
                f"`{key}` is given twice", option.key.span, help=f"it is already set on line {spans[key].line}"
            )
            continue
        value = _option_value(ctx, option, known[key])
        if value is not None:
            values[key], spans[key] = value, option.span
    return values


def _option_value(ctx: Context, option: s.Option, spec: DistillOption) -> object | None:
    value, key = option.value, option.key.text
    if spec.kind == "choice":
        if isinstance(value, s.Name) and value.text in spec.choices:
            return value.text
        text = value.text if isinstance(value, (s.Name, s.Number)) else value.value
        suggestion = did_you_mean(text, spec.choices)
        ctx.sink.error(
            f"`{key}` must be {one_of(spec.choices)}",
            value.span,
            help=f"did you mean `{suggestion}`?" if suggestion else None,
        )
        return None
    if spec.kind == "path":
        if isinstance(value, s.String):
            return value.value
        ctx.sink.error(f"`{key}` takes a quoted path", value.span, help=f'for example: {key}="sensitivity.json"')
        return None
    if isinstance(value, s.Number):
        return _number(ctx, value, key, spec)
    ctx.sink.error(
        f"`{key}` must be {'an integer' if spec.kind == 'int' else 'a number'}",
        value.span,
        help=f"for example: {key}={spec.default if spec.default is not None else 1}",
    )
    return None


def _number(ctx: Context, value: s.Number, key: str, spec: DistillOption) -> int | float | None:
    if spec.kind == "int":
        if value.is_int and int(value.text) >= spec.minimum:
            return int(value.text)
        wanted = "a positive integer" if spec.minimum == 1 else f"an integer of at least {spec.minimum}"
        ctx.sink.error(f"`{key}` must be {wanted}", value.span)
        return None
    number = float(value.text)
    if number < 0 or math.isnan(number) or math.isinf(number):
        ctx.sink.error(f"`{key}` must be a finite number of at least 0", value.span)
        return None
    return number
