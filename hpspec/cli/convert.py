"""`hpspec convert`: a checkpoint rewritten in another layout, with no plan (hpspec.weights.formats).

    hpspec convert flux1-schnell.safetensors --to gguf:q8_0 -o flux1-schnell-Q8_0.gguf
    hpspec convert sd3.5_large.safetensors --to diffusers -o sd35-transformer/

Safetensors layouts are byte-range copies (fp8 carried as it is); GGUF types are written through
the `gguf` package's own quantize, streamed tensor by tensor. No torch.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from hpspec.core.errors import LayoutError
from hpspec.model.formats.graph import foreign_kind
from hpspec.model.targets import read_config
from hpspec.plan.summary import human_bytes
from hpspec.weights.formats.convert import convert
from hpspec.weights.formats.gguf import convert_to_gguf
from hpspec.weights.formats.pruned import DEFAULT_GGUF_TYPE, GGUF, parse_to

TO_HELP = "diffusers (a folder), bfl, sai, comfyui (one .safetensors) or gguf:TYPE (f32 f16 bf16 q8_0 q5_0 q5_1 q4_0 q4_1 q4_k q5_k q6_k)"


def register(commands: argparse._SubParsersAction) -> None:
    convert_ = commands.add_parser("convert", help="rewrite a checkpoint in another layout or as GGUF (no plan)")
    convert_.add_argument("model", metavar="IN", help="a single .safetensors file (any layout) or a diffusers folder")
    convert_.add_argument("--to", required=True, metavar="LAYOUT", help=TO_HELP)
    convert_.add_argument(
        "-o", "--out", required=True, metavar="FILE", help="the file (a folder for diffusers) to write"
    )
    convert_.add_argument(
        "--config", metavar="JSON", help="a diffusers config.json for what a single file's shapes cannot say"
    )
    convert_.add_argument("--force", action="store_true", help="replace an existing output")
    convert_.set_defaults(handler=cmd_convert)


def cmd_convert(args: argparse.Namespace) -> int:
    source, out = Path(args.model), Path(args.out)
    to = parse_to(args.to)
    if foreign_kind(source) == GGUF:
        raise LayoutError(
            f"{source}: a GGUF file; convert reads safetensors (re-quantizing a GGUF would dequantize it); "
            "whole-block drops on a GGUF: `hpspec compile SPEC --model FILE.gguf`"
        )
    hints = read_config(Path(args.config)) if args.config else None
    if to.startswith(GGUF):
        convert_to_gguf(source, out, to.partition(":")[2] or DEFAULT_GGUF_TYPE, args.force, hints)
        sys.stdout.write(f"convert: wrote {out} ({to}, {human_bytes(out.stat().st_size)})\n")
        return 0
    done = convert(source, out, to, args.force, hints)
    sys.stdout.write(
        f"convert: wrote {out} ({done.layout}, {done.family}, {done.tensors} tensors, {human_bytes(done.nbytes)})\n"
    )
    for what, count in done.ignored.items():
        sys.stdout.write(f"  not read: {what}: {count} tensors\n")
    for fact in done.assumed:
        sys.stdout.write(f"  assumed: {fact}\n")
    return 0
