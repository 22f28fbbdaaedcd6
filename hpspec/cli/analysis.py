"""`hpspec analyze` and `hpspec suggest`: sensitivity tables and the specs chosen from them."""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hpspec.cli.subjects import demo_of, is_pipeline, prompt_list
from hpspec.core.errors import SpecError, UsageError
from hpspec.core.io import read_json_input, write_text_atomic
from hpspec.demo.models import DemoModel
from hpspec.lang.parse import parse
from hpspec.method.analyze import Settings, Subject, analyze, demo_subject, probe_analysis
from hpspec.method.distill.loop import process_state
from hpspec.method.pipelines import DTYPES, Sampling
from hpspec.method.probes import parse_probes
from hpspec.method.scorers import scorer_from_spec
from hpspec.method.sensitivity import check_table_fits, import_reference, load_table
from hpspec.method.suggest import Suggestion, render_spec, suggest
from hpspec.model.graph import ModelGraph
from hpspec.model.targets import resolve_target, target_names
from hpspec.plan.check import Item, check

if TYPE_CHECKING:
    pass


def register(commands: argparse._SubParsersAction) -> None:
    analyze = commands.add_parser("analyze", help="measure (or import) what removing each block and part costs")
    analyze.add_argument(
        "--model",
        help="`demo`, a demo-shaped transformer directory, or an SD3/SD3.5/FLUX pipeline (directory or hub id)",
    )
    analyze.add_argument("--parts", action="store_true", help="also remove each part of each block")
    analyze.add_argument("--probe", metavar="NAMES", help="one pass, no removals: cosine,mse,cka per block and part")
    analyze.add_argument(
        "--scorer", help="clip=DIR_OR_ID, pickscore=DIR_OR_ID, hpsv2, imagereward or demo (with --import-reference: "
        "the metric the table measured, default hpsv2)",
    )  # fmt: skip
    analyze.add_argument("--prompts", metavar="FILE", help="one prompt a line, or a JSON list (default: the demo's)")
    analyze.add_argument("--take", type=int, metavar="N", help="a seeded sample of N prompts of --prompts")
    analyze.add_argument("--seed", type=int, default=0, help="the seed of --take's sample")
    analyze.add_argument("--seeds", type=int, default=1, help="generation seeds per prompt (0, 1, ...)")
    analyze.add_argument("--steps", type=int, help="sampling steps (default: the generator's)")
    analyze.add_argument("--guidance", type=float, help="guidance scale (default: the generator's)")
    analyze.add_argument("--size", type=int, help="image side in pixels (pipelines; default: the pipeline's)")
    analyze.add_argument("--batch-size", type=int, default=4, help="images per pipeline call (pipelines)")
    analyze.add_argument("--max-sequence-length", type=int, help="T5 tokens (pipelines; default: the pipeline's)")
    analyze.add_argument("--device", help="where the pipeline runs (pipelines; default: this rank's GPU, else the CPU)")
    analyze.add_argument("--dtype", choices=tuple(DTYPES), help="the pipeline's weights (pipelines)")
    analyze.add_argument("--offload", action="store_true", help="enable_model_cpu_offload (pipelines)")
    analyze.add_argument("--save-images", type=int, default=0, metavar="N", help="keep N images per entry (PNG)")
    analyze.add_argument(
        "--import-reference", metavar="FILE", help="the reference code's released table (BLOCK<tab>PART: score)"
    )
    analyze.add_argument("--full-score", type=float, help="the unpruned model's score (with --import-reference)")
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
    report = import_reference(data, graph, args.full_score, args.import_reference, args.scorer or "hpsv2")
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


def _device(asked: str | None, state: Any) -> str | None:
    """`--device`, except that a bare `cuda` (or none, where CUDA is) under several processes is each
    rank's own GPU (accelerate's `state.device`, cuda:LOCAL_RANK)."""
    import torch

    if asked in (None, "cuda") and torch.cuda.is_available():
        return str(state.device)
    return asked


PIPELINE_ONLY = ("size", "max_sequence_length", "device", "dtype", "offload")


def _measure(args: argparse.Namespace) -> int:
    if args.model is None:
        raise UsageError("hpspec analyze: give --model (demo, a directory or a hub id), or --import-reference FILE")
    probes = parse_probes(args.probe) if args.probe is not None else None  # before any model loads
    demo = None if is_pipeline(args.model) else demo_of(args.model)
    prompts = prompt_list(args.prompts, args.take, args.seed, demo[0].analysis_set() if demo else None)
    output = Path(args.output)
    if not output.parent.is_dir():
        raise UsageError(f"-o {output}: the folder {output.parent} does not exist")
    state = process_state()
    if demo is None:
        subject, knobs = _pipeline_subject(args, probes, prompts, output, state)
    else:
        subject, knobs = _demo_subject(args, probes, *demo)
    settings = Settings(prompts, list(range(args.seeds)), args.parts, knobs)
    if probes is not None:
        if state.process_index != 0:  # one pass, not split: rank 0 alone runs it
            return 0
        probed = probe_analysis(subject, settings, probes, output)
        parts = sum(p.part is not None for p in probed.probes)
        sys.stderr.write(f"wrote {args.output}: probes of {len(probed.probes) - parts} blocks and {parts} parts\n")
        return 0
    table = analyze(subject, settings, output, rank=state.process_index, world=state.num_processes,
                    barrier=state.wait_for_everyone, save_images=args.save_images)  # fmt: skip
    if table is not None:
        sys.stderr.write(f"wrote {args.output}: {len(table.entries)} entries, full score {table.full_score:.4f}\n")
    return 0


def _demo_subject(
    args: argparse.Namespace, probes: tuple[str, ...] | None, demo: DemoModel, path: Path | None
) -> tuple[Subject, dict[str, Any]]:
    given = [f"--{name.replace('_', '-')}" for name in PIPELINE_ONLY if getattr(args, name) not in (None, False)]
    if given:
        raise UsageError(f"{given[0]} applies to SD3/FLUX pipelines, not to the demo model {args.model}")
    named = scorer_from_spec(args.scorer) if args.scorer not in (None, "demo") and probes is None else None
    subject, knobs = demo_subject(path, steps=args.steps, guidance=args.guidance, model=demo)
    if named is not None:
        subject = replace(subject, scorer=named.scorer, scorer_name=named.name)
        knobs = {**knobs, "scorer": named.name}
    return subject, knobs


def _pipeline_subject(
    args: argparse.Namespace, probes: tuple[str, ...] | None, prompts: list[str], output: Path, state: Any
) -> tuple[Subject, dict[str, Any]]:
    from hpspec.method.pipeline_subject import PipelineRequest, pipeline_subject

    if probes is None and args.scorer is None:
        raise UsageError(f"hpspec analyze --model {args.model}: give --scorer (clip=DIR_OR_ID, pickscore=..., hpsv2, "
                         "imagereward), or --probe cosine,mse,cka")  # fmt: skip
    device = _device(args.device, state)
    named = scorer_from_spec(args.scorer, device=device) if probes is None else None
    sampling = Sampling(args.steps, args.guidance, args.size, args.batch_size)
    request = PipelineRequest(args.model, sampling, device, args.dtype, args.offload, args.max_sequence_length)
    scorer, name = (named.scorer, named.name) if named is not None else (None, "none (probes only)")
    return pipeline_subject(request, scorer, name, prompts, output, rank=state.process_index,
                            barrier=state.wait_for_everyone)  # fmt: skip
