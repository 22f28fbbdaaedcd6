"""--scorer specs and the scorers they build: PickScore against transformers' own logits, the
package scorers (hpsv2, image-reward) through stand-in modules, a missing package as one line."""

from __future__ import annotations

import math
import sys
import types
from collections.abc import Sequence
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from hpspec.core.errors import MissingPackageError, ScorerError, UsageError  # noqa: E402
from hpspec.method.evaluate import Scorer  # noqa: E402
from hpspec.method.scorers import (  # noqa: E402
    CLIPScorer,
    HPSv2Scorer,
    ImageRewardScorer,
    PickScoreScorer,
    parse_scorer,
    pil_images,
    scorer_from_spec,
)

PROMPTS = ["a cat", "a dog", "a cat", "the digit seven", "a house"]


def _images(shape: tuple[int, ...] = (5, 3, 16, 16)) -> torch.Tensor:
    """Pixel values on the 8-bit grid, so PIL round trips are exact."""
    return torch.randint(0, 256, shape, generator=torch.Generator().manual_seed(0)).float() / 255


def test_parse_scorer_specs() -> None:
    assert parse_scorer("clip=openai/clip-vit-large-patch14").value == "openai/clip-vit-large-patch14"
    spec = parse_scorer("pickscore=yuvalkirstain/PickScore_v1,tokenizer=/models/clip-h")
    assert (spec.kind, spec.options) == ("pickscore", (("tokenizer", "/models/clip-h"),))
    assert spec.name == "pickscore=yuvalkirstain/PickScore_v1,tokenizer=/models/clip-h"
    assert parse_scorer("hpsv2").value is None and parse_scorer("hpsv2=v2.1").value == "v2.1"
    assert parse_scorer("demo").name == "demo"
    with pytest.raises(UsageError, match="did you mean 'clip'"):
        parse_scorer("clipp=x")
    with pytest.raises(UsageError, match="give the model"):
        parse_scorer("clip")
    with pytest.raises(UsageError, match="takes no value"):
        parse_scorer("demo=x")
    with pytest.raises(UsageError, match="v2.0, v2.1"):
        parse_scorer("hpsv2=v3")
    with pytest.raises(UsageError, match="unknown option"):
        parse_scorer("clip=x,size=3")


def test_clip_spec_builds_the_clip_scorer(tiny_clip_dir: Path) -> None:
    named = scorer_from_spec(f"clip={tiny_clip_dir}")
    assert type(named.scorer) is CLIPScorer and isinstance(named.scorer, Scorer)
    assert named.name == f"clip={tiny_clip_dir}"
    reference = CLIPScorer.from_pretrained(tiny_clip_dir)
    images = _images()
    assert named.scorer.score(images, PROMPTS) == reference.score(images, PROMPTS)


def test_pickscore_is_the_models_own_logit_over_its_scale(tiny_clip_dir: Path) -> None:
    """Against CLIPModel.forward's logits_per_image on CLIPProcessor's inputs (computed here)."""
    from transformers import CLIPModel, CLIPProcessor

    named = scorer_from_spec(f"pickscore={tiny_clip_dir}")
    assert isinstance(named.scorer, PickScoreScorer)
    model = CLIPModel.from_pretrained(tiny_clip_dir).eval()
    with torch.no_grad():
        model.logit_scale.fill_(math.log(100.0))  # PickScore_v1's scale (a fresh CLIP has 1/0.07)
    named.scorer.model.logit_scale.data.fill_(math.log(100.0))
    processor = CLIPProcessor.from_pretrained(tiny_clip_dir)
    images = _images()
    batch = processor(text=PROMPTS, images=list(images), do_rescale=False, padding=True, return_tensors="pt")
    with torch.no_grad():
        logits = model(**batch).logits_per_image.diagonal()
    assert named.scorer.pickscores(images, PROMPTS).tolist() == pytest.approx(logits.tolist(), abs=1e-4)
    expected = float((logits / 100.0).clamp(min=0).mean())
    assert named.scorer.score(images, PROMPTS) == {"pickscore": pytest.approx(expected, abs=1e-6)}


def test_pickscore_without_a_tokenizer_names_where_it_looked(tmp_path: Path, tiny_clip_dir: Path) -> None:
    """PickScore's repository has weights only: the tokenizer falls back to CLIP-H's id, which is not
    in this machine's cache, so the error says both places (and nothing is downloaded)."""
    import shutil

    weights_only = tmp_path / "pickscore"
    weights_only.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(tiny_clip_dir / name, weights_only / name)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_HUB_OFFLINE", "1")
        with pytest.raises(ScorerError, match="no tokenizer in .*laion/CLIP-ViT-H-14"):
            scorer_from_spec(f"pickscore={weights_only}")
    named = scorer_from_spec(f"pickscore={weights_only},tokenizer={tiny_clip_dir}")
    assert named.scorer.score(_images(), PROMPTS)["pickscore"] >= 0.0


def test_a_missing_model_is_one_scorer_error(tmp_path: Path) -> None:
    with pytest.raises(ScorerError, match="cannot load a CLIP model"):
        scorer_from_spec(f"clip={tmp_path}")
    with pytest.raises(ScorerError, match=r"pickscore: no such directory .*missing \(expected a CLIP model"):
        scorer_from_spec(f"pickscore={tmp_path / 'missing'}")


class FakeHPSv2:
    """Stands in for the hpsv2 package: score(images, prompt, hps_version) -> one float per image."""

    def __init__(self) -> None:
        self.calls: list[tuple[list, str, str]] = []

    def score(self, images: list, prompt: str, hps_version: str = "v2.0") -> list[float]:
        self.calls.append((images, prompt, hps_version))
        return [sum(image.getpixel((0, 0))) / 765 - 0.2 for image in images]


def test_hpsv2_scorer_calls_the_package_per_prompt(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeHPSv2()
    monkeypatch.setitem(sys.modules, "hpsv2", types.SimpleNamespace(score=fake.score))
    named = scorer_from_spec("hpsv2=v2.1")
    assert isinstance(named.scorer, HPSv2Scorer) and named.name == "hpsv2=v2.1"
    images = _images()
    score = named.scorer.score(images, PROMPTS)["hpsv2"]
    assert [(len(i), p, v) for i, p, v in fake.calls] == [
        (2, "a cat", "v2.1"), (1, "a dog", "v2.1"), (1, "the digit seven", "v2.1"), (1, "a house", "v2.1"),
    ]  # fmt: skip
    expected = [min(max(float(images[i, :, 0, 0].sum()) / 3 - 0.2, 0.0), 1.0) for i in range(5)]
    assert score == pytest.approx(sum(expected) / 5, abs=1e-6)


def test_imagereward_scorer_maps_rewards_through_the_logistic(monkeypatch: pytest.MonkeyPatch) -> None:
    rewards = {"a cat": [1.5, -0.5], "a dog": -2.0, "the digit seven": 0.0, "a house": 3.0}
    loaded: list[tuple[str, str]] = []

    class Model:
        def score(self, prompt: str, images: Sequence) -> float | list[float]:
            return rewards[prompt]

    def load(name: str, device: str = "cpu") -> Model:
        loaded.append((name, device))
        return Model()

    monkeypatch.setitem(sys.modules, "ImageReward", types.SimpleNamespace(load=load))
    named = scorer_from_spec("imagereward")
    assert isinstance(named.scorer, ImageRewardScorer) and loaded == [("ImageReward-v1.0", "cpu")]
    flat = [1.5, -2.0, -0.5, 0.0, 3.0]  # in the images' order
    expected = sum(1 / (1 + math.exp(-r)) for r in flat) / 5
    assert named.scorer.score(_images(), PROMPTS) == {"imagereward": pytest.approx(expected)}


@pytest.mark.parametrize(("spec", "extra"), [("hpsv2", "hpsv2"), ("imagereward", "imagereward")])
def test_a_missing_package_is_one_line_naming_the_extra(
    spec: str, extra: str, monkeypatch: pytest.MonkeyPatch, cli, tmp_path: Path
) -> None:
    monkeypatch.setitem(sys.modules, "hpsv2", None)  # `import hpsv2` raises ImportError
    monkeypatch.setitem(sys.modules, "ImageReward", None)
    with pytest.raises(MissingPackageError, match=rf"pip install 'hpspec\[{extra}\]'"):
        scorer_from_spec(spec)
    result = cli("analyze", "--model", "demo", "--scorer", spec, "-o", tmp_path / "never.json")
    assert result.code == 1
    assert result.err.count("\n") == 1 and result.err.startswith("error:") and f"hpspec[{extra}]" in result.err
    assert list(tmp_path.iterdir()) == []  # nothing written, nothing loaded before the scorer


def test_pil_images_keep_the_pixels() -> None:
    images = _images((2, 3, 4, 5))
    back = torch.stack([torch.tensor(list(p.getdata())).T.reshape(3, 4, 5) for p in pil_images(images)])
    assert torch.equal(back.float() / 255, images)
    gray = pil_images(images[:, :1])[0]
    assert gray.mode == "RGB" and gray.getpixel((0, 0))[0] == gray.getpixel((0, 0))[2]
