"""`hpspec fmt`: one canonical form, idempotent, comments kept, the plan unchanged."""

from __future__ import annotations

from dataclasses import asdict
from functools import lru_cache
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hpspec.plan.check import SCHEMES, check
from hpspec.plan.diff import diff_plans
from hpspec.lang.fmt import format_source
from hpspec.model.graph import ModelGraph
from hpspec.model.targets import resolve_target
from hpspec.lang.parse import parse
from hpspec.plan.compile import compile_plan

from tests.conftest import GOLDEN, REPO, assert_golden

FMT = GOLDEN / "fmt"
CASES = sorted(p.name.removesuffix(".in.hps") for p in FMT.glob("*.in.hps"))


@pytest.mark.parametrize("case", CASES)
def test_golden(case: str) -> None:
    result = format_source((FMT / f"{case}.in.hps").read_text(encoding="utf-8"))
    assert result.diagnostics == ()
    assert result.text is not None
    assert_golden(FMT / f"{case}.out.hps", result.text)
    assert format_source(result.text).text == result.text


def test_comments_survive_in_place() -> None:
    text = format_source("target demo  # t\n# lone\ndrop blocks[1];drop blocks[2] # on the second\n").text
    assert text == "target demo  # t\n# lone\ndrop blocks[1]\ndrop blocks[2]  # on the second\n"


def test_shipped_specs_are_canonical(cli) -> None:
    specs = sorted(str(p) for p in (REPO / "specs").rglob("*.hps"))
    result = cli("fmt", "--check", *specs)
    assert (result.code, result.err) == (0, "")


def test_rewrites_in_place_atomically(cli, tmp_path: Path) -> None:
    spec = tmp_path / "a.hps"
    spec.write_text("target demo;drop blocks[ 1 ]")
    spec.chmod(0o640)
    result = cli("fmt", spec)
    assert result.code == 0 and result.err == f"reformatted {spec}\n"
    assert spec.read_text() == "target demo\ndrop blocks[1]\n"
    assert spec.stat().st_mode & 0o777 == 0o640
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.hps"]
    assert cli("fmt", spec) == type(result)(0, "", "")  # already canonical: silent, untouched


def test_directories_and_symlinks(cli, tmp_path: Path) -> None:
    (tmp_path / "specs" / "sub").mkdir(parents=True)
    real = tmp_path / "specs" / "sub" / "a.hps"
    real.write_text("target demo;preserve auto")
    (tmp_path / "specs" / "notes.txt").write_text("not a spec;")
    link = tmp_path / "link.hps"
    link.symlink_to(real)
    assert cli("fmt", "--check", tmp_path / "specs").err == f"would reformat {real}\n"
    assert cli("fmt", link).code == 0
    assert link.is_symlink() and real.read_text() == "target demo\npreserve auto\n"
    assert (tmp_path / "specs" / "notes.txt").read_text() == "not a spec;"


def test_check_and_diff_never_write(cli, tmp_path: Path) -> None:
    spec = tmp_path / "a.hps"
    spec.write_text("target demo\ndrop  blocks[1]")
    before = spec.stat().st_mtime_ns
    checked = cli("fmt", "--check", spec)
    assert (checked.code, checked.out, checked.err) == (1, "", f"would reformat {spec}\n")
    diffed = cli("fmt", "--diff", spec)
    assert diffed.code == 0
    assert diffed.out == (
        f"--- a/{spec}\n+++ b/{spec}\n@@ -1,2 +1,2 @@\n target demo\n-drop  blocks[1]\n\\ No newline at end of file\n"
        "+drop blocks[1]\n"
    )
    assert cli("fmt", "--check", "--diff", spec).code == 1
    assert spec.read_text() == "target demo\ndrop  blocks[1]" and spec.stat().st_mtime_ns == before


def test_syntax_errors_leave_the_file_untouched(cli, tmp_path: Path) -> None:
    bad, good = tmp_path / "bad.hps", tmp_path / "good.hps"
    bad.write_text("target demo\ndrop blocks[1\ndrop  blocks[2]\n")
    good.write_text("target  demo\n")
    result = cli("fmt", bad, good)
    assert result.code == 1
    assert f"{bad}:2:14: error: incomplete `drop` statement" in result.err
    assert f"error: {bad}: not formatted: fix its syntax errors first" in result.err
    assert bad.read_text() == "target demo\ndrop blocks[1\ndrop  blocks[2]\n"
    assert good.read_text() == "target demo\n"  # the other files are still formatted
    assert cli("fmt", tmp_path / "missing.hps").code == 1


def test_stdin_to_stdout(cli, monkeypatch: pytest.MonkeyPatch) -> None:
    import io

    monkeypatch.setattr("sys.stdin", io.StringIO("target demo ;preserve auto"))
    result = cli("fmt", "-")
    assert (result.code, result.out) == (0, "target demo\npreserve auto\n")


# --------------------------------------------------------------------------------------------
# Property: on any valid spec, however laid out, fmt is idempotent and keeps the plan.

TARGET = "sd3.5-large-turbo"
BLOCKS = 38
PARTS = ("norm", "context_norm", "attn", "mlp", "context_mlp")


@lru_cache(maxsize=1)
def _graph() -> ModelGraph:
    return resolve_target(TARGET)


def _plan(text: str) -> dict[str, Any]:
    plan = compile_plan(check(parse(text), _graph()))
    return {key: value for key, value in asdict(plan).items() if key != "spec"}


gap = st.sampled_from(["", " ", "  ", "\t"])  # where whitespace is optional
space = st.sampled_from([" ", "  ", "\t", " \t "])  # where it is required
comment_text = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\n\r"), max_size=12)


@st.composite
def _index(draw: st.DrawFn, low: int, high: int) -> str:
    """One index or slice into [low, high), written any valid way (negative, signed, stepped)."""
    start = draw(st.integers(low, high - 1))
    if draw(st.booleans()):
        value = draw(st.sampled_from([start, start - BLOCKS]))
        return f"+{value}" if value >= 0 and draw(st.booleans()) else str(value)
    stop = draw(st.integers(start + 1, high))
    step = draw(st.sampled_from(["", ":", ":1", ":2"]))
    g = draw(gap)
    return f"{start}{g}:{g}{stop}{step}"


@st.composite
def _selector(draw: st.DrawFn, low: int, high: int, part: bool) -> str:
    indices = draw(st.lists(_index(low, high), min_size=1, max_size=3))
    g = draw(gap)
    word = "blocks" if len(indices) > 1 or ":" in indices[0] else draw(st.sampled_from(["blocks", "block"]))
    suffix = f"{g}.{g}{draw(st.sampled_from(PARTS))}" if part else ""
    return f"{word}[{g}{(g + ',' + g).join(indices)}{g}]{suffix}"


@st.composite
def _statements(draw: st.DrawFn) -> list[str]:
    s = lambda: draw(space)  # noqa: E731
    g = lambda: draw(gap)  # noqa: E731
    statements = [f"target{s()}{TARGET}"]
    drops = draw(st.lists(_selector(24, 37, False), max_size=2)) + draw(st.lists(_selector(8, 20, True), max_size=3))
    statements += [f"drop{s()}{sel}" for sel in drops]
    preserve = draw(st.lists(st.sampled_from(["auto", "blocks[0:4]", "block[6]", '"context_embedder"']), max_size=3, unique=True))
    if preserve:
        statements.append(f"preserve{s()}" + f"{g()},{g()}".join(preserve))
    options = draw(st.lists(st.sampled_from(["weight=uniform", "weight=sensitivity", "steps=500", "lr=1e-4", 'table="t.json"', "seed=3"]),
                            max_size=3, unique_by=lambda o: o.split("=")[0]))  # fmt: skip
    if draw(st.booleans()):
        statements.append("distill" + "".join(f"{s()}{option}" for option in options))
    if draw(st.booleans()):
        excepted = draw(st.sampled_from(["", f'{s()}except{s()}"context_embedder"{g()},{g()}block[2].attn', f"{s()}except{s()}blocks[0:3]"]))
        statements.append(f"quantize{s()}{draw(st.sampled_from(SCHEMES))}{excepted}")
    return draw(st.permutations(statements))


@st.composite
def messy_specs(draw: st.DrawFn) -> str:
    lines: list[str] = []
    for statement in draw(_statements()):
        if draw(st.booleans()) and lines and "#" not in lines[-1]:
            lines[-1] += f"{draw(gap)};{draw(gap)}{statement}"
        else:
            lines.append(draw(gap) + statement)
        if draw(st.integers(0, 3)) == 0:
            lines[-1] += f"{draw(gap)}#{draw(comment_text)}"
        lines.extend(draw(st.lists(st.sampled_from(["", "  ", ";", f"# {draw(comment_text)}"]), max_size=2)))
    return "\n".join(lines) + draw(st.sampled_from(["", "\n", "\n\n"]))


@settings(deadline=None, max_examples=60)
@given(messy_specs())
def test_fmt_is_idempotent_and_keeps_the_plan(text: str) -> None:
    formatted = format_source(text).text
    assert formatted is not None
    assert format_source(formatted).text == formatted
    assert _plan(formatted) == _plan(text)
    comments = [c.text.rstrip() for c in parse(text).comments]
    assert [c.text for c in parse(formatted).comments] == comments


def test_fmt_keeps_the_plan_on_golden_input() -> None:
    source = (FMT / "layout.in.hps").read_text(encoding="utf-8")
    formatted = format_source(source).text
    assert formatted is not None
    a, b = compile_plan(check(parse(source), _graph())), compile_plan(check(parse(formatted), _graph()))
    assert diff_plans(a, b).empty
