"""source: a diffusers transformer checkpoint on disk, read and validated without torch (and checked
against a plan's fingerprint), and the sha256 of its shards (remembered per file state in hpspec's
cache).

Every input is validated before anything is written (headers, shards against their index, the
config against the weights), and foreign single-file layouts, LoRA adapters and pickle files are
refused by name.
"""

from __future__ import annotations

import hashlib
import os
import re
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hpspec.core.errors import CheckpointError, PlanError
from hpspec.core.io import cache_dir, read_json_input, write_text_atomic
from hpspec.core.paths import WEIGHTS_INDEX_SUFFIX
from hpspec.model.arch import architecture
from hpspec.model.graph import ModelGraph, family_of_config, graph_from_headers, tensors_from_config
from hpspec.model.safetensors_header import Header, read_header
from hpspec.model.targets import check_config_counts, find_transformer, read_config, require_regular
from hpspec.plan.plan import Plan
from hpspec.weights.checkpoint.tensors import OutTensor

RACY_NS = 2_000_000_000  # a file changed this recently is hashed but its digest not remembered


# --------------------------------------------------------------------------------------------
# Reading and validating a source checkpoint


@dataclass(frozen=True)
class Source:
    """A diffusers transformer checkpoint on disk, validated and described as a graph."""

    directory: Path  # the transformer directory (inside a pipeline root or a cache snapshot)
    config_path: Path
    config: Mapping[str, Any]
    headers: tuple[Header, ...]  # one per shard, in shard order
    graph: ModelGraph
    # A single file in another layout (hpspec.weights.formats): its tensors by diffusers name, and
    # its layout (bfl, sai, comfyui); `directory` is then the file itself. Empty for a diffusers folder.
    tensors: tuple[OutTensor, ...] = ()
    layout: str = "diffusers"

    @property
    def shards(self) -> tuple[Path, ...]:
        return tuple(h.path for h in self.headers)


def open_source(path: Path) -> Source:
    """Find, validate and describe a transformer checkpoint (directory, pipeline root or snapshot)."""
    config_path, shards = find_transformer(Path(path))
    if not shards:
        raise CheckpointError(f"{path}: holds no .safetensors weights, only a config; there is nothing to prune")
    directory = shards[0].parent
    for shard in shards:
        require_regular(shard)
    headers = tuple(read_header(shard) for shard in shards)
    for header in headers:
        refuse_foreign_layout(header)
    if config_path is None:
        raise CheckpointError(
            f"{directory}: no config.json beside the weights; hpspec needs the diffusers config to write a loadable model"
        )
    require_regular(config_path)
    _check_index(directory, headers)
    config = read_config(config_path)
    graph = graph_from_headers(headers, _model_name(directory), f"safetensors:{directory}", config)
    check_config_counts(graph, config, config_path)  # a lying layer count, said as such
    _check_config_matches_weights(config, config_path, headers)
    return Source(directory, config_path, config, headers, graph)


def _model_name(directory: Path) -> str:
    return directory.parent.name if directory.name == "transformer" else directory.name


# Key prefixes of single-file layouts hpspec does not read (yet): (prefix, layout, diffusers loader).
_FOREIGN_LAYOUTS = (
    (
        "model.diffusion_model.",
        "ComfyUI / original all-in-one (`model.diffusion_model.*`)",
        "SD3Transformer2DModel or FluxTransformer2DModel",
    ),
    ("joint_blocks.", "Stability AI (SAI) reference SD3 (`joint_blocks.*`)", "SD3Transformer2DModel"),
    ("double_blocks.", "Black Forest Labs (BFL) reference FLUX (`double_blocks.*`)", "FluxTransformer2DModel"),
    ("single_blocks.", "Black Forest Labs (BFL) reference FLUX (`single_blocks.*`)", "FluxTransformer2DModel"),
)
_LORA = re.compile(r"(^|[._])(lora_[AaBb]|lora_(down|up)|lora\.(down|up))([._]|$)")


def refuse_lora(header: Header) -> None:
    """A LoRA adapter is not a transformer checkpoint: said by name."""
    lora = next((n for n in header.tensors if _LORA.search(n)), None)
    if lora is not None:
        raise CheckpointError(
            f"{header.path}: a LoRA adapter (tensor {lora!r}), not a transformer checkpoint: LoRA files are not "
            "supported yet; fuse the adapter into the transformer (diffusers `fuse_lora`, then `save_pretrained`) first"
        )


def refuse_foreign_layout(header: Header) -> None:
    """A LoRA adapter, or a shard of a diffusers folder in a single-file layout: said by name."""
    refuse_lora(header)
    names = list(header.tensors)
    for prefix, layout, _loader in _FOREIGN_LAYOUTS:
        found = next((n for n in names if n.startswith(prefix)), None)
        if found is not None:
            raise CheckpointError(
                f"{header.path}: a single-file checkpoint in the {layout} key layout (tensor {found!r}) inside a "
                f"diffusers folder; name the file itself (--model {header.path}) to read it in its own layout"
            )


def _check_index(directory: Path, headers: Sequence[Header]) -> None:
    """The index, if any, and the shards' headers must name the same tensors in the same shards."""
    owner: dict[str, Path] = {}
    for header in headers:
        for name in header.tensors:
            if name in owner:
                raise CheckpointError(f"{header.path}: tensor {name!r} is also in {owner[name].name}")
            owner[name] = header.path
    indexes = sorted(directory.glob(f"*{WEIGHTS_INDEX_SUFFIX}"))
    if not indexes:
        return
    index = indexes[0]
    weight_map: Mapping[str, str] = read_json_input(index, "safetensors index")["weight_map"]
    for name, shard in weight_map.items():
        if name not in owner:
            raise CheckpointError(f"{index}: names tensor {name!r} in {shard}, but no shard holds it")
        if owner[name].name != shard:
            raise CheckpointError(f"{index}: names tensor {name!r} in {shard}, but it is in {owner[name].name}")
    unnamed = next((n for n in owner if n not in weight_map), None)
    if unnamed is not None:
        raise CheckpointError(f"{owner[unnamed]}: holds tensor {unnamed!r}, which {index.name} does not name")
    _refuse_unindexed_shard(index, set(weight_map.values()))


_SHARD_NAME = re.compile(r"(?P<stem>.+)-\d{5}-of-(?P<count>\d{5})\.safetensors")


def _refuse_unindexed_shard(index: Path, named: set[str]) -> None:
    """A shard of the index's own series (`X-00002-of-00002`) on disk but not named by it: an
    incomplete index, which would otherwise read as a config that implies missing tensors."""
    for shard in sorted(named):
        match = _SHARD_NAME.fullmatch(shard)
        if match is None:
            continue
        count = int(match["count"])
        for number in range(1, count + 1):
            sibling = f"{match['stem']}-{number:05d}-of-{match['count']}.safetensors"
            if sibling not in named and os.path.lexists(index.parent / sibling):
                raise CheckpointError(
                    f"{index}: does not name {sibling}, shard {number} of {count} beside it (an incomplete index)"
                )


def _check_config_matches_weights(config: Mapping[str, Any], config_path: Path, headers: Sequence[Header]) -> None:
    """config.json must imply exactly the tensors (names and shapes) the weights hold."""
    implied = tensors_from_config(config, str(config_path))
    held = {e.name: (e.shape, h.path) for h in headers for e in h.tensors.values()}
    for name, (shape, path) in held.items():
        if name not in implied:
            raise CheckpointError(
                f"{config_path}: does not match the weights: {path.name} holds {name!r}, which this config has no place for"
            )
        if tuple(implied[name][0]) != tuple(shape):
            raise CheckpointError(
                f"{config_path}: does not match the weights: {name!r} is {list(shape)} in {path.name} "
                f"but {list(implied[name][0])} by config.json"
            )
    # A missing buffer is rebuilt by diffusers from the config (SD3's positional table): not an error.
    buffers = {
        t.name
        for rule in architecture(family_of_config(config, str(config_path))).outside
        for t in rule.tensors
        if t.buffer
    }
    missing = next((n for n in implied if n not in held and n not in buffers), None)
    if missing is not None:
        raise CheckpointError(
            f"{config_path}: does not match the weights: it implies {missing!r}, which no shard holds"
        )


def check_fingerprint(plan: Plan, graph: ModelGraph, where: str) -> None:
    """The plan was compiled for this model's structure, or a PlanError naming both."""
    if plan.target.fingerprint != graph.fingerprint:
        raise PlanError(
            f"{where}: is not the model the plan of {plan.spec.path} was compiled for: the plan's target "
            f"`{plan.target.name}` is {plan.target.family} {plan.target.fingerprint}, this model is {graph.family} "
            f"{graph.fingerprint} ({_shape_summary(graph)}); point the spec's `target` at this model, or pass --target"
        )


def _shape_summary(graph: ModelGraph) -> str:
    return ", ".join(f"{len(stack)} {stack.name}" for stack in graph.stacks)


# --------------------------------------------------------------------------------------------
# Hashing the source shards (provenance)


class HashThread(threading.Thread):
    """sha256 of every source shard (provenance), computed while the main thread copies."""

    def __init__(self, paths: Sequence[Path]):
        super().__init__(name="hpspec-sha256", daemon=True)
        self.paths = list(paths)
        self.digests: dict[str, str] = {}
        self.error: BaseException | None = None
        self.stop = threading.Event()  # set when the copy fails: no need to finish hashing

    def run(self) -> None:
        try:
            for path in self.paths:
                self.digests[path.name] = source_sha256(path, self.stop)
        except BaseException as error:  # re-raised in the caller's thread
            self.error = error

    def result(self) -> dict[str, str]:
        if isinstance(self.error, OSError):
            raise CheckpointError(f"cannot read a source shard: {self.error}") from None
        if self.error is not None:
            raise self.error
        return self.digests


def source_sha256(path: Path, stop: threading.Event | None = None) -> str:
    """sha256 of a source shard; remembered per file state, because hashing is slower than copying.

    The cache key is the file's identity and state (real path, device, inode, size, mtime and
    ctime in ns): any write to the file changes it. A digest is stored only if the file did not
    change while it was read, and not within the last RACY_NS: timestamps are coarser than a
    nanosecond, so a second write in the same tick would otherwise go unnoticed (git's "racy"
    entries). Without a usable cache directory every run hashes. A Hugging Face cache snapshot's
    file is not read at all: its blob's name is its sha256 (`blob_digest`).
    """
    named = blob_digest(path)
    if named is not None:
        return named
    entry = _cache_entry(path)
    if entry is not None:
        try:
            cached = entry.read_text(encoding="ascii").strip()
            if re.fullmatch(r"[0-9a-f]{64}", cached):
                return cached
        except (OSError, UnicodeDecodeError):
            pass
    digest = sha256_file(path, stop)
    unchanged = entry is not None and entry == _cache_entry(path)
    if entry is not None and unchanged and not _recently_changed(path) and not (stop is not None and stop.is_set()):
        try:
            entry.parent.mkdir(parents=True, exist_ok=True)
            write_text_atomic(entry, digest + "\n")
        except OSError:
            pass  # the cache only saves time
    return digest


def blob_digest(path: Path) -> str | None:
    """The sha256 a Hugging Face cache names a snapshot file's blob by (`snapshots/REV/F` is a symlink
    to `../../blobs/SHA256`, for LFS files, which weights are); None for any other file."""
    if not os.path.islink(path):
        return None
    target = Path(os.path.realpath(path))
    if target.parent.name == "blobs" and (target.parent.parent / "snapshots").is_dir():
        return target.name if re.fullmatch(r"[0-9a-f]{64}", target.name) else None
    return None


def hash_cache_dir() -> Path | None:
    """hpspec's per-user cache (hpspec.io.cache_dir): digests go in its sha256/."""
    return cache_dir()


def _recently_changed(path: Path) -> bool:
    info = os.stat(path)
    return time.time_ns() - max(info.st_mtime_ns, info.st_ctime_ns) < RACY_NS


def _cache_entry(path: Path) -> Path | None:
    root = hash_cache_dir()
    if root is None:
        return None
    info = os.stat(path)
    state = f"{os.path.realpath(path)}\0{info.st_dev}\0{info.st_ino}\0{info.st_size}\0{info.st_mtime_ns}\0{info.st_ctime_ns}"
    return root / "sha256" / hashlib.sha256(state.encode()).hexdigest()


def sha256_file(path: Path, stop: threading.Event | None = None) -> str:
    digest = hashlib.sha256()
    buffer = bytearray(8 << 20)
    view = memoryview(buffer)
    with path.open("rb", buffering=0) as handle:
        while (count := handle.readinto(buffer)) and not (stop is not None and stop.is_set()):
            digest.update(view[:count])
    return digest.hexdigest()
