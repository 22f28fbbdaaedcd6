"""`hpspec eval`: what a (pruned, distilled, quantized) model scores against a reference: each metric and
its relative drop, the degradation, latency per image, peak memory, parameters and weight bytes.

Two routes. The embedded demo (``--model demo`` or a demo-shaped directory, no ``--pipeline``, the demo
scorer): the digit scorer, as it always was. Everything else: real diffusers pipelines
(``method.eval_models``), a stage or transformer directory dropped into ``--pipeline``'s components,
scored by ``--scorer``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hpspec.cli.subjects import demo_of, prompt_list
from hpspec.core.errors import UsageError
from hpspec.core.io import write_text_atomic
from hpspec.core.paths import PLAN_NAME
from hpspec.demo.models import DemoModel
from hpspec.method.evaluate import evaluate_demo, format_comparison, format_result, is_demo_transformer
from hpspec.method.pipelines import DTYPES
from hpspec.model.targets import DEMO, graph_from_path

if TYPE_CHECKING:
    from torch import nn

FORMATS = ("text", "json")


def register(commands: argparse._SubParsersAction) -> None:
    evaluate = commands.add_parser(
        "eval", help="metrics, degradation, latency, peak memory and size of a model against a reference"
    )
    what = evaluate.add_argument_group("what is evaluated")
    what.add_argument(
        "--model",
        required=True,
        help="`demo`, a stage directory (OUT/pruned, OUT/distilled, OUT/quantized), a transformer directory, "
        "or a pipeline directory or hub id (local cache)",
    )
    what.add_argument(
        "--pipeline", metavar="DIR_OR_ID", help="the text encoders, VAE and scheduler around a transformer"
    )
    what.add_argument("--reference", help="the model to compare against (the same kinds as --model), for degradation")
    what.add_argument("--scorer", help="clip=DIR_OR_ID, pickscore=DIR_OR_ID, hpsv2, imagereward, demo")
    what.add_argument("--prompts", metavar="FILE", help="one prompt a line (default for the demo: its fixed set)")
    what.add_argument("--take", type=int, metavar="N", help="N prompts of the file, chosen by a seeded shuffle")
    what.add_argument("--seed", type=int, default=0, metavar="S", help="the shuffle's seed for --take (default 0)")
    what.add_argument("--seeds", type=int, default=4, help="seeds per prompt (0, 1, ...)")
    how = evaluate.add_argument_group("how images are made (pipelines)")
    how.add_argument("--device", help="cuda, cuda:1, cpu (default: cuda when there is one)")
    how.add_argument("--dtype", choices=tuple(DTYPES), help="default bf16 on CUDA, fp32 on the CPU")
    how.add_argument("--offload", action="store_true", help="enable_model_cpu_offload (components visit the GPU)")
    how.add_argument("--steps", type=int, help="sampling steps (default: the pipeline's)")
    how.add_argument("--guidance", type=float, help="guidance scale (default: the pipeline's)")
    how.add_argument("--size", type=int, help="image height and width in pixels (default: the pipeline's)")
    how.add_argument("--max-sequence-length", type=int, help="T5 tokens (default: the pipeline's)")
    out = evaluate.add_argument_group("output")
    out.add_argument("--format", choices=FORMATS, default="text", help="text (a table) or json (for tools)")
    out.add_argument("--json", dest="format", action="store_const", const="json", help="the same as --format json")
    out.add_argument("-o", "--output", help="also write the JSON here")
    evaluate.set_defaults(handler=cmd_eval)


def cmd_eval(args: argparse.Namespace) -> int:
    if _demo_route(args):
        result = _demo_eval(args)
        text = format_result(result) + f"\nparameters             {result['parameters']:,}\n"
    else:
        result = _pipeline_eval(args)
        text = format_comparison(result) + "\n"
    data = json.dumps(result, indent=2, sort_keys=True) + "\n"
    if args.output:
        write_text_atomic(Path(args.output), data)
    sys.stdout.write(data if args.format == "json" else text)
    return 0


def _is_demo_model(value: str | None) -> bool:
    return value is None or value == DEMO or is_demo_transformer(value)


def _demo_route(args: argparse.Namespace) -> bool:
    """The demo's own route: demo models only, no pipeline, the demo scorer (or none named)."""
    # A demo model has no pipeline to go in: its reference is checked as a demo's (demo_of says what is wrong).
    demo = _is_demo_model(args.model) and args.pipeline is None
    if demo and args.scorer not in (None, "demo"):
        raise UsageError(f"--model {args.model} is the demo's: it is scored by --scorer demo, not {args.scorer}")
    return demo


def _demo_eval(args: argparse.Namespace) -> dict[str, Any]:
    from hpspec.weights.load import load_pretrained  # torch

    demo, model = demo_of(args.model)
    reference = demo_of(args.reference, "--reference")[1] or demo.transformer_dir if args.reference else None
    result = evaluate_demo(
        model,
        reference_dir=reference,
        prompts=prompt_list(args.prompts, args.take, args.seed, demo.default_prompts()),
        seeds=list(range(args.seeds)),
        steps=args.steps,
        guidance=args.guidance,
        load_transformer=_loader(load_pretrained, demo),
        progress=True,
        model=demo,
    )
    result["parameters"], result["weight_bytes"] = _size(model or demo.transformer_dir)
    return result


def _pipeline_eval(args: argparse.Namespace) -> dict[str, Any]:
    """Every input checked before anything loads; then the reference and the model, one at a time."""
    from hpspec.method.eval_models import Generation, evaluate_models, model_ref, require_pipeline, settled
    from hpspec.method.scorers import parse_scorer, scorer_from_spec

    model = model_ref(args.model, "--model")
    reference = model_ref(args.reference, "--reference") if args.reference else None
    require_pipeline(model, reference, args.pipeline)
    if args.scorer is None:
        raise UsageError("--scorer: a pipeline is scored by clip=DIR_OR_ID, pickscore=DIR_OR_ID, hpsv2 or imagereward")
    spec = parse_scorer(args.scorer)
    if args.prompts is None:
        raise UsageError("--prompts FILE: a pipeline needs its prompts (one a line)")
    prompts = prompt_list(args.prompts, args.take, args.seed)
    if args.seeds < 1:
        raise UsageError(f"--seeds {args.seeds}: expected at least 1")
    generation = settled(model, Generation(
        _device(args.device), args.dtype, args.offload, args.steps, args.guidance, args.size,
        max_sequence_length=args.max_sequence_length,
    ))  # fmt: skip
    named = scorer_from_spec(spec, device=generation.device)
    result = evaluate_models(
        model,
        named.scorer,
        prompts,
        reference=reference,
        pipeline=args.pipeline,
        seeds=list(range(args.seeds)),
        generation=generation,
        progress=True,
    )
    result["scorer"] = named.name
    return result


def _device(device: str | None) -> str:
    import torch

    if device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"--device {device}: this machine has no CUDA device (torch sees none)")
    return device


def _loader(load_pretrained: Callable[[Path], nn.Module], demo: DemoModel) -> Callable[[Path], nn.Module]:
    """hpspec's loader for pruned stage directories (they carry plan.json), the demo's own otherwise."""

    def load(path: Path) -> nn.Module:
        return load_pretrained(path) if (path / PLAN_NAME).is_file() else demo.load_transformer(path)  # type: ignore[no-any-return]

    return load


def _size(model: Path) -> tuple[int, int]:
    graph = graph_from_path(model)
    return graph.params, graph.nbytes
