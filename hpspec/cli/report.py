"""`hpspec report`: one self-contained HTML page that shows a plan, for a reviewer.

No torch: the page is built from a plan (or a spec, compiled here) and the JSON files beside it.
Exit codes: 0 written; 1 an input is missing, malformed, or does not fit the plan.
"""

from __future__ import annotations

import argparse

from hpspec.cli.output import write_output
from hpspec.report.html import render_report
from hpspec.report.inputs import load_inputs


def register(commands: argparse._SubParsersAction) -> None:
    report = commands.add_parser("report", help="write one self-contained HTML page that shows a plan")
    report.add_argument("plan", metavar="PLAN", help="a plan JSON (`hpspec plan --format json`), or a spec to compile")
    report.add_argument("--sensitivity", metavar="TABLE", help="a sensitivity table: adds the heatmap")
    report.add_argument(
        "--eval", dest="evaluation", metavar="FILE", help="`hpspec eval` JSON, optionally with an image grid"
    )
    report.add_argument("--evidence", metavar="FILE", help="a JSON list of rows comparing methods or configurations")
    report.add_argument("--against", metavar="OLD_PLAN", help="an older plan (or spec): adds the semantic diff")
    report.add_argument("--target", help="compile spec inputs for this target instead of their own")
    report.add_argument("--scales", metavar="FILE", help="SGDistill scales (a distill stage's scales.json)")
    report.add_argument(
        "--lora", action="append", metavar="COVERAGE", help="`hpspec lora`'s OUT/lora/<name>.json: coverage per block"
    )
    report.add_argument("-o", "--output", help="write the page here (atomically) instead of stdout")
    report.set_defaults(handler=cmd_report)


def cmd_report(args: argparse.Namespace) -> int:
    inputs = load_inputs(
        args.plan, args.sensitivity, args.evaluation, args.evidence, args.against, args.target, args.scales, args.lora
    )
    write_output(render_report(inputs), args.output)
    return 0
