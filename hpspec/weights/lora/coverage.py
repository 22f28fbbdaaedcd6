"""coverage: how much of an adapter survives a plan, by modules and by update norm, per block.

A module's update is `B A * alpha / rank` (alpha: kohya's `.alpha`, else peft's `lora_alpha` from
the file's metadata (`metadata.py`), else the rank); its norm is the Frobenius norm, and the kept norm that of
the rows of B that survive. numpy reads the weights (bf16 widened exactly to float32).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hpspec.core.errors import LoraError
from hpspec.model.arch import architecture
from hpspec.model.safetensors_header import TensorEntry
from hpspec.plan.plan import Plan
from hpspec.weights.lora.adapter import Module
from hpspec.weights.lora.metadata import peft_alpha, peft_config
from hpspec.weights.lora.remap import Fate, index_of

if TYPE_CHECKING:
    import numpy as np

OUTSIDE = "outside"


@dataclass(frozen=True)
class Share:
    modules: int
    kept_modules: int
    norm: float
    kept_norm: float

    @property
    def norm_kept(self) -> float:
        return self.kept_norm / self.norm if self.norm else 1.0


@dataclass(frozen=True)
class Coverage:
    total: Share
    blocks: Mapping[str, Share]  # "block[3]" / "single_block[2]" / "outside"
    dropped_blocks: Mapping[str, tuple[int, ...]]  # stack singular -> blocks dropped that held adapters
    apart: Mapping[str, str] = field(default_factory=dict)
    text_keys: int = 0

    def to_dict(self) -> dict[str, Any]:
        def share(s: Share) -> dict[str, Any]:
            return {
                "modules": s.modules,
                "kept_modules": s.kept_modules,
                "update_norm": s.norm,
                "kept_update_norm": s.kept_norm,
                "norm_kept": s.norm_kept,
            }

        return {
            "total": share(self.total),
            "blocks": {k: share(v) for k, v in self.blocks.items()},
            "dropped_blocks": {k: list(v) for k, v in self.dropped_blocks.items()},
            "apart": dict(self.apart),
            "text_encoder_keys": self.text_keys,
        }


def read_array(path: Path, entry: TensorEntry) -> np.ndarray:
    import numpy as np

    raw = np.fromfile(path, dtype=np.uint8, count=entry.nbytes, offset=entry.begin)
    if entry.dtype == "BF16":
        return (raw.view("<u2").astype(np.uint32) << 16).view("<f4").reshape(entry.shape).astype(np.float64)
    kinds = {"F32": "<f4", "F16": "<f2", "F64": "<f8"}
    if entry.dtype not in kinds:
        raise LoraError(f"{path}: {entry.name!r} is {entry.dtype}; a LoRA weight in F32, F16, BF16 or F64 was expected")
    return raw.view(kinds[entry.dtype]).reshape(entry.shape).astype(np.float64)


def _scale(path: Path, module: Module, config: Mapping[str, Any]) -> float:
    """alpha / rank: kohya's `.alpha`, else peft's config, else 1."""
    if module.alpha is not None:
        return float(read_array(path, module.alpha).reshape(-1)[0]) / module.rank
    alpha = peft_alpha(config, module.name)
    return (alpha if alpha is not None else module.rank) / module.rank


def coverage(
    plan: Plan, path: Path, metadata: Mapping[str, str], fates: Sequence[Fate], apart: Mapping[str, str], text: int
) -> Coverage:
    """The shares of modules and update norm each block and the whole adapter keep (norms summed per module)."""

    config = peft_config(metadata)
    singular = {s.module: s.singular for s in architecture(plan.target.family).stacks}
    squares: dict[tuple[str, str], list[float]] = {}  # (block, module) -> [norm^2, kept norm^2, any kept]
    dropped: dict[str, set[int]] = {}
    factors: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for fate in fates:
        m = fate.module
        if m.stem not in factors:
            factors[m.stem] = _factors(path, m, _scale(path, m, config))
        up, gram = factors[m.stem]
        where = index_of(plan, fate.full)
        block = f"{singular[where['stack']]}[{where['block']}]" if where else OUTSIDE
        row = squares.setdefault((block, m.stem), [0.0, 0.0, 0.0])
        row[0] += _square(up[fate.rows[0] : fate.rows[1]], gram)
        row[1] += sum(_square(up[lo:hi], gram) for lo, hi in fate.kept)
        row[2] = max(row[2], 1.0 if fate.kept else 0.0)
        if fate.why == "block dropped":
            dropped.setdefault(singular[where["stack"]], set()).add(int(where["block"]))
    blocks: dict[str, Share] = {}
    for (block, _), (norm, kept, any_kept) in squares.items():
        old = blocks.get(block, Share(0, 0, 0.0, 0.0))
        blocks[block] = Share(
            old.modules + 1, old.kept_modules + int(any_kept), old.norm + norm**0.5, old.kept_norm + kept**0.5
        )
    ordered = dict(sorted(blocks.items(), key=_order))
    total = _sum(list(ordered.values()), len(factors), len({f.module.stem for f in fates if f.kept}))
    in_order = {k: tuple(sorted(dropped[k])) for k in singular.values() if k in dropped}
    return Coverage(total, ordered, in_order, dict(apart), text)


def _factors(path: Path, module: Module, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """B * scale and the Gram matrix A A^T: ||B[rows] A|| without forming B A (rank x rank, not out x in)."""
    down = read_array(path, module.down)
    return read_array(path, module.up) * scale, down @ down.T


def _square(rows: np.ndarray, gram: np.ndarray) -> float:
    """||rows A||_F^2 = trace(rows G rows^T) = sum((rows @ G) * rows), G = A A^T."""
    return max(float(((rows @ gram) * rows).sum()), 0.0)


def _sum(shares: Sequence[Share], modules: int, kept: int) -> Share:
    return Share(modules, kept, sum(s.norm for s in shares), sum(s.kept_norm for s in shares))


def _order(item: tuple[str, Any]) -> tuple[str, int]:
    name = item[0]
    stack, _, rest = name.partition("[")
    return (stack, int(rest.rstrip("]")) if rest else -1)
