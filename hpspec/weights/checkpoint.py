"""checkpoint: a plan applied to a diffusers transformer checkpoint on disk, without torch.

The pruned checkpoint is written at the speed of a file copy and in a few MB of memory, whatever
the model's size: every kept tensor is a byte range copied file-to-file (`os.copy_file_range`),
under a new safetensors header that renames and renumbers it. The last-block conversion is done on
bytes too: the rows of the text modulation it keeps are two contiguous ranges of the old tensor.

Every input is validated before anything is written (headers, shards against their index, the
config against the weights, the plan's fingerprint against the checkpoint's graph), and foreign
single-file layouts, LoRA adapters and pickle files are refused by name.
"""

from __future__ import annotations

import errno
import hashlib
import json
import math
import os
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

from hpspec.core.version import __version__
from hpspec.core import faults
from hpspec.model.arch import architecture
from hpspec.core.errors import CheckpointError, HpspecError, PlanError
from hpspec.model.graph import ModelGraph, check_config_counts, family_of_config, find_transformer, graph_from_headers, read_config, require_regular, tensors_from_config
from hpspec.core.io import cache_dir, dumps_json, read_json_input, write_text_atomic
from hpspec.plan.plan import Plan
from hpspec.model.safetensors_header import Header, TensorEntry, read_header
from hpspec.core.paths import CONFIG_NAME, PLAN_NAME, WEIGHTS_INDEX_SUFFIX, WEIGHTS_NAME

SHA256_PLACEHOLDER = "0" * 64  # same length as a digest: the header is patched in place once known
COPY_CHUNK = 1 << 30
RACY_NS = 2_000_000_000  # a file changed this recently is hashed but its digest not remembered


# --------------------------------------------------------------------------------------------
# Plan -> names: which tensors go, which are renamed, which are converted


def renamed(plan: Plan, name: str) -> str | None:
    """A tensor or module name after pruning: its block renumbered; None if its block is dropped."""
    for stack in plan.stacks.values():
        prefix = stack.module + "."
        if name.startswith(prefix):
            index, dot, rest = name[len(prefix) :].partition(".")
            if not index.isdigit():
                return name
            new = stack.index_map.get(index)
            return None if new is None else f"{stack.module}.{new}{dot}{rest}"
    return name


CONVERTED_MODULE = "norm1_context.linear"  # the one module the last-block conversion rewrites


def dropped_part_modules(plan: Plan) -> list[str]:
    """Module paths (original names) the plan's part drops remove."""
    return [m for op in plan.ops if op.kind == "drop_part" for m in op.modules]


def removed_modules(plan: Plan) -> list[str]:
    """Module paths (original names) whose tensors a plan removes inside kept blocks."""
    return dropped_part_modules(plan) + [m for m in _conversion_modules(plan) if not m.endswith("." + CONVERTED_MODULE)]


def converted_modules(plan: Plan) -> list[str]:
    """The modules the last-block conversion rewrites rather than removes."""
    return [m for m in _conversion_modules(plan) if m.endswith("." + CONVERTED_MODULE)]


def _conversion_modules(plan: Plan) -> list[str]:
    return [m for op in plan.ops if op.kind == "convert_last_block" for m in op.modules]


def under(name: str, modules: Iterable[str]) -> bool:
    return any(name == m or name.startswith(m + ".") for m in modules)


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
    ("model.diffusion_model.", "ComfyUI / original all-in-one (`model.diffusion_model.*`)", "SD3Transformer2DModel or FluxTransformer2DModel"),
    ("joint_blocks.", "Stability AI (SAI) reference SD3 (`joint_blocks.*`)", "SD3Transformer2DModel"),
    ("double_blocks.", "Black Forest Labs (BFL) reference FLUX (`double_blocks.*`)", "FluxTransformer2DModel"),
    ("single_blocks.", "Black Forest Labs (BFL) reference FLUX (`single_blocks.*`)", "FluxTransformer2DModel"),
)
_LORA = re.compile(r"(^|[._])(lora_[AaBb]|lora_(down|up)|lora\.(down|up))([._]|$)")


def refuse_foreign_layout(header: Header) -> None:
    """A LoRA adapter or a non-diffusers single-file layout: not supported yet, said by name."""
    names = list(header.tensors)
    lora = next((n for n in names if _LORA.search(n)), None)
    if lora is not None:
        raise CheckpointError(
            f"{header.path}: a LoRA adapter (tensor {lora!r}), not a transformer checkpoint: LoRA files are not "
            "supported yet; fuse the adapter into the transformer (diffusers `fuse_lora`, then `save_pretrained`) first"
        )
    for prefix, layout, loader in _FOREIGN_LAYOUTS:
        found = next((n for n in names if n.startswith(prefix)), None)
        if found is not None:
            raise CheckpointError(
                f"{header.path}: a single-file checkpoint in the {layout} key layout (tensor {found!r}): not supported "
                f"yet; convert it with diffusers ({loader}.from_single_file(FILE).save_pretrained(DIR)) and use DIR"
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
                raise CheckpointError(f"{index}: does not name {sibling}, shard {number} of {count} beside it (an incomplete index)")


def _check_config_matches_weights(config: Mapping[str, Any], config_path: Path, headers: Sequence[Header]) -> None:
    """config.json must imply exactly the tensors (names and shapes) the weights hold."""
    implied = tensors_from_config(config, str(config_path))
    held = {e.name: (e.shape, h.path) for h in headers for e in h.tensors.values()}
    for name, (shape, path) in held.items():
        if name not in implied:
            raise CheckpointError(f"{config_path}: does not match the weights: {path.name} holds {name!r}, which this config has no place for")
        if tuple(implied[name][0]) != tuple(shape):
            raise CheckpointError(
                f"{config_path}: does not match the weights: {name!r} is {list(shape)} in {path.name} "
                f"but {list(implied[name][0])} by config.json"
            )
    # A missing buffer is rebuilt by diffusers from the config (SD3's positional table): not an error.
    buffers = {t.name for rule in architecture(family_of_config(config, str(config_path))).outside for t in rule.tensors if t.buffer}
    missing = next((n for n in implied if n not in held and n not in buffers), None)
    if missing is not None:
        raise CheckpointError(f"{config_path}: does not match the weights: it implies {missing!r}, which no shard holds")


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
# The output layout: which byte ranges make each output tensor


@dataclass(frozen=True)
class Segment:
    """A byte range [begin, end) of a source file."""

    path: Path
    begin: int
    end: int


@dataclass(frozen=True)
class OutTensor:
    name: str
    dtype: str
    shape: tuple[int, ...]
    segments: tuple[Segment, ...]

    @property
    def nbytes(self) -> int:
        return sum(s.end - s.begin for s in self.segments)

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


def pruned_layout(plan: Plan, source: Source) -> list[list[OutTensor]]:
    """Output tensors per output shard: each source shard's kept tensors, in file order."""
    removed, converted = removed_modules(plan), converted_modules(plan)
    shards = []
    for header in source.headers:
        kept = []
        for entry in sorted(header.tensors.values(), key=lambda e: e.begin):
            new = renamed(plan, entry.name)
            if new is None or under(entry.name, removed):
                continue
            if under(entry.name, converted):
                kept.append(_converted(entry, new, header.path))
            else:
                kept.append(OutTensor(new, entry.dtype, entry.shape, (Segment(header.path, entry.begin, entry.end),)))
        if kept:
            shards.append(kept)
    return shards


def _converted(entry: TensorEntry, name: str, path: Path) -> OutTensor:
    """AdaLayerNormZero rows (shift, scale, gate, ...) -> AdaLayerNormContinuous rows (scale, shift).

    Both chunks are contiguous row ranges (the tensor is row-major), so this is two byte ranges.
    """
    rows = entry.shape[0] if entry.shape else 0
    if rows == 0 or rows % 6:
        raise CheckpointError(f"{path}: {entry.name!r} has shape {list(entry.shape)}; a 6-chunk modulation was expected")
    chunk = (entry.end - entry.begin) // 6
    shift = Segment(path, entry.begin, entry.begin + chunk)
    scale = Segment(path, entry.begin + chunk, entry.begin + 2 * chunk)
    return OutTensor(name, entry.dtype, (rows // 3, *entry.shape[1:]), (scale, shift))


def buffer_names(graph: ModelGraph) -> set[str]:
    """Stored tensors that are buffers, not parameters (SD3's positional table)."""
    return {t.name for o in graph.outside for t in o.tensors if t.buffer}


# --------------------------------------------------------------------------------------------
# Writing


@dataclass(frozen=True)
class Written:
    files: tuple[str, ...]  # weight files, in shard order
    tensors: int
    params: int
    nbytes: int
    source_sha256: Mapping[str, str]  # source shard file name -> sha256 of its bytes


def shard_names(count: int) -> list[str]:
    if count == 1:
        return [f"{WEIGHTS_NAME}.safetensors"]
    return [f"{WEIGHTS_NAME}-{i:05d}-of-{count:05d}.safetensors" for i in range(1, count + 1)]


def write_pruned(plan: Plan, source: Source, out: Path, progress: bool = True) -> Written:
    """Write the pruned checkpoint into the (empty, temporary) directory `out`.

    An OSError (a full disk) is left to the caller's `atomic_directory`, which names the real
    output path rather than the temporary one and removes what was written."""
    check_fingerprint(plan, source.graph, str(source.directory))
    layout = pruned_layout(plan, source)
    buffers = buffer_names(source.graph)
    params = sum(t.numel for shard in layout for t in shard if t.name not in buffers)
    if params != plan.params.after_prune:
        raise PlanError(
            f"{source.directory}: the pruned checkpoint would hold {params} parameters, the plan says "
            f"{plan.params.after_prune}; the plan does not fit this checkpoint"
        )
    return _write(plan, source, layout, params, out, progress)


def _write(plan: Plan, source: Source, layout: list[list[OutTensor]], params: int, out: Path, progress: bool) -> Written:
    names = shard_names(len(layout))
    metadata = _provenance(plan, source, {p.name: SHA256_PLACEHOLDER for p in source.shards})
    faults.point("prune.before_write", out)
    header_lengths = [_write_header(out / name, shard, metadata) for name, shard in zip(names, layout)]
    hashes = _copy_all(out, names, layout, sum(t.nbytes for shard in layout for t in shard), source.shards, progress)
    faults.point("prune.before_metadata", out)
    final = _provenance(plan, source, hashes)
    for name, shard, length in zip(names, layout, header_lengths):
        _patch_header(out / name, shard, final, length)
    if len(names) > 1:
        _write_index(out, names, layout)
    config = {**source.config, **plan.config}
    (out / CONFIG_NAME).write_text(dumps_json(config), encoding="utf-8")
    (out / PLAN_NAME).write_text(plan.to_json(), encoding="utf-8")
    for name in names:  # the output is read back through the same validation as any input
        read_header(out / name)
    return Written(tuple(names), sum(map(len, layout)), params, sum(t.nbytes for s in layout for t in s), hashes)


def _provenance(plan: Plan, source: Source, hashes: Mapping[str, str]) -> dict[str, str]:
    return {
        "format": "pt",
        "hpspec_version": __version__,
        "hpspec_plan_sha256": plan.sha256,
        "hpspec_target": plan.target.name,
        "hpspec_source_sha256": json.dumps(dict(hashes), sort_keys=True, separators=(",", ":")),
    }


def _header_bytes(shard: Sequence[OutTensor], metadata: Mapping[str, str]) -> bytes:
    header: dict[str, Any] = {"__metadata__": dict(metadata)}
    offset = 0
    for tensor in shard:
        header[tensor.name] = {"dtype": tensor.dtype, "shape": list(tensor.shape), "data_offsets": [offset, offset + tensor.nbytes]}
        offset += tensor.nbytes
    raw = json.dumps(header, separators=(",", ":"), sort_keys=True).encode()
    return raw + b" " * (-len(raw) % 8)  # tensor data 8-byte aligned, as safetensors writes it


def _write_header(path: Path, shard: Sequence[OutTensor], metadata: Mapping[str, str]) -> int:
    raw = _header_bytes(shard, metadata)
    with path.open("wb") as handle:
        handle.write(len(raw).to_bytes(8, "little") + raw)
    return len(raw)


def _patch_header(path: Path, shard: Sequence[OutTensor], metadata: Mapping[str, str], length: int) -> None:
    raw = _header_bytes(shard, metadata)
    if len(raw) != length:  # digests replace placeholders of the same length: a bug otherwise
        raise HpspecError(f"{path}: final header is {len(raw)} bytes, the placeholder {length}")
    fd = os.open(path, os.O_WRONLY)
    try:
        os.pwrite(fd, raw, 8)
    finally:
        os.close(fd)


def _write_index(out: Path, names: Sequence[str], layout: Sequence[Sequence[OutTensor]]) -> None:
    weight_map = {t.name: name for name, shard in zip(names, layout) for t in shard}
    total = sum(t.nbytes for shard in layout for t in shard)
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    (out / f"{WEIGHTS_NAME}{WEIGHTS_INDEX_SUFFIX}").write_text(dumps_json(index), encoding="utf-8")


# --------------------------------------------------------------------------------------------
# Copying byte ranges while the sources are hashed on the other core


def _runs(shard: Sequence[OutTensor]) -> Iterator[Segment]:
    """Coalesce consecutive segments of one file into single copies."""
    current: Segment | None = None
    for segment in (s for t in shard for s in t.segments):
        if current is not None and current.path == segment.path and current.end == segment.begin:
            current = Segment(current.path, current.begin, segment.end)
            continue
        if current is not None:
            yield current
        current = segment
    if current is not None:
        yield current


def _copy_all(
    out: Path, names: Sequence[str], layout: Sequence[Sequence[OutTensor]], total: int, sources: Sequence[Path], progress: bool
) -> dict[str, str]:
    hasher = _HashThread(sources)
    hasher.start()
    advance, close = _progress_bar(total, progress)
    try:
        for name, shard in zip(names, layout):
            with (out / name).open("r+b") as destination:  # not "ab": copy_file_range refuses O_APPEND
                destination.seek(0, os.SEEK_END)
                for run in _runs(shard):
                    _copy_range(run, destination.fileno(), advance)
            faults.point("prune.after_shard", out / name)
    except BaseException:
        hasher.stop.set()
        raise
    finally:
        close()
        hasher.join()
    return hasher.result()


def _copy_range(run: Segment, destination: int, advance: Callable[[int], None]) -> None:
    with run.path.open("rb") as handle:
        source, offset, left = handle.fileno(), run.begin, run.end - run.begin
        while left:
            count = _copy_chunk(source, destination, offset, min(left, COPY_CHUNK))
            if count == 0:
                raise CheckpointError(f"{run.path}: ended at byte {offset} while being copied (changed on disk?)")
            offset, left = offset + count, left - count
            advance(count)


_FALLBACK_ERRNOS = {errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL, errno.EPERM}


def _copy_chunk(source: int, destination: int, offset: int, count: int) -> int:
    """In-kernel copy where the platform has it; read/write where it does not (other OS, filesystem)."""
    if hasattr(os, "copy_file_range"):
        try:
            return os.copy_file_range(source, destination, count, offset)
        except OSError as error:
            if error.errno not in _FALLBACK_ERRNOS:
                raise
    data = os.pread(source, min(count, 8 << 20), offset)
    written = 0
    while written < len(data):
        written += os.write(destination, data[written:])
    return len(data)


class _HashThread(threading.Thread):
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
    entries). Without a usable cache directory every run hashes.
    """
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
    if unchanged and not _recently_changed(path) and not (stop is not None and stop.is_set()):
        try:
            entry.parent.mkdir(parents=True, exist_ok=True)
            write_text_atomic(entry, digest + "\n")
        except OSError:
            pass  # the cache only saves time
    return digest


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


def _progress_bar(total: int, enabled: bool) -> tuple[Callable[[int], None], Callable[[], None]]:
    """tqdm over bytes on stderr, when tqdm is installed and stderr is a terminal."""
    try:
        from tqdm import tqdm
    except ImportError:
        enabled = False
    if not enabled:
        return (lambda _count: None), (lambda: None)
    bar = tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc="prune", disable=None, leave=False)
    return bar.update, bar.close
