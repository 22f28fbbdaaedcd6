"""Broken checkpoints and injected faults: the hostile half of `hpspec compile`'s inputs.

Checkpoints are written here without torch (a tiny SD3 transformer from its config: F32 values,
sharded, with an index), so `bench/fuzz.py` runs the same corpus as the tests. Each corruption
damages a copy of a good checkpoint and returns the file a clear error must name.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import random
import shutil
import signal
import struct
import subprocess
import sys
from array import array
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

from hpspec.core.errors import HpspecError
from hpspec.core.faults import ENV as FAULT_ENV, InjectedFault
from hpspec.model.graph import tensors_from_config
from hpspec.core.io import TMP_MARKER
from hpspec.model.safetensors_header import read_header

REPO = Path(__file__).resolve().parent.parent
WEIGHTS = "diffusion_pytorch_model"
INDEX_NAME = f"{WEIGHTS}.safetensors.index.json"
SPEC = "drop blocks[1]\n"  # no target: checked against the checkpoint itself
PWNED = "PWNED"  # what a malicious pickle in the corpus would create if it were ever loaded

# diffusers' SD3 at CPU-test size: 4 blocks, ~160k parameters, ~650 KB in F32.
TINY_SD3: Mapping[str, Any] = dict(
    _class_name="SD3Transformer2DModel", sample_size=16, patch_size=2, in_channels=4, num_layers=4, attention_head_dim=8,
    num_attention_heads=4, joint_attention_dim=32, caption_projection_dim=32, pooled_projection_dim=32, out_channels=4,
    pos_embed_max_size=16,
)  # fmt: skip


# --------------------------------------------------------------------------------------------
# A good checkpoint, written without torch


def write_checkpoint(directory: Path, shards: int = 2, seed: int = 0, config: Mapping[str, Any] = TINY_SD3) -> Path:
    """A diffusers transformer directory: config.json, `shards` F32 safetensors files, an index if several."""
    directory.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    tensors = sorted(tensors_from_config(config, str(directory), "F32").items())
    per_shard = math.ceil(len(tensors) / shards)
    groups = [tensors[i : i + per_shard] for i in range(0, len(tensors), per_shard)]
    names = [f"{WEIGHTS}-{i:05d}-of-{len(groups):05d}.safetensors" for i in range(1, len(groups) + 1)]
    if len(groups) == 1:
        names = [f"{WEIGHTS}.safetensors"]
    weight_map = {}
    for name, group in zip(names, groups):
        payload = {t: array("f", (rng.uniform(-0.2, 0.2) for _ in range(math.prod(shape)))).tobytes() for t, (shape, _) in group}
        write_safetensors(directory / name, {t: ("F32", list(shape), payload[t]) for t, (shape, _) in group})
        weight_map.update({t: name for t, _ in group})
    if len(groups) > 1:
        total = sum(4 * math.prod(shape) for _, (shape, _) in tensors)
        (directory / INDEX_NAME).write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}))
    (directory / "config.json").write_text(json.dumps(dict(config), indent=2))
    return directory


def write_safetensors(path: Path, tensors: Mapping[str, tuple[str, list[int], bytes]], metadata: Mapping[str, str] | None = None) -> None:
    """name -> (dtype, shape, raw bytes), laid out in the given order."""
    header: dict[str, Any] = {"__metadata__": dict(metadata or {"format": "pt"})}
    offset = 0
    for name, (dtype, shape, data) in tensors.items():
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + b"".join(data for _, _, data in tensors.values()))


# --------------------------------------------------------------------------------------------
# Header surgery


def read_raw(shard: Path) -> tuple[dict[str, Any], bytes]:
    data = shard.read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8 : 8 + length]), data[8 + length :]


def write_raw(shard: Path, header: Mapping[str, Any], body: bytes) -> None:
    raw = json.dumps(header).encode()
    shard.write_bytes(struct.pack("<Q", len(raw)) + raw + body)


def shards_of(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.safetensors"))


def tensor_names(header: Mapping[str, Any]) -> list[str]:
    """In file order."""
    return sorted((k for k in header if k != "__metadata__"), key=lambda k: header[k]["data_offsets"][0])


def edit_header(edit: Callable[[dict[str, Any]], None], which: int = 0) -> Callable[[Path], Path]:
    def make(directory: Path) -> Path:
        shard = shards_of(directory)[which]
        header, body = read_raw(shard)
        edit(header)
        write_raw(shard, header, body)
        return shard

    return make


def overlap(header: dict[str, Any]) -> None:
    first, second = (header[n] for n in tensor_names(header)[:2])
    length = second["data_offsets"][1] - second["data_offsets"][0]
    second["data_offsets"] = [first["data_offsets"][0], first["data_offsets"][0] + length]


def out_of_range(header: dict[str, Any]) -> None:
    last = header[tensor_names(header)[-1]]
    length = last["data_offsets"][1] - last["data_offsets"][0]
    last["data_offsets"] = [1 << 40, (1 << 40) + length]


def wrong_dtype(header: dict[str, Any]) -> None:
    header[tensor_names(header)[0]]["dtype"] = "F12"


def shape_disagrees(header: dict[str, Any]) -> None:
    header[tensor_names(header)[0]]["shape"][0] += 1


def negative_dimension(header: dict[str, Any]) -> None:
    header[tensor_names(header)[0]]["shape"] = [-1, 4]


def metadata_not_strings(header: dict[str, Any]) -> None:
    header["__metadata__"] = {"format": ["pt"]}


def truncate(directory: Path) -> Path:
    shard = shards_of(directory)[-1]
    shard.write_bytes(shard.read_bytes()[:-100])
    return shard


def header_past_end(directory: Path) -> Path:
    shard = shards_of(directory)[0]
    shard.write_bytes(struct.pack("<Q", 1 << 24) + shard.read_bytes()[8:1000])
    return shard


def header_over_limit(directory: Path) -> Path:
    shard = shards_of(directory)[0]
    shard.write_bytes(struct.pack("<Q", 1 << 62) + shard.read_bytes()[8:])
    return shard


def empty_file(directory: Path) -> Path:
    shard = shards_of(directory)[0]
    shard.write_bytes(b"")
    return shard


def header_not_json(directory: Path) -> Path:
    shard = shards_of(directory)[0]
    _, body = read_raw(shard)
    raw = b"\xff{not json" + b" " * 5
    shard.write_bytes(struct.pack("<Q", len(raw)) + raw + body)
    return shard


def trailing_bytes(directory: Path) -> Path:
    shard = shards_of(directory)[0]
    with shard.open("ab") as handle:
        handle.write(b"\0" * 12)
    return shard


def shard_missing_from_index(directory: Path) -> Path:
    """The index forgets every tensor of the last shard (the shard itself is still there)."""
    index = directory / INDEX_NAME
    data = json.loads(index.read_text())
    last = shards_of(directory)[-1].name
    data["weight_map"] = {k: v for k, v in data["weight_map"].items() if v != last}
    index.write_text(json.dumps(data))
    return index


def index_names_missing_shard(directory: Path) -> Path:
    shards_of(directory)[-1].unlink()
    return directory / INDEX_NAME


def index_not_json(directory: Path) -> Path:
    index = directory / INDEX_NAME
    index.write_text('{"weight_map": ')
    return index


def index_escapes(directory: Path) -> Path:
    index = directory / INDEX_NAME
    data = json.loads(index.read_text())
    name = next(iter(data["weight_map"]))
    data["weight_map"][name] = "../../etc/passwd"
    index.write_text(json.dumps(data))
    return index


def tensor_in_two_shards(directory: Path) -> Path:
    first, second = shards_of(directory)[:2]
    header, body = read_raw(first)
    name = tensor_names(header)[0]
    other, other_body = read_raw(second)
    begin, end = header[name]["data_offsets"]
    size = len(other_body)
    other[name] = {**header[name], "data_offsets": [size, size + end - begin]}
    write_raw(second, other, other_body + body[begin:end])
    return second


def config_layer_count(delta: int) -> Callable[[Path], Path]:
    def make(directory: Path) -> Path:
        config = directory / "config.json"
        data = json.loads(config.read_text())
        data["num_layers"] += delta
        config.write_text(json.dumps(data))
        return config

    return make


def config_not_json(directory: Path) -> Path:
    config = directory / "config.json"
    config.write_text("{'num_layers': 4}")
    return config


def link_outside(which: str, kind: str) -> Callable[[Path], Path]:
    """Replace `which` (a shard, the index or the config) with a symlink to something outside that is
    not a regular file: a FIFO (opening it would block), /dev/zero (endless) or a directory."""

    def make(directory: Path) -> Path:
        victim = {"shard": shards_of(directory)[0], "index": directory / INDEX_NAME, "config": directory / "config.json"}[which]
        outside = directory.parent / f"outside-{which}-{kind}"
        if kind == "fifo":
            os.mkfifo(outside)
        elif kind == "directory":
            outside.mkdir()
        else:
            outside = Path("/dev/zero")
        victim.unlink()
        victim.symlink_to(outside)
        return victim

    return make


def pickle_weights(directory: Path) -> Path:
    """Weights as a pickle that runs `touch PWNED` when loaded: refused unread, PWNED never appears."""
    for file in directory.glob("*.safetensors*"):
        file.unlink()
    weights = directory / f"{WEIGHTS}.bin"
    weights.write_bytes(b"cos\nsystem\n(S'touch " + str(directory / PWNED).encode() + b"'\ntR.")
    return weights


def poison(value: float, tensor: int = 5, element: int = 7) -> Callable[[Path], Path]:
    """Put `value` (NaN or infinity) into one element of one tensor: only --verify can see it."""

    def make(directory: Path) -> Path:
        shard = shards_of(directory)[-1]
        header, body = read_raw(shard)
        name = tensor_names(header)[tensor]
        begin = header[name]["data_offsets"][0] + 4 * element
        write_raw(shard, header, body[:begin] + struct.pack("<f", value) + body[begin + 4 :])
        return shard

    return make


@dataclass(frozen=True)
class Corruption:
    name: str
    make: Callable[[Path], Path]  # damages a checkpoint directory, returns the file the error must name
    problem: str  # words the one-line message must contain
    flags: tuple[str, ...] = ()


CORRUPTIONS: tuple[Corruption, ...] = (
    Corruption("truncated", truncate, "truncated"),
    Corruption("empty-file", empty_file, "truncated"),
    Corruption("header-length-past-end", header_past_end, "past the end"),
    Corruption("header-length-over-limit", header_over_limit, "exceeds the safetensors limit"),
    Corruption("header-not-json", header_not_json, "not valid JSON"),
    Corruption("overlapping-offsets", edit_header(overlap), "overlaps"),
    Corruption("out-of-range-offsets", edit_header(out_of_range, which=-1), "past the end"),
    Corruption("wrong-dtype", edit_header(wrong_dtype), "unknown dtype"),
    Corruption("shape-disagrees-with-bytes", edit_header(shape_disagrees), "needs"),
    Corruption("negative-dimension", edit_header(negative_dimension), "invalid shape"),
    Corruption("metadata-not-strings", edit_header(metadata_not_strings), "__metadata__"),
    Corruption("trailing-bytes", trailing_bytes, "trailing bytes"),
    Corruption("shard-missing-from-index", shard_missing_from_index, "does not name"),
    Corruption("index-names-missing-shard", index_names_missing_shard, "missing"),
    Corruption("index-not-json", index_not_json, "not valid JSON"),
    Corruption("index-escapes-directory", index_escapes, "outside the checkpoint directory"),
    Corruption("tensor-in-two-shards", tensor_in_two_shards, "is also in"),
    Corruption("config-claims-more-layers", config_layer_count(+1), "num_layers=5"),
    Corruption("config-claims-fewer-layers", config_layer_count(-1), "num_layers=3"),
    Corruption("config-not-json", config_not_json, "not valid JSON"),
    Corruption("shard-links-to-fifo", link_outside("shard", "fifo"), "not a regular file"),
    Corruption("shard-links-to-dev-zero", link_outside("shard", "device"), "not a regular file"),
    Corruption("shard-links-to-directory", link_outside("shard", "directory"), "not a regular file"),
    Corruption("index-links-to-fifo", link_outside("index", "fifo"), "not a regular file"),
    Corruption("config-links-to-fifo", link_outside("config", "fifo"), "not a regular file"),
    Corruption("config-links-to-dev-zero", link_outside("config", "device"), "not a regular file"),
    Corruption("pickle-weights", pickle_weights, "pickle checkpoints are refused"),
    Corruption("nan-weight", poison(float("nan")), "NaN", ("--verify",)),
    Corruption("infinite-weight", poison(float("-inf"), tensor=0, element=0), "infinity", ("--verify",)),
)


# --------------------------------------------------------------------------------------------
# Running compile on a hostile input


@dataclass(frozen=True)
class Run:
    code: int
    out: str
    err: str


def compile_in_process(spec: Path, model: Path, out: Path, *flags: str) -> Run:
    """`hpspec compile` through the CLI's main, its output captured."""
    from hpspec.cli.app import main

    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = main(["compile", str(spec), "--model", str(model), "--out", str(out), *flags])
    return Run(code, stdout.getvalue(), stderr.getvalue())


def compile_in_subprocess(spec: Path, model: Path, out: Path, fault: str | None, *flags: str, timeout: float = 120) -> Run:
    """`hpspec compile` in its own process (the one a `kill` fault ends)."""
    env = {k: v for k, v in os.environ.items() if k != FAULT_ENV}
    if fault is not None:
        env[FAULT_ENV] = fault
    command = [sys.executable, "-m", "hpspec.cli", "compile", str(spec), "--model", str(model), "--out", str(out), *flags]
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=REPO, timeout=timeout)
    return Run(done.returncode, done.stdout, done.stderr)


def contents(directory: Path) -> dict[str, bytes]:
    """What must be identical between two complete outputs: every shard (read through validation),
    config.json and plan.json; the names of all files (provenance and report vary by run)."""
    found: dict[str, bytes] = {"files": "\n".join(sorted(p.name for p in directory.iterdir())).encode()}
    for shard in sorted(directory.glob("*.safetensors")):
        header = read_header(shard)
        data = shard.read_bytes()
        found.update({f"{shard.name}:{e.name}": data[e.begin : e.end] for e in header.tensors.values()})
    for name in ("config.json", "plan.json"):
        found[name] = (directory / name).read_bytes()
    json.loads((directory / "provenance.json").read_text(encoding="utf-8"))
    return found


def leftovers(out: Path) -> list[Path]:
    """What a failed run left: the output path itself, and temporary siblings at either level."""
    found = [out] if out.exists() else []
    for directory in (out.parent, out):
        if directory.is_dir():
            found += sorted(p for p in directory.iterdir() if TMP_MARKER in p.name)
    return found


def clear_error(run: Run, named: Path, problem: str) -> str | None:
    """None if the run failed as a user should see it: exit 1, one `error:` line naming file and problem."""
    if run.code != 1:
        return f"exit {run.code}"
    if not (run.err.startswith("error: ") and run.err.count("\n") == 1):
        return f"not one error line: {run.err!r}"
    if str(named) not in run.err:
        return f"does not name {named}: {run.err!r}"
    if problem not in run.err:
        return f"does not say {problem!r}: {run.err!r}"
    return None


@contextlib.contextmanager
def damaged(root: Path, good: Path, corruption: Corruption) -> Iterator[tuple[Path, Path]]:
    """A damaged copy of `good` under `root`: (model directory, the file the error must name)."""
    model = root / corruption.name / "model"
    shutil.copytree(good, model, symlinks=True)
    named = corruption.make(model)
    try:
        yield model, named
    finally:
        shutil.rmtree(root / corruption.name, ignore_errors=True)


# --------------------------------------------------------------------------------------------
# A compile with a fault injected, and what it left


@dataclass(frozen=True)
class FaultOutcome:
    expected: bool  # it failed as the action should make it: killed, InjectedFault, or one disk-full line
    whole_or_none: bool  # the output path then held the complete output or nothing
    left_behind: tuple[Path, ...]  # half-written output, or temporary siblings the next run did not sweep


def inject(point: str, action: str, spec: Path, model: Path, out: Path, reference: Mapping[str, bytes]) -> FaultOutcome:
    """Compile with `HPSPEC_FAULT_AT=point:action`, then once more without: did anything stay behind?"""
    flags: tuple[str, ...] = ()
    if point == "stage.after_set_aside":  # reached only when --force replaces an output
        compile_in_process(spec, model, out)
        flags = ("--force",)
    expected = _faulted_run(point, action, spec, model, out, flags)
    pruned = out / "pruned"
    whole_or_none = not pruned.exists() or is_whole(pruned, reference)
    half = [] if whole_or_none else [pruned]
    if action != "kill":  # the failing run cleans up after itself; a killed one cannot
        half += [p for p in leftovers(pruned) if p != pruned]
    rerun = compile_in_process(spec, model, out)
    stale = [p for p in leftovers(pruned) if p != pruned] + ([] if rerun.code == 0 and is_whole(pruned, reference) else [pruned])
    return FaultOutcome(expected, whole_or_none, tuple(half + stale))


def _faulted_run(point: str, action: str, spec: Path, model: Path, out: Path, flags: tuple[str, ...]) -> bool:
    if action == "kill":
        return compile_in_subprocess(spec, model, out, f"{point}:kill", *flags).code == -signal.SIGKILL
    os.environ[FAULT_ENV] = f"{point}:{action}"
    try:
        run = compile_in_process(spec, model, out, *flags)
    except InjectedFault:
        return action == "raise"
    finally:
        del os.environ[FAULT_ENV]
    return action == "enospc" and clear_error(run, out, "No space left on device") is None


def is_whole(directory: Path, reference: Mapping[str, bytes]) -> bool:
    try:
        return contents(directory) == reference
    except (HpspecError, OSError, ValueError):
        return False
