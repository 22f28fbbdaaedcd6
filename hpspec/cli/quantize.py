"""`hpspec quantize`: the quantize stage alone, on a stage directory (OUT/pruned or OUT/distilled)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from hpspec.core.errors import HpspecError
from hpspec.core.paths import PLAN_NAME
from hpspec.plan.schema import load_plan_file
from hpspec.report.html import write_stage_report
from hpspec.stages.engine import StageInput, StageOptions, run_stage
from hpspec.stages.pipeline import CompileResult, load_stage_plan, report, stage


def register(commands: argparse._SubParsersAction) -> None:
    quantize = commands.add_parser(
        "quantize", help="the quantize stage alone: a pruned checkpoint into nf4/fp4/int8/int4 weights"
    )
    quantize.add_argument(
        "plan", metavar="SPEC_OR_PLAN", help="a spec with a `quantize` statement, or its plan (*.json)"
    )
    quantize.add_argument(
        "--model", required=True, metavar="DIR", help="the stage directory to quantize (OUT/pruned, OUT/distilled)"
    )
    quantize.add_argument("--out", required=True, metavar="DIR", help="the quantized transformer directory to write")
    quantize.add_argument("--target", help="a built-in target or a model path; wins over the spec's `target`")
    quantize.add_argument("--force", action="store_true", help="replace an existing output")
    quantize.set_defaults(handler=cmd_quantize)


def cmd_quantize(args: argparse.Namespace) -> int:
    model = Path(args.model)
    plan, warnings = load_stage_plan(args.plan, model, args.target or _unpruned_target(model))
    sys.stderr.write(warnings)
    result = run_stage(
        stage("quantize"),
        StageInput(plan, model, StageOptions(report=write_stage_report)),
        Path(args.out),
        force=args.force,
    )
    report(CompileResult((result,), None))
    return 0


def _unpruned_target(model: Path) -> str | None:
    """A spec's drops name blocks of the unpruned model, which the stage directory's plan records."""
    try:
        source = load_plan_file(model / PLAN_NAME).target.source
    except HpspecError:
        return None  # not a stage directory: the quantize stage says so
    kind, _, value = source.partition(":")
    return {"builtin": value, "hpspec": value, "safetensors": value, "config": str(Path(value).parent)}.get(kind)
