"""`hpspec lora` and `hpspec compile --lora`: the files, the coverage line, the errors, no torch.

The remapped adapter's correctness is tests/weights/test_lora.py's (against diffusers' loaders);
here the command line: a stage directory, a plan file and a spec all name the same plan, so all
three write the same bytes; a bad adapter is one `error:` line and nothing written.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")
pytest.importorskip("peft")

from safetensors.torch import load_file, save_file  # noqa: E402

from tests.tiny_models import build, isolated, save  # noqa: E402
from tests.weights.test_lora import make_lora  # noqa: E402

SPEC = "drop blocks[1], blocks[5], block[2].mlp\n"


@pytest.fixture(autouse=True, scope="module")
def _isolated(tmp_path_factory: pytest.TempPathFactory) -> object:
    with isolated(tmp_path_factory.mktemp("cache")):
        yield


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("lora_cli")
    model = save(build("sd3"), root / "model")
    lora = make_lora("sd3", root / "adapter")
    spec = root / "cut.hps"
    spec.write_text(f'target "{model}"\n{SPEC}', encoding="utf-8")
    return {"root": root, "model": model, "lora": lora, "spec": spec}


def test_lora_from_a_stage_dir_a_plan_and_a_spec(cli, setup: dict[str, Path]) -> None:
    root = setup["root"]
    assert cli("prune", setup["spec"], "--model", setup["model"], "--out", root / "pruned").code == 0
    done = cli("lora", root / "pruned", setup["lora"], "-o", root / "out1")
    assert done.code == 0, done.err
    name = setup["lora"].name
    assert f"-> {root / 'out1' / name}:" in done.out and "modules kept (blocks 1, 5 dropped)" in done.out
    assert "of the adapter's update norm kept; largest losses: block[1]" in done.out
    report = json.loads((root / "out1" / (setup["lora"].stem + ".json")).read_text())
    assert report["total"]["modules"] > report["total"]["kept_modules"] > 0
    assert report["dropped_blocks"] == {"block": [1, 5]}
    assert cli("plan", setup["spec"], "--format", "json", "-o", root / "plan.json").code == 0
    assert cli("lora", root / "plan.json", setup["lora"], "-o", root / "out2").code == 0
    assert cli("lora", setup["spec"], setup["lora"], "-o", root / "out3").code == 0
    first = (root / "out1" / name).read_bytes()
    assert first == (root / "out2" / name).read_bytes() == (root / "out3" / name).read_bytes()
    again = cli("lora", root / "pruned", setup["lora"], "-o", root / "out1")
    assert again.code == 1 and "already exists" in again.err
    coverage = root / "out1" / (setup["lora"].stem + ".json")
    page = cli("report", root / "plan.json", "--lora", coverage, "-o", root / "report.html")
    assert page.code == 0, page.err
    html = (root / "report.html").read_text()
    kept = report["total"]["kept_modules"], report["total"]["modules"]
    assert (
        'id="lora"' in html
        and '<td class="">block[1]</td><td class="">0 of ' in html
        and f"{kept[0]} of {kept[1]}" in html
    )
    bad = cli("report", root / "plan.json", "--lora", root / "plan.json", "-o", root / "bad.html")
    assert bad.code == 1 and "LoRA coverage" in bad.err and not (root / "bad.html").exists()


def test_a_lora_for_another_width_is_one_error_and_writes_nothing(cli, setup: dict[str, Path], tmp_path: Path) -> None:
    state = load_file(setup["lora"])
    state["transformer.transformer_blocks.3.attn.to_k.lora_B.weight"] = torch.zeros(64, 4)
    save_file(state, tmp_path / "wide.safetensors")
    done = cli("lora", setup["spec"], setup["lora"], tmp_path / "wide.safetensors", "-o", tmp_path / "out")
    assert done.code == 1
    lines = done.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "transformer_blocks.3.attn.to_k" in lines[0]
    assert not (tmp_path / "out").exists()


def test_compile_lora_writes_out_lora(cli, setup: dict[str, Path], tmp_path: Path) -> None:
    done = cli("compile", setup["spec"], "--model", setup["model"], "--out", tmp_path / "out", "--lora", setup["lora"])
    assert done.code == 0, done.err
    assert (tmp_path / "out" / "pruned").is_dir()
    assert (tmp_path / "out" / "lora" / setup["lora"].name).is_file()
    assert (tmp_path / "out" / "lora" / (setup["lora"].stem + ".json")).is_file()
    assert "modules kept" in done.out


def test_lora_imports_no_torch(setup: dict[str, Path], tmp_path: Path) -> None:
    code = f"""
import sys
from hpspec.cli import main
code = main(["lora", {str(setup["spec"])!r}, {str(setup["lora"])!r}, "-o", {str(tmp_path / "o")!r}])
heavy = sorted(m for m in ("torch", "diffusers", "transformers", "peft") if m in sys.modules)
print(code, heavy)
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip().splitlines()[-1] == "0 []"


def test_compile_with_a_bad_lora_writes_nothing(cli, setup: dict[str, Path], tmp_path: Path) -> None:
    (tmp_path / "empty.safetensors").write_bytes(b"\x02\x00\x00\x00\x00\x00\x00\x00{}")
    out = tmp_path / "out"
    done = cli(
        "compile", setup["spec"], "--model", setup["model"], "--out", out, "--lora", tmp_path / "empty.safetensors"
    )
    assert done.code == 1 and done.err.startswith("error:") and "holds no tensors" in done.err
    assert not out.exists()
