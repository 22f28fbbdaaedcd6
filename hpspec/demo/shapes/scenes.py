"""Procedural scenes of flat shapes: the palette, the layouts a requirement asks for, a numpy renderer.

A scene is a tuple of `Shape`s (kind, colour, centre, size) on a white ground. Every draw comes
from the numpy `Generator` passed in, so a seed fixes a scene. Nothing here imports torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from hpspec.demo.shapes.prompts import Requirement, Want

IMAGE_SIZE = 32
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
# Chosen far apart in RGB (closest pair blue-purple, 154 of 255) and far from the white ground.
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 170, 50),
    "blue": (30, 70, 220),
    "yellow": (240, 200, 20),
    "purple": (180, 40, 200),
}
COLOURS: tuple[str, ...] = tuple(PALETTE)
BACKGROUND: tuple[int, int, int] = (255, 255, 255)
# Side of a shape's box as a fraction of the image side: (smallest, largest), by object count.
SIZE_RANGE: dict[int, tuple[float, float]] = {1: (0.28, 0.5), 2: (0.22, 0.36), 3: (0.2, 0.28), 4: (0.18, 0.25)}
GAP = 1.5  # pixels between two shapes' boxes, at least
_TRIES = 200


@dataclass(frozen=True)
class Shape:
    """One flat shape: its box is `size` wide and high, centred at (cx, cy) in pixels."""

    kind: str
    colour: str
    cx: float
    cy: float
    size: float


def _box_clear(a: Shape, b: Shape) -> bool:
    reach = (a.size + b.size) / 2 + GAP
    return abs(a.cx - b.cx) >= reach or abs(a.cy - b.cy) >= reach


def _free_place(kinds: Sequence[tuple[str, str]], rng: np.random.Generator, side: int) -> tuple[Shape, ...]:
    """Shapes of the given (kind, colour)s at random, non-touching places."""
    low, high = SIZE_RANGE[len(kinds)]
    for _ in range(_TRIES):
        placed: list[Shape] = []
        for kind, colour in kinds:
            size = float(rng.uniform(low, high)) * side
            half = size / 2 + 0.5
            cx, cy = (float(v) for v in rng.uniform(half, side - half, size=2))
            shape = Shape(kind, colour, cx, cy, size)
            if not all(_box_clear(shape, other) for other in placed):
                break
            placed.append(shape)
        else:
            return tuple(placed)
    raise RuntimeError(f"could not place {len(kinds)} shapes in {side} px")  # pragma: no cover


def _placed_in_relation(
    first: tuple[str, str], second: tuple[str, str], relation: str, rng: np.random.Generator, side: int
) -> tuple[Shape, ...]:
    """`first` <relation> `second`: offset mainly along one axis, never ambiguous."""
    low, high = SIZE_RANGE[2]
    sign = -1.0 if relation in ("left of", "above") else 1.0
    for _ in range(_TRIES):
        sa, sb = (float(v) * side for v in rng.uniform(low, high, size=2))
        along = float(rng.uniform((sa + sb) / 2 + GAP + 2, side - (sa + sb) / 2 - 1))
        across = float(rng.uniform(-0.25, 0.25)) * along
        a_along = float(rng.uniform(sa / 2 + 0.5, side - sa / 2 - 0.5))
        b_along = a_along - sign * along
        a_across = float(rng.uniform(max(sa, sb) / 2 + 0.5, side - max(sa, sb) / 2 - 0.5))
        b_across = a_across + across
        lo_b, hi_b = sb / 2 + 0.5, side - sb / 2 - 0.5
        if not (lo_b <= b_along <= hi_b and lo_b <= b_across <= hi_b):
            continue
        if relation in ("left of", "right of"):
            return (Shape(*first, a_along, a_across, sa), Shape(*second, b_along, b_across, sb))
        return (Shape(*first, a_across, a_along, sa), Shape(*second, b_across, b_along, sb))
    raise RuntimeError(f"could not place a pair {relation!r} in {side} px")  # pragma: no cover


def _colour(want: Want, rng: np.random.Generator) -> str:
    return want.colour if want.colour is not None else COLOURS[int(rng.integers(len(COLOURS)))]


def layout(req: Requirement, rng: np.random.Generator, side: int = IMAGE_SIZE) -> tuple[Shape, ...]:
    """A random scene that meets the requirement exactly (nothing else in it)."""
    kinds = [(w.kind, _colour(w, rng)) for w in req.wants for _ in range(w.count)]
    if req.relation is not None:
        return _placed_in_relation(kinds[0], kinds[1], req.relation, rng, side)
    order = rng.permutation(len(kinds))
    return _free_place([kinds[i] for i in order], rng, side)


def _masks(shape: Shape, side: int) -> np.ndarray:
    centres = np.arange(side, dtype=np.float64) + 0.5
    x, y = centres[None, :], centres[:, None]
    half = shape.size / 2
    if shape.kind == "circle":
        return np.asarray((x - shape.cx) ** 2 + (y - shape.cy) ** 2 <= half**2)
    if shape.kind == "square":
        return np.asarray((np.abs(x - shape.cx) <= half) & (np.abs(y - shape.cy) <= half))
    top = shape.cy - half  # an upward triangle: apex on top, base at the bottom of the box
    return np.asarray((y <= shape.cy + half) & (np.abs(x - shape.cx) <= (y - top) / 2))


def render(shapes: Sequence[Shape], side: int = IMAGE_SIZE) -> np.ndarray:
    """The scene as (side, side, 3) uint8 RGB, flat colours, no anti-aliasing."""
    image = np.empty((side, side, 3), dtype=np.uint8)
    image[:] = BACKGROUND
    for shape in shapes:
        image[_masks(shape, side)] = PALETTE[shape.colour]
    return image
