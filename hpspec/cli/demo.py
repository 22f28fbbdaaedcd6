"""`hpspec demo`: the whole method on the embedded demo model, offline, on a CPU, in minutes.

analyze (blocks and parts) -> suggest a spec by each method at the same budget -> compile each ->
evaluate each against the unpruned model; HierarchicalPrune's selection is then distilled (PWP +
SGDistill, a short run) and quantized (nf4, int4) -> one table, and one page that compares them
(OUT/report.html). Everything it makes stays in a folder: the sensitivity table, the specs, the
plans, the pruned, distilled and quantized checkpoints (each with its report.html) and the
evaluation JSON. A row whose optional back end (bitsandbytes, optimum-quanto) is not installed
says so, and the rest runs.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hpspec.cli.analysis import SuggestRequest, suggested_spec
from hpspec.core.errors import HpspecError
from hpspec.core.io import dumps_json, write_text_atomic
from hpspec.core.paths import PLAN_NAME, REPORT_NAME
from hpspec.demo.models import DEMO_MODELS, DIGITS, SHAPES, DemoModel
from hpspec.method.analyze import Settings, Subject, analyze, demo_subject
from hpspec.method.distill.build import demo_data_folder
from hpspec.method.evaluate import Generator, evaluate
from hpspec.method.sensitivity import load_table, settings_hash
from hpspec.plan.schema import load_plan_file
from hpspec.plan.summary import human_bytes, table
from hpspec.report.compare import Comparison, ImageColumn, write_comparison
from hpspec.report.html import write_stage_report
from hpspec.report.images import encode_images
from hpspec.stages.distill import distill_demo
from hpspec.stages.engine import DistillOptions, StageOptions, resolve_model
from hpspec.stages.pipeline import compile_model, load_stage_plan
from hpspec.stages.quantize import quantize_dir

if TYPE_CHECKING:
    import torch
    from torch import nn

DEFAULT_OUT = "hpspec-demo"
DEFAULT_KEEP = 0.75
METHOD_ORDER = ("hierarchical", "koala", "bksdm")
DEMO_SCHEMES = ("nf4", "int4")


@dataclass(frozen=True)
class Row:
    method: str
    spec: Path
    params_kept: float
    weight_bytes: int | None  # None: not measured (the row did not run)
    metrics: dict[str, float]
    degradation: float | None
    model_dir: Path | None = None  # the stage directory evaluated; None: the original model
    images: tuple[str, ...] = ()  # base64 PNGs, one per prompt (the first seed's), for the page
    note: str = ""  # why the row has no numbers, e.g. a back end that is not installed


def register(commands: argparse._SubParsersAction) -> None:
    demo = commands.add_parser(
        "demo", help="the whole method on the embedded demo model: analyze, suggest, compile, evaluate"
    )
    demo.add_argument("--out", default=DEFAULT_OUT, help="where the tables, specs, plans and models go")
    demo.add_argument("--keep", type=float, default=DEFAULT_KEEP, help="fraction of parameters every method keeps")
    demo.add_argument("--force", action="store_true", help="re-measure and recompile")
    demo.add_argument(
        "--model",
        choices=sorted(DEMO_MODELS),
        default=SHAPES.name,
        help="which embedded demo: shapes (GenEval on 32x32 scenes, the default) or digits (8x8 digits)",
    )
    demo.set_defaults(handler=cmd_demo)


def cmd_demo(args: argparse.Namespace) -> int:
    out = Path(args.out)
    started = time.monotonic()
    model = DEMO_MODELS[args.model]
    rows = run_demo(out, keep=args.keep, say=_to_stderr, force=args.force, model=model)
    sys.stdout.write(table_text(rows, model.metrics))
    sys.stdout.write(f"\nspecs, plans, tables and models are in {out}/\n")
    sys.stdout.write(f"the demo took {duration_text(time.monotonic() - started)}\n")
    sys.stdout.write(f"the comparison page: {out / REPORT_NAME}\n")
    return 0


def _to_stderr(line: str) -> None:
    sys.stderr.write(line + "\n")


def run_demo(
    out: Path,
    keep: float = DEFAULT_KEEP,
    seeds: Sequence[int] = (0, 1),
    analysis_seeds: Sequence[int] = (0,),
    say: Callable[[str], object] = print,
    force: bool = False,
    prompts: Sequence[str] | None = None,
    distill_steps: int = 200,
    model: DemoModel = DIGITS,
) -> list[Row]:
    """Every stage of the demo (`model`: digits by default) into `out`; the table's rows. The
    comparison page is written last."""
    out.mkdir(parents=True, exist_ok=True)
    subject, knobs = demo_subject(model=model)
    prompt_list = list(prompts) if prompts is not None else model.default_prompts()
    analysis_list = list(prompts) if prompts is not None else model.analysis_set()
    table_path = out / "sensitivity.json"
    say(f"1/4 analyze: removing each of the demo's blocks and parts ({table_path})")
    settings = Settings(prompts=analysis_list, seeds=list(analysis_seeds), parts=True, generator=knobs)
    if force or not _table_matches(table_path, settings):
        analyze(subject, settings, table_path)
    say("2/4 evaluate the unpruned model")
    original = FirstBatch(subject.generator_for(subject.transformer))
    reference = evaluate(original, subject.scorer, prompt_list, list(seeds))
    write_text_atomic(out / "eval-original.json", dumps_json(reference))
    run = DemoRun(out, subject, prompt_list, tuple(seeds), reference, table_path, force, model)
    rows = [
        Row(
            "original",
            Path("-"),
            1.0,
            None,  # set from a plan below: the checkpoint's stored bytes
            _metrics(reference),
            None,
            None,
            original.encoded(),
        )
    ]
    for method in METHOD_ORDER:
        say(f"3/4 suggest + compile: {method} at keep {keep}")
        spec = _suggest(method, table_path, keep, out, model.target)
        pruned_dir = _compile(spec, out / method, table_path, force, model.target)
        say(f"4/4 evaluate: {method}")
        rows.append(run.evaluate(method, spec, pruned_dir))
        if method == "hierarchical":
            rows.extend(_repaired_rows(run, spec, pruned_dir, distill_steps, say))
    # The original's bytes as every other row counts them, stored (the shapes model is fp16 on disk, fp32 in use).
    first_stage = next(r.model_dir for r in rows if r.model_dir is not None)
    rows[0] = replace(rows[0], weight_bytes=load_plan_file(first_stage / PLAN_NAME).bytes.before)
    write_text_atomic(out / "summary.json", dumps_json([_row_json(r) for r in rows]))
    write_comparison(out / REPORT_NAME, comparison(rows, run, keep))
    return rows


class FirstBatch:
    """A generator that keeps the first batch it makes (the first seed's images), for the page."""

    def __init__(self, inner: Generator) -> None:
        self.inner = inner
        self.first: torch.Tensor | None = None

    def generate(self, prompts: Sequence[str], seed: int) -> torch.Tensor:
        images = self.inner.generate(prompts, seed)
        if self.first is None:
            self.first = images
        return images

    def encoded(self) -> tuple[str, ...]:
        return tuple(encode_images(self.first)) if self.first is not None else ()


@dataclass(frozen=True)
class DemoRun:
    """What every row of one demo run shares: where it writes, what it measures with, against what."""

    out: Path
    subject: Subject
    prompts: list[str]
    seeds: tuple[int, ...]
    reference: dict[str, Any]
    table: Path
    force: bool
    model: DemoModel = DIGITS

    def evaluate(self, method: str, spec: Path, model_dir: Path) -> Row:
        """Load a stage directory, evaluate it against the original, keep its first images."""
        from hpspec.weights.load import load_pretrained  # torch

        model: nn.Module = load_pretrained(model_dir)
        generator = FirstBatch(self.subject.generator_for(model))
        result = evaluate(generator, self.subject.scorer, self.prompts, list(self.seeds), self.reference)
        slug = "-".join(w for w in method.replace("+", " ").split())
        write_text_atomic(self.out / f"eval-{slug}.json", dumps_json(result))
        plan = load_plan_file(model_dir / PLAN_NAME)
        nbytes = (
            plan.bytes.after_quantize
            if plan.quantize is not None and plan.bytes.after_quantize
            else plan.bytes.after_prune
        )
        return Row(
            method,
            spec,
            plan.kept_fraction,
            nbytes,
            _metrics(result),
            float(result["degradation"]),
            model_dir,
            generator.encoded(),
        )


def _repaired_rows(run: DemoRun, spec: Path, pruned: Path, steps: int, say: Callable[[str], object]) -> list[Row]:
    """The method's other stages on HierarchicalPrune's selection: PWP + SGDistill, then 4 bits."""
    say(f"   distill: PWP + SGDistill (inverse), {steps} steps")
    distilled = pruned.parent / "distilled"
    if run.force or not distilled.is_dir():
        data = demo_data_folder(run.model, run.out / "distill-data")
        teacher = resolve_model(run.model.target)
        options = {"weight": "sensitivity", "mode": "inverse", "table": run.table, "data": data, "teacher": teacher}
        distill_demo(pruned, distilled, steps=steps, force=True, **options)  # type: ignore[arg-type]
    _stage_report(distilled, run.table)
    rows = [run.evaluate("+ distill", spec, distilled)]
    for scheme in DEMO_SCHEMES:
        say(f"   quantize: {scheme}")
        rows.append(_quantized_row(run, spec, distilled, scheme, say))
    return rows


def _quantized_row(run: DemoRun, spec: Path, distilled: Path, scheme: str, say: Callable[[str], object]) -> Row:
    """The distilled model in `scheme`; a row that says why when the scheme's back end is missing."""
    name = f"+ distill + {scheme}"
    missing = missing_backend(scheme)
    if missing is not None:
        say(f"   skipped: {missing}")
        kept = load_plan_file(distilled / PLAN_NAME).kept_fraction
        return Row(name, spec, kept, None, {}, None, note=f"not run: {missing}")
    quantized = distilled.parent / f"quantized-{scheme}"
    if run.force and quantized.is_dir():
        shutil.rmtree(quantized)
    if not quantized.is_dir():
        quantize_dir(distilled, quantized, load_plan_file(distilled / PLAN_NAME), scheme=scheme)
    _stage_report(quantized, run.table)
    return run.evaluate(name, spec, quantized)


def missing_backend(scheme: str) -> str | None:
    """Why `scheme` cannot run here (its back end is not installed), or None when it can."""
    from hpspec.weights.quantize import backend  # torch

    try:
        backend(scheme)
    except HpspecError as error:
        return str(error)
    return None


def _stage_report(directory: Path, table: Path) -> None:
    """A stage directory the demo wrote outside `compile` gets the report `compile` gives its own."""
    write_stage_report(directory, load_plan_file(directory / PLAN_NAME), str(table))


def _table_matches(path: Path, settings: Settings) -> bool:
    """A table from an earlier run with the same settings is reused (delete it to re-measure)."""
    if not path.is_file():
        return False
    try:
        return json.loads(path.read_text()).get("settings_hash") == settings_hash(settings.as_dict())
    except (OSError, ValueError, RecursionError):
        return False


def _suggest(method: str, table_path: Path, keep: float, out: Path, target: str = DIGITS.target) -> Path:
    """The spec `hpspec suggest --method METHOD --target demo ...` writes, written to OUT/METHOD.hps."""
    spec = out / f"{method}.hps"
    text, _ = suggested_spec(SuggestRequest(method, target, str(table_path), keep), spec)
    write_text_atomic(spec, text)
    return spec


def _compile(spec: Path, out: Path, table: Path, force: bool, target: str = DIGITS.target) -> Path:
    """`hpspec compile SPEC --model demo --out OUT --sensitivity TABLE`: the prune stage, with its report."""
    model = resolve_model(target)
    plan, _ = load_stage_plan(str(spec), model)
    write_text_atomic(out.with_suffix(".plan.json"), plan.to_json())
    options = StageOptions(
        distill=DistillOptions(sensitivity=str(table)), report=write_stage_report
    )  # the table: for the report
    label = "demo" if target == DIGITS.target else str(model)
    result = compile_model(plan, model, out, force=force, options=options, progress=False, model_label=label)
    return result.results[0].out  # the prune stage's directory


def _metrics(result: dict[str, Any]) -> dict[str, float]:
    return {name: float(result[name]) for name in result["metrics"]}


def _row_json(row: Row) -> dict[str, Any]:
    data = {
        "method": row.method,
        "spec": str(row.spec),
        "params_kept": row.params_kept,
        "weight_bytes": row.weight_bytes,
        **row.metrics,
        "degradation": row.degradation,
    }
    return {**data, "note": row.note} if row.note else data


# --------------------------------------------------------------------------------------------
# The results: a table for the terminal, a page for the browser


def columns_of(metrics: Sequence[str]) -> list[str]:
    """The table's columns for a demo's metrics."""
    return ["method", "params kept", "weights", *(m.replace("_", " ") for m in metrics), "degradation"]


def row_cells(row: Row, metrics: Sequence[str] = DIGITS.metrics) -> list[str]:
    """One row of the table, formatted as both the terminal and the page show it."""
    if row.note:
        return [row.method, f"{100 * row.params_kept:.1f}%", "-", *("-" for _ in metrics), "-"]
    return [
        row.method,
        f"{100 * row.params_kept:.1f}%",
        "-" if row.weight_bytes is None else human_bytes(row.weight_bytes),
        *(f"{row.metrics.get(m, float('nan')):.3f}" for m in metrics),
        "-" if row.degradation is None else f"{100 * row.degradation:.1f}%",
    ]


def table_text(rows: Sequence[Row], metrics: Sequence[str] = DIGITS.metrics) -> str:
    """The comparison as an aligned table; a `note` column only when some row did not run."""
    notes = any(r.note for r in rows)
    body = [row_cells(r, metrics) + ([r.note] if notes else []) for r in rows]
    return table(body, [*columns_of(metrics), *(["note"] if notes else [])]) + "\n"


def comparison(rows: Sequence[Row], run: DemoRun, keep: float) -> Comparison:
    """The demo's page: the table, each method's block map, the heatmap, every model's images."""
    notes = any(r.note for r in rows)
    plans = [
        (m, load_plan_file(r.model_dir / PLAN_NAME))
        for m in METHOD_ORDER
        for r in rows
        if r.method == m and r.model_dir
    ]
    return Comparison(
        title="hpspec demo: HierarchicalPrune, KOALA and BK-SDM at one budget",
        subtitle=f"the embedded {run.model.name} demo; {len(run.prompts)} prompts, seeds {', '.join(map(str, run.seeds))}",
        columns=[*columns_of(run.model.metrics), *(["note"] if notes else [])],
        rows=[row_cells(r, run.model.metrics) + ([r.note] if notes else []) for r in rows],
        plans=plans,
        sensitivity=load_table(run.table),
        prompts=run.prompts,
        images=[ImageColumn(r.method, r.images) for r in rows if r.images],
        notes=[
            "Degradation: the mean relative drop of the metrics against the original model (lower is better).",
            "+ distill and + distill + nf4/int4 start from HierarchicalPrune's selection; "
            "each stage folder has its own report.html.",
        ],
        badges=[
            f"every method keeps under {keep:.0%} of the parameters",
            f"{len(rows)} models compared",
            "offline, on a CPU",
        ],
        kicker="hpspec demo",
        text_columns=frozenset({"note"}),
    )


def duration_text(seconds: float) -> str:
    """`2 min 53 s`, or `41.2 s` under a minute."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes} min {rest} s"
