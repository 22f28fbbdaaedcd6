"""The syntax tree of a spec: frozen dataclasses with source spans. No Lark object leaks out."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeVar

from hpspec.core.diagnostics import Diagnostic, Span


@dataclass(frozen=True)
class Name:
    text: str
    span: Span


@dataclass(frozen=True)
class String:
    """A quoted string; `value` has its escapes resolved."""

    value: str
    span: Span


@dataclass(frozen=True)
class Number:
    text: str
    span: Span

    @property
    def is_int(self) -> bool:
        return self.text.lstrip("+-").isdigit()


@dataclass(frozen=True)
class Index:
    value: int
    span: Span


@dataclass(frozen=True)
class Slice:
    start: int | None
    stop: int | None
    step: int | None
    span: Span


@dataclass(frozen=True)
class Selector:
    """`blocks[25:29, 31]` or `block[22].context_mlp`."""

    stack: Name
    indices: tuple[Index | Slice, ...]
    part: Name | None
    span: Span


@dataclass(frozen=True)
class Auto:
    span: Span


Value = Name | Number | String


@dataclass(frozen=True)
class Option:
    key: Name
    value: Value
    span: Span


@dataclass(frozen=True)
class Target:
    value: Name | String
    span: Span


@dataclass(frozen=True)
class Drop:
    selectors: tuple[Selector, ...]
    span: Span


@dataclass(frozen=True)
class Preserve:
    items: tuple[Selector | String | Auto, ...]
    span: Span


@dataclass(frozen=True)
class Distill:
    options: tuple[Option, ...]
    span: Span


@dataclass(frozen=True)
class Quantize:
    scheme: Name
    exceptions: tuple[Selector | String, ...]
    options: tuple[Option, ...]
    span: Span


Statement = Target | Drop | Preserve | Distill | Quantize
StatementT = TypeVar("StatementT", Target, Drop, Preserve, Distill, Quantize)


@dataclass(frozen=True)
class Comment:
    text: str  # including the leading '#'
    span: Span


@dataclass(frozen=True)
class Spec:
    """A parsed spec file: its statements in order, its comments, and the text they came from."""

    path: str
    source: str
    statements: tuple[Statement, ...]
    comments: tuple[Comment, ...]
    # Syntax errors of statements that did not parse (only with parse(..., recover=True)); the
    # checker reports them together with its own findings.
    diagnostics: tuple[Diagnostic, ...] = ()

    def of_type(self, kind: type[StatementT]) -> tuple[StatementT, ...]:
        """The statements of one kind, in source order."""
        return tuple(s for s in self.statements if isinstance(s, kind))
