"""The docs cannot drift: every spec example is checked, and every table is hpspec's own data."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from hpspec.model.arch import architecture, builtin_models, families
from hpspec.plan.check import DISTILL_OPTIONS, SCHEMES
from hpspec.lang.fmt import format_source
from hpspec.plan.schemes import QUANTIZE_BACKENDS

from tests.conftest import GOLDEN, REPO

DOCS = REPO / "docs"
LANGUAGE = DOCS / "language.md"
ADOPTING = DOCS / "adopting.md"
# An ```hps block, and the `hpspec check` transcript that may follow it.
EXAMPLE = re.compile(r"^```hps\n(.*?)^```\n(?:\s*^```console\n\$ hpspec check example\.hps\n(.*?)^```\n)?", re.S | re.M)


def _examples() -> list[tuple[str, str, str | None]]:
    found = []
    for doc in (LANGUAGE, ADOPTING):
        text = doc.read_text(encoding="utf-8")
        for match in EXAMPLE.finditer(text):
            line = text.count("\n", 0, match.start()) + 1
            found.append((f"{doc.name}:{line}", match.group(1), match.group(2)))
    return found


EXAMPLES = _examples()


def test_there_are_examples_of_both_kinds() -> None:
    assert sum(expected is None for _, _, expected in EXAMPLES) >= 10
    assert sum(expected is not None for _, _, expected in EXAMPLES) >= 15


@pytest.mark.parametrize("where,spec,expected", EXAMPLES, ids=[where for where, _, _ in EXAMPLES])
def test_example(cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str, spec: str, expected: str | None) -> None:
    # The path-target example names a model beside the specs directory.
    model = tmp_path / "models" / "sd3.5-medium" / "transformer"
    model.mkdir(parents=True)
    (model / "config.json").write_text(json.dumps(dict(builtin_models()["sd3.5-medium"].config)))
    (tmp_path / "specs").mkdir()
    monkeypatch.chdir(tmp_path / "specs")
    Path("example.hps").write_text(spec, encoding="utf-8")
    result = cli("check", "example.hps")
    if expected is None:
        assert result.out == "example.hps: ok\n", f"{where} should check clean"
        assert format_source(spec).text == spec, f"{where} is not in fmt's canonical form"
    else:
        assert result.out == expected, f"{where}: `hpspec check` says something else now"


def _doc() -> str:
    return LANGUAGE.read_text(encoding="utf-8")


@pytest.mark.parametrize("family", families())
def test_part_tables_are_the_architecture_data(family: str) -> None:
    arch = architecture(family)
    for rules in (arch.parts, arch.single_parts):
        for word, rule in rules.items():
            modules = ", ".join(f"`{m}`" for m in rule.modules)
            assert f"| `{word}` | {modules} | {rule.effect} |\n" in _doc(), f"{family} part {word}"


def test_distill_table_is_the_checker_data() -> None:
    rows = re.findall(r"^\| `(\w+)` \| [^|]+ \| ([^|]+) \|", _doc().split("## `distill`")[1].split("##")[0], re.M)
    assert [key for key, _ in rows] == list(DISTILL_OPTIONS)
    for key, written in rows:
        assert _default(written.strip().strip("`")) == DISTILL_OPTIONS[key].default, key


def _default(text: str) -> object:
    """A default as the table writes it: `none`, a number in any notation, or a word."""
    if text == "none":
        return None
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        return text


def test_scheme_and_target_tables_are_hpspec_data() -> None:
    doc = _doc()
    assert re.findall(r"^\| `(\w+)` \| (\S+) \|$", doc, re.M) == list(QUANTIZE_BACKENDS.items())
    assert list(QUANTIZE_BACKENDS) == list(SCHEMES)
    for name, model in builtin_models().items():
        assert f"| `{name}` | {model.family} | {model.source} |\n" in doc


def test_adopting_guide_points_at_files_that_exist() -> None:
    text = ADOPTING.read_text(encoding="utf-8")
    sample = (GOLDEN / "diff" / "changed.md").read_text(encoding="utf-8")  # checked by test_diff
    assert f"```markdown\n{sample}```\n" in text
    for path in set(re.findall(r"`((?:examples|docs|bench)/[\w./-]+)`", text)):
        assert (REPO / path).exists(), path
