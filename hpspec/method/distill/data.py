"""Training data of the distill stage: the demo's digits and prompts, or a folder of pre-computed
latents and text embeddings (the pinned format, `docs/distill.md`; `build.py` writes one).

A source is a deterministic function of (rows, draws): which examples, and per example a uniform
number (the demo's template choice) and an unconditional flag. The training loop draws those for
the whole global batch from a generator seeded by (seed, step) and each process reads only its own
slice, so one process and N processes see the same examples, and a resumed run sees what an
uninterrupted one would have.

Folder format (version 1):
    DATA/manifest.json                  format, version, count, shapes, shard list, unconditional
    DATA/data-00000.safetensors ...     latents (n, C, H, W), encoder_hidden_states (n, T, D),
                                        pooled_projections (n, P)
    DATA/unconditional.safetensors      optional: the empty prompt's encoder_hidden_states (1, T, D)
                                        and pooled_projections (1, P)
Latents are in the transformer's input space (VAE latents minus `shift_factor`, times
`scaling_factor`), unpacked (FLUX's 2x2 packing is done at training time).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from hpspec.core.errors import DataError
from hpspec.core.io import read_json_input
from hpspec.model.arch import architecture
from hpspec.model.safetensors_header import read_header
from hpspec.model.targets import DEMO  # `--data demo`: the demo's own digits and prompts

if TYPE_CHECKING:
    import torch

FORMAT = "hpspec-distill-data"
VERSION = 1
MANIFEST_NAME = "manifest.json"
UNCONDITIONAL_NAME = "unconditional.safetensors"
LATENTS, STATES, POOLED = "latents", "encoder_hidden_states", "pooled_projections"
DEMO_UNCONDITIONAL_FRACTION = 0.1  # the demo model was trained with this prompt dropout (CFG)
DEFAULT_UNCONDITIONAL_FRACTION = 0.1


@dataclass(frozen=True)
class Batch:
    """Clean latents x0 and their text conditioning, on the CPU in float32."""

    latents: torch.Tensor  # (B, C, H, W)
    states: torch.Tensor  # (B, T, D)
    pooled: torch.Tensor  # (B, P)


@dataclass(frozen=True)
class Shapes:
    latent: tuple[int, int, int]  # C, H, W
    text: tuple[int, int]  # T, D
    pooled: int


class DistillData(Protocol):
    """A data source of the distill stage (the demo's digits, or a latent folder)."""

    @property
    def shapes(self) -> Shapes: ...

    @property
    def unconditional_fraction(self) -> float:
        """The fraction of examples trained with the empty prompt."""
        ...

    def __len__(self) -> int: ...

    def batch(self, rows: torch.Tensor, uniform: torch.Tensor, unconditional: torch.Tensor) -> Batch:
        """Examples `rows`; `uniform` in [0, 1) picks among variants; `unconditional` marks empty prompts."""
        ...

    def describe(self) -> dict[str, Any]: ...


def open_data(source: str) -> DistillData:
    """`--data`: `demo`, or a folder in the pinned format."""
    if source == DEMO:
        return DemoData.load()
    return LatentFolder.open(Path(source))


def check_fits(data: DistillData, family: str, config: Mapping[str, Any], where: str) -> None:
    """The data's shapes against the transformer's config: channels, text width, pooled width, size."""
    channels, height, width = data.shapes.latent
    text_width, pooled = data.shapes.text[1], data.shapes.pooled
    rule = architecture(family).latents
    packing, wanted_channels = rule.multiple_for(config), rule.channels_for(config)
    problems = []
    if channels != wanted_channels:
        problems.append(f"latents have {channels} channels, the model takes {wanted_channels}")
    if height % packing or width % packing:
        problems.append(f"latents are {height}x{width}, not a multiple of the model's {packing}x{packing} patches")
    side = rule.max_side
    if side is not None and max(height, width) // packing > int(config.get(side) or 10**9):
        problems.append(f"latents of {height}x{width} exceed the model's {side} {config.get(side)}")
    if text_width != int(config["joint_attention_dim"]):
        problems.append(
            f"text embeddings are {text_width} wide, the model's joint_attention_dim is {config['joint_attention_dim']}"
        )
    if pooled != int(config["pooled_projection_dim"]):
        problems.append(
            f"pooled embeddings are {pooled} wide, the model's pooled_projection_dim is {config['pooled_projection_dim']}"
        )
    if problems:
        raise DataError(f"{where}: does not fit the model: " + "; ".join(problems))


# --------------------------------------------------------------------------------------------
# The demo: 1797 digits in model space, 12 prompt templates per digit, MiniLM-encoded


@dataclass(frozen=True)
class DemoData:
    images: torch.Tensor  # (N, 1, 8, 8) in [-1, 1]: the demo model's latent space is pixels
    labels: torch.Tensor
    prompts: torch.Tensor  # (10 * templates, T, D): row d * templates + k
    pooled_prompts: torch.Tensor
    empty: tuple[torch.Tensor, torch.Tensor]
    templates: int
    shapes: Shapes
    unconditional_fraction: float = DEMO_UNCONDITIONAL_FRACTION

    @classmethod
    def load(cls) -> DemoData:
        from hpspec.demo.data import digits_model_space
        from hpspec.demo.text import load_text_encoder
        from hpspec.demo.training import PromptBank

        images, labels = digits_model_space()
        bank = PromptBank.build(load_text_encoder())
        _, channels, height, width = images.shape
        _, tokens, dim = bank.text.states.shape
        shapes = Shapes((channels, height, width), (tokens, dim), bank.text.pooled.shape[1])
        empty = (bank.empty.states, bank.empty.pooled)
        return cls(images, labels, bank.text.states, bank.text.pooled, empty, bank.templates, shapes)

    def __len__(self) -> int:
        return self.images.shape[0]

    def batch(self, rows: torch.Tensor, uniform: torch.Tensor, unconditional: torch.Tensor) -> Batch:
        import torch

        template = (uniform * self.templates).long().clamp(max=self.templates - 1)
        text_rows = self.labels[rows] * self.templates + template
        drop = unconditional.view(-1, 1, 1)
        states = torch.where(drop, self.empty[0], self.prompts[text_rows])
        pooled = torch.where(drop.view(-1, 1), self.empty[1], self.pooled_prompts[text_rows])
        return Batch(self.images[rows], states, pooled)

    def describe(self) -> dict[str, Any]:
        return {
            "source": DEMO,
            "examples": len(self),
            "what": "scikit-learn's 8x8 digits in [-1, 1]; a random training template per example, MiniLM-encoded",
            "unconditional_fraction": self.unconditional_fraction,
        }


# --------------------------------------------------------------------------------------------
# The folder format


@dataclass(frozen=True)
class ShardInfo:
    path: Path
    count: int


@dataclass
class LatentFolder:
    """A validated folder; rows are read lazily, one safetensors slice each (files may be large)."""

    directory: Path
    shards: tuple[ShardInfo, ...]
    shapes: Shapes
    unconditional_fraction: float
    manifest: dict[str, Any]
    _handles: dict[Path, Any]

    @classmethod
    def open(cls, directory: Path) -> LatentFolder:
        manifest = _read_manifest(directory)
        shapes = Shapes(
            _dims(manifest, "latent_shape", 3, directory), _dims(manifest, "text_shape", 2, directory),
            _dims(manifest, "pooled_dim", 1, directory)[0],
        )  # fmt: skip
        shards = tuple(_check_shard(directory, entry, shapes) for entry in _list(manifest, "shards", directory))
        if sum(s.count for s in shards) != manifest["count"] or not shards:
            raise DataError(
                f"{directory / MANIFEST_NAME}: count {manifest['count']} is not the sum of its shards' counts"
            )
        fraction = 0.0
        if manifest.get("unconditional"):
            _check_unconditional(directory / str(manifest["unconditional"]), shapes)
            fraction = float(manifest.get("unconditional_fraction", DEFAULT_UNCONDITIONAL_FRACTION))
            if not 0.0 <= fraction < 1.0:
                raise DataError(f"{directory / MANIFEST_NAME}: unconditional_fraction {fraction} is not in [0, 1)")
        return cls(directory, shards, shapes, fraction, manifest, {})

    def __len__(self) -> int:
        return int(self.manifest["count"])

    def batch(self, rows: torch.Tensor, uniform: torch.Tensor, unconditional: torch.Tensor) -> Batch:
        import torch

        latents, states, pooled = [], [], []
        for row in rows.tolist():
            shard, offset = self._locate(row)
            handle = self._handle(shard.path)
            latents.append(handle.get_slice(LATENTS)[offset : offset + 1])
            states.append(handle.get_slice(STATES)[offset : offset + 1])
            pooled.append(handle.get_slice(POOLED)[offset : offset + 1])
        batch = Batch(*(torch.cat(parts).float() for parts in (latents, states, pooled)))
        if not bool(unconditional.any()):
            return batch
        empty_states, empty_pooled = self._unconditional()
        drop = unconditional.view(-1, 1, 1)
        return Batch(
            batch.latents,
            torch.where(drop, empty_states, batch.states),
            torch.where(drop.view(-1, 1), empty_pooled, batch.pooled),
        )

    def describe(self) -> dict[str, Any]:
        return {
            "source": str(self.directory),
            "examples": len(self),
            "latent_shape": list(self.shapes.latent),
            "text_shape": list(self.shapes.text),
            "pooled_dim": self.shapes.pooled,
            "unconditional_fraction": self.unconditional_fraction,
            "description": self.manifest.get("description"),
        }

    def _locate(self, row: int) -> tuple[ShardInfo, int]:
        for shard in self.shards:
            if row < shard.count:
                return shard, row
            row -= shard.count
        raise IndexError(row)

    def _handle(self, path: Path) -> Any:
        from safetensors import safe_open

        if path not in self._handles:
            self._handles[path] = safe_open(str(path), framework="pt")
        return self._handles[path]

    def _unconditional(self) -> tuple[torch.Tensor, torch.Tensor]:
        handle = self._handle(self.directory / str(self.manifest["unconditional"]))
        return handle.get_tensor(STATES).float(), handle.get_tensor(POOLED).float()


def _read_manifest(directory: Path) -> dict[str, Any]:
    path = directory / MANIFEST_NAME
    if not directory.is_dir():
        raise DataError(f"{directory}: --data is `demo` or a folder of latents (docs/distill.md); no such folder")
    if not path.is_file():
        raise DataError(f"{directory}: no {MANIFEST_NAME}; a distillation data folder is described in docs/distill.md")
    manifest = read_json_input(path, "data manifest")
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise DataError(f'{path}: not an hpspec data manifest (expected "format": "{FORMAT}")')
    if manifest.get("version") != VERSION:
        raise DataError(f"{path}: version {manifest.get('version')!r}; this hpspec reads version {VERSION}")
    count = manifest.get("count")
    if not isinstance(count, int) or isinstance(count, bool) or count < 1:
        raise DataError(f"{path}: count must be a positive integer, got {count!r}")
    return manifest


def _dims(manifest: Mapping[str, Any], key: str, length: int, directory: Path) -> Any:
    value = manifest.get(key)
    value = [value] if length == 1 and isinstance(value, int) else value
    if (
        not isinstance(value, list)
        or len(value) != length
        or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value)
    ):
        raise DataError(
            f"{directory / MANIFEST_NAME}: {key} must be {length} positive integer(s), got {manifest.get(key)!r}"
        )
    return tuple(value)


def _list(manifest: Mapping[str, Any], key: str, directory: Path) -> list[Any]:
    value = manifest.get(key)
    if not isinstance(value, list):
        raise DataError(f"{directory / MANIFEST_NAME}: {key} must be a list")
    return value


def _check_shard(directory: Path, entry: Any, shapes: Shapes) -> ShardInfo:
    where = directory / MANIFEST_NAME
    if not isinstance(entry, dict) or not isinstance(entry.get("file"), str) or not isinstance(entry.get("count"), int):
        raise DataError(f'{where}: a shard is {{"file": NAME, "count": N}}, got {entry!r}')
    path = directory / entry["file"]
    if Path(entry["file"]).name != entry["file"] or not path.is_file():
        raise DataError(f"{where}: shard {entry['file']!r} is not a file inside {directory}")
    count = entry["count"]
    expected = {LATENTS: (count, *shapes.latent), STATES: (count, *shapes.text), POOLED: (count, shapes.pooled)}
    _check_tensors(path, expected)
    return ShardInfo(path, count)


def _check_unconditional(path: Path, shapes: Shapes) -> None:
    if not path.is_file():
        raise DataError(f"{path}: named by the manifest as the unconditional embedding, but missing")
    _check_tensors(path, {STATES: (1, *shapes.text), POOLED: (1, shapes.pooled)})


def _check_tensors(path: Path, expected: Mapping[str, tuple[int, ...]]) -> None:
    tensors = read_header(path).tensors
    for name, shape in expected.items():
        entry = tensors.get(name)
        if entry is None:
            raise DataError(f"{path}: holds no tensor {name!r} (expected shape {list(shape)})")
        if tuple(entry.shape) != shape:
            raise DataError(f"{path}: {name!r} has shape {list(entry.shape)}, the manifest implies {list(shape)}")
        if entry.dtype not in ("F32", "F16", "BF16"):
            raise DataError(f"{path}: {name!r} is {entry.dtype}; latents and embeddings are F32, F16 or BF16")
