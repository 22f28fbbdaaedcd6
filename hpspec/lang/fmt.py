"""fmt: a spec's one canonical form, rebuilt from its syntax tree and its comments.

The canonical form: one statement per line (`;`-joined statements are split), statements in the
order written (fmt never reorders: order is the author's), single spaces, `, ` between list
items, slices written compactly (`25:29`, `-4:`), strings re-quoted, full-line comments kept on
their own line, a trailing comment kept on its statement's line after two spaces, at most one
blank line in a row, none at the start or the end, and a final newline.

Formatting is a pure function of the text. A spec with syntax errors is not formatted: its
diagnostics are returned instead and the caller leaves the file untouched.
"""

from __future__ import annotations

from dataclasses import dataclass

from hpspec.core.diagnostics import Diagnostic
from hpspec.lang import syntax as s
from hpspec.lang.parse import parse


@dataclass(frozen=True)
class Formatted:
    """The canonical text of a spec, or (when it has syntax errors) why there is none."""

    path: str
    source: str
    text: str | None
    diagnostics: tuple[Diagnostic, ...]

    @property
    def changed(self) -> bool:
        return self.text is not None and self.text != self.source


def format_source(source: str, path: str = "<spec>") -> Formatted:
    spec = parse(source, path, recover=True)
    if spec.diagnostics:
        return Formatted(path, source, None, spec.diagnostics)
    return Formatted(path, source, format_spec(spec), ())


def format_spec(spec: s.Spec) -> str:
    """The canonical text of a parsed spec (statements and comments; everything else is layout)."""
    statements: dict[int, list[s.Statement]] = {}
    for statement in spec.statements:
        statements.setdefault(statement.span.line, []).append(statement)
    comments = {comment.span.line: comment.text.rstrip() for comment in spec.comments}
    lines: list[str] = []
    blank = False
    for number in range(1, spec.source.count("\n") + 2):
        on_line, comment = statements.get(number, []), comments.get(number)
        if not on_line and comment is None:
            blank = bool(lines)  # a blank run counts once, and never before the first line
            continue
        if blank:
            lines.append("")
            blank = False
        lines.extend(_line_group(on_line, comment))
    return "".join(line + "\n" for line in lines)


def _line_group(statements: list[s.Statement], comment: str | None) -> list[str]:
    """One source line's output: its statements one per line, its comment on the last of them."""
    if not statements:
        return [comment or ""]
    lines = [statement_text(statement) for statement in statements]
    if comment is not None:
        lines[-1] += "  " + comment
    return lines


# --------------------------------------------------------------------------------------------
# Statements, in canonical form


def statement_text(statement: s.Statement) -> str:
    if isinstance(statement, s.Target):
        return f"target {_value_text(statement.value)}"
    if isinstance(statement, s.Drop):
        return "drop " + ", ".join(selector_text(sel) for sel in statement.selectors)
    if isinstance(statement, s.Preserve):
        return "preserve " + ", ".join(_item_text(item) for item in statement.items)
    if isinstance(statement, s.Distill):
        return " ".join(["distill", *(_option_text(option) for option in statement.options)])
    return _quantize_text(statement)


def _quantize_text(statement: s.Quantize) -> str:
    words = ["quantize", statement.scheme.text]
    if statement.exceptions:
        words.append("except " + ", ".join(_item_text(item) for item in statement.exceptions))
    words.extend(_option_text(option) for option in statement.options)
    return " ".join(words)


def selector_text(selector: s.Selector) -> str:
    indices = ", ".join(_index_text(index) for index in selector.indices)
    part = f".{selector.part.text}" if selector.part is not None else ""
    return f"{selector.stack.text}[{indices}]{part}"


def _index_text(index: s.Index | s.Slice) -> str:
    if isinstance(index, s.Index):
        return str(index.value)
    bounds = [index.start, index.stop] + ([index.step] if index.step is not None else [])
    return ":".join("" if bound is None else str(bound) for bound in bounds)


def _item_text(item: s.Selector | s.String | s.Auto) -> str:
    if isinstance(item, s.Auto):
        return "auto"
    if isinstance(item, s.String):
        return quote(item.value)
    return selector_text(item)


def _option_text(option: s.Option) -> str:
    return f"{option.key.text}={_value_text(option.value)}"


def _value_text(value: s.Name | s.Number | s.String) -> str:
    return quote(value.value) if isinstance(value, s.String) else value.text


def quote(value: str) -> str:
    """A string literal the parser reads back as `value` (only `\\` and `"` need escapes)."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
