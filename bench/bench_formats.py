"""Time hpspec's layout and GGUF conversions against `cp` and against the routes a user has today.

    python bench/bench_formats.py [--sizes-gb 1,2,4,8] [--repeat 3] [--quantized-repeat 1] [--routes-up-to-gb 1.1]

For each size, writes one synthetic bf16 FLUX-width transformer (width 3072, FLUX.1's tensor
shapes, N double and N single blocks: about 0.96 GB a block pair) as a diffusers folder, without
building it in memory (a model on torch's meta device gives the names and shapes; the bytes are a
seeded pool of Gaussian bf16 values, 0.02 wide, tiled), converts it to a BFL single file, then runs
each conversion in its own process and prints:

- folder -> BFL single file and single file -> folder: hpspec's byte-range copy;
- folder -> GGUF F16 / Q8_0 / Q4_0: hpspec, streamed;
- up to `--routes-up-to-gb` (they hold the whole model in memory): single file -> folder the
  diffusers way (`from_single_file` + `save_pretrained`), and city96-style GGUF (the whole state
  dict in float32, then quantize and write); and the `gguf` package's own quantize throughput (MB/s
  of float32, whole tensors of the first block pair), the ceiling for a quantized GGUF.

Every conversion is paired with `cp` of the same source bytes, run just before it: the ratio is
taken pair by pair and its median reported, so a shared machine's drift moves both. Wall time is the
whole process (interpreter start and imports included); peak RSS is the child's own (wait4). Each run starts after a `sync`. Files
stay in the OS cache between runs, so every row, `cp` included, is a warm-cache copy. The generated
files are deleted at the end. No assertions: the table is the result.
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


def paired(command: list[str], out: Path, floor: list[str], floor_out: Path, repeat: int) -> dict[str, float]:
    """`repeat` pairs (cp, then the command), each output removed first: medians of the command's
    wall time, of cp's and of the ratio pair by pair; the highest peak RSS."""
    walls, floors, ratios, peak = [], [], [], 0.0
    for _ in range(repeat):
        base = measured(["sh", "-c", f"rm -rf {shlex.quote(str(floor_out))} && exec {shlex.join(floor)}"])[0]
        seconds, rss, _ = measured(["sh", "-c", f"rm -rf {shlex.quote(str(out))} && exec {shlex.join(command)}"])
        walls, floors, ratios, peak = [*walls, seconds], [*floors, base], [*ratios, seconds / base], max(peak, rss)
    subprocess.run(["rm", "-rf", str(out), str(floor_out)], check=True)
    return {
        "wall": statistics.median(walls), "cp": statistics.median(floors), "ratio": statistics.median(ratios),
        "peak": peak, "spread": max(ratios) - min(ratios),
    }  # fmt: skip


def run_size(root: Path, gb: float, args: argparse.Namespace) -> list[dict[str, Any]]:
    """Every row of the table at one size."""
    me = [sys.executable, __file__, "--one"]
    pairs = max(1, round(gb / PAIR_GB))
    folder, single = root / "folder", root / "model-bfl.safetensors"
    subprocess.run([*me, "build", "-", str(folder), str(pairs)], check=True)
    subprocess.run([*me, "hpspec", str(folder), str(single), "bfl"], check=True)
    shard = folder / "diffusion_pytorch_model.safetensors"
    nbytes, copy = single.stat().st_size, root / "copy"
    rows: list[dict[str, Any]] = []

    def row(label: str, command: list[str], out: Path, source: Path, repeat: int) -> None:
        result = paired(command, out, ["cp", str(source), str(copy)], copy, repeat)
        rows.append({"gb": nbytes / 1e9, "conversion": label, **result})
        print(json.dumps(rows[-1]), flush=True)

    row(
        "folder -> bfl",
        [*me, "hpspec", str(folder), str(root / "o.safetensors"), "bfl"],
        root / "o.safetensors",
        shard,
        args.repeat,
    )
    row("bfl -> folder", [*me, "hpspec", str(single), str(root / "o"), "diffusers"], root / "o", single, args.repeat)
    for kind in GGUF_TYPES:
        repeat = args.repeat if kind == "f16" else args.quantized_repeat
        row(
            f"folder -> gguf:{kind}",
            [*me, "gguf", str(folder), str(root / "o.gguf"), kind],
            root / "o.gguf",
            shard,
            repeat,
        )
    if nbytes / 1e9 <= args.routes_up_to_gb:
        row(
            "diffusers bfl -> folder",
            [*me, "diffusers", str(single), str(root / "d"), str(folder)],
            root / "d",
            single,
            1,
        )
        for kind in GGUF_TYPES:
            row(
                f"city96-style -> gguf:{kind}",
                [*me, "city96", str(single), str(root / "c.gguf"), kind],
                root / "c.gguf",
                single,
                1,
            )
            throughput = measured([*me, "throughput", str(single), "-", kind])[2]["throughput"]
            rows.append({"gb": nbytes / 1e9, "conversion": f"gguf package quantize {kind}", "mb_per_s": throughput})
            print(json.dumps(rows[-1]), flush=True)
    subprocess.run(["rm", "-rf", str(folder), str(single)], check=True)
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    """The rows as a markdown table, with each quantized write's MB/s of float32 and, where the
    package's throughput was measured, the ratio to it."""
    ceiling = {r["conversion"].rsplit(" ", 1)[1]: r["mb_per_s"] for r in rows if "mb_per_s" in r}
    lines = [
        "| GB | conversion | cp s | wall s | x cp (median of pairs) | spread | peak RSS MB | MB/s f32 (x package) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "mb_per_s" in r:
            lines.append(f"| {r['gb']:.2f} | {r['conversion']} | | | | | | {r['mb_per_s']:.0f} |")
            continue
        kind = r["conversion"].rpartition(":")[2]
        rate = ""
        if r["conversion"].startswith("folder -> gguf:q"):
            mb = r["gb"] * 2e3 / r["wall"]  # bf16 bytes -> float32 MB through the quantizer, per second
            rate = f"{mb:.0f}" + (f" ({mb / ceiling[kind]:.2f})" if kind in ceiling else "")
        lines.append(
            f"| {r['gb']:.2f} | {r['conversion']} | {r['cp']:.2f} | {r['wall']:.2f} | {r['ratio']:.2f} | {r['spread']:.2f} | {r['peak']:.0f} | {rate} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes-gb", default="1", help="comma-separated model sizes in GB (1,2,4,8)")
    parser.add_argument("--repeat", type=int, default=3, help="pairs per layout and f16 row")
    parser.add_argument("--quantized-repeat", type=int, default=1, help="pairs per quantized GGUF row")
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
