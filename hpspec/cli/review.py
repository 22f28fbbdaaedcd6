"""The review workflow's commands: `fmt`, `diff` and `init`.

None of them imports torch: they run in pre-commit hooks and CI jobs on machines without it.

Exit codes: `fmt` 1 when a file has syntax errors or cannot be read, or (with --check) would be
reformatted; `diff` 0 whether or not the plans differ (1 only for inputs that do not compile, or
with --exit-code when they differ, like `git diff --exit-code`); `init` 1 when the target is
unknown or the output exists without --force.
"""

from __future__ import annotations

import argparse
import difflib
import sys
from pathlib import Path

from hpspec.cli.output import write_output
from hpspec.core.diagnostics import lines_of
from hpspec.core.errors import HpspecError
from hpspec.core.io import read_text_input, write_text_atomic
from hpspec.lang.fmt import format_source
from hpspec.model.targets import resolve_target
from hpspec.plan.diff import diff_plans, load_pair, render
from hpspec.plan.scaffold import skeleton, target_line
from hpspec.plan.summary import diagnostics_text


def register(commands: argparse._SubParsersAction) -> None:
    fmt = commands.add_parser("fmt", help="rewrite specs in their one canonical form (comments kept)")
    fmt.add_argument("files", nargs="+", metavar="FILE", help="spec files or directories of them; `-`: stdin to stdout")
    fmt.add_argument("--check", action="store_true", help="write nothing; exit 1 if a file would change")
    fmt.add_argument("--diff", action="store_true", help="write nothing; print what would change as a unified diff")
    fmt.set_defaults(handler=cmd_fmt)

    diff = commands.add_parser("diff", help="what spec or plan B does differently from A, semantically")
    diff.add_argument("a", metavar="A", help="a spec, or a plan JSON (`/dev/null`: the uncompressed model)")
    diff.add_argument("b", metavar="B", help="a spec, or a plan JSON")
    diff.add_argument("--target", help="compile spec inputs for this target instead of their own")
    diff.add_argument("--format", choices=("text", "markdown", "json"), default="text")
    diff.add_argument("--labels", nargs=2, metavar=("OLD", "NEW"), help="names to show for A and B")
    diff.add_argument("--exit-code", action="store_true", help="exit 1 when there is a semantic change")
    diff.add_argument("-o", "--output", help="write the diff here (atomically) instead of stdout")
    diff.set_defaults(handler=cmd_diff)

    init = commands.add_parser("init", help="write a commented skeleton spec listing every block of a target")
    init.add_argument("target", metavar="TARGET", help="a built-in target, `demo`, or a path to a model")
    init.add_argument("-o", "--output", help="write the spec here instead of stdout")
    init.add_argument("--force", action="store_true", help="replace an existing output file")
    init.set_defaults(handler=cmd_init)


# --------------------------------------------------------------------------------------------
# fmt


def cmd_fmt(args: argparse.Namespace) -> int:
    return max((_fmt_one(path, args.check, args.diff) for path in _spec_files(args.files)), default=0)


def _spec_files(arguments: list[str]) -> list[str]:
    """Files as given; a directory stands for the .hps files below it."""
    files: list[str] = []
    for argument in arguments:
        if argument != "-" and Path(argument).is_dir():
            files.extend(str(p) for p in sorted(Path(argument).rglob("*.hps")) if p.is_file())
        else:
            files.append(argument)
    return files


def _fmt_one(path: str, check: bool, show_diff: bool) -> int:
    """Format one file (or stdin); the exit code it earns."""
    try:
        source = sys.stdin.read() if path == "-" else read_text_input(Path(path), "spec")
    except HpspecError as error:
        sys.stderr.write(f"error: {error}\n")
        return 1
    result = format_source(source, path)
    if result.text is None:
        sys.stderr.write(diagnostics_text(result.diagnostics, source))
        sys.stderr.write(f"error: {path}: not formatted: fix its syntax errors first\n")
        return 1
    if show_diff and result.changed:
        sys.stdout.write(unified_diff(source, result.text, path))
    if check or show_diff:
        if check and result.changed:
            sys.stderr.write(f"would reformat {path}\n")
        return int(check and result.changed)
    if path == "-":
        sys.stdout.write(result.text)
    elif result.changed:
        write_text_atomic(Path(path).resolve(), result.text)  # through a symlink, not over it
        sys.stderr.write(f"reformatted {path}\n")
    return 0


def unified_diff(before: str, after: str, path: str) -> str:
    return "".join(difflib.unified_diff(_diff_lines(before), _diff_lines(after), f"a/{path}", f"b/{path}"))


def _diff_lines(text: str) -> list[str]:
    lines = lines_of(text, keepends=True)
    if lines and not lines[-1].endswith("\n"):
        lines[-1] += "\n\\ No newline at end of file\n"
    return lines


# --------------------------------------------------------------------------------------------
# diff


def cmd_diff(args: argparse.Namespace) -> int:
    a, b = load_pair(args.a, args.b, args.target)
    labels = (args.labels[0], args.labels[1]) if args.labels else (args.a, args.b)
    result = diff_plans(a, b, labels)
    write_output(render(result, args.format), args.output)
    return int(args.exit_code and not result.empty)


# --------------------------------------------------------------------------------------------
# init


def cmd_init(args: argparse.Namespace) -> int:
    output = Path(args.output) if args.output not in (None, "-") else None
    if output is not None and output.exists() and not args.force:
        raise HpspecError(f"{output}: already exists (use --force to replace it)")
    graph = resolve_target(args.target, Path("."))
    text = skeleton(graph, target_line(args.target, output))
    if output is not None:
        output.parent.mkdir(parents=True, exist_ok=True)
    write_output(text, args.output)
    if output is not None:
        sys.stderr.write(f"wrote {output}: a skeleton for {graph.name}\n")
    return 0
