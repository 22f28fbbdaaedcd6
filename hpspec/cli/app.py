"""The `hpspec` command: a thin shell over the library.

Exit codes: 0 success (warnings allowed unless --strict), 1 spec or input errors, 2 usage.
check, plan and graph live here; every other command group registers itself from its own module,
which is imported only when one of its commands runs (`hpspec.cli.groups`), and commands that need
torch import it inside their handler, so `check`, `plan`, `graph`, `fmt` and `diff` stay fast.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from hpspec.cli.groups import registrars
from hpspec.cli.output import write_output
from hpspec.core.diagnostics import Diagnostic
from hpspec.core.errors import HpspecError, SpecError, UsageError
from hpspec.core.io import gc_paused
from hpspec.core.version import __version__
from hpspec.model.targets import resolve_target
from hpspec.plan import front
from hpspec.plan.compile import compile_plan
from hpspec.plan.memory import PRECISIONS, STRATEGIES, memory_report
from hpspec.plan.summary import diagnostics_github, diagnostics_json, diagnostics_text, graph_text, plan_text

Handler = Callable[[argparse.Namespace], int]


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse's own usage errors: exit 2, one line
        raise UsageError(f"{self.prog}: {message}")


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The parser for `argv` (default: this process's): the core commands and the groups it needs."""
    parser = _Parser(prog="hpspec", description="Compile compression specs for diffusion transformers.")
    parser.add_argument("--version", action="version", version=f"hpspec {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    commands.required = True
    _register_core(commands)
    for register in registrars(list(sys.argv[1:] if argv is None else argv)):  # in --help order
        register(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    try:
        code = _run(argv)
        sys.stdout.flush()  # here, not at exit, where a closed pipe could only be reported as a traceback
        return code
    except BrokenPipeError:  # `hpspec check big.hps | head -1`: the reader has gone; quiet, as Unix tools are
        _silence_stdout()
        return 141  # 128 + SIGPIPE, what a shell reports for a tool the pipe ended


def _run(argv: Sequence[str] | None) -> int:
    """The command, its errors reported (a closed pipe while reporting one is `main`'s)."""
    try:
        args = build_parser(argv).parse_args(argv)
        handler: Handler = args.handler
        return handler(args)
    except SpecError as error:
        sys.stdout.write(error.render() + "\n")
        return error.exit_code
    except HpspecError as error:
        sys.stderr.write(f"error: {error}\n")
        return error.exit_code
    except BrokenPipeError:  # not an environment problem: `main` quiets it
        raise
    except OSError as error:  # the environment: a missing directory, a full disk, a name too long
        where = f"{os.fsdecode(error.filename)}: " if isinstance(error.filename, (str, bytes, os.PathLike)) else ""
        sys.stderr.write(f"error: {where}{error.strerror or error}\n")
        return 1
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        return 130


def _silence_stdout() -> None:
    """Point stdout at /dev/null so that Python's flush at exit finds no broken pipe (as its docs advise)."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):  # stdout is not a real file (captured in a test): nothing to flush at exit
        pass


# --------------------------------------------------------------------------------------------
# check, plan, graph


def _register_core(commands: argparse._SubParsersAction) -> None:
    check = commands.add_parser("check", help="check specs against their target's model graph")
    check.add_argument("files", nargs="+", metavar="FILE")
    check.add_argument("--target", help="a built-in target or a model path; wins over the spec's `target`")
    check.add_argument("--strict", action="store_true", help="warnings fail too")
    check.add_argument("--format", choices=("text", "json", "github"), default="text")
    check.set_defaults(handler=cmd_check)

    plan = commands.add_parser("plan", help="compile a spec into an explicit plan")
    plan.add_argument("file", metavar="FILE")
    plan.add_argument("--target")
    plan.add_argument("--format", choices=("text", "json"), default="text")
    plan.add_argument("-o", "--output", help="write the plan here (atomically) instead of stdout")
    plan.add_argument("--train-gpus", type=int, metavar="N", help="also print the distill stage's memory per GPU")
    plan.add_argument("--strategy", choices=STRATEGIES, default="ddp", help="with --train-gpus (default: ddp)")
    plan.add_argument("--batch", type=int, metavar="B", help="with --train-gpus: samples per GPU (default: the plan's)")
    plan.add_argument("--size", type=int, metavar="S", help="with --train-gpus: image side in pixels")
    plan.add_argument("--precision", choices=tuple(PRECISIONS), default="bf16", help="with --train-gpus")
    plan.set_defaults(handler=cmd_plan)

    graph = commands.add_parser("graph", help="list a target's blocks and parts with their parameter counts")
    graph.add_argument("target", metavar="TARGET")
    graph.add_argument("--format", choices=("text", "json"), default="text")
    graph.set_defaults(handler=cmd_graph)


def check_file(path: str, target: str | None):
    """parse + target + check one file: (checked spec or None, diagnostics, source, other error)."""
    try:
        checked = front.check_file(path, target, recover=True)
        return checked, checked.diagnostics, checked.spec.source, None
    except SpecError as error:
        return None, error.diagnostics, error.source, None
    except HpspecError as error:
        return None, (), None, str(error)


def cmd_check(args: argparse.Namespace) -> int:
    with gc_paused():  # linear in the specs' size (see gc_paused)
        return _check_files(args)


def _check_files(args: argparse.Namespace) -> int:
    results: list[tuple[str, Sequence[Diagnostic], str | None]] = []
    failed = False
    for path in args.files:
        _, diagnostics, source, error = check_file(path, args.target)
        errors = sum(d.severity == "error" for d in diagnostics)
        warnings = len(diagnostics) - errors
        failed |= bool(errors or error or (args.strict and warnings))
        results.append((path, diagnostics, error))
        if args.format == "text":
            sys.stdout.write(diagnostics_text(diagnostics, source))
            if error is not None:
                sys.stdout.write(f"{path}: error: {error}\n")
            sys.stdout.write(f"{path}: {_tally(errors + (error is not None), warnings)}\n")
        elif args.format == "github":
            sys.stdout.write(diagnostics_github(diagnostics))
            if error is not None:
                sys.stdout.write(diagnostics_github([Diagnostic("error", error, None, None, path)]))
    if args.format == "json":
        sys.stdout.write(diagnostics_json(results))
    return 1 if failed else 0


def _tally(errors: int, warnings: int) -> str:
    if not errors and not warnings:
        return "ok"
    parts = []
    if errors:
        parts.append(f"{errors} error{'s' * (errors != 1)}")
    if warnings:
        parts.append(f"{warnings} warning{'s' * (warnings != 1)}")
    return ", ".join(parts)


def cmd_plan(args: argparse.Namespace) -> int:
    with gc_paused():  # linear in the spec's size (see gc_paused)
        checked, diagnostics, source, error = check_file(args.file, args.target)
    if error is not None:
        raise HpspecError(error)
    if checked is None:
        raise SpecError(diagnostics, source)
    if diagnostics:
        sys.stderr.write(diagnostics_text(diagnostics, source))
    plan = compile_plan(checked)
    text = plan.to_json() if args.format == "json" else plan_text(plan)
    if args.train_gpus is not None and args.format == "text":
        memory = memory_report(
            plan, checked.graph, args.train_gpus, args.strategy, args.batch, args.size, args.precision
        )
        text += "\n" + memory
    write_output(text, args.output)
    return 0


def cmd_graph(args: argparse.Namespace) -> int:
    graph = resolve_target(args.target, Path("."))
    if args.format == "json":
        data = {
            "name": graph.name,
            "family": graph.family,
            "source": graph.source,
            "fingerprint": graph.fingerprint,
            "params": graph.params,
            "bytes": graph.nbytes,
            "dtype": graph.dtype,
            "outside": {o.module: o.params for o in graph.outside},
            "stacks": {
                st.name: [
                    {"index": b.index, "kind": b.kind, "params": b.params, "parts": {p.word: p.params for p in b.parts}}
                    for b in st.blocks
                ]
                for st in graph.stacks
            },
        }
        sys.stdout.write(json.dumps(data, indent=2, sort_keys=True) + "\n")
    else:
        sys.stdout.write(graph_text(graph))
    return 0


if __name__ == "__main__":
    sys.exit(main())
