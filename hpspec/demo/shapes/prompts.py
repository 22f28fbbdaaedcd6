"""The shapes demo's prompts: GenEval's six categories over shapes, their tuples, splits and parser.

Each category has one template, as GenEval's do (its "a photo of" dropped):

=============  ==================================  ==========================================
category       template                            passes when the image has
=============  ==================================  ==========================================
single_object  a circle                            at least one circle
two_object     a circle and a square               at least one of each
counting       three circles                       exactly three circles
colors         a red circle                        a red circle
position       a circle to the left of a square    a circle and a square, so placed
color_attr     a red circle and a blue square      a red circle and a blue square
=============  ==================================  ==========================================

A prompt's *tuple* is what it asks for, e.g. ("red", "circle", "blue", "square"). Where a category
has enough tuples (position: 12 arrangements, color_attr: 60) its tuples are split, seeded, into
disjoint train / validation / eval sets; the small categories (3, 3, 9 and 15 tuples) appear in
every split, as GenEval's own prompts are its only split. No torch, no numpy.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from functools import cache

SHAPE_NAMES: tuple[str, ...] = ("circle", "square", "triangle")
COLOUR_NAMES: tuple[str, ...] = ("red", "green", "blue", "yellow", "purple")
CATEGORIES: tuple[str, ...] = ("single_object", "two_object", "counting", "colors", "position", "color_attr")
COUNT_WORDS: dict[str, int] = {"two": 2, "three": 3, "four": 4}
RELATIONS: tuple[str, ...] = ("left of", "right of", "above", "below")
_PHRASE = {"left of": "to the left of", "right of": "to the right of", "above": "above", "below": "below"}
_OPPOSITE = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}
SPLITS: tuple[str, ...] = ("train", "validation", "eval")
SPLIT_SEED = 19
# Share of a split category's tuples held out for validation and for eval (each).
HELD_OUT = {"position": 2, "color_attr": 10}


@dataclass(frozen=True)
class Want:
    """`count` shapes of one kind; `colour` None means any colour."""

    kind: str
    colour: str | None = None
    count: int = 1


@dataclass(frozen=True)
class Requirement:
    """What a prompt asks for: its category, the shapes it wants, and (position) how they lie."""

    category: str
    wants: tuple[Want, ...]
    relation: str | None = None  # wants[0] <relation> wants[1]
    exact: bool = False  # counting: exactly wants[0].count, not at least


def _shape(word: str) -> str:
    return r"(?P<" + word + r">" + "|".join(SHAPE_NAMES) + r")"


def _colour(word: str) -> str:
    return r"(?P<" + word + r">" + "|".join(COLOUR_NAMES) + r")"


_FORMS: tuple[tuple[str, re.Pattern[str]], ...] = tuple(
    (name, re.compile(pattern + r"$"))
    for name, pattern in (
        ("single_object", r"an? " + _shape("a")),
        ("colors", r"an? " + _colour("ca") + " " + _shape("a")),
        ("two_object", r"an? " + _shape("a") + r" and an? " + _shape("b")),
        ("color_attr", r"an? " + _colour("ca") + " " + _shape("a") + r" and an? " + _colour("cb") + " " + _shape("b")),
        ("counting", r"(?P<n>" + "|".join(COUNT_WORDS) + r") " + _shape("a") + "s"),
        (
            "position",
            r"an? " + _shape("a") + r" (?P<rel>" + "|".join(_PHRASE.values()) + r") an? " + _shape("b"),
        ),
    )
)


def requirement_of(prompt: str) -> Requirement:
    """Parses a prompt back to what it asks for; ValueError if it has none of the six forms."""
    text = " ".join(prompt.lower().split())
    for category, form in _FORMS:
        m = form.match(text)
        if m is None:
            continue
        g = m.groupdict()
        if category == "counting":
            return Requirement(category, (Want(g["a"], None, COUNT_WORDS[g["n"]]),), exact=True)
        first = Want(g["a"], g.get("ca"))
        if "b" not in g:
            return Requirement(category, (first,))
        if g["a"] == g["b"]:
            raise ValueError(f"prompt {prompt!r} names the same shape twice; the two must differ")
        relation = next((r for r, p in _PHRASE.items() if p == g.get("rel")), None)
        return Requirement(category, (first, Want(g["b"], g.get("cb"))), relation)
    raise ValueError(f"prompt {prompt!r} has none of the shapes demo's forms, e.g. {', '.join(examples())}")


def examples() -> tuple[str, ...]:
    return ("a circle", "a red circle", "three squares", "a circle to the left of a square")


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _noun(colour: str | None, kind: str) -> str:
    words = f"{colour} {kind}" if colour else kind
    return f"{_article(words)} {words}"


def prompt_of(req: Requirement) -> str:
    """The one prompt text of a requirement (the inverse of `requirement_of`)."""
    wants = req.wants
    if req.category == "counting":
        word = next(w for w, n in COUNT_WORDS.items() if n == wants[0].count)
        return f"{word} {wants[0].kind}s"
    nouns = [_noun(w.colour, w.kind) for w in wants]
    if req.relation is not None:
        return f"{nouns[0]} {_PHRASE[req.relation]} {nouns[1]}"
    return " and ".join(nouns)


def _pairs() -> list[tuple[str, str]]:
    return [(a, b) for a in SHAPE_NAMES for b in SHAPE_NAMES if a != b]


def category_tuples(category: str) -> list[tuple[str, ...]]:
    """Every tuple of a category, in a fixed order."""
    if category == "single_object":
        return [(s,) for s in SHAPE_NAMES]
    if category == "two_object":
        return [(a, b) for a, b in _pairs() if a < b]
    if category == "counting":
        return [(s, w) for s in SHAPE_NAMES for w in COUNT_WORDS]
    if category == "colors":
        return [(c, s) for c in COLOUR_NAMES for s in SHAPE_NAMES]
    if category == "position":  # an arrangement: (left or upper shape, right or lower shape, axis)
        return [(a, b, axis) for a, b in _pairs() for axis in ("horizontal", "vertical")]
    if category == "color_attr":  # unordered in the shapes: the first shape sorts first
        return [(ca, a, cb, b) for a, b in _pairs() if a < b for ca in COLOUR_NAMES for cb in COLOUR_NAMES if ca != cb]
    raise ValueError(f"unknown category {category!r}; expected one of {', '.join(CATEGORIES)}")


@cache
def split_tuples(category: str, split: str) -> tuple[tuple[str, ...], ...]:
    """The tuples of one split: disjoint across splits where the category is split (HELD_OUT)."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    tuples = category_tuples(category)
    held = HELD_OUT.get(category)
    if held is None:
        return tuple(tuples)
    order = list(tuples)
    random.Random(f"{SPLIT_SEED}:{category}").shuffle(order)
    parts = {"validation": order[:held], "eval": order[held : 2 * held], "train": order[2 * held :]}
    return tuple(sorted(parts[split]))


def requirements_of(category: str, tup: tuple[str, ...]) -> list[Requirement]:
    """The requirements (one per phrasing) a tuple stands for; position has two phrasings."""
    if category == "single_object":
        return [Requirement(category, (Want(tup[0]),))]
    if category == "two_object":
        return [Requirement(category, (Want(tup[0]), Want(tup[1])))]
    if category == "counting":
        return [Requirement(category, (Want(tup[0], None, COUNT_WORDS[tup[1]]),), exact=True)]
    if category == "colors":
        return [Requirement(category, (Want(tup[1], tup[0]),))]
    if category == "position":
        a, b, axis = tup
        rel = "left of" if axis == "horizontal" else "above"
        return [
            Requirement(category, (Want(a), Want(b)), rel),
            Requirement(category, (Want(b), Want(a)), _OPPOSITE[rel]),
        ]
    return [Requirement(category, (Want(tup[1], tup[0]), Want(tup[3], tup[2])))]


def split_prompts(split: str, category: str | None = None) -> list[str]:
    """Every prompt of a split (optionally one category), category by category."""
    cats = CATEGORIES if category is None else (category,)
    return [prompt_of(r) for c in cats for t in split_tuples(c, split) for r in requirements_of(c, t)]


def eval_prompts(per_category: int = 8) -> list[str]:
    """The fixed evaluation set: `per_category` eval-split prompts of each category, spread evenly."""
    chosen: list[str] = []
    for category in CATEGORIES:
        pool = split_prompts("eval", category)
        step = len(pool) / per_category
        chosen += [pool[int(i * step) % len(pool)] for i in range(per_category)]
    return chosen


def demo_prompts() -> list[str]:
    """What `hpspec demo` and the evidence bench evaluate on: 4 eval prompts per category (24)."""
    return eval_prompts(per_category=4)


def analysis_prompts() -> list[str]:
    """What `analyze` measures each removal on: 2 eval prompts per category (12)."""
    return eval_prompts(per_category=2)
