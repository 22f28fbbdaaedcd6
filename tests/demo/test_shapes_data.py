"""The shapes demo's prompts, splits and scenes: what the model is trained and judged on."""

from __future__ import annotations

import numpy as np
import pytest

from hpspec.demo.shapes import ShapesScorer
from hpspec.demo.shapes.prompts import (
    CATEGORIES,
    HELD_OUT,
    SPLITS,
    category_tuples,
    eval_prompts,
    prompt_of,
    requirement_of,
    split_prompts,
    split_tuples,
)
from hpspec.demo.shapes.scenes import IMAGE_SIZE, PALETTE, layout, render


def test_split_categories_are_disjoint_and_cover_every_tuple() -> None:
    for category in CATEGORIES:
        parts = [set(split_tuples(category, s)) for s in SPLITS]
        everything = set(category_tuples(category))
        if category in HELD_OUT:
            assert parts[0].isdisjoint(parts[1]) and parts[0].isdisjoint(parts[2]) and parts[1].isdisjoint(parts[2])
            assert set.union(*parts) == everything
            assert len(parts[1]) == len(parts[2]) == HELD_OUT[category]
        else:
            assert parts[0] == parts[1] == parts[2] == everything
    # Held-out prompts are never trained on: the texts differ, not only the tuples.
    train = set(split_prompts("train"))
    for category in HELD_OUT:
        assert train.isdisjoint(split_prompts("eval", category))


def test_tuple_counts_by_hand() -> None:
    # 3 shapes; 3 unordered pairs; 3 shapes x 3 counts; 5 colours x 3 shapes; 6 ordered pairs x 2 axes;
    # 3 pairs x 5 x 4 distinct colour pairs.
    counts = {c: len(category_tuples(c)) for c in CATEGORIES}
    assert counts == {
        "single_object": 3,
        "two_object": 3,
        "counting": 9,
        "colors": 15,
        "position": 12,
        "color_attr": 60,
    }


def test_prompts_parse_back_to_what_they_ask() -> None:
    for split in SPLITS:
        for prompt in split_prompts(split):
            assert prompt_of(requirement_of(prompt)) == prompt
    req = requirement_of("a red circle and a blue square")
    assert req.category == "color_attr" and [(w.kind, w.colour) for w in req.wants] == [
        ("circle", "red"),
        ("square", "blue"),
    ]
    req = requirement_of("a triangle to the right of a circle")
    assert (req.category, req.relation) == ("position", "right of")
    assert requirement_of("  Three   Squares ").wants[0].count == 3
    for bad in ("a circle and a circle", "five circles", "a pink circle", "a handwritten seven", ""):
        with pytest.raises(ValueError):
            requirement_of(bad)


def test_eval_set_has_every_category_evenly() -> None:
    prompts = eval_prompts()
    assert len(prompts) == 48
    categories = [requirement_of(p).category for p in prompts]
    assert all(categories.count(c) == 8 for c in CATEGORIES)


def test_training_scenes_show_what_their_prompt_asks() -> None:
    rng = np.random.default_rng(0)
    prompts = split_prompts("train") * 3
    scenes = np.stack([render(layout(requirement_of(p), rng)) for p in prompts])
    assert scenes.shape == (len(prompts), IMAGE_SIZE, IMAGE_SIZE, 3) and scenes.dtype == np.uint8
    # Only the ground and the palette's colours are drawn (no anti-aliasing in training scenes).
    colours = {tuple(c) for c in scenes.reshape(-1, 3)}
    assert colours <= {(255, 255, 255), *PALETTE.values()}
    scores = ShapesScorer().score(scenes.transpose(0, 3, 1, 2) / 255.0, prompts)
    assert min(scores.values()) >= 0.99, scores


def test_scenes_are_seeded() -> None:
    req = requirement_of("four triangles")
    a = layout(req, np.random.default_rng(3))
    assert a == layout(req, np.random.default_rng(3)) and a != layout(req, np.random.default_rng(4))
