"""Diagnostics: what a spec's checker and parser say, pointing at a file, line and column.

Plain frozen data (spans, diagnostics, a sink that collects them) and the helpers that word a
"did you mean" or a list of valid names. It lives in `core` because `SpecError` carries diagnostics.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence
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

    def render(self, source: str | SourceLines | None = None) -> str:
        """`file:line:col: severity: message`, the source line with a caret, and the help.

        A line longer than `MAX_LINE_COLUMNS` is shown as a window around the column, so that a
        diagnostic's size does not grow with its line."""
        if self.span is None:
            head = f"{self.path}: {self.severity}: {self.message}"
            return head + (f"\n  = help: {self.help}" if self.help else "")
        span = self.span
        lines = [f"{self.path}:{span.line}:{span.column}: {self.severity}: {self.message}"]
        if source is not None:
            text = (source if isinstance(source, SourceLines) else SourceLines(source)).line(span.line)
            width = span.end_column - span.column if span.end_line == span.line else len(text) - span.column + 1
            text, column, width = _window(text, span.column, max(1, width))
            gutter = str(span.line)
            lines.append(f" {gutter} | {text}")
            lines.append(f" {' ' * len(gutter)} | {' ' * (column - 1)}{'^' * width}")
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


MAX_LINE_COLUMNS = 200  # a longer source line is echoed as a window around the column
_WINDOW_BEFORE, _WINDOW_AFTER = 60, 100  # characters shown either side of the column in that window
_ELLIPSIS = "..."
MERGE_AFTER = 5  # diagnostics with one message beyond this many are merged into "and N more like it"
MAX_SHOWN = 50  # diagnostics printed for one file at most; the rest are counted


class SourceLines:
    """A source cut into lines once, on "\n" only (U+2028 and the like are characters of a line, as
    the parser counts them); a trailing "\r" of a CRLF line is not part of it."""

    def __init__(self, source: str):
        self._lines = source.split("\n")

    def line(self, number: int) -> str:
        """The 1-based line `number`, tabs shown as one space, or "" past the end."""
        if not 0 < number <= len(self._lines):
            return ""
        return self._lines[number - 1].removesuffix("\r").replace("\r", " ").expandtabs(1)


def lines_of(text: str, keepends: bool = False) -> list[str]:
    """`text.splitlines()` on "\n" only: U+2028, form feeds and lone "\r"s stay inside a line, as the
    parser counts lines (a CRLF line keeps its "\r" only with `keepends`)."""
    pieces = text.split("\n")
    if pieces and pieces[-1] == "":
        pieces.pop()
    if keepends:
        ended = [piece + "\n" for piece in pieces]
        if ended and not text.endswith("\n"):
            ended[-1] = ended[-1][:-1]
        return ended
    return [piece.removesuffix("\r") for piece in pieces]


def _window(text: str, column: int, width: int) -> tuple[str, int, int]:
    """A long line cut around 1-based `column`: the text shown, the caret's column and width in it."""
    if len(text) <= MAX_LINE_COLUMNS:
        return text, column, width
    start = max(0, column - 1 - _WINDOW_BEFORE)
    stop = min(len(text), column - 1 + _WINDOW_AFTER)
    head = _ELLIPSIS if start > 0 else ""
    tail = _ELLIPSIS if stop < len(text) else ""
    caret = column - start + len(head)
    return head + text[start:stop] + tail, caret, max(1, min(width, stop - (column - 1)))


def shown(diagnostics: Sequence[Diagnostic]) -> tuple[list[tuple[Diagnostic, int]], int]:
    """What a reader is shown of `diagnostics`, in order: each message at most `MERGE_AFTER` times,
    its last showing carrying how many more like it follow; at most `MAX_SHOWN` in all. Returns those
    (diagnostic, more like it) pairs and how many diagnostics are left out beyond them."""
    total: dict[tuple[str, str, str | None], int] = {}
    for d in diagnostics:
        key = (d.severity, d.message, d.help)
        total[key] = total.get(key, 0) + 1
    seen: dict[tuple[str, str, str | None], int] = {}
    out: list[tuple[Diagnostic, int]] = []
    for d in diagnostics:
        key = (d.severity, d.message, d.help)
        seen[key] = seen.get(key, 0) + 1
        if seen[key] > MERGE_AFTER:
            continue
        if len(out) == MAX_SHOWN:
            break
        out.append((d, total[key] - MERGE_AFTER if seen[key] == MERGE_AFTER else 0))
    left_out = len(diagnostics) - len(out) - sum(more for _, more in out)
    return out, left_out


def render_all(diagnostics: Sequence[Diagnostic], source: str | None) -> str:
    """Every diagnostic of one file as a reader sees it: the source split once, repeats merged, the
    total capped, so that the text grows with the input, never with its square."""
    lines = SourceLines(source) if source is not None else None
    out: list[str] = []
    shown_items, left_out = shown(diagnostics)
    for d, like_it in shown_items:
        out.append(d.render(lines))
        if like_it:
            out.append(f"  = note: and {like_it:,} more like it")
    if left_out:
        path = diagnostics[0].path if diagnostics else "<spec>"
        out.append(f"{path}: note: {left_out:,} more diagnostics not shown (at most {MAX_SHOWN} are)")
    return "\n".join(out)


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
