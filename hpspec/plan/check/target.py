"""target: the model graph a spec is checked against (`--target` wins over the spec's `target`).

Example:

    target "no/such/model"
    error: no/such/model: no such file or directory
"""

from __future__ import annotations

from pathlib import Path

from hpspec.core.diagnostics import DiagnosticSink
from hpspec.core.errors import HpspecError, SpecError
from hpspec.lang import syntax as s
from hpspec.model.graph import ModelGraph
from hpspec.model.targets import resolve_target, target_names


def load_target(spec: s.Spec, override: str | None = None) -> ModelGraph:
    """The graph the spec is checked against: `--target` wins over the spec's `target`."""
    sink = DiagnosticSink(spec.path)
    targets = spec.of_type(s.Target)
    for extra in targets[1:]:
        sink.error(
            "a spec has one target",
            extra.span,
            help=f"the target is already set on line {targets[0].span.line}",
        )
    base = Path(spec.path).parent if spec.path not in ("<spec>", "-") else Path(".")
    graph = None
    try:
        if override is not None:
            graph = resolve_target(override, Path("."))
        elif targets:
            value = targets[0].value
            graph = resolve_target(
                value.value if isinstance(value, s.String) else value.text, base, quoted=isinstance(value, s.String)
            )
        else:
            sink.error(
                "the spec names no target",
                None,
                help=f"add `target NAME` (one of {', '.join(target_names())}) or a quoted path, or pass --target",
            )
    except HpspecError as error:
        if override is not None or not targets:
            raise
        message, _, help_text = str(error).partition("; did you mean")
        sink.error(message, targets[0].value.span, help=("did you mean" + help_text) if help_text else None)
    if sink.has_errors:
        raise SpecError(DiagnosticSink(spec.path, [*spec.diagnostics, *sink.items]).sorted(), spec.source)
    assert graph is not None
    return graph
