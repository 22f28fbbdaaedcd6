"""The stage model: OUT/<stage> directories, resumability, --force, where compile stops, `hpspec prune`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Callable

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

import hpspec  # noqa: E402
from hpspec.stages.pipeline import STAGES  # noqa: E402

from tests.conftest import REPO, CliResult  # noqa: E402
from tests.tiny_models import build, forward, isolated, plan_for, same_tensors, save, state  # noqa: E402

SPEC = "drop blocks[4], block[1].mlp\npreserve auto\n"


@pytest.fixture(autouse=True, scope="module")
def _isolated(tmp_path_factory: pytest.TempPathFactory) -> object:
    with isolated(tmp_path_factory.mktemp("cache")):
        yield


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save(build("sd3"), tmp_path_factory.mktemp("model") / "sd3", 300_000)


def write_spec(tmp_path: Path, text: str, name: str = "spec.hps") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def inodes(directory: Path) -> dict[str, tuple[int, int]]:
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in directory.iterdir()}


def test_stages_are_registered_in_order() -> None:
    assert [(s.name, s.directory) for s in STAGES] == [("prune", "pruned"), ("distill", "distilled"), ("quantize", "quantized")]


def test_compile_writes_the_pruned_stage_directory(cli: Callable[..., CliResult], tmp_path: Path, model: Path) -> None:
    spec = write_spec(tmp_path, SPEC)
    result = cli("compile", spec, "--model", model, "--out", tmp_path / "out")
    assert result.code == 0, result.err
    pruned = tmp_path / "out" / "pruned"
    assert result.out.startswith(f"prune: wrote {pruned}")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["pruned"]
    plan = json.loads((pruned / "plan.json").read_text())
    assert plan["ops"] == json.loads(hpspec.plan_spec(spec, target=str(model)).to_json())["ops"]
    card = (pruned / "README.md").read_text()
    assert "blocks dropped" in card and "block[1]: mlp" in card and "hpspec.load_pretrained" in card
    assert "from_pretrained` does not rebuild" in card  # parts were dropped: plain diffusers would not do
    provenance = json.loads((pruned / "provenance.json").read_text())
    assert provenance["stage"] == "prune" and provenance["params"] == plan["params"]["after_prune"]
    assert oct(pruned.stat().st_mode & 0o777) == oct(0o777 & ~_umask())
    loaded = hpspec.load_pretrained(pruned)
    assert torch.equal(forward(loaded), forward(hpspec.apply(plan_for(build("sd3"), SPEC), build("sd3"))))


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_finished_stage_is_not_redone_and_force_redoes_it(cli: Callable[..., CliResult], tmp_path: Path, model: Path) -> None:
    spec = write_spec(tmp_path, SPEC)
    out = tmp_path / "out"
    assert cli("compile", spec, "--model", model, "--out", out).code == 0
    first = inodes(out / "pruned")

    again = cli("compile", spec, "--model", model, "--out", out)
    assert again.code == 0 and "is up to date" in again.out
    assert inodes(out / "pruned") == first

    # The same spec reached by another path, with a comment added, is the same plan for prune.
    moved = write_spec(tmp_path, "# a comment\n" + SPEC, "moved.hps")
    assert "is up to date" in cli("compile", moved, "--model", model, "--out", out).out

    forced = cli("compile", spec, "--model", model, "--out", out, "--force")
    assert forced.code == 0 and "prune: wrote" in forced.out
    assert all(inodes(out / "pruned")[name][0] != first[name][0] for name in first)
    assert sorted(p.name for p in out.iterdir()) == ["pruned"]  # the old output is gone, no siblings


def test_changed_plan_or_input_needs_force(cli: Callable[..., CliResult], tmp_path: Path, model: Path) -> None:
    out = tmp_path / "out"
    assert cli("compile", write_spec(tmp_path, SPEC), "--model", model, "--out", out).code == 0
    before = inodes(out / "pruned")

    other = write_spec(tmp_path, "drop blocks[3]\n", "other.hps")
    refused = cli("compile", other, "--model", model, "--out", out)
    assert refused.code == 1 and "--force" in refused.err and str(out / "pruned") in refused.err
    assert inodes(out / "pruned") == before

    copy = tmp_path / "copy"
    copy.mkdir()
    for file in model.iterdir():
        (copy / file.name).write_bytes(file.read_bytes())
    assert cli("compile", write_spec(tmp_path, SPEC), "--model", copy, "--out", out).code == 1  # another input

    forced = cli("compile", other, "--model", model, "--out", out, "--force")
    assert forced.code == 0
    assert json.loads((out / "pruned" / "plan.json").read_text())["stacks"]["blocks"]["dropped"] == [3]


def test_compile_runs_prune_then_quantize(cli: Callable[..., CliResult], tmp_path: Path, model: Path) -> None:
    """The quantize stage reads the prune stage's output: the quantized model is the seeded model
    pruned by the plan and then quantized in memory, and computes the same, bit for bit."""
    from hpspec.plan.schema import load_plan_file
    from hpspec.weights.quantize import quantize_model
    from tests.tiny_models import inputs

    out = tmp_path / "out"
    result = cli("compile", write_spec(tmp_path, f"{SPEC}quantize nf4\n"), "--model", model, "--out", out)
    assert result.code == 0, result.err
    assert sorted(p.name for p in out.iterdir()) == ["pruned", "quantized"]
    assert json.loads((out / "quantized" / "provenance.json").read_text())["source_model"] == str(out / "pruned")
    plan = load_plan_file(out / "quantized" / "plan.json")
    assert plan.quantize is not None and plan.quantize.scheme == "nf4"
    live = hpspec.apply(plan, build("sd3"))
    quantize_model(live, plan.quantize)
    feed = {k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in inputs("sd3").items()}
    assert torch.equal(forward(hpspec.load_pretrained(out / "quantized"), feed), forward(live, feed))


def test_a_later_stage_refuses_a_directory_another_plan_pruned(cli: Callable[..., CliResult], tmp_path: Path, model: Path) -> None:
    """One same-plan check (stages.engine.require_same_pruning) for distill and quantize: it names the field."""
    pruned = tmp_path / "pruned"
    assert cli("prune", write_spec(tmp_path, SPEC), "--model", model, "--out", pruned).code == 0
    result = cli("quantize", write_spec(tmp_path, "drop blocks[3]\nquantize int4\n", "other.hps"), "--model", pruned, "--out", tmp_path / "q")
    assert result.code == 1 and "was pruned by another plan" in result.err and "its `stacks` differs" in result.err
    assert not (tmp_path / "q").exists()


def test_prune_single_stage_from_a_plan_file_or_a_spec(cli: Callable[..., CliResult], tmp_path: Path, model: Path) -> None:
    spec = write_spec(tmp_path, f'target "{model}"\n{SPEC}')
    plan_file = tmp_path / "plan.json"
    assert cli("plan", spec, "--format", "json", "-o", plan_file).code == 0
    from_plan = cli("prune", plan_file, "--model", model, "--out", tmp_path / "a")
    from_spec = cli("prune", spec, "--model", model, "--out", tmp_path / "b")
    assert from_plan.code == 0 and from_spec.code == 0, from_plan.err + from_spec.err
    a, b = hpspec.load_pretrained(tmp_path / "a"), hpspec.load_pretrained(tmp_path / "b")
    assert same_tensors(state(a), state(b))
    assert (tmp_path / "a" / "plan.json").read_bytes() == plan_file.read_bytes()


def test_output_overlapping_the_input_is_refused(cli: Callable[..., CliResult], tmp_path: Path, model: Path) -> None:
    before = sorted(p.name for p in model.iterdir())
    result = cli("prune", write_spec(tmp_path, SPEC), "--model", model, "--out", model / "pruned")
    assert result.code == 1 and "overlaps the input" in result.err
    assert sorted(p.name for p in model.iterdir()) == before


def test_model_demo_resolves_to_the_demo_directory(
    cli: Callable[..., CliResult], tmp_path: Path, model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import hpspec.model.targets

    monkeypatch.setattr(hpspec.model.targets, "demo_directory", lambda: model)
    result = cli("compile", write_spec(tmp_path, SPEC), "--model", "demo", "--out", tmp_path / "out")
    assert result.code == 0, result.err
    assert json.loads((tmp_path / "out" / "pruned" / "provenance.json").read_text())["source_model"] == str(model)


def test_compile_imports_no_torch(tmp_path: Path, model: Path) -> None:
    spec = write_spec(tmp_path, SPEC)
    code = (
        "import sys; from hpspec.cli import main\n"
        f"rc = main(['compile', {str(spec)!r}, '--model', {str(model)!r}, '--out', {str(tmp_path / 'out')!r}])\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
        "sys.exit(rc)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "out" / "pruned" / "plan.json").is_file()


def test_each_stage_carries_its_report(cli, tmp_path: Path) -> None:
    spec = tmp_path / "s.hps"
    spec.write_text("target demo\ndrop blocks[10]\n")
    assert cli("compile", spec, "--model", "demo", "--out", tmp_path / "out").code == 0
    page = (tmp_path / "out/pruned/report.html").read_text()
    assert page.startswith("<!DOCTYPE html>") and "demo" in page and "blocks[10]" in page
    assert cli("compile", spec, "--model", "demo", "--out", tmp_path / "bare", "--no-report").code == 0
    assert not (tmp_path / "bare/pruned/report.html").exists()
