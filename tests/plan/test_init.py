"""`hpspec init`: a commented skeleton that checks clean, lists every block, and is canonical."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from hpspec.model.arch import builtin_models
from hpspec.lang.fmt import format_source
from hpspec.model.targets import resolve_target

STATEMENT = re.compile(r"^# ((?:drop|preserve|distill|quantize) .*)$")


@pytest.mark.parametrize("target", sorted(builtin_models()))
def test_skeleton_checks_clean_and_its_examples_do_too(cli, tmp_path: Path, target: str) -> None:
    spec = tmp_path / "new.hps"
    result = cli("init", target, "-o", spec)
    assert result.code == 0 and result.err == f"wrote {spec}: a skeleton for {target}\n"
    text = spec.read_text()
    assert f"\ntarget {target}\n" in text
    assert format_source(text).text == text  # already in fmt's canonical form
    assert cli("check", "--strict", spec).out == f"{spec}: ok\n"
    uncommented = "\n".join(STATEMENT.sub(r"\1", line) for line in text.splitlines()) + "\n"
    assert uncommented.count("\ndrop ") >= 1 and "\npreserve auto\n" in uncommented
    spec.write_text(uncommented)
    assert cli("check", "--strict", spec).out == f"{spec}: ok\n"


@pytest.mark.parametrize("target", ["sd3.5-large-turbo", "flux.1-dev"])
def test_skeleton_lists_every_block_with_its_parameters(cli, target: str) -> None:
    text = cli("init", target).out
    graph = resolve_target(target)
    for stack in graph.stacks:
        for block in stack.blocks:
            (line,) = [line for line in text.splitlines() if line.startswith(f"#   {stack.singular}[{block.index}] ")]
            assert line.split()[-1] == f"{block.params:,}"
    assert f"{graph.params:,}" in text


def test_path_target_is_written_relative_to_the_spec(cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = tmp_path / "models" / "tiny"
    model.mkdir(parents=True)
    (model / "config.json").write_text(json.dumps(dict(builtin_models()["sd3.5-medium"].config)))
    monkeypatch.chdir(tmp_path)
    spec = tmp_path / "specs" / "tiny.hps"
    assert cli("init", "models/tiny", "-o", "specs/tiny.hps").code == 0
    assert '\ntarget "../models/tiny"\n' in spec.read_text()
    assert cli("check", spec).out == f"{spec}: ok\n"


def test_refuses_to_overwrite_and_unknown_targets(cli, tmp_path: Path) -> None:
    spec = tmp_path / "a.hps"
    spec.write_text("mine\n")
    result = cli("init", "sd3.5-medium", "-o", spec)
    assert result.code == 1 and "already exists (use --force to replace it)" in result.err
    assert spec.read_text() == "mine\n"
    assert cli("init", "sd3.5-medium", "-o", spec, "--force").code == 0
    assert "target sd3.5-medium" in spec.read_text()
    unknown = cli("init", "sd3.5-larg")
    assert unknown.code == 1 and "did you mean `sd3.5-large`?" in unknown.err
