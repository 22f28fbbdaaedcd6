"""The command groups beyond check/plan/graph, in the order `hpspec --help` lists them.

Each entry is a function that adds its subcommands to the parser; a group imports its heavy
dependencies (torch, diffusers) inside its handlers, never at import time.
"""

from __future__ import annotations

import argparse
from typing import Callable

from . import cli_analysis
from . import cli_distill
from . import cli_quantize
from . import cli_review
from . import cli_report
from . import cli_stages

REGISTRARS: list[Callable[[argparse._SubParsersAction], None]] = [
    cli_analysis.register,
    cli_review.register,
    cli_report.register,
    cli_stages.register,
    cli_distill.register,
    cli_quantize.register,
]
