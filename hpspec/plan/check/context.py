"""context: what the checker's rules share while they run over one spec.

The spec, its model graph and the diagnostic sink, what the rules before have resolved (drops,
settings), and the few ways of wording a message that several rules use.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from hpspec.core.diagnostics import DiagnosticSink, Span, did_you_mean, one_of
from hpspec.lang import syntax as s
from hpspec.model.arch import Architecture
from hpspec.model.graph import ModelGraph
from hpspec.plan.check.checked import Item, PreserveSetting, QuantizeSetting


@dataclass
class Context:
    """One check in progress. Each rule reads what the rules before it left here and adds its own."""

    spec: s.Spec
    graph: ModelGraph
    sink: DiagnosticSink
    stack_order: dict[str, int]
    drop_spans: dict[Item, Span] = field(default_factory=dict)  # each dropped item: where it is dropped
    drops: tuple[Item, ...] = ()  # sorted, unique, after promotion
    promoted: tuple[Item, ...] = ()
    preserve: PreserveSetting | None = None
    distill: dict[str, object] | None = None
    quantize: QuantizeSetting | None = None

    @classmethod
    def start(cls, spec: s.Spec, graph: ModelGraph) -> Context:
        """A fresh check: the parser's diagnostics first in the sink."""
        order = {st.name: i for i, st in enumerate(graph.stacks)}
        return cls(spec, graph, DiagnosticSink(spec.path, list(spec.diagnostics)), order)

    @property
    def arch(self) -> Architecture:
        return self.graph.arch

    def singular(self, stack: str) -> str:
        """A stack's block, as a message names it: `block`, `single block`."""
        st = self.graph.stack(stack)
        return st.singular.replace("_", " ") if st else "block"

    def unknown(self, what: str, name: s.Name, choices: Iterable[str], listing: str) -> None:
        """`unknown WHAT `x``, with "did you mean" and the valid choices."""
        suggestion = did_you_mean(name.text, choices)
        self.sink.error(
            f"unknown {what} `{name.text}`",
            name.span,
            help=(f"did you mean `{suggestion}`? " if suggestion else "") + f"{listing} {one_of(choices)}",
        )
