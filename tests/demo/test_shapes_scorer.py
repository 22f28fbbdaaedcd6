"""The shapes judge on scenes this test draws itself, with PIL: another renderer, other sizes (24 to
64 px), colours off the palette, anti-aliasing on and off. Right scenes must pass (>= 0.99 in every
category), and scenes that are wrong in one respect only must fail."""

from __future__ import annotations

import random
from collections.abc import Callable

import numpy as np
import pytest
from PIL import Image, ImageDraw

from hpspec.demo.shapes import ShapesScorer
from hpspec.demo.shapes.prompts import CATEGORIES, COUNT_WORDS, requirement_of, split_prompts

# The palette written out again here (not imported): the judge must find these colours.
RGB = {
    "red": (220, 30, 30),
    "green": (30, 170, 50),
    "blue": (30, 70, 220),
    "yellow": (240, 200, 20),
    "purple": (180, 40, 200),
}
SCENES_PER_CATEGORY = 200
Item = tuple[str, str, float, float]  # kind, colour, centre x, centre y (fractions of the side)


def off(colour: str, rng: random.Random) -> tuple[int, int, int]:
    """The palette colour, each channel moved by up to 18 of 255."""
    return tuple(min(255, max(0, c + rng.randint(-18, 18))) for c in RGB[colour])  # type: ignore[return-value]


def draw_scene(items: list[Item], side: int, aa: bool, rng: random.Random) -> np.ndarray:
    """(3, side, side) in [0, 1]; shapes of a fifth to three tenths of the side, drawn by PIL."""
    scale = 4 if aa else 1
    big = side * scale
    image = Image.new("RGB", (big, big), (250, 250, 250) if rng.random() < 0.5 else (255, 255, 255))
    draw = ImageDraw.Draw(image)
    for kind, colour, fx, fy in items:
        half = rng.uniform(0.1, 0.15) * big
        cx, cy = fx * big, fy * big
        box = [cx - half, cy - half, cx + half, cy + half]
        fill = off(colour, rng)
        if kind == "circle":
            draw.ellipse(box, fill=fill)
        elif kind == "square":
            draw.rectangle(box, fill=fill)
        elif rng.random() < 0.5:  # a triangle, pointing up or down
            draw.polygon([(cx, cy - half), (cx + half, cy + half), (cx - half, cy + half)], fill=fill)
        else:
            draw.polygon([(cx - half, cy - half), (cx + half, cy - half), (cx, cy + half)], fill=fill)
    if aa:  # drawn 4x larger, then scaled down by area (box) or by Lanczos (which rings at edges)
        image = image.resize((side, side), rng.choice([Image.Resampling.BOX, Image.Resampling.LANCZOS]))
    return np.asarray(image, dtype=np.float64).transpose(2, 0, 1) / 255.0


def cells(n: int, rng: random.Random) -> list[tuple[float, float]]:
    """n centres in distinct quarters of the image, jittered a little."""
    quarters = rng.sample([(0.25, 0.25), (0.75, 0.25), (0.25, 0.75), (0.75, 0.75)], n)
    return [(x + rng.uniform(-0.06, 0.06), y + rng.uniform(-0.06, 0.06)) for x, y in quarters]


def any_colour(rng: random.Random) -> str:
    return rng.choice(list(RGB))


def scene_for(prompt: str, rng: random.Random) -> list[Item]:
    """A right scene for the prompt, laid out by this test."""
    req = requirement_of(prompt)
    kinds = [(w.kind, w.colour or any_colour(rng)) for w in req.wants for _ in range(w.count)]
    if req.relation is None:
        return [(k, c, x, y) for (k, c), (x, y) in zip(kinds, cells(len(kinds), rng))]
    near, far = rng.uniform(0.22, 0.3), rng.uniform(0.7, 0.78)
    across = rng.uniform(0.3, 0.7)
    first, second = (near, far) if req.relation in ("left of", "above") else (far, near)
    if req.relation in ("left of", "right of"):
        return [(*kinds[0], first, across), (*kinds[1], second, across + rng.uniform(-0.05, 0.05))]
    return [(*kinds[0], across, first), (*kinds[1], across + rng.uniform(-0.05, 0.05), second)]


SIDES = (24, 32, 40, 48, 64)


def batch(make: Callable[[str, random.Random], list[Item]], prompts: list[str], side: int, seed: int) -> np.ndarray:
    rng = random.Random(seed)
    return np.stack([draw_scene(make(p, rng), side, rng.random() < 0.5, rng) for p in prompts])


def accuracy(make: Callable[[str, random.Random], list[Item]], prompts: list[str], seed: int) -> dict[str, float]:
    """Share of passing scenes per category, the prompts spread over every side in SIDES."""
    verdicts: list[tuple[str, bool]] = []
    for k, side in enumerate(SIDES):
        part = prompts[k :: len(SIDES)]
        verdicts += ShapesScorer().judge(batch(make, part, side, seed + k), part)
    return {c: float(np.mean([ok for cat, ok in verdicts if cat == c])) for c in {cat for cat, _ in verdicts}}


def prompts_of(category: str, seed: int = 0) -> list[str]:
    pool = split_prompts("train", category) + split_prompts("eval", category)
    return [random.Random(seed + i).choice(pool) for i in range(SCENES_PER_CATEGORY)]


@pytest.mark.parametrize("category", CATEGORIES)
def test_right_scenes_pass(category: str) -> None:
    scores = accuracy(scene_for, prompts_of(category), seed=1)
    assert scores[category] >= 0.99, scores


def test_all_categories_score_together() -> None:
    prompts = [p for c in CATEGORIES for p in prompts_of(c)[:10]]
    scores = ShapesScorer().score(batch(scene_for, prompts, 32, seed=2), prompts)
    assert set(scores) == {"overall", *CATEGORIES}
    assert min(scores.values()) >= 0.99, scores


def wrong_colour(prompt: str, rng: random.Random) -> list[Item]:
    kind, colour, x, y = scene_for(prompt, rng)[0]
    return [(kind, rng.choice([c for c in RGB if c != colour]), x, y)]


def wrong_count(prompt: str, rng: random.Random) -> list[Item]:
    n = COUNT_WORDS[prompt.split()[0]]
    wrong = rng.choice([m for m in (n - 1, n + 1) if 1 <= m <= 4])
    kind = requirement_of(prompt).wants[0].kind
    return [(kind, any_colour(rng), x, y) for x, y in cells(wrong, rng)]


def swapped_places(prompt: str, rng: random.Random) -> list[Item]:
    (ka, ca, xa, ya), (kb, cb, xb, yb) = scene_for(prompt, rng)
    return [(ka, ca, xb, yb), (kb, cb, xa, ya)]


def swapped_colours(prompt: str, rng: random.Random) -> list[Item]:
    (ka, ca, xa, ya), (kb, cb, xb, yb) = scene_for(prompt, rng)
    return [(ka, cb, xa, ya), (kb, ca, xb, yb)]


def one_missing(prompt: str, rng: random.Random) -> list[Item]:
    return scene_for(prompt, rng)[:1]


def wrong_shape(prompt: str, rng: random.Random) -> list[Item]:
    kind, colour, x, y = scene_for(prompt, rng)[0]
    return [(rng.choice([k for k in ("circle", "square", "triangle") if k != kind]), colour, x, y)]


@pytest.mark.parametrize(
    ("category", "make"),
    [
        ("colors", wrong_colour),
        ("counting", wrong_count),
        ("position", swapped_places),
        ("color_attr", swapped_colours),
        ("two_object", one_missing),
        ("single_object", wrong_shape),
    ],
)
def test_wrong_scenes_fail(category: str, make: Callable[[str, random.Random], list[Item]]) -> None:
    scores = accuracy(make, prompts_of(category, seed=100)[:40], seed=3)
    assert scores[category] <= 0.01, scores


def test_blank_and_noise_images_fail_everything() -> None:
    prompts = [p for c in CATEGORIES for p in prompts_of(c)[:4]]
    rng = np.random.default_rng(0)
    blank = np.ones((len(prompts), 3, 32, 32))
    noise = np.clip((rng.standard_normal((len(prompts), 3, 32, 32)) + 1) / 2, 0, 1)
    for images in (blank, noise):
        assert ShapesScorer().score(images, prompts)["overall"] == 0.0


def test_prompts_and_images_must_agree() -> None:
    with pytest.raises(ValueError, match="2 images but 1 prompts"):
        ShapesScorer().score(np.ones((2, 3, 32, 32)), ["a circle"])
    with pytest.raises(ValueError, match="RGB images"):
        ShapesScorer().score(np.ones((1, 1, 8, 8)), ["a circle"])
    with pytest.raises(ValueError, match="none of the shapes demo's forms"):
        ShapesScorer().score(np.ones((1, 3, 32, 32)), ["a handwritten seven"])
