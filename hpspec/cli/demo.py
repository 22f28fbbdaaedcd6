"""`hpspec demo`: the whole method on the embedded demo model, offline, on a CPU, in minutes.

analyze (blocks and parts) -> suggest a spec by each method at the same budget -> compile each ->
evaluate each against the unpruned model; HierarchicalPrune's selection is then distilled (PWP +
SGDistill, a short run) and quantized (nf4, int4) -> one table. Everything it makes stays in a folder:
the sensitivity table, the specs, the plans, the pruned checkpoints and the evaluation JSON.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from hpspec.core.io import dumps_json, write_text_atomic
from hpspec.core.paths import PLAN_NAME

DEFAULT_KEEP = 0.75
METHOD_ORDER = ("hierarchical", "koala", "bksdm")


@dataclass(frozen=True)
class Row:
    method: str
    spec: Path
    params_kept: float
    weight_bytes: int
    metrics: dict[str, float]
    degradation: float | None


def run_demo(
    out: Path,
    keep: float = DEFAULT_KEEP,
    seeds: Sequence[int] = (0, 1),
    analysis_seeds: Sequence[int] = (0,),
    say: Callable[[str], None] = print,
    force: bool = False,
    prompts: Sequence[str] | None = None,
    distill_steps: int = 200,
) -> list[Row]:
    from hpspec.method.analyze import Settings, analyze, demo_subject
    from hpspec.demo import default_prompts
    from hpspec.method.evaluate import evaluate

    out.mkdir(parents=True, exist_ok=True)
    subject, knobs = demo_subject()
    prompts = list(prompts) if prompts is not None else default_prompts()
    table_path = out / "sensitivity.json"
    say(f"1/4 analyze: removing each of the demo's blocks and parts ({table_path})")
    settings = Settings(prompts=prompts, seeds=list(analysis_seeds), parts=True, generator=knobs)
    if force or not _table_matches(table_path, settings):
        analyze(subject, settings, table_path)
    say("2/4 evaluate the unpruned model")
    reference = evaluate(subject.generator_for(subject.transformer), subject.scorer, prompts, list(seeds))
    write_text_atomic(out / "eval-original.json", dumps_json(reference))
    rows = [Row("original", Path("-"), 1.0, _bytes_of(subject.transformer), _metrics(reference), None)]
    for method in METHOD_ORDER:
        say(f"3/4 suggest + compile: {method} at keep {keep}")
        spec = _suggest(method, table_path, keep, out)
        pruned_dir = _compile(spec, out / method, force)
        say(f"4/4 evaluate: {method}")
        evaluate_row = lambda name, model_dir: _evaluate_row(name, spec, model_dir, subject, prompts, seeds, reference, out)  # noqa: E731
        rows.append(evaluate_row(method, pruned_dir))
        if method == "hierarchical":
            rows.extend(_repaired_rows(pruned_dir, table_path, distill_steps, force, say, evaluate_row))
    write_text_atomic(out / "summary.json", dumps_json([_row_json(r) for r in rows]))
    return rows


def _repaired_rows(pruned: Path, table: Path, steps: int, force: bool, say: Callable[[str], None],
                   evaluate_row: Callable[[str, Path], Row]) -> list[Row]:  # fmt: skip
    """The method's other stages on HierarchicalPrune's selection: PWP + SGDistill, then 4 bits."""
    from hpspec.method.distill.train import distill_demo
    from hpspec.weights.quantize import quantize_dir
    from hpspec.plan.schema import load_plan_file

    say(f"   distill: PWP + SGDistill (inverse), {steps} steps")
    distilled = pruned.parent / "distilled"
    if force or not distilled.is_dir():
        distill_demo(pruned, distilled, steps=steps, weight="sensitivity", mode="inverse", table=table, force=True)
    rows = [evaluate_row("+ distill", distilled)]
    for scheme in ("nf4", "int4"):
        say(f"   quantize: {scheme}")
        quantized = pruned.parent / f"quantized-{scheme}"
        if force and quantized.is_dir():
            import shutil

            shutil.rmtree(quantized)
        if not quantized.is_dir():
            quantize_dir(distilled, quantized, load_plan_file(distilled / PLAN_NAME), scheme=scheme)
        rows.append(evaluate_row(f"+ distill + {scheme}", quantized))
    return rows


def _table_matches(path: Path, settings: Any) -> bool:
    """A table from an earlier run with the same settings is reused (delete it to re-measure)."""
    from hpspec.method.sensitivity import settings_hash

    if not path.is_file():
        return False
    try:
        return json.loads(path.read_text()).get("settings_hash") == settings_hash(settings.as_dict())
    except (OSError, json.JSONDecodeError):
        return False


def _suggest(method: str, table: Path, keep: float, out: Path) -> Path:
    from hpspec.cli.app import main

    spec = out / f"{method}.hps"
    args = ["suggest", "--method", method, "--target", "demo", "--sensitivity", str(table), "--keep", str(keep), "-o", str(spec)]
    if main(args) != 0:
        raise RuntimeError(f"hpspec {shlex.join(args)} failed")
    return spec


def _compile(spec: Path, out: Path, force: bool) -> Path:
    from hpspec.stages.engine import compile_model, load_stage_plan, resolve_model

    model = resolve_model("demo")
    plan, _ = load_stage_plan(str(spec), model)
    write_text_atomic(out.with_suffix(".plan.json"), plan.to_json())
    result = compile_model(plan, model, out, force=force, progress=False, model_label="demo")
    return result.results[0].out  # the prune stage's directory


def _evaluate_row(method: str, spec: Path, pruned_dir: Path, subject: Any, prompts: list[str], seeds: Sequence[int],
                  reference: dict[str, Any], out: Path) -> Row:  # fmt: skip
    from hpspec.method.evaluate import evaluate
    from hpspec.weights.prune import load_pretrained
    from hpspec.plan.schema import load_plan_file

    model = load_pretrained(pruned_dir)
    result = evaluate(subject.generator_for(model), subject.scorer, prompts, list(seeds), reference)
    slug = "-".join(w for w in method.replace("+", " ").split())
    write_text_atomic(out / f"eval-{slug}.json", dumps_json(result))
    plan = load_plan_file(pruned_dir / PLAN_NAME)
    nbytes = plan.bytes.after_quantize if plan.quantize is not None and plan.bytes.after_quantize else plan.bytes.after_prune
    return Row(method, spec, plan.kept_fraction, nbytes, _metrics(result), float(result["degradation"]))


def _metrics(result: dict[str, Any]) -> dict[str, float]:
    return {name: float(result[name]) for name in result["metrics"]}


def _bytes_of(module: Any) -> int:
    return sum(p.numel() * p.element_size() for p in module.parameters())


def _row_json(row: Row) -> dict[str, Any]:
    return {
        "method": row.method,
        "spec": str(row.spec),
        "params_kept": row.params_kept,
        "weight_bytes": row.weight_bytes,
        **row.metrics,
        "degradation": row.degradation,
    }


def table_text(rows: Sequence[Row]) -> str:
    from hpspec.plan.summary import human_bytes, table

    body = [
        [
            r.method,
            f"{100 * r.params_kept:.1f}%",
            human_bytes(r.weight_bytes),
            f"{r.metrics.get('prompt_accuracy', float('nan')):.3f}",
            f"{r.metrics.get('quality', float('nan')):.3f}",
            "-" if r.degradation is None else f"{100 * r.degradation:.1f}%",
        ]
        for r in rows
    ]
    return table(body, ["method", "params kept", "weights", "prompt accuracy", "quality", "degradation"]) + "\n"
