"""Time `hpspec compile` against `cp -r` (the floor) and the naive diffusers route, with peak RSS.

    python bench/bench_prune.py [--dir DIR] [--repeat 3] [--layers 5,25]

Generates SD3-shaped checkpoints (SD3 Medium's width, bf16, random values, 512 MB shards with an
index): one of at least 1 GB and one about 4x larger. For each, in alternating order, runs warm:
`hpspec compile` dropping ~20% of the blocks, `cp -r` of the same directory, and the naive route
(diffusers `from_pretrained`, delete the blocks, `save_pretrained`). Prints the minimum wall time
of `--repeat` runs and the peak RSS of each, and the ratios to `cp -r`. Goal: compile within 1.25x
of `cp -r`, peak RSS under 300 MB, at both sizes. Needs about 3x the largest size in free disk, and
GNU time (/usr/bin/time) for peak RSS.

compile records the sha256 of every source shard; it remembers digests per file state (see
hpspec.checkpoint.source_sha256), so it is timed twice: as a user re-running it sees it, and with
the digest cache off (every source byte hashed, on the second core, while the first copies).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from hpspec.model.graph import tensors_from_config
from hpspec.model.safetensors_header import DTYPE_BYTES

GOAL_RATIO = 1.25
GOAL_RSS_MB = 300
SHARD_BYTES = 512 << 20
GNU_TIME = "/usr/bin/time"
# SD3 Medium's transformer (METHOD §2), with the number of blocks chosen per size.
SD3_CONFIG = {
    "_class_name": "SD3Transformer2DModel", "_diffusers_version": "0.42.1", "attention_head_dim": 64,
    "caption_projection_dim": 1536, "in_channels": 16, "joint_attention_dim": 4096, "num_attention_heads": 24,
    "out_channels": 16, "patch_size": 2, "pooled_projection_dim": 2048, "pos_embed_max_size": 192, "sample_size": 128,
}  # fmt: skip

NAIVE = """
import sys, torch
from diffusers import SD3Transformer2DModel
source, out, dropped = sys.argv[1], sys.argv[2], {int(i) for i in sys.argv[3].split(",")}
model = SD3Transformer2DModel.from_pretrained(source, torch_dtype=torch.bfloat16)
model.transformer_blocks = torch.nn.ModuleList(b for i, b in enumerate(model.transformer_blocks) if i not in dropped)
model.register_to_config(num_layers=len(model.transformer_blocks))
model.save_pretrained(out, max_shard_size="512MB")
"""


# --------------------------------------------------------------------------------------------
# A random checkpoint, written without holding it in memory


def random_pool(megabytes: int, seed: int) -> dict[str, bytes]:
    """Normally distributed values as raw bf16 and f32 bytes, reused (at random offsets) by every tensor."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    values = megabytes << 20
    return {
        "BF16": torch.randn(values // 2, generator=generator, dtype=torch.bfloat16).view(torch.uint8).numpy().tobytes(),
        "F32": torch.randn(values // 4, generator=generator).view(torch.uint8).numpy().tobytes(),
    }


def write_checkpoint(directory: Path, layers: int, pool: dict[str, bytes], seed: int) -> int:
    """config.json, 512 MB shards and their index; returns the bytes of weights written."""
    config = {**SD3_CONFIG, "num_layers": layers}
    tensors = tensors_from_config(config, "bench config", dtype="BF16")
    shards: list[list[tuple[str, tuple[int, ...], str]]] = [[]]
    size = 0
    for name, (shape, dtype) in tensors.items():
        nbytes = math.prod(shape) * DTYPE_BYTES[dtype]
        if size and size + nbytes > SHARD_BYTES:
            shards.append([])
            size = 0
        shards[-1].append((name, shape, dtype))
        size += nbytes
    directory.mkdir(parents=True)
    rng = random.Random(seed)
    names = [f"diffusion_pytorch_model-{i:05d}-of-{len(shards):05d}.safetensors" for i in range(1, len(shards) + 1)]
    weight_map, total = {}, 0
    for file, shard in zip(names, shards):
        total += _write_shard(directory / file, shard, pool, rng)
        weight_map.update({name: file for name, _, _ in shard})
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (directory / "diffusion_pytorch_model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    (directory / "config.json").write_text(json.dumps(config, indent=2))
    return total


def _write_shard(path: Path, shard: Sequence[tuple[str, tuple[int, ...], str]], pool: dict[str, bytes], rng: random.Random) -> int:
    header, offset = {}, 0
    for name, shape, dtype in shard:
        nbytes = math.prod(shape) * DTYPE_BYTES[dtype]
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    with path.open("wb") as handle:
        handle.write(len(raw).to_bytes(8, "little") + raw)
        for name, shape, dtype in shard:
            _write_random(handle, math.prod(shape) * DTYPE_BYTES[dtype], pool[dtype], rng, DTYPE_BYTES[dtype])
    return offset


def _write_random(handle: object, nbytes: int, pool: bytes, rng: random.Random, item: int) -> None:
    view = memoryview(pool)
    while nbytes:
        start = rng.randrange(0, len(pool) // item) * item
        count = min(nbytes, len(pool) - start)
        handle.write(view[start : start + count])  # type: ignore[attr-defined]
        nbytes -= count


# --------------------------------------------------------------------------------------------
# Measuring


@dataclass
class Run:
    seconds: float
    rss_mb: float


def measure(command: Sequence[str], env: dict[str, str] | None = None) -> Run:
    """Wall time and peak RSS of one process, by GNU time (a fork of this large process would count
    this process's memory as the child's)."""
    os.sync()  # every run starts with no dirty pages left by the one before
    with tempfile.NamedTemporaryFile("r") as report:
        start = time.perf_counter()
        result = subprocess.run(
            [GNU_TIME, "-f", "%M", "-o", report.name, *command], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env
        )
        seconds = time.perf_counter() - start
        if result.returncode != 0:
            raise SystemExit(f"{' '.join(map(str, command))} failed: {result.stderr.decode()[-2000:]}")
        return Run(seconds, int(report.read().split()[-1]) / 1024)


def hpspec_command() -> list[str]:
    beside = Path(sys.executable).parent / "hpspec"
    return [str(beside)] if beside.exists() else [sys.executable, "-m", "hpspec.cli"]


def bench_size(root: Path, label: str, layers: int, pool: dict[str, bytes], repeat: int) -> dict[str, list[Run]]:
    model = root / f"model-{label}"
    nbytes = write_checkpoint(model, layers, pool, seed=layers)
    dropped = list(range(layers - 1 - max(1, round(0.2 * layers)), layers - 1))  # late blocks, not the last
    spec = root / f"drop-{label}.hps"
    spec.write_text(f"drop blocks[{', '.join(map(str, dropped))}]\n")
    out = root / f"out-{label}"
    compile_ = [*hpspec_command(), "compile", str(spec), "--model", str(model), "--out", str(out)]
    cached = {**os.environ, "HPSPEC_CACHE_DIR": str(root / "digests")}
    commands = {  # name: (command, environment)
        "hpspec compile": (compile_, cached),
        "  no digest cache": (compile_, {**os.environ, "HPSPEC_CACHE_DIR": ""}),
        "cp -r": (["cp", "-r", str(model), str(out)], None),
        "naive (diffusers)": ([sys.executable, "-c", NAIVE, str(model), str(out), ",".join(map(str, dropped))], None),
    }
    print(f"\n{label}: {nbytes / 1e9:.2f} GB of weights, {layers} blocks, dropping {len(dropped)} ({dropped[0]}..{dropped[-1]})")
    runs: dict[str, list[Run]] = {name: [] for name in commands}
    for round_ in range(repeat + 1):  # round 0 warms the page cache and the imports; not counted
        for name, (command, env) in commands.items():
            shutil.rmtree(out, ignore_errors=True)
            run = measure(command, env)
            if round_:
                runs[name].append(run)
            print(f"  round {round_} {name:18s} {run.seconds:7.2f} s {run.rss_mb:8.0f} MB", flush=True)
    shutil.rmtree(out, ignore_errors=True)
    shutil.rmtree(model)
    return runs


def table(results: dict[str, dict[str, list[Run]]]) -> str:
    lines = [f"{'size':6s} {'method':18s} {'min wall':>9s} {'x cp -r':>8s} {'peak RSS':>9s}  goal"]
    for label, runs in results.items():
        floor = min(r.seconds for r in runs["cp -r"])
        for name, measured in runs.items():
            best = min(r.seconds for r in measured)
            rss = max(r.rss_mb for r in measured)
            goal = ""
            if name.strip() in ("hpspec compile", "no digest cache"):
                met = best / floor <= GOAL_RATIO and rss < GOAL_RSS_MB
                goal = f"{'met' if met else 'MISSED'} (<= {GOAL_RATIO}x, < {GOAL_RSS_MB} MB)"
            lines.append(f"{label:6s} {name:18s} {best:8.2f}s {best / floor:7.2f}x {rss:7.0f} MB  {goal}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, help="where to write the checkpoints (default: a temporary directory)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--layers", default="5,25", help="blocks of the small and the large checkpoint (1.05 and 4.45 GB)")
    args = parser.parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="hpspec-bench-", dir=args.dir))
    pool = random_pool(128, seed=0)
    results = {}
    try:
        for label, layers in zip(("small", "large"), (int(n) for n in args.layers.split(","))):
            results[label] = bench_size(root, label, layers, pool, args.repeat)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print("\n" + table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
