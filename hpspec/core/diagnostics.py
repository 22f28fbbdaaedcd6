"""Diagnostics: what a spec's checker and parser say, pointing at a file, line and column.

Plain frozen data (spans, diagnostics, a sink that collects them) and the helpers that word a
"did you mean" or a list of valid names. It lives in `core` because `SpecError` carries diagnostics.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal

Severity = Literal["error", "warning"]


@dataclass(frozen=True, order=True)
class Span:
    """A region of a spec's source: 1-based lines and columns, 0-based character offsets."""

    line: int
    column: int
    end_line: int
    end_column: int
    start: int
    end: int


@dataclass(frozen=True)
class Diagnostic:
    severity: Severity
    message: str
    span: Span | None = None
    help: str | None = None
    path: str = "<spec>"

    def render(self, source: str | None = None) -> str:
        """`file:line:col: severity: message`, the source line with a caret, and the help."""
        if self.span is None:
            head = f"{self.path}: {self.severity}: {self.message}"
            return head + (f"\n  = help: {self.help}" if self.help else "")
        span = self.span
        lines = [f"{self.path}:{span.line}:{span.column}: {self.severity}: {self.message}"]
        if source is not None:
            text = _source_line(source, span.line)
            gutter = str(span.line)
            width = span.end_column - span.column if span.end_line == span.line else len(text) - span.column + 1
            lines.append(f" {gutter} | {text}")
            lines.append(f" {' ' * len(gutter)} | {' ' * (span.column - 1)}{'^' * max(1, width)}")
        if self.help:
            lines.append(f"  = help: {self.help}")
        return "\n".join(lines)

    def to_json(self) -> dict[str, object]:
        data: dict[str, object] = {
            "severity": self.severity,
            "message": self.message,
            "path": self.path,
            "help": self.help,
        }
        if self.span is not None:
            data.update(
                line=self.span.line,
                column=self.span.column,
                end_line=self.span.end_line,
                end_column=self.span.end_column,
            )
        return data


def _source_line(source: str, line: int) -> str:
    lines = source.splitlines()
    return lines[line - 1].expandtabs(1) if 0 < line <= len(lines) else ""


@dataclass
class DiagnosticSink:
    """Collects diagnostics for one spec so that all of them are reported at once."""

    path: str
    items: list[Diagnostic] = field(default_factory=list)

    def error(self, message: str, span: Span | None = None, help: str | None = None) -> None:
        self.items.append(Diagnostic("error", message, span, help, self.path))

    def warning(self, message: str, span: Span | None = None, help: str | None = None) -> None:
        self.items.append(Diagnostic("warning", message, span, help, self.path))

    @property
    def has_errors(self) -> bool:
        return any(d.severity == "error" for d in self.items)

    def sorted(self) -> tuple[Diagnostic, ...]:
        """Diagnostics in source order (those without a span first), stable for equal spans."""
        return tuple(sorted(self.items, key=lambda d: (d.span is not None, d.span or Span(0, 0, 0, 0, 0, 0))))


def did_you_mean(word: str, choices: Iterable[str]) -> str | None:
    """The closest valid name to a misspelt one, if any is close enough to suggest."""
    matches = difflib.get_close_matches(word, sorted(set(choices)), n=1, cutoff=0.6)
    return matches[0] if matches else None


def one_of(choices: Iterable[str]) -> str:
    """`a`, `b` or `c`: a list of valid names for a help line."""
    return _listing(choices, "or")


def all_of(choices: Iterable[str]) -> str:
    """`a`, `b` and `c`."""
    return _listing(choices, "and")


def _listing(choices: Iterable[str], conjunction: str) -> str:
    quoted = [f"`{c}`" for c in choices]
    if len(quoted) <= 1:
        return "".join(quoted)
    return ", ".join(quoted[:-1]) + f" {conjunction} " + quoted[-1]
