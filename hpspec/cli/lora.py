"""`hpspec lora`: LoRA adapters made for the full model, remapped through a plan (hpspec.weights.lora).

    hpspec lora out/pruned style.safetensors detail.safetensors -o out/lora/

Each adapter is written to OUT/<its file name> in its own format (or diffusers' with --to
diffusers), with `<stem>.json` beside it (its coverage); one line per adapter says how much of it
still applies. No torch: names and rows are byte ranges, the norms numpy.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from hpspec.stages.engine import resolve_model
from hpspec.weights.lora.run import remap_adapters, summary
from hpspec.weights.lora.target import plan_and_model
from hpspec.weights.lora.write import FORMATS

SOURCE_HELP = "a stage directory (its plan.json), a plan written by `hpspec plan --format json`, or a spec"
TO_HELP = "write diffusers' names (peft's lora_A/lora_B); default: each adapter's own format"


def register(commands: argparse._SubParsersAction) -> None:
    lora = commands.add_parser("lora", help="remap LoRA adapters made for the full model through a plan")
    lora.add_argument("source", metavar="STAGE_DIR_OR_PLAN_OR_SPEC", help=SOURCE_HELP)
    lora.add_argument("adapters", nargs="+", metavar="ADAPTER", help="LoRA .safetensors files for the full model")
    lora.add_argument("-o", "--out", required=True, metavar="DIR", help="the directory to write (e.g. OUT/lora)")
    lora.add_argument("--model", metavar="DIR", help="the full model (default: the plan's own target)")
    lora.add_argument("--target", help="for a spec: a built-in target or a model path; wins over its `target`")
    lora.add_argument("--to", choices=FORMATS, default=FORMATS[0], help=TO_HELP)
    lora.add_argument("--force", action="store_true", help="replace existing outputs")
    lora.set_defaults(handler=cmd_lora)


def cmd_lora(args: argparse.Namespace) -> int:
    model = resolve_model(args.model) if args.model else None
    plan, graph = plan_and_model(args.source, model, args.target)
    done = remap_adapters(plan, graph, [Path(a) for a in args.adapters], Path(args.out), args.to, args.force)
    for item in done:
        sys.stdout.write(summary(item) + "\n")
    return 0
