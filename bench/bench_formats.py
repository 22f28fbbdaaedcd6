"""Time hpspec's layout and GGUF conversions against `cp` and against the routes a user has today.

    python bench/bench_formats.py [--sizes-gb 1,2,4,8] [--repeat 3] [--quantized-repeat 2] [--routes-up-to-gb 1.1]

For each size, writes one synthetic bf16 FLUX-width transformer (width 3072, FLUX.1's tensor
shapes, N double and N single blocks: about 0.96 GB a block pair) as a diffusers folder, without
building it in memory (a model on torch's meta device gives the names and shapes; the bytes are a
seeded pool of Gaussian bf16 values, 0.02 wide, tiled), converts it to a BFL single file, then runs
each conversion in its own process and prints:

- folder -> BFL single file and single file -> folder: hpspec's byte-range copy;
- folder -> GGUF F16 / Q8_0 / Q4_0: hpspec, streamed;
- beside each quantized GGUF run, in the same pair, the `gguf` package's own quantize throughput
  (MB/s of float32, whole tensors of the first block pair): the ceiling for a quantized GGUF;
- up to `--routes-up-to-gb` (they hold the whole model in memory): single file -> folder the
  diffusers way (`from_single_file` + `save_pretrained`), and city96-style GGUF (the whole state
  dict in float32, then quantize and write).

Every conversion is paired with `cp` of the same source bytes, run just before it: the ratio is
taken pair by pair and its median reported, so a shared machine's drift moves both. Wall time is the
whole process (interpreter start and imports included); peak RSS is the child's own (wait4). Each run starts after a `sync`. Files
stay in the OS cache between runs, so every row, `cp` included, is a warm-cache copy. The generated
files are deleted at the end. No assertions: the table is the result (the 1-8 GB one, and
what it says of the goals: docs/formats.md, "Measured").
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

GGUF_TYPES = ("f16", "q8_0", "q4_0")
PAIR_GB = 0.963  # bf16 bytes of one FLUX double block and one single block, in GB
POOL_VALUES = 8 << 20  # Gaussian bf16 values tiled into every tensor


def build(pairs: int, out: Path) -> Path:
    """A bf16 FLUX-width transformer with `pairs` double and single blocks, written as a diffusers
    folder tensor by tensor (never all in memory)."""
    import numpy as np
    import torch
    from diffusers import FluxTransformer2DModel

    with torch.device("meta"):
        model = FluxTransformer2DModel(
            num_layers=pairs, num_single_layers=pairs, attention_head_dim=128, num_attention_heads=24,
            joint_attention_dim=512, pooled_projection_dim=256, in_channels=16, guidance_embeds=True,
        )  # fmt: skip
    out.mkdir(parents=True)
    model.save_config(out)
    shapes = {name: list(t.shape) for name, t in model.state_dict().items()}
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, shape in shapes.items():
        size = 2 * int(np.prod(shape))
        header[name] = {"dtype": "BF16", "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    pool = (np.random.default_rng(0).standard_normal(POOL_VALUES).astype(np.float32) * 0.02).view(np.uint32)
    tiles = (pool >> 16).astype(np.uint16).tobytes()
    with (out / "diffusion_pytorch_model.safetensors").open("wb") as handle:
        handle.write(len(raw).to_bytes(8, "little") + raw)
        for index, shape in enumerate(shapes.values()):
            left, start = 2 * int(np.prod(shape)), (index * 8198) % len(tiles)
            while left:
                piece = tiles[start : start + left]
                handle.write(piece)
                left, start = left - len(piece), 0
    return out


def one(task: str, source: str, out: str, extra: str) -> None:
    """One measured conversion, in this process."""
    if task == "build":
        build(int(extra), Path(out))
    elif task == "hpspec":
        from hpspec.weights.formats.convert import convert

        convert(Path(source), Path(out), extra)
    elif task == "gguf":
        from hpspec.weights.formats.gguf import convert_to_gguf

        convert_to_gguf(Path(source), Path(out), extra)
    elif task == "diffusers":
        _diffusers_route(Path(source), Path(out), Path(extra))
    elif task == "city96":
        _city96_route(Path(source), Path(out), extra)
    elif task == "throughput":
        print(json.dumps({"throughput": _quantize_throughput(Path(source), extra)}))


def _diffusers_route(single: Path, out: Path, config: Path) -> None:
    import torch
    from diffusers import FluxTransformer2DModel

    model = FluxTransformer2DModel.from_single_file(str(single), config=str(config), torch_dtype=torch.bfloat16)
    model.save_pretrained(out)


def _float_tensors(single: Path, only: tuple[str, ...] = ()) -> Any:
    from safetensors import safe_open

    with safe_open(single, "pt") as handle:
        names = [n for n in handle.keys() if not only or n.startswith(only)]  # noqa: SIM118 - not a dict
        return {n: handle.get_tensor(n).float().numpy() for n in names}


def _city96_route(single: Path, out: Path, kind: str) -> None:
    """city96's convert.py shape: the whole state dict in memory, each tensor quantized, then written."""
    import gguf

    from hpspec.weights.formats.gguf import _ggml, tensor_type

    writer = gguf.GGUFWriter(path=None, arch="flux")
    for name, data in _float_tensors(single).items():
        qtype = tensor_type("flux", name, data.shape, "BF16", kind)
        writer.add_tensor(name, gguf.quants.quantize(data, _ggml(qtype)), raw_dtype=_ggml(qtype))
    writer.write_header_to_file(path=out)
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def _quantize_throughput(single: Path, kind: str) -> float:
    """MB/s of float32 through `gguf.quants.quantize` alone, whole tensors of the first block pair."""
    import gguf

    from hpspec.weights.formats.gguf import _ggml, tensor_type

    total, spent = 0, 0.0
    for name, data in _float_tensors(single, ("double_blocks.0.", "single_blocks.0.")).items():
        qtype = tensor_type("flux", name, data.shape, "BF16", kind)
        start = time.perf_counter()
        gguf.quants.quantize(data, _ggml(qtype))
        spent += time.perf_counter() - start
        total += data.nbytes
    return total / 1e6 / spent


def measured(command: list[str]) -> tuple[float, float, dict[str, float]]:
    """(wall seconds, peak RSS in MB, what it printed as JSON) of one run of `command`, started with
    no dirty pages (an earlier run's writeback would land in this one's time)."""
    os.sync()
    start = time.perf_counter()
    child = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None
    stdout = child.stdout.read()
    _, status, usage = os.wait4(child.pid, 0)
    seconds = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status):
        raise SystemExit(f"{command} failed ({os.waitstatus_to_exitcode(status)})")
    said = {k: v for line in stdout.splitlines() if line.startswith("{") for k, v in json.loads(line).items()}
    return seconds, usage.ru_maxrss / 1024, said


def paired(
    command: list[str], out: Path, floor: list[str], floor_out: Path, repeat: int, ceiling: list[str] | None = None
) -> dict[str, float]:
    """`repeat` pairs (cp, then the command), each output removed first: medians of the command's
    wall time, of cp's and of the ratio pair by pair; the highest peak RSS. With `ceiling` (the gguf
    package's quantize alone), it runs between the two, and its MB/s of float32 is reported too."""
    walls, floors, ratios, ceilings, peak = [], [], [], [], 0.0
    for _ in range(repeat):
        base = measured(["sh", "-c", f"rm -rf {shlex.quote(str(floor_out))} && exec {shlex.join(floor)}"])[0]
        if ceiling is not None:
            ceilings.append(measured(ceiling)[2]["throughput"])
        seconds, rss, _ = measured(["sh", "-c", f"rm -rf {shlex.quote(str(out))} && exec {shlex.join(command)}"])
        walls, floors, ratios, peak = [*walls, seconds], [*floors, base], [*ratios, seconds / base], max(peak, rss)
    subprocess.run(["rm", "-rf", str(out), str(floor_out)], check=True)
    found = {
        "wall": statistics.median(walls), "cp": statistics.median(floors), "ratio": statistics.median(ratios),
        "peak": peak, "spread": max(ratios) - min(ratios),
    }  # fmt: skip
    return {**found, "package_mb_per_s": statistics.median(ceilings)} if ceilings else found


def run_size(root: Path, gb: float, args: argparse.Namespace) -> list[dict[str, Any]]:
    """Every row of the table at one size."""
    me = [sys.executable, __file__, "--one"]
    folder, single = root / "folder", root / "model-bfl.safetensors"
    subprocess.run([*me, "build", "-", str(folder), str(max(1, round(gb / PAIR_GB)))], check=True)
    subprocess.run([*me, "hpspec", str(folder), str(single), "bfl"], check=True)
    shard = folder / "diffusion_pytorch_model.safetensors"
    small = single.stat().st_size / 1e9 <= args.routes_up_to_gb
    # (label, task, source, out, extra, cp's source, pairs, with the package's quantize beside)
    plan: list[tuple[str, str, Path, str, str, Path, int, bool]] = [
        ("folder -> bfl", "hpspec", folder, "o.safetensors", "bfl", shard, args.repeat, False),
        ("bfl -> folder", "hpspec", single, "o", "diffusers", single, args.repeat, False),
        *((f"folder -> gguf:{k}", "gguf", folder, "o.gguf", k, shard,
           args.repeat if k == "f16" else args.quantized_repeat, k != "f16") for k in GGUF_TYPES),
        *((("diffusers bfl -> folder", "diffusers", single, "d", str(folder), single, 1, False),) if small else ()),
        *((f"city96-style -> gguf:{k}", "city96", single, "c.gguf", k, single, 1, False) for k in GGUF_TYPES if small),
    ]  # fmt: skip
    rows: list[dict[str, Any]] = []
    for label, task, source, out, extra, floor, repeat, beside in plan:
        if repeat < 1:  # `--quantized-repeat 0`: those rows are left out
            continue
        ceiling = [*me, "throughput", str(single), "-", extra] if beside else None
        command = [*me, task, str(source), str(root / out), extra]
        result = paired(command, root / out, ["cp", str(floor), str(root / "copy")], root / "copy", repeat, ceiling)
        rows.append({"gb": single.stat().st_size / 1e9, "conversion": label, **result})
        print(json.dumps(rows[-1]), flush=True)
    subprocess.run(["rm", "-rf", str(folder), str(single)], check=True)
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    """The rows as a markdown table; a quantized write's MB/s of float32 beside the gguf package's
    own quantize, measured in the same pairs, and their ratio."""
    lines = [
        "| GB | conversion | cp s | wall s | x cp (median of pairs) | spread | peak RSS MB | MB/s f32: hpspec / package (ratio) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        rate = ""
        if "package_mb_per_s" in r:
            mb = r["gb"] * 2e3 / r["wall"]  # bf16 bytes -> float32 MB through the quantizer, per second
            rate = f"{mb:.0f} / {r['package_mb_per_s']:.0f} ({mb / r['package_mb_per_s']:.2f})"
        lines.append(
            f"| {r['gb']:.2f} | {r['conversion']} | {r['cp']:.2f} | {r['wall']:.2f} | {r['ratio']:.2f} "
            f"| {r['spread']:.2f} | {r['peak']:.0f} | {rate} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes-gb", default="1", help="comma-separated model sizes in GB (1,2,4,8)")
    parser.add_argument("--repeat", type=int, default=3, help="pairs per layout and f16 row")
    parser.add_argument("--quantized-repeat", type=int, default=2, help="pairs per quantized GGUF row")
    parser.add_argument(
        "--routes-up-to-gb", type=float, default=1.1, help="diffusers and city96 routes at most this size"
    )
    parser.add_argument("--dir", help="where the files go (default: a temporary directory)")
    parser.add_argument("--one", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        one(*args.one)
        return
    with tempfile.TemporaryDirectory(prefix="bench-formats-", dir=args.dir) as scratch:
        rows = [r for gb in args.sizes_gb.split(",") for r in run_size(Path(scratch), float(gb), args)]
    print(f"\nsynthetic bf16 FLUX-width transformers, warm cache, {os.cpu_count()} CPUs (shared: medians of pairs)")
    print(table(rows))


if __name__ == "__main__":
    main()
