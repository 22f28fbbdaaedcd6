"""The shapes demo's exact judge: GenEval's per-category accuracy, by segmentation, not a network.

Each pixel goes to its nearest palette colour or to the ground, if it is within `COLOUR_RADIUS`
of one (anti-aliased edges and off colours fall between and are ignored). Each colour's pixels
split into connected components (scipy.ndimage, 4-connected); a component smaller than
`MIN_AREA` of the image is noise. A component's holes are filled, and its shape is the nearest of
three prototypes in (fill ratio, compactness): fill = area / bounding-box area (circle pi/4,
square 1, triangle 1/2), compactness = area / (pi r^2), r the largest distance from the centroid
(circle 1, square 2/pi, triangle about 0.36). The prompt is parsed back to what it asks for
(`prompts.requirement_of`) and checked GenEval's way: objects present (at least one of each),
counts exact, colours and colour binding on the same object, positions by GenEval's rule (the
centre offset, less 0.1 of the two boxes' sizes, mostly along the named direction).

No torch: any (N, 3, H, W) array-like in [0, 1] (a torch tensor included) is judged.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from hpspec.demo.shapes.prompts import CATEGORIES, Requirement, Want, requirement_of
from hpspec.demo.shapes.scenes import BACKGROUND, PALETTE

COLOUR_RADIUS = 80.0  # of 255, Euclidean in RGB: about half the closest palette pair's distance
MIN_AREA = 0.006  # of the image's pixels
POSITION_THRESHOLD = 0.1  # GenEval's
# (fill, compactness, corner fill), the means over PIL-drawn shapes of 5 to 20 px, anti-aliased or not
# (the ideal shapes: circle (pi/4, 1, 0), square (1, 2/pi, 1), triangle (1/2, 0.36, 1/2)).
PROTOTYPES: dict[str, tuple[float, float, float]] = {
    "circle": (0.78, 0.9, 0.02),
    "square": (1.0, 0.68, 0.9),
    "triangle": (0.57, 0.43, 0.4),
}
# Fill ratio varies least with size and anti-aliasing: it counts three times.
WEIGHTS: tuple[float, float, float] = (3.0, 1.0, 1.0)
CORNER = 0.25  # a corner region: u + v < CORNER from a box corner, u, v as fractions of the box
_COLOURS = tuple(PALETTE)
_REFERENCE = np.array([*PALETTE.values(), BACKGROUND], dtype=np.float64)


@dataclass(frozen=True)
class Found:
    """One object the judge found: shape, palette colour, box (x0, y0, x1, y1) in pixels, area."""

    kind: str
    colour: str
    box: tuple[float, float, float, float]
    area: int


def colour_labels(image: np.ndarray) -> np.ndarray:
    """(H, W) palette index per pixel of an (H, W, 3) 0-255 image; len(PALETTE) ground, -1 neither."""
    distance = np.linalg.norm(image[:, :, None, :] - _REFERENCE[None, None], axis=-1)
    labels = distance.argmin(-1)
    labels[distance.min(-1) > COLOUR_RADIUS] = -1
    return labels


def coverage(image: np.ndarray, index: int) -> np.ndarray:
    """How much of each pixel a shape of palette colour `index` covers, if it is a blend of that
    colour and the ground: the pixel's projection on the ground -> colour line, in [0, 1]."""
    ground = _REFERENCE[-1]
    line = _REFERENCE[index] - ground
    return np.clip((image - ground) @ line / float(line @ line), 0.0, 1.0)


def soft_mask(core: np.ndarray, labels: np.ndarray, alpha: np.ndarray, index: int) -> np.ndarray:
    """A component's coverage: 1 on its (hole-filled) pixels, `alpha` on the ring around them that no
    other palette colour claims (anti-aliased or blurred edges), 0 elsewhere."""
    core = ndimage.binary_fill_holes(core)
    ring = ndimage.binary_dilation(core, structure=np.ones((3, 3), bool)) & ~core
    ring &= (labels == index) | (labels == len(_COLOURS)) | (labels == -1)
    return np.where(core, 1.0, np.where(ring, alpha, 0.0))


def shape_features(soft: np.ndarray) -> tuple[float, float, float]:
    """(fill ratio, compactness, corner fill) of a component's coverage (see the module doc)."""
    width, height = float(soft.max(0).sum()), float(soft.max(1).sum())
    area = float(soft.sum())
    ys, xs = np.nonzero(soft >= 0.5)
    cy, cx = ys.mean(), xs.mean()
    radius = float(np.sqrt((xs - cx) ** 2 + (ys - cy) ** 2).max()) + 0.5
    box = soft[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
    u = (np.arange(box.shape[1]) + 0.5) / box.shape[1]
    v = (np.arange(box.shape[0]) + 0.5) / box.shape[0]
    near = np.minimum(u, 1 - u)[None, :] + np.minimum(v, 1 - v)[:, None] < CORNER
    near[[0, 0, -1, -1], [0, -1, 0, -1]] = True  # at least the four corner pixels
    return area / (width * height), area / (np.pi * radius**2), float(box[near].mean())


def shape_of(soft: np.ndarray) -> str:
    """The prototype nearest to a component's features."""
    features = np.array(shape_features(soft))
    weights = np.array(WEIGHTS)
    return min(PROTOTYPES, key=lambda k: float((weights * (features - np.array(PROTOTYPES[k])) ** 2).sum()))


def find_objects(image: np.ndarray) -> list[Found]:
    """Every object in one (H, W, 3) 0-255 image."""
    labels = colour_labels(image)
    min_area = MIN_AREA * labels.size
    found: list[Found] = []
    for index, colour in enumerate(_COLOURS):
        components, _ = ndimage.label(labels == index)
        alpha = coverage(image, index)
        for part, where in enumerate(ndimage.find_objects(components), start=1):
            if where is None:
                continue
            y, x = where
            # The component's box grown by a pixel: room for its ring.
            grown = (slice(max(y.start - 1, 0), y.stop + 1), slice(max(x.start - 1, 0), x.stop + 1))
            core = components[grown] == part
            if core.sum() < min_area:
                continue
            soft = soft_mask(core, labels[grown], alpha[grown], index)
            ys, xs = np.nonzero(soft >= 0.5)
            box = (float(grown[1].start + xs.min()), float(grown[0].start + ys.min()))
            box += (float(grown[1].start + xs.max() + 1), float(grown[0].start + ys.max() + 1))
            found.append(Found(shape_of(soft), colour, box, int(round(soft.sum()))))
    return found


def relations(a: Found, b: Found) -> set[str]:
    """Where a lies relative to b, GenEval's `relative_position` (image y grows downwards)."""
    boxes = np.array([a.box, b.box]).reshape(2, 2, 2)
    centre_a, centre_b = boxes.mean(axis=-2)
    dim_a, dim_b = np.abs(np.diff(boxes, axis=-2))[..., 0, :]
    offset = centre_a - centre_b
    revised = np.maximum(np.abs(offset) - POSITION_THRESHOLD * (dim_a + dim_b), 0) * np.sign(offset)
    if np.all(np.abs(revised) < 1e-3):
        return set()
    dx, dy = revised / np.linalg.norm(offset)
    found = {"left of": dx < -0.5, "right of": dx > 0.5, "above": dy < -0.5, "below": dy > 0.5}
    return {name for name, holds in found.items() if holds}


def _matches(objects: Sequence[Found], want: Want) -> list[Found]:
    return [o for o in objects if o.kind == want.kind and (want.colour is None or o.colour == want.colour)]


def meets(objects: Sequence[Found], req: Requirement) -> bool:
    """Whether the objects found satisfy the requirement."""
    matched = [_matches(objects, w) for w in req.wants]
    if req.exact:
        return all(len(m) == w.count for m, w in zip(matched, req.wants))
    if req.relation is not None:
        return any(req.relation in relations(a, b) for a in matched[0] for b in matched[1])
    return all(len(m) >= w.count for m, w in zip(matched, req.wants))


def to_pixels(images: object) -> np.ndarray:
    """(N, 3, H, W) in [0, 1] -> (N, H, W, 3) float 0-255."""
    array = np.asarray(images, dtype=np.float64)
    if array.ndim != 4 or array.shape[1] != 3:
        raise ValueError(f"expected RGB images (N, 3, H, W), got shape {tuple(array.shape)}")
    return np.clip(array, 0.0, 1.0).transpose(0, 2, 3, 1) * 255.0


class ShapesScorer:
    """GenEval on shapes: ``.score(images, prompts) -> {"overall", <category>: accuracy}``.

    A category's score is the share of its images that pass; ``overall`` is the mean over the
    categories present (GenEval's overall). Categories no prompt asks for are left out.
    """

    def judge(self, images: object, prompts: Sequence[str]) -> list[tuple[str, bool]]:
        """(category, passed) per image."""
        pixels = to_pixels(images)
        if len(prompts) != pixels.shape[0]:
            raise ValueError(f"{pixels.shape[0]} images but {len(prompts)} prompts")
        reqs = [requirement_of(p) for p in prompts]
        return [(r.category, meets(find_objects(image), r)) for r, image in zip(reqs, pixels)]

    def score(self, images: object, prompts: Sequence[str]) -> dict[str, float]:
        verdicts = self.judge(images, prompts)
        scores = {
            c: float(np.mean([ok for cat, ok in verdicts if cat == c]))
            for c in CATEGORIES
            if any(v[0] == c for v in verdicts)
        }
        return {"overall": float(np.mean(list(scores.values()))), **scores}
