"""The command groups beyond check/plan/graph, in the order `hpspec --help` lists them.

Each entry is a function that adds its subcommands to the parser; a group imports its heavy
dependencies (torch, diffusers) inside its handlers, never at import time.
"""

from __future__ import annotations

import argparse
from typing import Callable

from hpspec.cli import analysis as cli_analysis
from hpspec.cli import demo as cli_demo
from hpspec.cli import distill as cli_distill
from hpspec.cli import quantize as cli_quantize
from hpspec.cli import review as cli_review
from hpspec.cli import report as cli_report
from hpspec.cli import stages as cli_stages

REGISTRARS: list[Callable[[argparse._SubParsersAction], None]] = [
    cli_analysis.register,
    cli_demo.register,
    cli_review.register,
    cli_report.register,
    cli_stages.register,
    cli_distill.register,
    cli_quantize.register,
]
