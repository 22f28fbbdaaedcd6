"""`hpspec eval`: what a (pruned) model scores, against a reference: metrics, degradation, size, latency."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from hpspec.cli.subjects import demo_dir, prompt_list
from hpspec.core.io import write_text_atomic
from hpspec.core.paths import PLAN_NAME
from hpspec.demo import transformer_dir
from hpspec.method.evaluate import evaluate_demo, format_result
from hpspec.model.targets import graph_from_path

if TYPE_CHECKING:
    from torch import nn


def register(commands: argparse._SubParsersAction) -> None:
    evaluate = commands.add_parser("eval", help="prompt accuracy, quality, degradation, size and latency of a model")
    evaluate.add_argument("--model", required=True, help="`demo`, or a (pruned) demo-shaped transformer directory")
    evaluate.add_argument("--reference", help="the unpruned model, for degradation")
    evaluate.add_argument("--prompts", metavar="FILE")
    evaluate.add_argument("--seeds", type=int, default=4)
    evaluate.add_argument("--json", action="store_true", help="print JSON instead of a table")
    evaluate.add_argument("-o", "--output", help="also write the JSON here")
    evaluate.set_defaults(handler=cmd_eval)


def cmd_eval(args: argparse.Namespace) -> int:
    from hpspec.weights.load import load_pretrained  # torch

    model = demo_dir(args.model)
    reference = demo_dir(args.reference) if args.reference else None
    if args.reference == "demo":
        reference = transformer_dir()
    result = evaluate_demo(
        model,
        reference_dir=reference,
        prompts=prompt_list(args.prompts),
        seeds=list(range(args.seeds)),
        load_transformer=_loader(load_pretrained),
        progress=True,
    )
    result["parameters"], result["weight_bytes"] = _size(model)
    text = json.dumps(result, indent=2, sort_keys=True) + "\n"
    if args.output:
        write_text_atomic(Path(args.output), text)
    sys.stdout.write(
        text if args.json else format_result(result) + f"\nparameters             {result['parameters']:,}\n"
    )
    return 0


def _loader(load_pretrained: Callable[[Path], nn.Module]) -> Callable[[Path], nn.Module]:
    """hpspec's loader for pruned stage directories (they carry plan.json), diffusers' otherwise."""

    def load(path: Path) -> nn.Module:
        from hpspec.demo.model import load_demo_transformer  # torch

        return load_pretrained(path) if (path / PLAN_NAME).is_file() else load_demo_transformer(path)

    return load


def _size(model: Path | None) -> tuple[int, int]:
    graph = graph_from_path(model or transformer_dir())
    return graph.params, graph.nbytes
