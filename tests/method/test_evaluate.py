"""hpspec.evaluate: the metric arithmetic, evaluate() itself, and the diffusers/CLIP adapters on
tiny models built from configs and saved to a temporary directory (no hub, no network)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")
pytest.importorskip("transformers")

from hpspec.method.evaluate import (  # noqa: E402
    Generator,
    Scorer,
    degradation,
    evaluate,
    format_result,
    is_demo_transformer,
    relative_drops,
)
from hpspec.method.pipelines import DiffusersPipelineGenerator  # noqa: E402
from hpspec.method.scorers import CLIPScorer  # noqa: E402
from tests.tiny_pipelines import NO_T5  # noqa: E402


def test_import_does_not_load_torch() -> None:
    code = "import sys, hpspec.method.evaluate; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.strip() == "False"


def test_degradation_is_mean_relative_drop() -> None:
    ref = {"prompt_accuracy": 0.8, "quality": 0.5}
    now = {"prompt_accuracy": 0.6, "quality": 0.5}
    assert relative_drops(now, ref) == pytest.approx({"prompt_accuracy": 0.25, "quality": 0.0})
    assert degradation(now, ref) == pytest.approx(0.125)
    assert degradation(ref, ref) == 0.0
    # Better than the reference is a negative drop, as in the paper's tables.
    assert degradation({"quality": 0.6}, {"quality": 0.5}) == pytest.approx(-0.2)


def test_degradation_needs_a_shared_metric() -> None:
    with pytest.raises(ValueError, match="no metric to compare"):
        degradation({"clip_score": 0.3}, {"quality": 0.5})


class Clock:
    """A fake `time.perf_counter` that only moves when told to."""

    now = 0.0

    def __call__(self) -> float:
        return self.now


CLOCK = Clock()


class ConstantGenerator:
    """Seed-dependent constant images: image value = (seed + 1) / 10; 0.25 s on CLOCK an image."""

    def __init__(self) -> None:
        self.calls: list[tuple[list[str], int]] = []

    def generate(self, prompts: Sequence[str], seed: int) -> torch.Tensor:
        self.calls.append((list(prompts), seed))
        CLOCK.now += 0.25 * len(prompts)
        return torch.full((len(prompts), 1, 4, 4), (seed + 1) / 10)


class MeanScorer:
    def score(self, images: torch.Tensor, prompts: Sequence[str]) -> dict[str, float]:
        assert len(prompts) == images.shape[0]
        CLOCK.now += 100.0  # scoring is not sampling latency
        return {"brightness": float(images.mean()), "one": 1.0}


def test_evaluate_generates_each_seed_and_scores_all_images(monkeypatch: pytest.MonkeyPatch) -> None:
    import hpspec.method.evaluate as module

    monkeypatch.setattr(module.time, "perf_counter", CLOCK)
    gen, scorer = ConstantGenerator(), MeanScorer()
    assert isinstance(gen, Generator) and isinstance(scorer, Scorer)
    result = evaluate(gen, scorer, ["a", "b", "c"], seeds=(0, 1))
    assert [seed for _, seed in gen.calls] == [0, 1]
    assert result["num_images"] == 6
    assert result["brightness"] == pytest.approx(0.15)
    assert result["metrics"] == ["brightness", "one"]
    assert result["latency_s_per_image"] == 0.25  # generation time over images, scoring apart
    assert "degradation" not in result

    worse = evaluate(gen, scorer, ["a"], seeds=(0,), reference=result)
    assert worse["relative_drop"] == pytest.approx({"brightness": 1 / 3, "one": 0.0})
    assert worse["degradation"] == pytest.approx(1 / 6)
    assert "degradation" in format_result(worse)


def test_is_demo_transformer(tmp_path: Path) -> None:
    from hpspec.demo import transformer_dir

    assert is_demo_transformer(transformer_dir())
    assert not is_demo_transformer(tmp_path)


# The tiny SD3 pipeline (tiny_sd3_dir) and CLIP model (tiny_clip_dir) are session fixtures
# (tests/conftest.py, built by tests/tiny_pipelines.py).


def test_pipeline_generator_loads_offline_and_is_seeded(tiny_sd3_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    gen = DiffusersPipelineGenerator.from_pretrained(
        tiny_sd3_dir, pipeline_kwargs=NO_T5, steps=2, guidance=2.0, height=8, width=8, batch_size=2
    )
    assert type(gen.pipeline).__name__ == "StableDiffusion3Pipeline"
    assert isinstance(gen, Generator)
    prompts = ["a cat", "a dog", "a red bird"]
    first = gen.generate(prompts, seed=3)
    assert first.shape == (3, 3, 8, 8)
    assert first.dtype == torch.float32
    assert 0.0 <= float(first.min()) and float(first.max()) <= 1.0
    assert torch.equal(first, gen.generate(prompts, seed=3))
    assert not torch.equal(first, gen.generate(prompts, seed=4))


def test_pipeline_generator_takes_a_replacement_transformer(tiny_sd3_dir: Path) -> None:
    from diffusers import SD3Transformer2DModel

    transformer = SD3Transformer2DModel.from_pretrained(tiny_sd3_dir / "transformer")
    with torch.no_grad():
        for p in transformer.proj_out.parameters():
            p.zero_()  # a model that predicts zero velocity: its samples stay the initial noise
    base = DiffusersPipelineGenerator.from_pretrained(tiny_sd3_dir, pipeline_kwargs=NO_T5, steps=2, height=8, width=8)
    swapped = DiffusersPipelineGenerator.from_pretrained(
        tiny_sd3_dir, transformer=transformer, pipeline_kwargs=NO_T5, steps=2, height=8, width=8
    )
    assert swapped.pipeline.transformer is transformer
    assert not torch.equal(base.generate(["x"], 0), swapped.generate(["x"], 0))


def test_clip_scorer_scores_in_unit_interval(tiny_clip_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    scorer = CLIPScorer.from_pretrained(tiny_clip_dir)
    assert isinstance(scorer, Scorer)
    images = torch.rand((5, 3, 24, 20), generator=torch.Generator().manual_seed(0))
    prompts = ["a cat", "a dog", "7", "the digit seven", "a house"]
    sims = scorer.similarities(images, prompts)
    assert sims.shape == (5,)
    assert bool(((sims >= -1) & (sims <= 1)).all())
    score = scorer.score(images, prompts)["clip_score"]
    assert score == pytest.approx(float(sims.clamp(min=0).mean()))
    assert 0.0 <= score <= 1.0
    # Batching does not change the numbers; one-channel images are accepted.
    scorer.batch_size = 2
    assert torch.allclose(scorer.similarities(images, prompts), sims, atol=1e-5)
    gray = scorer.score(images[:, :1], prompts)["clip_score"]
    assert 0.0 <= gray <= 1.0
    with pytest.raises(ValueError, match="prompts"):
        scorer.score(images, prompts[:2])


def _features(output: torch.Tensor | object) -> torch.Tensor:
    return output if isinstance(output, torch.Tensor) else output.pooler_output  # type: ignore[attr-defined]


def test_clip_score_equals_transformers_own_computation(tiny_clip_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Against the model's own CLIPProcessor and CLIPModel.get_image/text_features, computed here.
    Pixel values that are multiples of 1/255 pass its PIL route unchanged: at the vision tower's
    size the numbers agree exactly; resized, to PIL's bicubic against torch's (removing CLIP's
    mean/std moves them by 0.1)."""
    from transformers import CLIPModel, CLIPProcessor

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    scorer = CLIPScorer.from_pretrained(tiny_clip_dir)
    processor = CLIPProcessor.from_pretrained(tiny_clip_dir)
    model = CLIPModel.from_pretrained(tiny_clip_dir).eval()
    prompts = ["a cat", "a dog", "7", "the digit seven", "a house"]
    for shape, tolerance in (((5, 3, 16, 16), 1e-6), ((5, 3, 32, 24), 5e-3)):
        images = torch.randint(0, 256, shape, generator=torch.Generator().manual_seed(0)).float() / 255
        batch = processor(text=prompts, images=list(images), do_rescale=False, padding=True, return_tensors="pt")
        with torch.no_grad():
            image = _features(model.get_image_features(pixel_values=batch["pixel_values"]))
            text = _features(
                model.get_text_features(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
            )
        expected = (image / image.norm(dim=-1, keepdim=True) * (text / text.norm(dim=-1, keepdim=True))).sum(-1)
        assert scorer.similarities(images, prompts) == pytest.approx(expected.tolist(), abs=tolerance), shape
        if tolerance < 1e-5:
            assert scorer.score(images, prompts)["clip_score"] == pytest.approx(
                float(expected.clamp(min=0).mean()), abs=1e-6
            )


def test_evaluate_demo_reports_degradation_against_a_reference() -> None:
    """The CLI's path: a demo-shaped directory against a reference directory."""
    from hpspec.demo import default_prompts, load_demo_transformer, transformer_dir
    from hpspec.method.evaluate import evaluate_demo

    prompts = default_prompts()[::2]
    same = evaluate_demo(reference_dir=transformer_dir(), prompts=prompts, seeds=(0,))
    assert same["num_images"] == 20
    assert same["reference"]["prompt_accuracy"] == same["prompt_accuracy"] >= 0.9
    assert same["degradation"] == 0.0  # sampling is deterministic: same model, same images

    def without_first_block(path: Path) -> torch.nn.Module:
        model = load_demo_transformer(path)
        del model.transformer_blocks[0]
        return model

    worse = evaluate_demo(load_transformer=without_first_block, prompts=prompts, seeds=(0,), reference_dir=None)
    assert "degradation" not in worse
    drop = degradation(worse, same)
    print(f"\nfirst block removed: {worse['prompt_accuracy']:.3f} {worse['quality']:.3f}, degradation {drop:.3f}")
    assert drop > 0.02


def test_peak_memory_on_the_cpu_sees_what_the_work_allocates() -> None:
    """The CPU meter: peak RSS growth during the work, named as such (64 MB touched, then freed)."""
    import time

    from hpspec.method.footprint import CPU_MEASURE, PeakMemory

    with PeakMemory("cpu") as meter:
        block = torch.ones(16 * 2**20)  # 64 MB, every page written
        time.sleep(0.05)  # a few samples while it is held
        del block
    assert meter.measured >= 48 * 2**20
    assert meter.result() == {"peak_memory_bytes": meter.measured, "peak_memory_measure": CPU_MEASURE}
    with PeakMemory("cpu") as idle:
        pass
    assert idle.measured < 16 * 2**20
