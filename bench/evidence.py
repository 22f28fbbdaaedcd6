"""The paper's ablation, re-measured on the embedded demo model.

At two budgets (about 20% and 30% of parameters removed) and with a training budget fixed in
advance (the same for every row), for several seeds:

- HierarchicalPrune's selection (`hpspec suggest --method hierarchical`, the fixed default rule)
  with: no distillation; distillation of everything (no PWP); PWP; PWP + SGDistill binary;
  PWP + SGDistill inverse; each SGDistill row + nf4 and + int4 (reusing the distilled models);
- the KOALA and BK-SDM selections at the same budget, with plain distillation, and + nf4.

Seed s trains with seed s and evaluates with seeds (10s, 10s + 1). Prints mean ± standard deviation
per row (prompt accuracy, quality, degradation against the unpruned model), parameters kept,
weight bytes and compute time, and writes the rows as JSON (the report's evidence table).

    python bench/evidence.py --out evidence            # the full run (about 40 minutes on 2 cores)
    python bench/evidence.py --out evidence-quick --quick     # one row, a few steps (what the test runs)
    python bench/evidence.py --model shapes --out evidence-shapes   # the shapes demo, GenEval per category

With `--model shapes` the metrics are the exact judge's per GenEval category (and their overall), the
rows include KOALA and BK-SDM without distillation too, and the recipe is the shapes one below.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from hpspec.cli.app import main as hpspec
from hpspec.core.io import dumps_json, write_text_atomic
from hpspec.demo.models import DEMO_MODELS, DIGITS, DemoModel
from hpspec.method.analyze import Settings, analyze, demo_subject
from hpspec.method.distill.build import demo_data_folder
from hpspec.method.evaluate import evaluate
from hpspec.plan.schema import load_plan_file
from hpspec.stages.distill import distill_demo
from hpspec.stages.engine import resolve_model
from hpspec.stages.quantize import quantize_dir
from hpspec.weights.load import load_pretrained

# Fixed before any row was measured: the same for every row.
TRAINING = {"steps": 300, "lr": 1e-4, "batch": 64}
# The shapes demo's, fixed before any of its rows was measured (sized to the CPU time there was).
TRAINING_SHAPES = {"steps": 120, "lr": 2e-4, "batch": 32}
BUDGETS = {"20%": 0.8, "30%": 0.7}
QUICK_SHAPES_STEPS = 5  # sampler steps of the shapes demo's --quick run


@dataclass(frozen=True)
class Row:
    budget: str
    name: str
    selection: str  # hierarchical, koala, bksdm
    preserve: bool  # PWP
    distill: tuple[str, str] | None  # (weight, mode), or no distillation
    quantize: str | None = None  # nf4, int4: applied to the distilled model of the row named `base`
    base: str | None = None


@dataclass
class Result:
    row: Row
    params_kept: float = 0.0
    weight_bytes: int = 0
    seconds: list[float] = field(default_factory=list)
    runs: list[dict[str, float]] = field(default_factory=list)  # metrics and degradation per seed


def rows_for(budget: str, undistilled_baselines: bool = False) -> list[Row]:
    uniform, binary, inverse = ("uniform", "binary"), ("sensitivity", "binary"), ("sensitivity", "inverse")
    rows = [
        Row(budget, "HPP, no distillation", "hierarchical", False, None),
        Row(budget, "HPP, distill everything", "hierarchical", False, uniform),
        Row(budget, "HPP + PWP", "hierarchical", True, uniform),
        Row(budget, "HPP + PWP + SGDistill binary", "hierarchical", True, binary),
        Row(budget, "HPP + PWP + SGDistill inverse", "hierarchical", True, inverse),
    ]
    for base in ("HPP + PWP + SGDistill binary", "HPP + PWP + SGDistill inverse"):
        mode = base.rsplit(" ", 1)[-1]
        rows += [Row(budget, f"... {mode} + {q}", "hierarchical", True, None, q, base) for q in ("nf4", "int4")]
    if undistilled_baselines:
        rows += [
            Row(budget, f"{name}, no distillation", sel, False, None)
            for name, sel in (("KOALA", "koala"), ("BK-SDM", "bksdm"))
        ]
    rows += [
        Row(budget, "KOALA, distilled", "koala", False, uniform),
        Row(budget, "KOALA, distilled + nf4", "koala", False, None, "nf4", "KOALA, distilled"),
        Row(budget, "BK-SDM, distilled", "bksdm", False, uniform),
        Row(budget, "BK-SDM, distilled + nf4", "bksdm", False, None, "nf4", "BK-SDM, distilled"),
    ]
    return rows


class Bench:
    def __init__(self, out: Path, seeds: Sequence[int], prompts: list[str], training: dict[str, int],
                 model: DemoModel = DIGITS, analysis_prompts: list[str] | None = None, steps: int | None = None):  # fmt: skip
        self.out, self.seeds, self.prompts, self.training = out, list(seeds), prompts, training
        self.model, self.analysis_prompts = model, analysis_prompts or prompts
        self.subject, self.knobs = demo_subject(model=model, steps=steps)
        self.references: dict[int, dict[str, Any]] = {}
        self.distilled: dict[tuple[str, str, int], Path] = {}

    def reference(self, seed: int) -> dict[str, Any]:
        if seed not in self.references:
            generator = self.subject.generator_for(self.subject.transformer)
            self.references[seed] = evaluate(generator, self.subject.scorer, self.prompts, eval_seeds(seed))
        return self.references[seed]

    def table(self) -> Path:
        path = self.out / "sensitivity.json"
        if not path.is_file():
            settings = Settings(self.analysis_prompts, [0], True, self.knobs)
            analyze(self.subject, settings, path)
        return path

    def spec(self, row: Row) -> Path:
        """The method's selection at the row's budget, with or without PWP."""
        keep = BUDGETS[row.budget]
        chosen = self.out / f"{row.selection}-{row.budget[:-1]}.hps"
        if not chosen.is_file():
            args = ["suggest", "--method", row.selection, "--target", self.model.target, "--sensitivity", str(self.table()),
                    "--keep", str(keep), "-o", str(chosen)]  # fmt: skip
            assert hpspec(args) == 0
        lines = [line for line in chosen.read_text().splitlines() if not line.startswith(("preserve", "distill"))]
        spec = self.out / f"{row.selection}-{row.budget[:-1]}{'-pwp' if row.preserve else ''}.hps"
        write_text_atomic(spec, "\n".join(lines + (["preserve auto"] if row.preserve else [])) + "\n")
        return spec

    def pruned(self, row: Row) -> Path:
        spec = self.spec(row)
        out = self.out / spec.stem
        if not (out / "pruned").is_dir():
            assert hpspec(["compile", str(spec), "--model", self.model.target, "--out", str(out), "--no-report"]) == 0
        return out / "pruned"

    def run(self, row: Row, seed: int) -> tuple[Path, float]:
        """The row's model for a seed, and the seconds it took to make."""
        start = time.perf_counter()
        if row.quantize is not None:
            base = self.distilled[(row.budget, row.base or "", seed)]
            out = self.out / "quantized" / f"{slug(row)}-{seed}"
            if not out.is_dir():
                quantize_dir(base, out, load_plan_file(base / "plan.json"), scheme=row.quantize)
            return out, time.perf_counter() - start
        pruned = self.pruned(row)
        if row.distill is None:
            return pruned, time.perf_counter() - start
        weight, mode = row.distill
        out = self.out / "distilled" / f"{slug(row)}-{seed}"
        if not out.is_dir():
            table = self.table() if weight == "sensitivity" else None
            data = demo_data_folder(self.model, self.out / "distill-data")
            teacher = resolve_model(self.model.target)
            distill_demo(
                pruned,
                out,
                weight=weight,
                mode=mode,
                table=table,
                seed=seed,
                data=data,
                teacher=teacher,
                **self.training,
            )
        self.distilled[(row.budget, row.name, seed)] = out
        return out, time.perf_counter() - start

    def measure(self, row: Row, say: Callable[[str], None]) -> Result:
        result = Result(row)
        for seed in self.seeds:
            model_dir, seconds = self.run(row, seed)
            model = load_pretrained(model_dir)
            reference = self.reference(seed)
            scores = evaluate(
                self.subject.generator_for(model), self.subject.scorer, self.prompts, eval_seeds(seed), reference
            )
            plan = load_plan_file(model_dir / "plan.json")
            result.params_kept = plan.kept_fraction
            result.weight_bytes = plan.bytes.after_quantize if row.quantize else plan.bytes.after_prune
            result.seconds.append(seconds)
            result.runs.append(
                {m: float(scores[m]) for m in scores["metrics"]} | {"degradation": float(scores["degradation"])}
            )
            say(f"  {row.budget} {row.name} seed {seed}: {result.runs[-1]}")
        return result


def eval_seeds(seed: int) -> list[int]:
    return [10 * seed, 10 * seed + 1]


def slug(row: Row) -> str:
    keep = "".join(c if c.isalnum() else "-" for c in f"{row.budget}-{row.name}").strip("-")
    return "-".join(part for part in keep.split("-") if part)


def values_of(result: Result, key: str) -> list[float]:
    return [run[key] for run in result.runs]


def mean_std(values: Sequence[float], digits: int = 3) -> str:
    if len(values) < 2:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def markdown(results: Sequence[Result], seeds: int, training: dict[str, int], model: DemoModel = DIGITS) -> str:
    metrics = model.metrics
    lines = [
        f"Demo model ({model.name}), {seeds} seed(s); training fixed in advance: {training['steps']} steps, "
        f"lr {training['lr']}, batch {training['batch']}; mean ± std over seeds.",
        "",
        "| budget | row | params kept | weight bytes | "
        + " | ".join(m.replace("_", " ") for m in metrics)
        + " | degradation | compute (s) |",
        "|---|---|---|---|" + "---|" * len(metrics) + "---|---|",
    ]
    for r in results:
        column = functools.partial(values_of, r)
        lines.append(
            f"| {r.row.budget} | {r.row.name} | {100 * r.params_kept:.1f}% | {r.weight_bytes:,} | "
            + "".join(f"{mean_std(column(m))} | " for m in metrics)
            + f"{mean_std([100 * d for d in column('degradation')], 1)}% | {statistics.mean(r.seconds):.0f} |"
        )
    return "\n".join(lines) + "\n"


def evidence_rows(results: Sequence[Result], metrics: Sequence[str] = DIGITS.metrics) -> list[dict[str, Any]]:
    """Rows for `hpspec report --evidence` (means over seeds; `std` holds the standard deviations)."""
    rows = []
    for r in results:
        mean = lambda key, r=r: statistics.mean(values_of(r, key))  # noqa: E731
        std = lambda key, r=r: statistics.stdev(values_of(r, key)) if len(r.runs) > 1 else 0.0  # noqa: E731
        rows.append({
            "budget": r.row.budget, "method": r.row.name, "params_kept": round(r.params_kept, 4),
            "weight_bytes": r.weight_bytes, **{m: round(mean(m), 4) for m in metrics},
            "degradation": round(mean("degradation"), 4), "seconds": round(statistics.mean(r.seconds), 1),
        })  # fmt: skip
        if len(metrics) > 2:  # the shapes demo: its spread too, per category
            rows[-1]["std"] = {m: round(std(m), 4) for m in [*metrics, "degradation"]}
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads (1 is fastest on a shared 2-core machine)"
    )
    parser.add_argument("--quick", action="store_true", help="one row, one seed, a few steps, a few prompts")
    parser.add_argument("--model", choices=sorted(DEMO_MODELS), default=DIGITS.name, help="which embedded demo")
    parser.add_argument("--budgets", default=",".join(BUDGETS), help="which budgets (default: all)")
    args = parser.parse_args(argv)
    model = DEMO_MODELS[args.model]
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    say = lambda line: print(line, file=sys.stderr, flush=True)  # noqa: E731
    shapes = model is not DIGITS
    if args.quick and shapes:  # one prompt per category, 5 sampler steps: only that it runs end to end
        prompts = model.analysis_set()[::2]
        bench = Bench(args.out, [0], prompts, {"steps": 5, "lr": 1e-4, "batch": 16}, model, steps=QUICK_SHAPES_STEPS)
        rows = [row for row in rows_for("30%") if row.name in ("HPP + PWP + SGDistill inverse", "... inverse + nf4")]
    elif args.quick:
        bench = Bench(args.out, [0], model.default_prompts()[::4], {"steps": 5, "lr": 1e-4, "batch": 16}, model)
        rows = [row for row in rows_for("30%") if row.name in ("HPP + PWP + SGDistill inverse", "... inverse + nf4")]
    else:
        # The shapes demo: evaluated on 4 eval prompts per category x 2 seeds, analysed on 2 per category.
        training = TRAINING_SHAPES if shapes else TRAINING
        bench = Bench(args.out, range(args.seeds), model.default_prompts(), training, model, model.analysis_set())
        rows = [row for budget in args.budgets.split(",") for row in rows_for(budget, shapes)]
    results: list[Result] = []
    for row in rows:  # the tables are rewritten after every row: a stopped run keeps what it measured
        results.append(bench.measure(row, say))
        text = markdown(results, len(bench.seeds), bench.training, model)
        write_text_atomic(args.out / "evidence.md", text)
        write_text_atomic(args.out / "evidence.json", dumps_json(evidence_rows(results, model.metrics)))
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
