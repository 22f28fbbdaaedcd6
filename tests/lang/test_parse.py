"""parse: text -> syntax tree with exact spans; comments kept; every syntax error reported."""

from __future__ import annotations

import pytest

from hpspec.lang import syntax as s
from hpspec.core.errors import SpecError
from hpspec.lang.parse import parse


def test_statements_end_at_newlines_and_semicolons() -> None:
    spec = parse("target sd3.5-large\ndrop blocks[1]; drop block[2].mlp\n\npreserve auto; quantize nf4\n")
    assert [type(st).__name__ for st in spec.statements] == ["Target", "Drop", "Drop", "Preserve", "Quantize"]


def test_selector_structure_and_spans() -> None:
    (drop,) = parse("drop blocks[25:29, 31, -2:]  ,  block[22].context_mlp").statements
    assert isinstance(drop, s.Drop)
    first, second = drop.selectors
    assert first.stack.text == "blocks" and first.part is None
    assert first.indices == (
        s.Slice(25, 29, None, first.indices[0].span),
        s.Index(31, first.indices[1].span),
        s.Slice(-2, None, None, first.indices[2].span),
    )
    assert (first.indices[0].span.column, first.indices[0].span.end_column) == (13, 18)
    assert second.part is not None and second.part.text == "context_mlp"
    assert (second.part.span.line, second.part.span.column, second.part.span.end_column) == (1, 43, 54)


def test_spans_are_positions_in_the_whole_file() -> None:
    source = "# header\ntarget demo ;  drop block[3].attn\n"
    drop = parse(source).statements[1]
    assert isinstance(drop, s.Drop)
    span = drop.selectors[0].span
    assert source[span.start : span.end] == "block[3].attn"
    assert (span.line, span.column) == (2, 21)


def test_comments_are_kept_with_positions() -> None:
    spec = parse('# first\ndrop blocks[1]  # why "not" ; this\n')
    assert [(c.text, c.span.line, c.span.column) for c in spec.comments] == [
        ("# first", 1, 1),
        ('# why "not" ; this', 2, 17),
    ]
    assert len(spec.statements) == 1  # the `;` inside the comment does not split


def test_strings_numbers_and_options() -> None:
    spec = parse('target "models/my \\"sd\\""\ndistill lr=1e-4 steps=64000 weight=sensitivity table="t;1.json"\n')
    target, distill = spec.statements
    assert isinstance(target, s.Target) and isinstance(target.value, s.String)
    assert target.value.value == 'models/my "sd"'
    assert isinstance(distill, s.Distill)
    values = {o.key.text: o.value for o in distill.options}
    assert isinstance(values["lr"], s.Number) and float(values["lr"].text) == 1e-4 and not values["lr"].is_int
    assert isinstance(values["steps"], s.Number) and values["steps"].is_int
    assert isinstance(values["table"], s.String) and values["table"].value == "t;1.json"


def test_quantize_with_exceptions_and_options() -> None:
    (quantize,) = parse('quantize int4 except block[3].attn, "context_embedder" compute=fp16').statements
    assert isinstance(quantize, s.Quantize)
    assert quantize.scheme.text == "int4"
    assert isinstance(quantize.exceptions[0], s.Selector) and isinstance(quantize.exceptions[1], s.String)
    assert [(o.key.text, o.value.text) for o in quantize.options] == [("compute", "fp16")]  # type: ignore[union-attr]


def test_every_bad_statement_is_reported_and_the_rest_parse() -> None:
    with pytest.raises(SpecError) as raised:
        parse("drop blocks[1\ndrop blocks[2]\nfrobnicate\nquantize nf4 ]\n")
    assert [(d.span.line, d.message) for d in raised.value.diagnostics if d.span] == [
        (1, "incomplete `drop` statement"),
        (3, "unknown statement `frobnicate`"),
        (4, "unexpected `]` in `quantize` statement"),
    ]
    recovered = parse("drop blocks[1\ndrop blocks[2]\n", recover=True)
    assert len(recovered.statements) == 1 and len(recovered.diagnostics) == 1


def test_empty_and_comment_only_specs_parse() -> None:
    assert parse("").statements == ()
    assert parse("\n\n# nothing\n;;\n").statements == ()


def test_crlf_line_endings_parse_like_lf() -> None:
    crlf = parse("target demo\r\ndrop blocks[3]  # why\r\npreserve auto\r\n")
    lf = parse("target demo\ndrop blocks[3]  # why\npreserve auto\n")
    assert [type(s).__name__ for s in crlf.statements] == [type(s).__name__ for s in lf.statements]
    assert [c.text for c in crlf.comments] == ["# why"]
