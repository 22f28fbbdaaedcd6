"""parse: spec text -> syntax tree (`hpspec.syntax.Spec`), or every syntax error at once.

The grammar is the data file `grammar/hpspec.lark` (shipped as `hpspec.grammar`). Statements end
at a newline or `;`, so the text is first cut into statements (outside strings and comments) and
each is parsed on its own: one bad statement yields one diagnostic and the rest still parse, so
the checker can report everything in a single pass.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable, Iterator
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Union

import lark
from lark import Lark, Token, Tree
from lark.exceptions import UnexpectedCharacters, UnexpectedEOF, UnexpectedInput

from hpspec.core.diagnostics import DiagnosticSink, Span, did_you_mean, one_of
from hpspec.core.errors import SpecError
from hpspec.core.io import cache_dir, gc_paused, read_text_input
from hpspec.lang import syntax as s

STATEMENTS = ("target", "drop", "preserve", "distill", "quantize")

Node = Union["Tree[Token]", Token]  # a child in lark's tree: a rule's subtree or a terminal

_GRAMMAR_FILE = "hpspec.lark"
MAX_NUMBER_CHARS = 100  # Python refuses to convert integers past 4300 digits; no real index or count is near 100
_UNESCAPE = re.compile(r"\\(.)")

_TERMINAL_WORDS = {
    "LSQB": "`[`",
    "RSQB": "`]`",
    "COMMA": "`,`",
    "DOT": "`.`",
    "COLON": "`:`",
    "EQUAL": "`=`",
    "SEMICOLON": "`;`",
    "INT": "an integer",
    "NAME": "a name",
    "TARGET_NAME": "a target name",
    "STRING": 'a quoted string ("...")',
    "NUMBER": "a number",
    "AUTO": "`auto`",
    "EXCEPT": "`except`",
    "_NL": "the end of the line",
    "$END": "the end of the statement",
}

_STATEMENT_HINTS = {
    "target": 'target sd3.5-large-turbo   or   target "path/to/transformer"',
    "drop": "drop blocks[25:29, 31:35]   or   drop block[22].context_mlp",
    "preserve": "preserve auto   or   preserve blocks[0:8]",
    "distill": "distill weight=sensitivity steps=1000",
    "quantize": 'quantize nf4 except "context_embedder" compute=bf16',
}


def grammar_text() -> str:
    # A source checkout has grammar/ beside the package; an installed wheel has hpspec/grammar/.
    checkout = Path(__file__).resolve().parents[2] / "grammar" / _GRAMMAR_FILE
    if checkout.is_file():
        return checkout.read_text(encoding="utf-8")
    return resources.files("hpspec.grammar").joinpath(_GRAMMAR_FILE).read_text(encoding="utf-8")


@lru_cache(maxsize=1)
def _parser() -> Lark:
    # The analysed LALR tables are cached, so a cold `hpspec check` process skips grammar analysis.
    return Lark(
        grammar_text(), parser="lalr", propagate_positions=True, maybe_placeholders=True, cache=_grammar_cache()
    )


def _grammar_cache() -> str | bool:
    """Where lark keeps its tables: in hpspec's per-user cache, never lark's default, the shared temp
    directory, where anyone could plant a pickle under the predictable name lark loads (and runs)."""
    root = cache_dir()
    if root is None:
        return False
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError:
        return False
    return str(root / f"grammar-lark{lark.__version__}-py{sys.version_info[0]}{sys.version_info[1]}.pickle")


def parse(source: str, path: str = "<spec>", recover: bool = False) -> s.Spec:
    """Parse a whole spec. Raises `SpecError` with one diagnostic per malformed statement, or with
    `recover`, returns the statements that parsed and carries the syntax errors in the Spec."""
    sink = DiagnosticSink(path)
    if _refuse_bare_carriage_return(source, sink):  # the whole file would be one line: nothing else is meaningful
        if recover:
            return s.Spec(path, source, (), (), sink.sorted())
        raise SpecError(sink.sorted(), source)
    statements: list[s.Statement] = []
    comments: list[s.Comment] = []
    with gc_paused():  # linear time in the input's size (see gc_paused)
        for chunk in _statement_chunks(source):
            comments.extend(chunk.comments)
            statement = _parse_chunk(chunk, sink) if chunk.text.strip() else None
            if statement is not None:
                statements.append(statement)
    if sink.has_errors and not recover:
        raise SpecError(sink.sorted(), source)
    return s.Spec(path, source, tuple(statements), tuple(comments), sink.sorted())


def _refuse_bare_carriage_return(source: str, sink: DiagnosticSink) -> bool:
    """CR-only line endings (a CR and no LF anywhere) said as such, not as an invisible unexpected character."""
    if _is_cr_only(source):
        at = source.index("\r")  # on line 1: there is no LF
        message = "a carriage return without a newline: this file has CR-only line endings"
        sink.error(message, Span(1, at + 1, 1, at + 2, at, at + 1), help="save it with LF")
    return _is_cr_only(source)


def _is_cr_only(source: str) -> bool:
    return "\r" in source and "\n" not in source


def parse_file(path: str | Path, recover: bool = False) -> s.Spec:
    text = read_text_input(Path(path), what="spec")
    return parse(text, str(path), recover and not _is_cr_only(text))  # CR-only: refused, even to recover


# --------------------------------------------------------------------------------------------
# Cutting the text into statements


class _Chunk:
    """One statement's text: a single-line slice of the source, and where it starts."""

    __slots__ = ("column", "comments", "line", "offset", "text")

    def __init__(self, text: str, line: int, column: int, offset: int, comments: list[s.Comment]):
        self.text, self.line, self.column, self.offset, self.comments = text, line, column, offset, comments


def _statement_chunks(source: str) -> Iterator[_Chunk]:
    """Split at newlines and at `;` outside strings and comments (strings cannot span lines)."""
    line, column, start, start_column = 1, 1, 0, 1
    comments: list[s.Comment] = []
    i, n = 0, len(source)
    while i < n:
        ch = source[i]
        if ch == '"':
            i, column = _skip_string(source, i, column)
            continue
        if ch == "#":
            end = source.find("\n", i)
            end = n if end == -1 else end
            text = source[i:end].rstrip("\r")
            comments.append(s.Comment(text, Span(line, column, line, column + len(text), i, i + len(text))))
            column += end - i
            i = end
            continue
        if ch == "\n" or ch == ";":
            end = i - 1 if ch == "\n" and i > start and source[i - 1] == "\r" else i  # CRLF files
            yield _Chunk(source[start:end], line, start_column, start, comments)
            comments = []
            if ch == "\n":
                line, column = line + 1, 1
            else:
                column += 1
            i += 1
            start, start_column = i, column
            continue
        i += 1
        column += 1
    yield _Chunk(source[start:], line, start_column, start, comments)


def _skip_string(source: str, i: int, column: int) -> tuple[int, int]:
    """Index and column just past the string starting at i (or at the end of its line)."""
    j = i + 1
    while j < len(source) and source[j] != "\n":
        if source[j] == "\\":
            j += 2
            continue
        if source[j] == '"':
            j += 1
            break
        j += 1
    j = min(j, len(source))
    newline = source.find("\n", i, j)
    if newline != -1:  # an escaped newline: stop before it, the lexer will complain
        j = newline
    return j, column + (j - i)


# --------------------------------------------------------------------------------------------
# Parsing one statement


def _parse_chunk(chunk: _Chunk, sink: DiagnosticSink) -> s.Statement | None:
    try:
        tree = _parser().parse(chunk.text)
    except UnexpectedInput as error:
        _report_syntax_error(error, chunk, sink)
        return None
    if _refuse_long_number(tree, chunk, sink):
        return None
    builder = _Builder(chunk)
    statements = [builder.statement(child) for child in tree.children if isinstance(child, Tree)]
    return statements[0] if statements else None


def _refuse_long_number(tree: Tree[Token], chunk: _Chunk, sink: DiagnosticSink) -> bool:
    numbers = tree.scan_values(
        lambda v: isinstance(v, Token) and v.type in ("INT", "NUMBER") and len(v) > MAX_NUMBER_CHARS
    )
    token = next(iter(numbers), None)
    if token is None:
        return False
    sink.error(
        f"a number of {len(token)} characters",
        _chunk_span(chunk, _known(token.column), _known(token.end_column)),
        help=f"numbers are at most {MAX_NUMBER_CHARS} characters long",
    )
    return True


def _report_syntax_error(error: UnexpectedInput, chunk: _Chunk, sink: DiagnosticSink) -> None:
    text = chunk.text
    if isinstance(error, UnexpectedCharacters):
        column = error.column
        at = _known(error.pos_in_stream)
        bad = text[at] if at < len(text) else ""
        span = _chunk_span(chunk, column, column + 1)
        if bad == '"':
            sink.error("unterminated string", span, help='close it with `"` on the same line')
        else:
            shown = f"`{bad}`" if bad.isprintable() else f"U+{ord(bad):04X} (invisible)" if bad else "at the end"
            sink.error(f"unexpected character {shown}", span, help=_expected_help(error.allowed))
        return
    token = getattr(error, "token", None)
    expected = set(getattr(error, "expected", ()) or ())
    if isinstance(error, UnexpectedEOF) or token is None or token.type == "$END":
        end = len(text.rstrip()) + 1
        first = text.split()[0] if text.split() else ""
        hint = _STATEMENT_HINTS.get(first)
        sink.error(
            f"incomplete `{first}` statement" if hint else "incomplete statement",
            _chunk_span(chunk, end, end + 1),
            help=(f"expected {_words(expected)}; for example: {hint}" if hint else f"expected {_words(expected)}"),
        )
        return
    span = _chunk_span(chunk, token.column, token.column + len(str(token)))
    at_statement_start = not text[: token.start_pos].strip()
    if at_statement_start:
        word = str(token)
        suggestion = did_you_mean(word, STATEMENTS)
        sink.error(
            f"unknown statement `{word}`",
            span,
            help=(f"did you mean `{suggestion}`? " if suggestion else "") + f"a statement is {one_of(STATEMENTS)}",
        )
        return
    first = text.split()[0]
    hint = _STATEMENT_HINTS.get(first)
    sink.error(
        f"unexpected `{token}` in `{first}` statement" if hint else f"unexpected `{token}`",
        span,
        help=f"expected {_words(expected)}" + (f"; for example: {hint}" if hint else ""),
    )


def _expected_help(allowed: set[str] | None) -> str:
    return f"expected {_words(allowed or set())}"


def _words(terminals: set[str]) -> str:
    words = sorted({_TERMINAL_WORDS.get(t, f"`{t.lower()}`") for t in terminals if t != "WS_INLINE"})
    if not words:
        return "something else"
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " or " + words[-1]


def _chunk_span(chunk: _Chunk, column: int, end_column: int) -> Span:
    """A span from 1-based columns within a chunk."""
    start = chunk.offset + column - 1
    return Span(
        chunk.line,
        chunk.column + column - 1,
        chunk.line,
        chunk.column + end_column - 1,
        start,
        start + end_column - column,
    )


class _Builder:
    """Lark tree -> syntax dataclasses, with spans shifted from the chunk into the whole file."""

    def __init__(self, chunk: _Chunk):
        self.chunk = chunk

    def span(self, node: Node) -> Span:
        if isinstance(node, Token):
            start, end = _known(node.start_pos), _known(node.end_pos)
            column, end_column = _known(node.column), _known(node.end_column)
        else:
            meta = node.meta
            start, end, column, end_column = meta.start_pos, meta.end_pos, meta.column, meta.end_column
        c = self.chunk
        return Span(c.line, c.column + column - 1, c.line, c.column + end_column - 1, c.offset + start, c.offset + end)

    def statement(self, tree: Tree[Token]) -> s.Statement:
        build: Callable[[Tree[Token]], s.Statement] = getattr(self, f"_{tree.data}")
        return build(tree)

    def _target(self, tree: Tree[Token]) -> s.Target:
        token = _token(tree.children[0])
        value = self.string(token) if token.type == "STRING" else s.Name(str(token), self.span(token))
        return s.Target(value, self.span(tree))

    def _drop(self, tree: Tree[Token]) -> s.Drop:
        return s.Drop(tuple(self.selector(_tree(c)) for c in tree.children), self.span(tree))

    def _preserve(self, tree: Tree[Token]) -> s.Preserve:
        return s.Preserve(tuple(self.item(c) for c in tree.children), self.span(tree))

    def _distill(self, tree: Tree[Token]) -> s.Distill:
        return s.Distill(tuple(self.option(_tree(c)) for c in tree.children), self.span(tree))

    def _quantize(self, tree: Tree[Token]) -> s.Quantize:
        scheme, exceptions, *options = tree.children
        excepted = tuple(self.exception(c) for c in _tree(exceptions).children) if exceptions is not None else ()
        return s.Quantize(
            s.Name(str(scheme), self.span(scheme)),
            excepted,
            tuple(self.option(_tree(c)) for c in options),
            self.span(tree),
        )

    def item(self, node: Node) -> s.Selector | s.String | s.Auto:
        if isinstance(node, Tree):
            return self.selector(node)
        if node.type == "AUTO":
            return s.Auto(self.span(node))
        return self.string(node)

    def exception(self, node: Node) -> s.Selector | s.String:
        """An item of `quantize ... except` (the grammar allows no `auto` there)."""
        return self.selector(node) if isinstance(node, Tree) else self.string(node)

    def selector(self, tree: Tree[Token]) -> s.Selector:
        stack, *indices, part = tree.children
        return s.Selector(
            s.Name(str(stack), self.span(stack)),
            tuple(self.index(i) for i in indices),
            s.Name(str(part), self.span(part)) if part is not None else None,
            self.span(tree),
        )

    def index(self, node: Node) -> s.Index | s.Slice:
        if isinstance(node, Token):
            return s.Index(int(node), self.span(node))
        start, stop, step = (int(_token(t)) if t is not None else None for t in node.children)
        return s.Slice(start, stop, step, self.span(node))

    def option(self, tree: Tree[Token]) -> s.Option:
        key, child = tree.children
        value = _token(child)
        if value.type == "STRING":
            parsed: s.Value = self.string(value)
        elif value.type == "NUMBER":
            parsed = s.Number(str(value), self.span(value))
        else:
            parsed = s.Name(str(value), self.span(value))
        return s.Option(s.Name(str(key), self.span(key)), parsed, self.span(tree))

    def string(self, token: Token) -> s.String:
        # Only \" and \\ are escapes; the value is data, never evaluated.
        return s.String(_UNESCAPE.sub(r"\1", str(token)[1:-1]), self.span(token))


def _token(node: Node) -> Token:
    """A child the grammar makes a terminal."""
    assert isinstance(node, Token), node
    return node


def _tree(node: Node) -> Tree[Token]:
    """A child the grammar makes a subtree."""
    assert isinstance(node, Tree), node
    return node


def _known(position: int | None) -> int:
    """A position lark sets on every token it lexes (its types allow None)."""
    assert position is not None
    return position
