"""The checker: golden fixtures with exact expected output, and the rules behind them."""

from __future__ import annotations

import importlib
import textwrap
from pathlib import Path
from types import ModuleType

import pytest

from hpspec.plan.check import RULES, check, load_target, options, selectors, target
from hpspec.core.errors import SpecError
from hpspec.model.graph import graph_from_builtin
from hpspec.lang.parse import parse

from tests.conftest import GOLDEN, REPO, assert_golden

CHECK_FIXTURES = sorted((GOLDEN / "check").glob("*.hps"))
SHIPPED_SPECS = sorted((REPO / "specs").rglob("*.hps"))
RULE_DOCS = [*(importlib.import_module(rule.__module__) for rule in RULES), selectors, options, target]


@pytest.mark.parametrize("spec", CHECK_FIXTURES, ids=lambda p: p.stem)
def test_golden_check_output(spec: Path, cli, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)
    result = cli("check", spec.relative_to(REPO))
    has_error = " error" in result.out.splitlines()[-1]
    assert result.code == (1 if has_error else 0)
    assert_golden(spec.with_suffix(".expected"), result.out)


@pytest.mark.parametrize("spec", SHIPPED_SPECS, ids=lambda p: str(p.relative_to(REPO / "specs")))
def test_shipped_specs_check_clean(spec: Path, cli) -> None:
    result = cli("check", "--strict", spec)
    assert result.code == 0, result.out
    assert result.out.strip().endswith(": ok")


def test_users_own_example_checks_clean_on_one_line(cli, tmp_path: Path) -> None:
    spec = tmp_path / "user.hps"
    spec.write_text(
        "drop blocks[14,17,20]; drop block[22].context_mlp; preserve blocks[0:8]; distill weight=sensitivity; quantize int4\n"
    )
    result = cli("check", "--strict", "--target", "sd3.5-large", spec)
    assert (result.code, result.out) == (0, f"{spec}: ok\n")


def checked(source: str, target: str = "sd3.5-large-turbo"):
    spec = parse(source)
    return check(spec, graph_from_builtin(target))


def test_selectors_resolve_like_python_slices() -> None:
    assert [i.block for i in checked("drop blocks[25:29, 31:35]").drops] == [25, 26, 27, 28, 31, 32, 33, 34]
    assert [i.block for i in checked("drop blocks[-3:]").drops] == [35, 36, 37]
    assert [i.block for i in checked("drop blocks[30::3]").drops] == [30, 33, 36]
    assert [i.block for i in checked("drop block[-1]").drops] == [37]


def test_attn_covers_attn2_in_dual_blocks() -> None:
    result = checked("drop block[3].attn, block[3].attn2", "sd3.5-medium")
    assert [(i.block, i.part) for i in result.drops] == [(3, "attn")]
    assert [d.message for d in result.diagnostics] == ["block[3].attn2 is already dropped with block[3].attn"]


def test_promotion_replaces_parts_with_the_block() -> None:
    result = checked("drop block[5].norm, block[5].context_norm, block[5].attn, block[5].mlp, block[5].context_mlp")
    assert [(i.block, i.part) for i in result.drops] == [(5, None)]
    assert [(i.block, i.part) for i in result.promoted] == [(5, None)]


def test_part_drop_inside_preserved_block_is_allowed() -> None:
    result = checked("drop block[3].mlp\npreserve blocks[0:5]")
    assert result.diagnostics == ()
    assert result.preserve is not None and not result.preserve.auto


def test_all_errors_are_reported_at_once() -> None:
    with pytest.raises(SpecError) as raised:
        checked("drop blocks[99]\ndrop block[1].ff\nquantize nf9\n")
    assert [d.span.line for d in raised.value.diagnostics if d.span] == [1, 2, 3]


def test_target_override_wins(tmp_path: Path) -> None:
    spec = parse("target flux.1-dev\ndrop blocks[3]\n")
    assert load_target(spec, "sd3.5-medium").name == "sd3.5-medium"


def test_target_path_is_relative_to_the_spec(tmp_path: Path) -> None:
    model = tmp_path / "models" / "mine"
    model.mkdir(parents=True)
    config = graph_from_builtin("sd3.5-medium").config
    (model / "config.json").write_text(__import__("json").dumps(dict(config)))
    spec_dir = tmp_path / "specs"
    spec_dir.mkdir()
    spec = parse('target "../models/mine"\ndrop blocks[20]\n', str(spec_dir / "x.hps"))
    graph = load_target(spec)
    assert graph.name == "mine" and graph.fingerprint == graph_from_builtin("sd3.5-medium").fingerprint


def test_preserving_a_block_and_a_part_of_another_together() -> None:
    # Regression (found by the property test): whole-block and part items sort together.
    result = checked("drop blocks[30]\npreserve block[3], block[3].mlp, block[1].attn, block[2]\nquantize nf4 except block[4], block[4].mlp")
    assert [(i.block, i.part) for i in result.preserve.items] == [(1, "attn"), (2, None), (3, None), (3, "mlp")]


@pytest.mark.parametrize("module", RULE_DOCS, ids=lambda m: m.__name__.rpartition(".")[2])
def test_rule_docstring_examples_say_what_check_says(module: ModuleType) -> None:
    """Each rule's docstring example: its spec, then the first diagnostic it gives, verbatim."""
    doc = module.__doc__ or ""
    example = textwrap.dedent(doc[doc.index("\n    ") :].split('"""')[0]).strip().splitlines()
    at = next(i for i, line in enumerate(example) if line.startswith(("error: ", "warning: ")))
    spec = parse("\n".join(example[:at]) + "\n", recover=True)
    try:
        said = check(spec, load_target(spec)).diagnostics
    except SpecError as error:
        said = error.diagnostics
    assert example[at] in [f"{d.severity}: {d.message}" for d in said]
