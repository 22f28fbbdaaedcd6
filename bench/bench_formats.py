"""Time hpspec's layout and GGUF conversions against `cp` and against the routes a user has today.

    python bench/bench_formats.py [--size-mb 200] [--family sd3|flux] [--repeat 3]

Builds one seeded bf16 transformer of about `--size-mb` (SD3-shaped, width 1024, as many blocks as
the size allows; `--family flux` needs FLUX.1's width, 3072, for diffusers' converter), saves it
as a diffusers folder, then runs each conversion in its own process and prints the wall time
(median of `--repeat`), peak RSS, and the ratio to `cp` of the same bytes:

- folder -> single file (sai/bfl) and single file -> folder: hpspec's byte-range copy;
- single file -> folder the diffusers way: `from_single_file(FILE, config=DIR)` + `save_pretrained`;
- folder -> GGUF F16 / Q8_0 / Q4_0: hpspec (streamed), and city96-style (whole state dict in
  memory, then quantize and write), and the `gguf` package's own quantize throughput on the same
  tensors (MB/s of float32), the ceiling for a quantized GGUF.

Files stay in the OS cache between runs, so every row, `cp` included, is a warm-cache copy. No
assertions: the table is the result.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

WIDTH = {"sd3": 1024, "flux": 3072}
GGUF_TYPES = ("f16", "q8_0", "q4_0")


def build(family: str, size_mb: int, out: Path) -> Path:
    """A seeded bf16 transformer of about `size_mb`, saved as a diffusers folder."""
    import torch
    from diffusers import FluxTransformer2DModel, SD3Transformer2DModel

    torch.manual_seed(0)
    dim = WIDTH[family]
    heads = dim // 64 if family == "sd3" else dim // 128
    per_block = 36 * dim * dim * 2 if family == "sd3" else (36 + 15) * dim * dim * 2  # bf16 bytes
    blocks = max(2, round(size_mb * 1e6 / per_block))
    if family == "sd3":
        model: Any = SD3Transformer2DModel(
            num_layers=blocks, attention_head_dim=64, num_attention_heads=heads, caption_projection_dim=dim,
            joint_attention_dim=1024, pooled_projection_dim=512, in_channels=16, out_channels=16, patch_size=2,
            pos_embed_max_size=64, sample_size=64, qk_norm="rms_norm",
        )  # fmt: skip
    else:
        model = FluxTransformer2DModel(
            num_layers=max(1, blocks // 2), num_single_layers=max(1, blocks - blocks // 2), attention_head_dim=128,
            num_attention_heads=heads, joint_attention_dim=512, pooled_projection_dim=256, in_channels=16, guidance_embeds=True,
        )  # fmt: skip
    model.to(torch.bfloat16).save_pretrained(out)
    return out


def one(task: str, source: str, out: str, extra: str) -> None:
    """One measured conversion, in this process: prints its own seconds, imports excluded (the
    parent reads the whole process's wall time and peak RSS)."""
    if task == "build":
        build(extra, int(out), Path(source))
        return
    if task in ("hpspec", "gguf", "city96"):  # imported before the clock starts
        import hpspec.weights.formats.gguf  # noqa: F401
    if task in ("diffusers", "city96"):
        import diffusers  # noqa: F401
        import gguf  # noqa: F401
    start = time.perf_counter()
    _task(task, source, out, extra)
    print(json.dumps({"seconds": time.perf_counter() - start}))


def _task(task: str, source: str, out: str, extra: str) -> None:
    if task == "hpspec":
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
    from diffusers import FluxTransformer2DModel, SD3Transformer2DModel

    family = json.loads((config / "config.json").read_text())["_class_name"]
    cls = FluxTransformer2DModel if family.startswith("Flux") else SD3Transformer2DModel
    cls.from_single_file(str(single), config=str(config), torch_dtype=torch.bfloat16).save_pretrained(out)


def _float_tensors(single: Path) -> Any:
    from safetensors.torch import load_file

    return {k: v.float().numpy() for k, v in load_file(single).items()}


def _city96_route(single: Path, out: Path, kind: str) -> None:
    """city96's convert.py shape: the whole state dict in memory, each tensor quantized, then written."""
    import gguf

    from hpspec.weights.formats.gguf import _ggml, tensor_type

    tensors = _float_tensors(single)
    arch = "flux" if any(n.startswith("double_blocks.") for n in tensors) else "sd3"
    writer = gguf.GGUFWriter(path=None, arch=arch)
    for name, data in tensors.items():
        qtype = tensor_type(arch, name, data.shape, "BF16", kind)
        writer.add_tensor(name, gguf.quants.quantize(data, _ggml(qtype)), raw_dtype=_ggml(qtype))
    writer.write_header_to_file(path=out)
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def _quantize_throughput(single: Path, kind: str) -> float:
    """MB/s of float32 through `gguf.quants.quantize` alone, over the 2-D tensors hpspec quantizes."""
    import gguf

    from hpspec.weights.formats.gguf import _ggml, tensor_type

    tensors = _float_tensors(single)
    arch = "flux" if any(n.startswith("double_blocks.") for n in tensors) else "sd3"
    total, spent = 0, 0.0
    for name, data in tensors.items():
        qtype = tensor_type(arch, name, data.shape, "BF16", kind)
        start = time.perf_counter()
        gguf.quants.quantize(data, _ggml(qtype))
        spent += time.perf_counter() - start
        total += data.nbytes
    return total / 1e6 / spent


def measured(command: list[str], repeat: int) -> tuple[float, float, dict[str, float]]:
    """(median wall seconds, highest peak RSS in MB, what the last run printed as JSON) over `repeat` runs.

    Each child's own peak RSS comes from wait4; the parent never imports torch, so a fork carries
    little of it."""
    times, peak, said = [], 0.0, {}
    for _ in range(repeat):
        start = time.perf_counter()
        child = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
        assert child.stdout is not None
        stdout = child.stdout.read()
        _, status, usage = os.wait4(child.pid, 0)
        child.returncode = os.waitstatus_to_exitcode(status)
        times.append(time.perf_counter() - start)
        if child.returncode:
            raise SystemExit(f"{command} failed ({child.returncode})")
        peak = max(peak, usage.ru_maxrss / 1024)
        lines = [line for line in stdout.splitlines() if line.startswith("{")]
        said = {k: v for line in lines for k, v in json.loads(line).items()}
    return statistics.median(times), peak, said


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mb", type=int, default=200)
    parser.add_argument("--family", choices=sorted(WIDTH), default="sd3")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--one", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        one(*args.one)
        return
    with tempfile.TemporaryDirectory(prefix="bench-formats-") as scratch:
        run(Path(scratch), args.family, args.size_mb, args.repeat)


def run(root: Path, family: str, size_mb: int, repeat: int) -> None:
    me = [sys.executable, __file__, "--one"]
    folder = root / "folder"
    subprocess.run([*me, "build", str(folder), str(size_mb), family], check=True, capture_output=True)
    layout = "sai" if family == "sd3" else "bfl"
    single = root / f"model-{layout}.safetensors"
    subprocess.run([*me, "hpspec", str(folder), str(single), layout], check=True, capture_output=True)
    nbytes = single.stat().st_size
    rows: list[tuple[str, float, float, float]] = []

    def timed(label: str, command: list[str], out: Path) -> None:
        wrapped = ["sh", "-c", f"rm -rf {_quote(str(out))} && exec {' '.join(map(_quote, command))}"]
        seconds, peak, said = measured(wrapped, repeat)
        rows.append((label, seconds, said.get("seconds", seconds), peak))

    timed("cp (the floor)", ["cp", str(single), str(root / "copy.safetensors")], root / "copy.safetensors")
    timed(f"hpspec folder -> {layout}", [*me, "hpspec", str(folder), str(root / "out.safetensors"), layout], root / "out.safetensors")
    timed(f"hpspec {layout} -> folder", [*me, "hpspec", str(single), str(root / "out_dir"), "diffusers"], root / "out_dir")
    if family == "sd3":  # diffusers' FLUX converter needs FLUX.1's width; the SD3 one reads sizes
        timed(f"diffusers {layout} -> folder", [*me, "diffusers", str(single), str(root / "dd"), str(folder)], root / "dd")
    throughput = {}
    for kind in GGUF_TYPES:
        timed(f"hpspec folder -> gguf:{kind}", [*me, "gguf", str(folder), str(root / f"o-{kind}.gguf"), kind], root / f"o-{kind}.gguf")
        timed(f"city96-style -> gguf:{kind}", [*me, "city96", str(single), str(root / f"c-{kind}.gguf"), kind], root / f"c-{kind}.gguf")
        throughput[kind] = measured([*me, "throughput", str(single), "-", kind], 1)[2]["throughput"]
    cp = rows[0][1]
    print(f"\n{family}-shaped bf16 transformer, {nbytes / 1e6:.0f} MB, median of {repeat}, warm cache, {os.cpu_count()} CPUs")
    print("'work' is the conversion's own time inside its process (interpreter start and imports excluded)")
    print(f"{'conversion':32} {'wall s':>7} {'x cp':>6} {'work s':>7} {'x cp':>6} {'peak RSS MB':>12}")
    for label, wall, work, peak in rows:
        print(f"{label:32} {wall:7.2f} {wall / cp:6.2f} {work:7.2f} {work / cp:6.2f} {peak:12.0f}")
    floats = nbytes * 2 / 1e6  # bf16 -> float32 bytes through the quantizer
    for kind in GGUF_TYPES:
        work = next(w for label, _, w, _ in rows if label == f"hpspec folder -> gguf:{kind}")
        print(f"gguf:{kind}: the gguf package alone quantizes {throughput[kind]:.0f} MB/s of float32; hpspec's whole write {floats / work:.0f} MB/s ({floats / work / throughput[kind]:.2f} of it)")


def _quote(text: str) -> str:
    import shlex

    return shlex.quote(text)


if __name__ == "__main__":
    main()
