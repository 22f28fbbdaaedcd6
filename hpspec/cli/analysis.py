"""`hpspec analyze` and `hpspec suggest`: sensitivity tables and the specs chosen from them."""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from hpspec.cli.subjects import demo_dir, prompt_list
from hpspec.core.errors import SpecError, UsageError
from hpspec.core.io import read_json_input, write_text_atomic
from hpspec.lang.parse import parse
from hpspec.method.analyze import Settings, analyze, demo_subject, probe_analysis
from hpspec.method.distill.loop import process_state
from hpspec.method.probes import parse_probes
from hpspec.method.sensitivity import check_table_fits, import_reference, load_table
from hpspec.method.suggest import Suggestion, render_spec, suggest
from hpspec.model.graph import ModelGraph
from hpspec.model.targets import resolve_target, target_names
from hpspec.plan.check import Item, check

if TYPE_CHECKING:
    pass


def register(commands: argparse._SubParsersAction) -> None:
    analyze = commands.add_parser("analyze", help="measure (or import) what removing each block and part costs")
    analyze.add_argument("--model", help="the model to measure: `demo` or a demo-shaped transformer directory")
    analyze.add_argument("--parts", action="store_true", help="also remove each part of each block")
    analyze.add_argument("--probe", metavar="NAMES", help="one pass, no removals: cosine,mse,cka per block")
    analyze.add_argument("--prompts", metavar="FILE", help="one prompt a line (default: the demo's fixed set)")
    analyze.add_argument("--seeds", type=int, default=1, help="seeds per prompt (0, 1, ...)")
    analyze.add_argument("--steps", type=int, help="sampling steps (default: the generator's)")
    analyze.add_argument(
        "--import-reference", metavar="FILE", help="the reference code's released table (BLOCK<tab>PART: score)"
    )
    analyze.add_argument("--full-score", type=float, help="the unpruned model's score (with --import-reference)")
    analyze.add_argument("--scorer", default="hpsv2", help="the metric the imported table measured")
    analyze.add_argument("--target", help="the model the table was measured on")
    analyze.add_argument("-o", "--output", required=True, help="the table to write (JSON)")
    analyze.set_defaults(handler=cmd_analyze)

    suggest = commands.add_parser("suggest", help="write an explicit spec for a parameter budget")
    suggest.add_argument("--method", choices=("hierarchical", "koala", "bksdm"), default="hierarchical")
    suggest.add_argument("--target", required=True)
    suggest.add_argument("--sensitivity", required=True, metavar="TABLE")
    suggest.add_argument("--keep", type=float, required=True, help="fraction of parameters to keep, e.g. 0.71")
    suggest.add_argument("--blocks", help='whole blocks dropped as given, e.g. "25:29,31:35"')
    suggest.add_argument("--within", help='where parts may be removed, e.g. "13:19"')
    suggest.add_argument("--exclude", default="", help="part kinds never removed, comma-separated, e.g. attn")
    suggest.add_argument("--position-weight", action="store_true", help="rank by the paper's position-weighted ΔP")
    suggest.add_argument("-o", "--output", help="the spec to write (default: stdout)")
    suggest.set_defaults(handler=cmd_suggest)


def cmd_analyze(args: argparse.Namespace) -> int:
    if args.import_reference is None:
        return _measure(args)
    if args.full_score is None or args.target is None:
        raise UsageError("hpspec analyze --import-reference needs --full-score and --target")
    graph = resolve_target(args.target, Path("."))
    data = read_json_input(Path(args.import_reference), "reference sensitivity table")
    report = import_reference(data, graph, args.full_score, args.import_reference, args.scorer)
    for skipped in report.skipped:
        sys.stderr.write(f"warning: skipped {skipped}\n")
    write_text_atomic(Path(args.output), report.table.to_json())
    sys.stderr.write(f"wrote {args.output}: {len(report.table.entries)} entries for {graph.name}\n")
    return 0


@dataclass(frozen=True)
class SuggestRequest:
    """What `hpspec suggest` is asked, as its options spell it (the spec's header repeats them)."""

    method: str
    target: str
    sensitivity: str  # the table's path
    keep: float
    blocks: str | None = None
    within: str | None = None
    exclude: str = ""
    position_weight: bool = False

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> SuggestRequest:
        return cls(
            args.method,
            args.target,
            args.sensitivity,
            args.keep,
            args.blocks,
            args.within,
            args.exclude,
            args.position_weight,
        )

    def command_line(self) -> str:
        """The command that writes this spec again (the table by its file name)."""
        parts = ["hpspec suggest", f"--method {self.method}", f"--target {shlex.quote(self.target)}",
                 f"--sensitivity {shlex.quote(Path(self.sensitivity).name)}", f"--keep {self.keep}"]  # fmt: skip
        if self.blocks:
            parts.append(f"--blocks {shlex.quote(self.blocks)}")
        if self.within:
            parts.append(f"--within {shlex.quote(self.within)}")
        if self.exclude:
            parts.append(f"--exclude {shlex.quote(self.exclude)}")
        if self.position_weight:
            parts.append("--position-weight")
        return " ".join(parts)


def suggested_spec(request: SuggestRequest, output: Path | None) -> tuple[str, Suggestion]:
    """The spec `suggest` chooses for a request, as text for `output` (None: stdout), and the choice."""
    graph = resolve_target(request.target, Path("."))
    table = load_table(Path(request.sensitivity))
    check_table_fits(table, graph, request.sensitivity)
    blocks = _selection(request.blocks, graph, "--blocks") if request.blocks else ()
    within = _selection(request.within, graph, "--within") if request.within else None
    exclude = [w.strip() for w in request.exclude.split(",") if w.strip()]
    unknown = [w for w in exclude if w not in graph.arch.words]
    if unknown:
        raise UsageError(f"--exclude: unknown part kind {unknown[0]!r}; kinds: {', '.join(graph.arch.words)}")
    result = suggest(request.method, graph, table, request.keep, blocks, within, exclude, request.position_weight)
    table_path = Path(request.sensitivity)
    note = f"table {table_path.name} (scorer {table.scorer.name}, full score {table.full_score:g})"
    extra = ["preserve auto"]
    if request.method == "hierarchical":
        extra.append(f'distill weight=sensitivity table="{_relative(table_path, output)}"')
    text = render_spec(result, _target_line(request.target, output), request.command_line(), note, extra)
    return text, result


def cmd_suggest(args: argparse.Namespace) -> int:
    output = Path(args.output) if args.output else None
    text, result = suggested_spec(SuggestRequest.from_args(args), output)
    if output is None:
        sys.stdout.write(text)
    else:
        write_text_atomic(output, text)
        sys.stderr.write(f"wrote {output}: {result.kept_fraction:.4f} of parameters kept\n")
    return 0


def _selection(text: str, graph: ModelGraph, option: str) -> Sequence[Item]:
    """`25:29,31:35` (the first stack) or full selectors like `single_blocks[3:9]`, resolved."""
    selectors = text if "[" in text else f"{graph.stacks[0].name}[{text}]"
    try:
        return check(parse(f"drop {selectors}\n", option), graph).drops
    except SpecError as error:
        raise UsageError(f"{option} {text!r}: " + "; ".join(d.message for d in error.diagnostics)) from None


def _target_line(target: str, output: Path | None) -> str:
    if target in target_names():
        return f"target {target}"
    return f'target "{_relative(Path(target), output)}"'


def _relative(path: Path, output: Path | None) -> str:
    base = output.parent if output is not None else Path(".")
    return Path(os.path.relpath(path.resolve(), base.resolve())).as_posix()


def _measure(args: argparse.Namespace) -> int:
    if args.model is None:
        raise UsageError("hpspec analyze: give --model (demo or a directory), or --import-reference FILE")
    probes = parse_probes(args.probe) if args.probe is not None else None  # before any model loads
    subject, knobs = demo_subject(demo_dir(args.model), steps=args.steps)
    settings = Settings(prompt_list(args.prompts), list(range(args.seeds)), args.parts, knobs)
    if probes is not None:
        probed = probe_analysis(subject, settings, probes, Path(args.output))
        sys.stderr.write(f"wrote {args.output}: probes of {len(probed.probes)} blocks\n")
        return 0
    state = process_state()
    table = analyze(subject, settings, Path(args.output), rank=state.process_index, world=state.num_processes,
                    barrier=state.wait_for_everyone)  # fmt: skip
    if table is not None:
        sys.stderr.write(f"wrote {args.output}: {len(table.entries)} entries, full score {table.full_score:.4f}\n")
    return 0
