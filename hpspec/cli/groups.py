"""The command groups beyond check/plan/graph, in the order `hpspec --help` lists them.

Each group is a module of `hpspec.cli` with a `register(commands)` that adds its subcommands.
A command's group is imported when that command runs (`COMMANDS` says which group holds which
command), so `hpspec check` does not pay for importing the stages, the method and the report;
`hpspec --help`, `--version` and a misspelt command load every group.

    >>> [module.__name__ for module in group_modules("fmt")]
    ['hpspec.cli.review']
    >>> group_modules("check")
    []
"""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Callable
from types import ModuleType

Registrar = Callable[[argparse._SubParsersAction], None]

CORE = ("check", "plan", "graph")
"""The commands `hpspec.cli.app` registers itself: they load no group."""

GROUPS = ("analysis", "evaluate", "demo", "review", "report", "stages", "convert", "distill", "quantize", "lora")
"""Every group, in the order `hpspec --help` lists its commands."""

COMMANDS = {
    "analyze": "analysis",
    "suggest": "analysis",
    "eval": "evaluate",
    "demo": "demo",
    "fmt": "review",
    "diff": "review",
    "init": "review",
    "report": "report",
    "compile": "stages",
    "prune": "stages",
    "convert": "convert",
    "distill": "distill",
    "quantize": "quantize",
    "lora": "lora",
}
"""Which group registers each command (a test checks it against what the groups register)."""


def group_modules(command: str | None) -> list[ModuleType]:
    """The group modules to register for `command`: its own group, or all of them."""
    if command in CORE:
        return []
    names = (COMMANDS[command],) if command in COMMANDS else GROUPS
    return [importlib.import_module(f"hpspec.cli.{name}") for name in names]


def command_word(argv: list[str]) -> str | None:
    """The subcommand named on a command line: its first word that is not an option."""
    return next((word for word in argv if not word.startswith("-")), None)


def registrars(argv: list[str]) -> list[Registrar]:
    """The `register` functions of the groups the command line `argv` needs."""
    return [module.register for module in group_modules(command_word(argv))]
