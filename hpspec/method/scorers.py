"""Scorers behind the ``Scorer`` protocol (``hpspec.method.evaluate``): images and prompts -> metrics.

Named on the command line (``--scorer``) and built by ``scorer_from_spec``, which ``analyze`` and
``eval`` share:

``clip=DIR_OR_ID``
    CLIP score through transformers: mean over images of max(cos(image, prompt), 0).
``pickscore=DIR_OR_ID[,tokenizer=DIR_OR_ID]``
    PickScore (a CLIP-H fine-tune): ``exp(logit_scale) * cos``, reported divided by
    ``exp(logit_scale)`` (100 for PickScore_v1) and clamped at 0, so in [0, 1]; times 100 is
    the published number. The tokenizer defaults to the model's, else CLIP-H's.
``hpsv2[=v2.0|v2.1]``
    HPSv2 through the ``hpsv2`` package (extra ``hpspec[hpsv2]``): its score is a cosine, clamped
    at 0; times 100 is the published number.
``imagereward[=NAME_OR_PATH]``
    ImageReward through the ``image-reward`` package (extra ``hpspec[imagereward]``): its reward
    (about N(0, 1) over real images) mapped into [0, 1] by the logistic function.
``demo``
    the embedded demo's digit scorer (prompt accuracy and quality).

Every real scorer's metrics are means over images (``per_image``): a generator's batches can be
scored as they come and their means weighted by size. torch and transformers are imported when a
scorer loads, so importing this module stays cheap.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hpspec.core.diagnostics import did_you_mean
from hpspec.core.errors import MissingPackageError, ScorerError, UsageError
from hpspec.method.pipelines import first_line, local_only, offline

if TYPE_CHECKING:
    import torch

    from hpspec.method.evaluate import Scorer


# OpenAI CLIP's pixel normalisation (what its image processor uses).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class CLIPScorer:
    """CLIP score: the mean over images of max(cos(image, prompt), 0), in [0, 1].

    Images are resized (shortest side, bicubic) and centre-cropped to the vision tower's size and
    normalised with CLIP's constants here, so no image-processor files are needed; one-channel
    images are repeated to three.
    """

    metric = "clip_score"
    per_image = True

    def __init__(self, model: Any, tokenizer: Any, batch_size: int = 32) -> None:
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.batch_size = batch_size

    # Where the tokenizer comes from when the model's directory has none (PickScore's has none).
    fallback_tokenizer: str | None = None

    @classmethod
    def from_pretrained(
        cls, model: str | Path, *, device: str | torch.device | None = None, tokenizer: str | Path | None = None
    ) -> CLIPScorer:
        """A CLIPModel and its tokenizer (or `tokenizer`'s) from a directory or the hub (local only when offline)."""
        from transformers import CLIPModel

        if str(model).startswith((".", "/", "~")) and not Path(model).expanduser().is_dir():
            raise ScorerError(f"{cls.metric}: no such directory {model} (expected a CLIP model directory or a hub id)")
        try:
            clip = CLIPModel.from_pretrained(str(model), local_files_only=local_only(model))
        except (OSError, ValueError) as error:
            raise ScorerError(f"{cls.metric}: cannot load a CLIP model from {model}: {first_line(error)}") from None
        if device is not None:
            clip = clip.to(device)
        return cls(clip, cls._tokenizer(model, tokenizer))

    @classmethod
    def _tokenizer(cls, model: str | Path, tokenizer: str | Path | None) -> Any:
        """The first source that has tokenizer files (transformers makes an EMPTY tokenizer from none)."""
        from transformers import AutoTokenizer

        sources = [s for s in ([tokenizer] if tokenizer is not None else [model, cls.fallback_tokenizer]) if s]
        for source in sources:
            if _has_tokenizer(source):
                try:
                    return AutoTokenizer.from_pretrained(str(source), local_files_only=local_only(source))
                except (OSError, ValueError, TypeError) as error:
                    raise ScorerError(
                        f"{cls.metric}: cannot load the tokenizer of {source}: {first_line(error)}"
                    ) from None
        tried = " or ".join(str(s) for s in sources)
        where = "" if not offline() else " (HF_HUB_OFFLINE is set: the local cache only)"
        raise ScorerError(f"{cls.metric}: no tokenizer in {tried}{where}; give one: ,tokenizer=DIR_OR_ID")

    def _pixels(self, images: torch.Tensor) -> torch.Tensor:
        import torch
        import torch.nn.functional as F

        size = self.model.config.vision_config.image_size
        x = images.float()
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        scale = size / min(x.shape[-2:])
        h, w = max(size, round(x.shape[-2] * scale)), max(size, round(x.shape[-1] * scale))
        x = F.interpolate(x, size=(h, w), mode="bicubic", antialias=True, align_corners=False)
        top, left = (h - size) // 2, (w - size) // 2
        x = x[..., top : top + size, left : left + size].clamp(0, 1)
        mean = torch.tensor(CLIP_MEAN, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(CLIP_STD, device=x.device).view(1, 3, 1, 1)
        return (x - mean) / std

    def similarities(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        """Cosine similarity of each image with its own prompt, (N,)."""
        import torch

        if len(prompts) != images.shape[0]:
            raise ValueError(f"{images.shape[0]} images but {len(prompts)} prompts")
        device = next(self.model.parameters()).device
        max_len = self.model.config.text_config.max_position_embeddings
        sims = []
        with torch.inference_mode():
            for start in range(0, len(prompts), self.batch_size):
                stop = start + self.batch_size
                text = self.tokenizer(
                    list(prompts[start:stop]),
                    padding=True,
                    truncation=True,
                    max_length=max_len,
                    return_tensors="pt",
                ).to(device)
                pixels = self._pixels(images[start:stop].to(device)).to(self.model.dtype)
                img = self.model.get_image_features(pixel_values=pixels)
                txt = self.model.get_text_features(**text)
                img, txt = _embeds(img), _embeds(txt)
                sims.append(torch.cosine_similarity(img, txt, dim=-1).float().cpu())
        return torch.cat(sims)

    def score(self, images: torch.Tensor, prompts: Sequence[str]) -> dict[str, float]:
        return {self.metric: float(self.similarities(images, prompts).clamp(min=0).mean())}


# PickScore's own processor and tokenizer are CLIP-H's (its model repository has weights only).
PICKSCORE_TOKENIZER = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"


class PickScoreScorer(CLIPScorer):
    """PickScore: ``exp(logit_scale) * cos(image, prompt)`` of a CLIP-H model, divided by
    ``exp(logit_scale)`` into [-1, 1] and clamped at 0: the metric is the model's own logit over its
    scale (x 100 gives PickScore_v1's published numbers)."""

    metric = "pickscore"
    fallback_tokenizer = PICKSCORE_TOKENIZER

    def pickscores(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        """PickScore as published, ``exp(logit_scale) * cos``, per image."""
        return self.similarities(images, prompts) * float(self.model.logit_scale.exp())


TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "tokenizer_config.json")


def _has_tokenizer(source: str | Path) -> bool:
    """A directory holding tokenizer files, or a hub id whose files are cached (or, online, exist)."""
    if Path(source).is_dir():
        return any((Path(source) / name).is_file() for name in TOKENIZER_FILES)
    from huggingface_hub import hf_hub_download

    for name in TOKENIZER_FILES:
        try:
            hf_hub_download(str(source), name, local_files_only=local_only(source))
            return True
        except (OSError, ValueError):  # not cached, not on the hub, or an id that is no repository
            continue
    return False


def _embeds(output: Any) -> torch.Tensor:
    """get_*_features returns a tensor in older transformers, an output object in newer ones."""
    return output if not hasattr(output, "pooler_output") else output.pooler_output


def pil_images(images: torch.Tensor) -> list[Any]:
    """(N, C, H, W) floats in [0, 1] -> RGB PIL images (8 bits a channel, rounded; one channel repeated)."""
    import torch
    from PIL import Image

    x = images.detach().float().cpu().clamp(0, 1)
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    pixels = (x * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return [Image.fromarray(p) for p in pixels]


def _by_prompt(prompts: Sequence[str]) -> dict[str, list[int]]:
    """Image indices grouped by their prompt, in first-seen order (the packages score one prompt a call)."""
    groups: dict[str, list[int]] = {}
    for index, prompt in enumerate(prompts):
        groups.setdefault(prompt, []).append(index)
    return groups


class HPSv2Scorer:
    """HPSv2 (``hpsv2.score``: the cosine of HPSv2's CLIP-H image and text features), clamped at 0."""

    metric = "hpsv2"
    per_image = True

    def __init__(self, module: Any, version: str = "v2.0") -> None:
        self.module, self.version = module, version

    def score(self, images: torch.Tensor, prompts: Sequence[str]) -> dict[str, float]:
        _same_length(images, prompts, self.metric)
        pil, values = pil_images(images), [0.0] * len(prompts)
        for prompt, indices in _by_prompt(prompts).items():
            scores = self.module.score([pil[i] for i in indices], prompt, hps_version=self.version)
            for i, value in zip(indices, scores, strict=True):
                values[i] = min(max(float(value), 0.0), 1.0)
        return {self.metric: sum(values) / len(values)}


class ImageRewardScorer:
    """ImageReward (``ImageReward.load(name).score(prompt, images)``), each reward r reported as
    ``1 / (1 + exp(-r))``: the logistic maps its about-N(0, 1) rewards into (0, 1), order kept."""

    metric = "imagereward"
    per_image = True

    def __init__(self, model: Any) -> None:
        self.model = model

    def score(self, images: torch.Tensor, prompts: Sequence[str]) -> dict[str, float]:
        _same_length(images, prompts, self.metric)
        pil, values = pil_images(images), [0.0] * len(prompts)
        for prompt, indices in _by_prompt(prompts).items():
            rewards = self.model.score(prompt, [pil[i] for i in indices])
            rewards = rewards if isinstance(rewards, list) else [rewards]
            for i, reward in zip(indices, rewards, strict=True):
                values[i] = 1.0 / (1.0 + math.exp(-float(reward)))
        return {self.metric: sum(values) / len(values)}


def _same_length(images: torch.Tensor, prompts: Sequence[str], metric: str) -> None:
    if len(prompts) != images.shape[0]:
        raise ScorerError(f"{metric}: {images.shape[0]} images but {len(prompts)} prompts")


# --------------------------------------------------------------------------------------------
# --scorer KIND[=VALUE][,OPTION=VALUE...]


@dataclass(frozen=True)
class ScorerKind:
    name: str
    value: str  # what `=VALUE` is: "required", "optional" or "none"
    options: tuple[str, ...]
    package: str | None  # the import a missing package fails, and the extra that brings it
    extra: str | None


SCORER_KINDS: dict[str, ScorerKind] = {
    k.name: k
    for k in (
        ScorerKind("clip", "required", ("tokenizer",), "transformers", "torch"),
        ScorerKind("pickscore", "required", ("tokenizer",), "transformers", "torch"),
        ScorerKind("hpsv2", "optional", (), "hpsv2", "hpsv2"),
        ScorerKind("imagereward", "optional", (), "ImageReward", "imagereward"),
        ScorerKind("demo", "none", (), None, "demo"),
    )
}
HPSV2_VERSIONS = ("v2.0", "v2.1")
IMAGEREWARD_DEFAULT = "ImageReward-v1.0"


@dataclass(frozen=True)
class ScorerSpec:
    """A parsed ``--scorer``: its kind, the model (or version), and options (``tokenizer=...``)."""

    kind: str
    value: str | None
    options: tuple[tuple[str, str], ...] = ()

    @property
    def name(self) -> str:
        """What the table records as the scorer (the spec back as text)."""
        head = self.kind + (f"={self.value}" if self.value is not None else "")
        return ",".join([head, *(f"{k}={v}" for k, v in self.options)])


def parse_scorer(text: str) -> ScorerSpec:
    """``clip=openai/clip-vit-large-patch14`` -> ScorerSpec; an unknown kind or option is a usage error."""
    head, *rest = [part.strip() for part in text.split(",")]
    kind_name, eq, value = head.partition("=")
    kind = SCORER_KINDS.get(kind_name.strip())
    if kind is None:
        close = did_you_mean(kind_name, SCORER_KINDS)
        hint = f" (did you mean {close!r}?)" if close else ""
        raise UsageError(f"--scorer: unknown scorer {kind_name!r}; expected one of {', '.join(SCORER_KINDS)}{hint}")
    if kind.value == "required" and not value:
        raise UsageError(
            f"--scorer {kind.name}=DIR_OR_ID: give the model, e.g. {kind.name}=openai/clip-vit-large-patch14"
        )
    if kind.value == "none" and eq:
        raise UsageError(f"--scorer {kind.name} takes no value (got {text!r})")
    if kind.name == "hpsv2" and value and value not in HPSV2_VERSIONS:
        raise UsageError(f"--scorer hpsv2={value}: expected one of {', '.join(HPSV2_VERSIONS)}")
    options = []
    for item in rest:
        key, eq, option = item.partition("=")
        if key not in kind.options or not eq or not option:
            allowed = ", ".join(f"{o}=..." for o in kind.options) or "none"
            raise UsageError(f"--scorer {kind.name}: unknown option {item!r}; options: {allowed}")
        options.append((key, option))
    return ScorerSpec(kind.name, value or None, tuple(options))


@dataclass(frozen=True)
class NamedScorer:
    """A loaded scorer and the name a table or evaluation records for it."""

    name: str
    scorer: Scorer


def scorer_from_spec(spec: str | ScorerSpec, *, device: str | torch.device | None = None) -> NamedScorer:
    """Builds the scorer a ``--scorer`` names (the one parse both ``analyze`` and ``eval`` use)."""
    parsed = parse_scorer(spec) if isinstance(spec, str) else spec
    kind = SCORER_KINDS[parsed.kind]
    module = _require(kind)
    options = dict(parsed.options)
    scorer: Scorer
    if kind.name in ("clip", "pickscore"):
        cls = CLIPScorer if kind.name == "clip" else PickScoreScorer
        assert parsed.value is not None
        scorer = cls.from_pretrained(parsed.value, device=device, tokenizer=options.get("tokenizer"))
    elif kind.name == "hpsv2":
        scorer = HPSv2Scorer(module, parsed.value or "v2.0")
    elif kind.name == "imagereward":
        name = parsed.value or IMAGEREWARD_DEFAULT
        try:
            model = module.load(name, device=str(device or "cpu"))
        except (OSError, RuntimeError, ValueError) as error:
            raise ScorerError(f"imagereward: cannot load {name}: {first_line(error)}") from None
        scorer = ImageRewardScorer(model)
    else:
        from hpspec.demo.scorer import DemoScorer  # torch

        return NamedScorer("demo-digits", DemoScorer())
    return NamedScorer(parsed.name, scorer)


def _require(kind: ScorerKind) -> Any:
    """The package a scorer needs, imported; missing, one error naming the extra that brings it."""
    if kind.package is None:
        return None
    import importlib

    try:
        return importlib.import_module(kind.package)
    except ImportError:
        raise MissingPackageError(
            f"--scorer {kind.name} needs the {kind.package} package: pip install 'hpspec[{kind.extra}]'"
        ) from None
