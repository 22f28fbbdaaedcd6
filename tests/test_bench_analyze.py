"""bench/bench_analyze.py and bench/gpu_analyze.py at their smallest settings, so that neither rots
(no timed assertions: the numbers are the benches' business, the shape of their output is ours)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from types import ModuleType

import pytest

from tests.conftest import REPO

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")
pytest.importorskip("transformers")


def load_script(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, REPO / "bench" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_bench_analyze_runs_every_route(threads, capsys: pytest.CaptureFixture[str]) -> None:
    rows = load_script("bench_analyze").main(["--tiny", "--in-process", "--repeats", "1"])
    assert [r["route"] for r in rows] == ["inplace", "deepcopy", "deepcopy-gc", "probe"]
    assert {r["ranked"] for r in rows} == {2}  # 1 double + 1 single block
    assert [r["passes"] for r in rows] == [3, 3, 3, 1]  # the unpruned pass and one per block; one probe pass
    out = capsys.readouterr().out
    assert "probes per ranked entry vs analysis" in out and "deep copy (as before) / in place" in out


def test_gpu_analyze_tiny_runs_on_the_cpu(threads, capsys: pytest.CaptureFixture[str]) -> None:
    """--tiny: the same code path as on a GPU, a 4-block model of SD3.5 Large's layout, fp32 on the CPU."""
    rows = load_script("gpu_analyze").main(["--tiny", "--steps", "2"])
    names = [name for name, _, _ in rows]
    assert names == ["unpruned", "probe pass (cosine, mse, cka)", "drop blocks[1]", "drop block[2].mlp",
                     "drop block[2].attn"]  # fmt: skip
    assert all(seconds > 0 and peak is None for _, seconds, peak in rows)
    assert "sd3.5-large (tiny)" in capsys.readouterr().out


def test_gpu_analyze_sh_is_valid_bash_that_runs_the_python_half() -> None:
    script = REPO / "bench" / "gpu_analyze.sh"
    subprocess.run(["bash", "-n", str(script)], check=True)
    assert 'bench/gpu_analyze.py "$@"' in script.read_text()


def test_shapes_sensitivity_costs_are_skip_layers_scores(threads, tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    """Each block's cost is the full model's mean overall less the mean overall that diffusers'
    own skip_layers gives, per seed, scored by the judge; the noise is the std over seeds."""
    import statistics

    from hpspec.demo.models import SHAPES
    from hpspec.demo.sampler import DemoGenerator
    from hpspec.demo.shapes import ShapesScorer
    from hpspec.demo.shapes.prompts import analysis_prompts

    out = tmp_path / "s.json"
    assert load_script("shapes_sensitivity").main(
        ["--seeds", "2", "--prompts", "analysis", "--steps", "6", "--blocks", "0,11", "--threads", "1", "--json", str(out)]
    ) == 0
    import json

    result = json.loads(out.read_text())
    model, prompts = SHAPES.load_transformer(), analysis_prompts()

    def overall(skip: list[int], seed: int) -> float:
        generator = DemoGenerator(model, steps=6, guidance=SHAPES.guidance, skip_layers=skip)
        return ShapesScorer().score(generator.generate(prompts, seed), prompts)["overall"]

    full = [overall([], s) for s in (0, 1)]
    assert result["full_per_seed"] == pytest.approx(full) and min(full) > 0
    assert result["noise_std"] == pytest.approx(statistics.stdev(full))
    last = model.config.num_layers - 1
    assert [r["block"] for r in result["blocks"]] == [0, last]
    assert result["blocks"][1]["cost"] == pytest.approx(statistics.fmean(full) - statistics.fmean(
        [overall([last], s) for s in (0, 1)]))  # fmt: skip
    assert "| block skipped | overall | cost | cost / noise |" in capsys.readouterr().out
