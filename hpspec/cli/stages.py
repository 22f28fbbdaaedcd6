"""`hpspec compile` and `hpspec prune`: the stages, from the command line.

Neither imports torch: pruning a checkpoint copies bytes (hpspec.checkpoint).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from hpspec.plan.plan import Plan
from hpspec.report.html import write_stage_report
from hpspec.stages.cards import comfyui_sd3_note
from hpspec.stages.engine import DistillOptions, PruneOptions, StageInput, StageOptions, resolve_model, run_stage
from hpspec.stages.pipeline import CompileResult, compile_model, load_stage_plan, report, stage
from hpspec.weights.formats.pruned import parse_to
from hpspec.weights.lora.run import prepare_loras, write_loras

MODEL_HELP = (
    "a diffusers transformer directory, a pipeline root, a Hugging Face cache snapshot, a single file "
    "(BFL, SAI or ComfyUI layout), a GGUF file, or `demo`"
)
TO_HELP = (
    "the pruned model's layout: diffusers (a folder), bfl, sai, comfyui (one .safetensors), gguf[:TYPE] "
    "(one .gguf; f32 f16 bf16 q8_0 q5_0 q5_1 q4_0 q4_1 q4_k q5_k q6_k); default: the input's own; with distill or "
    "quantize declared, the last stage is exported in it into OUT/exported"
)
VERIFY_HELP = "first scan every weight of the input for NaN and infinity (reads all of it, in bounded memory)"


def register(commands: argparse._SubParsersAction) -> None:
    compile_ = commands.add_parser("compile", help="run every stage a spec declares on a checkpoint: OUT/pruned, ...")
    compile_.add_argument("spec", metavar="SPEC")
    compile_.add_argument("--model", required=True, metavar="DIR", help=MODEL_HELP)
    compile_.add_argument("--out", required=True, metavar="OUT", help="each stage writes OUT/<stage directory>")
    compile_.add_argument("--target", help="a built-in target or a model path; wins over the spec's `target`")
    compile_.add_argument("--force", action="store_true", help="redo finished stages")
    compile_.add_argument("--no-report", dest="report", action="store_false", help="skip each stage's report.html")
    compile_.add_argument("--verify", action="store_true", help=VERIFY_HELP)
    compile_.add_argument("--to", metavar="LAYOUT", help=TO_HELP)
    compile_.add_argument(
        "--data", metavar="SOURCE", help="distillation data: `demo`, or a folder of latents (docs/distill.md)"
    )
    compile_.add_argument("--teacher", metavar="DIR", help="the distillation teacher (default: --model, the original)")
    compile_.add_argument(
        "--sensitivity", metavar="TABLE", help="sensitivity table for SGDistill (wins over the spec's table=)"
    )
    compile_.add_argument(
        "--lora", action="append", metavar="FILE", help="a LoRA of the full model, remapped into OUT/lora/"
    )
    compile_.set_defaults(handler=cmd_compile)

    prune = commands.add_parser("prune", help="the prune stage alone: a checkpoint into a pruned checkpoint")
    prune.add_argument("plan", metavar="SPEC_OR_PLAN", help="a spec, or a plan written by `hpspec plan --format json`")
    prune.add_argument("--model", required=True, metavar="DIR", help=MODEL_HELP)
    prune.add_argument("--out", required=True, metavar="DIR", help="the pruned transformer directory to write")
    prune.add_argument("--target", help="a built-in target or a model path; wins over the spec's `target`")
    prune.add_argument("--force", action="store_true", help="replace an existing output")
    prune.add_argument("--verify", action="store_true", help=VERIFY_HELP)
    prune.add_argument("--to", metavar="LAYOUT", help=TO_HELP)
    prune.set_defaults(handler=cmd_prune)


def cmd_compile(args: argparse.Namespace) -> int:
    model = resolve_model(args.model)
    plan, warnings = load_stage_plan(args.spec, model, args.target)
    sys.stderr.write(warnings)
    distill = DistillOptions(data=args.data, teacher=args.teacher or args.model, sensitivity=args.sensitivity)
    options = StageOptions(
        PruneOptions(verify=args.verify, to=_to(args.to)), distill, report=write_stage_report if args.report else None
    )
    loras = prepare_loras(plan, model, args.lora, Path(args.out)) if args.lora else []  # checked before any stage
    result = compile_model(
        plan, model, Path(args.out), force=args.force, options=options, model_label=args.model, target=args.target
    )
    report(result)
    _notes(plan, result)
    write_loras(loras)
    return 0


def cmd_prune(args: argparse.Namespace) -> int:
    model = resolve_model(args.model)
    plan, warnings = load_stage_plan(args.plan, model, args.target)
    sys.stderr.write(warnings)
    options = StageOptions(PruneOptions(verify=args.verify, to=_to(args.to)), report=write_stage_report)
    result = run_stage(stage("prune"), StageInput(plan, model, options), Path(args.out), force=args.force)
    report(CompileResult((result,), None))
    _notes(plan, CompileResult((result,), None))
    return 0


def _to(value: str | None) -> str | None:
    """--to, checked before anything runs (an unknown layout or GGUF type is one error line)."""
    return None if value is None else parse_to(value)


def _notes(plan: Plan, result: CompileResult) -> None:
    """What a user must know about a stage's output before loading it elsewhere (ComfyUI and SD3)."""
    for item in result.results:
        note = comfyui_sd3_note(plan, str(item.provenance.get("layout", "diffusers")))
        if note is not None:
            sys.stderr.write(f"note: {item.out}: {note}\n")
