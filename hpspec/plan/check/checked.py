"""checked: what `check` returns, a spec resolved against its model graph.

Plain frozen data: the items selectors resolve to (a whole block or one part of one block), the
resolved `preserve` and `quantize` settings, and `CheckedSpec`, which `compile_plan` reads.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hpspec.core.diagnostics import Diagnostic, Span
from hpspec.lang import syntax as s
from hpspec.model.graph import ModelGraph


@dataclass(frozen=True)
class Item:
    """One resolved thing a selector names: a whole block (part None) or one part of one block."""

    stack_order: int
    stack: str
    block: int
    part: str | None = None

    def sort_key(self) -> tuple[int, int, str]:
        """Model order: stack, block, then the whole block before its parts."""
        return self.stack_order, self.block, self.part or ""

    @property
    def whole(self) -> Item:
        """The whole block this item lies in."""
        return Item(self.stack_order, self.stack, self.block)

    def describe(self) -> str:
        """As a user writes it: `block[22].context_mlp`, `single_block[3]`."""
        return f"{self.stack.removesuffix('s')}[{self.block}]" + (f".{self.part}" if self.part else "")


@dataclass(frozen=True)
class Located:
    """An item and the span of the source that named it."""

    item: Item
    span: Span


@dataclass(frozen=True)
class PreserveSetting:
    auto: bool
    items: tuple[Item, ...]  # explicit selectors
    modules: tuple[str, ...]  # explicit quoted module paths (names before pruning)


@dataclass(frozen=True)
class QuantizeSetting:
    scheme: str
    except_items: tuple[Item, ...]
    except_modules: tuple[str, ...]
    options: dict[str, object] = field(hash=False)


@dataclass(frozen=True)
class CheckedSpec:
    spec: s.Spec
    graph: ModelGraph
    drops: tuple[Item, ...]  # sorted, unique, after promotion
    promoted: tuple[Item, ...]  # blocks whose every part was dropped
    preserve: PreserveSetting | None
    distill: dict[str, object] | None
    quantize: QuantizeSetting | None
    diagnostics: tuple[Diagnostic, ...]  # warnings (errors raise SpecError)
