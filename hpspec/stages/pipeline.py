"""pipeline: compile = prune -> distill -> quantize, each stage a directory under OUT.

`STAGES` is the ordered registry (one module per stage: `prune`, `distill`, `quantize`, each
exporting its `Stage`). `compile_model` runs every declared stage that can run; when one cannot
(distill without `--data`), it stops and prints the command that continues from there.
`load_stage_plan` is the plan a stage command runs (a plan file, or a spec compiled now).
"""

from __future__ import annotations

import shlex
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from hpspec.core.errors import HpspecError
from hpspec.core.version import __version__
from hpspec.plan.front import plan_file
from hpspec.plan.plan import Plan
from hpspec.plan.schema import load_plan_file
from hpspec.plan.summary import diagnostics_text
from hpspec.plan.validate import check_plan_fits
from hpspec.stages.distill import DISTILL
from hpspec.stages.engine import OwnOptions, Stage, StageInput, StageOptions, StageResult, run_stage
from hpspec.stages.export import EXPORT
from hpspec.stages.prune import PRUNE
from hpspec.stages.quantize import QUANTIZE
from hpspec.weights.formats.export import export_type
from hpspec.weights.formats.pruned import source_graph

STAGES: tuple[Stage, ...] = (PRUNE, DISTILL, QUANTIZE)
"""Every stage, in the order compile runs them; each reads the directory the one before wrote."""


def stage(name: str) -> Stage:
    """The stage called `name` (its command): `stage("quantize").directory == "quantized"`."""
    return next(s for s in STAGES if s.name == name)


@dataclass(frozen=True)
class CompileResult:
    results: tuple[StageResult, ...]
    stopped: str | None  # why compile stopped before the last declared stage, with the command that continues


# --------------------------------------------------------------------------------------------
# The plan


def load_stage_plan(spec_or_plan: str, model: Path, target: str | None = None) -> tuple[Plan, str]:
    """The plan a stage runs: a plan file (*.json) as written, or a spec compiled now.

    A spec is checked against `--target`, else its own `target`, else the model itself (validated as
    the prune stage will read it). Returns the plan and the spec's warnings, rendered (empty for a
    plan file).
    """
    if spec_or_plan.endswith(".json"):
        if target is not None:
            raise HpspecError(f"{spec_or_plan}: --target applies to specs; a plan already names its target")
        return _fitting_plan(Path(spec_or_plan), model), ""
    plan, checked = plan_file(spec_or_plan, target, fallback=lambda: source_graph(model))
    return plan, diagnostics_text(checked.diagnostics, checked.spec.source)


def _fitting_plan(path: Path, model: Path) -> Plan:
    """A plan file, checked against itself (on load) and, if it was compiled for this model, against
    its graph: a hand-edited plan is refused before anything is written (`plan.validate`)."""
    plan = load_plan_file(path)
    try:
        graph = source_graph(model)
    except HpspecError:
        return plan  # the stage reading the model says what is wrong with it
    if graph.fingerprint == plan.target.fingerprint:
        check_plan_fits(plan, graph, str(path))
    return plan


# --------------------------------------------------------------------------------------------
# Running the stages


def compile_model(
    plan: Plan,
    model: Path,
    out: Path,
    force: bool = False,
    options: StageOptions | None = None,
    progress: bool = True,
    model_label: str | None = None,
    target: str | None = None,
) -> CompileResult:
    """Run every declared stage that can run, in order, each into OUT/<its directory>.

    `model_label` is `--model` as the user wrote it (`demo`) and `target` compile's `--target`, both
    for the command that continues.
    """
    options = _layout_between_stages(plan, options or StageOptions())
    out = Path(out)
    created = not out.exists()
    results: list[StageResult] = []
    source = Path(model)
    try:
        for step in STAGES:
            if not step.declared(plan) or (step is QUANTIZE and options.export.to is not None):
                continue  # exporting, the GGUF is the quantization (stages/export.py)
            command = _continue_command(
                plan, model_label or str(model), out, target, options.of(step), step.requires, options.export.to
            )
            stop = _cannot_run(step, source, command, options.of(step))
            if stop is not None:
                return CompileResult(tuple(results), stop)
            results.append(run_stage(step, StageInput(plan, source, options, progress), out / step.directory, force))
            source = out / step.directory
        if options.export.to is not None:
            results.append(
                run_stage(EXPORT, StageInput(plan, source, options, progress), out / EXPORT.directory, force)
            )
    except BaseException:
        if created and out.is_dir() and not any(out.iterdir()):
            out.rmdir()  # nothing at the output path after a failure
        raise
    return CompileResult(tuple(results), None)


def _layout_between_stages(plan: Plan, options: StageOptions) -> StageOptions:
    """Distill and quantize read and write diffusers folders: with either declared, the prune stage
    writes one too, and `--to` another layout becomes the export stage's (OUT/exported), its
    combination with the spec checked now (`export_type`: a LayoutError before any stage runs)."""
    if not any(step.declared(plan) for step in STAGES[1:]):
        return options
    if options.prune.to not in (None, "diffusers"):
        export_type(plan, options.prune.to)
        options = replace(options, export=replace(options.export, to=options.prune.to))
    return replace(options, prune=replace(options.prune, to="diffusers"))


def _cannot_run(step: Stage, source: Path, command: str, own: OwnOptions) -> str | None:
    """Why `step` cannot run now (not implemented, a required option missing), or None."""
    if step.prepare is None:
        return (
            f"{step.name} is declared by the spec, but this version of hpspec ({__version__}) does not implement it; "
            f"the model so far is in {source}. A version that does continues from there with: {command}"
        )
    missing = [option for option in step.requires if getattr(own, option) is None]
    if missing:
        flags = ", ".join(f"--{m}" for m in missing)
        return f"{step.name} needs {flags}; the model so far is in {source}. Continue with: {command}"
    return None


def _continue_command(
    plan: Plan,
    model: str,
    out: Path,
    target: str | None,
    own: OwnOptions,
    requires: tuple[str, ...],
    to: str | None = None,
) -> str:
    """The same compile again: finished stages are not redone, so it picks up where this one stopped."""
    words = ["hpspec", "compile", str(plan.spec.path), "--model", model, "--out", str(out)]
    words += ["--target", target] if target is not None else []
    words += ["--to", to] if to is not None else []
    for name in requires:
        words += [f"--{name}", str(getattr(own, name) or name.upper())]
    return shlex.join(words)  # pasted into a shell, a path with a space or `;` stays one word


def report(result: CompileResult, stream: Any = None) -> None:
    """One line per stage, then where compile stopped (if it did)."""
    stream = stream or sys.stdout
    for item in result.results:
        if item.status == "up to date":
            stream.write(f"{item.stage}: {item.out} is up to date (same plan and input); --force redoes it\n")
        else:
            params = item.provenance.get("params")
            detail = f", {params:,} parameters" if isinstance(params, int) else ""
            stream.write(f"{item.stage}: wrote {item.out}{detail} in {item.provenance.get('seconds', 0):.1f} s\n")
    if result.stopped:
        stream.write(f"stopped: {result.stopped}\n")
