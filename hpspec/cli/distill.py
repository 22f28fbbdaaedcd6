"""`hpspec distill`: the distill stage alone, on a pruned stage directory.

    hpspec distill OUT/pruned --teacher DIR --data SOURCE [--sensitivity TABLE] --out OUT/distilled
    accelerate launch --num_processes N -m hpspec.cli distill ...   (the same, on N processes)

The plan is the pruned directory's own plan.json. Torch is imported inside the handler only.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from hpspec.core.errors import DistillStopped
from hpspec.core.paths import PLAN_NAME
from hpspec.plan.schema import load_plan_file
from hpspec.report.html import write_stage_report
from hpspec.stages.distill import run_distill
from hpspec.stages.engine import DistillOptions, StageInput, StageOptions
from hpspec.stages.pipeline import CompileResult, report

DATA_HELP = "`demo` (the demo's digits and prompts) or a folder of latents and text embeddings (docs/distill.md)"


def register(commands: argparse._SubParsersAction) -> None:
    distill = commands.add_parser(
        "distill", help="the distill stage alone: repair a pruned checkpoint against the original"
    )
    distill.add_argument(
        "stage", metavar="STAGE_DIR", help="a pruned stage directory (OUT/pruned); its plan.json is the plan"
    )
    distill.add_argument(
        "--teacher", required=True, metavar="DIR", help="the original model the plan pruned, or `demo`"
    )
    distill.add_argument("--data", required=True, metavar="SOURCE", help=DATA_HELP)
    distill.add_argument(
        "--sensitivity",
        metavar="TABLE",
        help="the sensitivity table for weight=sensitivity (wins over the spec's table=)",
    )
    distill.add_argument("--out", required=True, metavar="DIR", help="the distilled directory to write")
    distill.add_argument("--force", action="store_true", help="replace an existing output")
    distill.add_argument("--stop-after", type=_positive, metavar="N",
                         help="stop after N steps of this run with a checkpoint (exit code 3); the same command resumes")  # fmt: skip
    distill.add_argument(
        "--checkpoint-every", type=_positive, metavar="N", help="steps between checkpoints (default 500)"
    )
    distill.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    distill.add_argument("--no-report", dest="report", action="store_false", help="skip report.html")
    distill.set_defaults(handler=cmd_distill)


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def cmd_distill(args: argparse.Namespace) -> int:
    stage_dir = Path(args.stage)
    plan = load_plan_file(stage_dir / PLAN_NAME)
    distill = DistillOptions(data=args.data, teacher=args.teacher, sensitivity=args.sensitivity, stop_after=args.stop_after,
                             checkpoint_every=args.checkpoint_every)  # fmt: skip
    options = StageOptions(distill=distill, report=write_stage_report if args.report else None)
    try:
        result = run_distill(StageInput(plan, stage_dir, options, args.progress), Path(args.out), force=args.force)
    except DistillStopped as stopped:  # asked for: not an error, but not finished either
        sys.stderr.write(f"distill: {stopped}\n")
        return stopped.exit_code
    if result is not None:  # the main process
        report(CompileResult((result,), None))
        sys.stdout.flush()
    return 0
