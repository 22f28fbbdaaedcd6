"""stages: compile = prune -> distill -> quantize, each stage a directory under OUT.

Each stage reads a model directory (the original, or the stage before's output) and writes its
own (`OUT/pruned`, `OUT/distilled`, `OUT/quantized`) with the plan that produced it, its
provenance and a short model card. Stages are resumable: a finished stage whose plan and input
have not changed is not redone (`--force` redoes it). A stage first checks everything it can
without writing (`prepare`), then writes into a temporary sibling renamed into place at the end,
so a failure leaves nothing at the output path.

`compile` runs every declared stage that can run; when one cannot (distill without `--data`), it
stops and prints the command that continues from there. Every stage writes its `report.html`.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from hpspec.core.version import __version__
from hpspec.core import faults
from hpspec.core.errors import HpspecError
from hpspec.core.io import atomic_directory, dumps_json, read_json_input, sweep_stale_siblings
from hpspec.core.paths import CARD_NAME, PROVENANCE_NAME, REPORT_NAME
from hpspec.plan.plan import Plan

Writer = Callable[[Path], dict[str, Any]]  # fills a temporary directory, returns provenance extras


@dataclass(frozen=True)
class StageInput:
    plan: Plan
    source: Path  # the model directory the stage reads
    options: Mapping[str, Any] = field(default_factory=dict)  # command-line inputs (--data, ...)
    progress: bool = True


@dataclass(frozen=True)
class Stage:
    name: str  # the command: `hpspec NAME`
    directory: str  # its directory under OUT
    declared: Callable[[Plan], bool]  # does the spec ask for it?
    prepare: Callable[[StageInput], Writer] | None  # None: not implemented in this version
    depends: tuple[str, ...]  # the plan's fields its output depends on (what makes it stale)
    requires: tuple[str, ...] = ()  # options it cannot run without, e.g. ("data",)
    keyed: tuple[str, ...] = ()  # other options its output depends on (a changed one redoes it)


@dataclass(frozen=True)
class StageResult:
    stage: str
    out: Path
    status: str  # "done" or "up to date"
    provenance: Mapping[str, Any]


@dataclass(frozen=True)
class CompileResult:
    results: tuple[StageResult, ...]
    stopped: str | None  # why compile stopped before the last declared stage, with the command that continues


# --------------------------------------------------------------------------------------------
# The stages


def _prepare_prune(given: StageInput) -> Writer:
    """Validate the checkpoint against the plan now; the returned writer only copies bytes."""
    from hpspec.weights.checkpoint import check_fingerprint, open_source, pruned_layout, write_pruned

    source = open_source(given.source)
    if given.options.get("verify"):  # opt in: reads every byte, where pruning copies in the kernel
        from hpspec.weights.verify import verify_finite

        verify_finite(source.headers)
    check_fingerprint(given.plan, source.graph, str(source.directory))
    pruned_layout(given.plan, source)  # raises on a tensor the plan cannot rewrite

    def write(tmp: Path) -> dict[str, Any]:
        written = write_pruned(given.plan, source, tmp, progress=given.progress)
        (tmp / CARD_NAME).write_text(model_card(given.plan, source.directory), encoding="utf-8")
        return {
            "source_model": str(source.directory),
            "source_sha256": dict(written.source_sha256),
            "files": list(written.files),
            "tensors": written.tensors,
            "params": written.params,
            "bytes": written.nbytes,
        }

    return write


def _prepare_distill(given: StageInput) -> Writer:
    """hpspec.distill (torch, accelerate) is imported only when the stage runs."""
    from hpspec.method.distill.train import prepare_distill

    return prepare_distill(given)


def _prepare_quantize(given: StageInput) -> Writer:
    """Load and validate the input now; the writer quantizes and writes (hpspec.quantize)."""
    from hpspec.weights.quantize import prepare_stage

    return prepare_stage(given)


STAGES: tuple[Stage, ...] = (
    Stage("prune", "pruned", lambda plan: True, _prepare_prune,
          depends=("target", "stacks", "config", "ops", "freeze", "params", "bytes")),
    Stage("distill", "distilled", lambda plan: plan.distill is not None, _prepare_distill,
          depends=("distill",), requires=("data",), keyed=("teacher", "sensitivity")),
    Stage("quantize", "quantized", lambda plan: plan.quantize is not None, _prepare_quantize, depends=("quantize",)),
)  # fmt: skip


def stage(name: str) -> Stage:
    return next(s for s in STAGES if s.name == name)


# --------------------------------------------------------------------------------------------
# Inputs: the model directory and the plan


def resolve_model(value: str) -> Path:
    """`--model`: a path, or `demo` for the embedded demo transformer."""
    from hpspec.model.graph import DEMO, demo_directory

    return demo_directory() if value == DEMO else Path(value)


def load_stage_plan(spec_or_plan: str, model: Path, target: str | None = None) -> tuple[Plan, str]:
    """The plan a stage runs: a plan file (*.json) as written, or a spec compiled now.

    A spec is checked against `--target`, else its own `target`, else the model itself (validated as
    the prune stage will read it). Returns the
    plan and the spec's warnings, rendered (empty for a plan file).
    """
    from hpspec.lang import syntax
    from hpspec.plan.check import check, load_target
    from hpspec.weights.checkpoint import open_source
    from hpspec.lang.parse import parse_file
    from hpspec.plan.plan import compile_plan
    from hpspec.plan.schema import load_plan_file
    from hpspec.plan.summary import diagnostics_text

    if spec_or_plan.endswith(".json"):
        if target is not None:
            raise HpspecError(f"{spec_or_plan}: --target applies to specs; a plan already names its target")
        return load_plan_file(Path(spec_or_plan)), ""
    spec = parse_file(spec_or_plan)
    has_target = target is not None or bool(spec.of_type(syntax.Target))
    graph = load_target(spec, target) if has_target else open_source(model).graph
    checked = check(spec, graph)
    return compile_plan(checked), diagnostics_text(checked.diagnostics, spec.source)


# --------------------------------------------------------------------------------------------
# Running stages


def compile_model(
    plan: Plan,
    model: Path,
    out: Path,
    force: bool = False,
    options: Mapping[str, Any] | None = None,
    progress: bool = True,
    model_label: str | None = None,
) -> CompileResult:
    """Run every declared stage that can run, in order, each into OUT/<its directory>.

    `model_label` is `--model` as the user wrote it (`demo`), for the command that continues.
    """
    options = dict(options or {})
    out = Path(out)
    created = not out.exists()
    results: list[StageResult] = []
    source = Path(model)
    try:
        for step in STAGES:
            if not step.declared(plan):
                continue
            stop = _cannot_run(step, source, _continue_command(plan, model_label or str(model), out, options, step.requires), options)
            if stop is not None:
                return CompileResult(tuple(results), stop)
            results.append(run_stage(step, StageInput(plan, source, options, progress), out / step.directory, force))
            source = out / step.directory
    except BaseException:
        if created and out.is_dir() and not any(out.iterdir()):
            out.rmdir()  # nothing at the output path after a failure
        raise
    return CompileResult(tuple(results), None)


def _cannot_run(step: Stage, source: Path, command: str, options: Mapping[str, Any]) -> str | None:
    if step.prepare is None:
        return (
            f"{step.name} is declared by the spec, but this version of hpspec ({__version__}) does not implement it; "
            f"the model so far is in {source}. A version that does continues from there with: {command}"
        )
    missing = [option for option in step.requires if options.get(option) is None]
    if missing:
        flags = ", ".join(f"--{m}" for m in missing)
        return f"{step.name} needs {flags}; the model so far is in {source}. Continue with: {command}"
    return None


def _continue_command(plan: Plan, model: str, out: Path, options: Mapping[str, Any], requires: tuple[str, ...]) -> str:
    """The same compile again: finished stages are not redone, so it picks up where this one stopped."""
    flags = "".join(f" --{name} {options[name]}" for name in ("target",) if options.get(name) is not None)
    flags += "".join(f" --{name} {options.get(name) or name.upper()}" for name in requires)
    return f"hpspec compile {plan.spec.path} --model {model} --out {out}{flags}"


def run_stage(step: Stage, given: StageInput, out: Path, force: bool = False) -> StageResult:
    """One stage into `out`: skipped when finished for the same plan and input, else (re)done atomically."""
    if step.prepare is None:
        raise HpspecError(f"{step.name} is not implemented in hpspec {__version__}")
    out = Path(out)
    _refuse_overlap(given.source, out)
    key = stage_key(step, given)
    sweep_stale_siblings(out)
    if out.exists() and not force:
        previous = read_provenance(out)
        if previous is not None and previous.get("stage_key") == key:
            return StageResult(step.name, out, "up to date", previous)
        why = "holds another plan's or another input's output" if previous is not None else f"is not a finished hpspec {step.name} output"
        raise HpspecError(f"{out}: already exists and {why}; use --force to redo the {step.name} stage")
    write = step.prepare(given)  # every check before anything is written
    started = time.monotonic()
    with atomic_directory(out, force=True) as tmp:
        extras = write(tmp)
        faults.point("stage.before_provenance", tmp / PROVENANCE_NAME)
        provenance = {
            "stage": step.name,
            "stage_key": key,
            "hpspec_version": __version__,
            "plan_sha256": given.plan.sha256,
            "input": str(given.source),
            "seconds": round(time.monotonic() - started, 3),
            **extras,
        }
        (tmp / PROVENANCE_NAME).write_text(dumps_json(provenance), encoding="utf-8")
        if given.options.get("report", True):
            _write_report(tmp / REPORT_NAME, given)
    return StageResult(step.name, out, "done", provenance)


def _write_report(path: Path, given: StageInput) -> None:
    """Every stage carries the plan's report, with the sensitivity table when one was given."""
    from hpspec.report.html import ReportInputs, write_report
    from hpspec.method.sensitivity import load_table

    table = given.options.get("sensitivity")
    scales_file = path.parent / "scales.json"  # written by the distill stage
    scales = json.loads(scales_file.read_text()) if scales_file.is_file() else None
    write_report(path, ReportInputs(given.plan, sensitivity=load_table(Path(table)) if table else None, scales=scales))


def _refuse_overlap(source: Path, out: Path) -> None:
    """Inputs are never modified: the output may not be, contain, or lie inside the input."""
    a, b = source.resolve(), out.resolve()
    if a == b or a in b.parents or b in a.parents:
        raise HpspecError(f"{out}: overlaps the input {source}; write the output somewhere else")


def read_provenance(directory: Path) -> dict[str, Any] | None:
    path = Path(directory) / PROVENANCE_NAME
    if not path.is_file():
        return None
    try:
        data = read_json_input(path, PROVENANCE_NAME)
    except HpspecError:
        return None
    return data if isinstance(data, dict) else None


def stage_key(step: Stage, given: StageInput) -> str:
    """What a stage's output depends on: its fields of the plan, and its input directory's state."""
    plan = asdict(given.plan)
    identity = {
        "stage": step.name,
        "plan": {name: plan[name] for name in step.depends},
        "input": _input_identity(given.source),
        "options": {name: str(given.options.get(name)) for name in (*step.requires, *step.keyed)},
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()


def _input_identity(source: Path) -> Any:
    """An earlier stage's key; else every file's size and modification time (no reading)."""
    previous = read_provenance(source) if source.is_dir() else None
    if previous is not None and "stage_key" in previous:
        return previous["stage_key"]
    root = source.resolve()
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
    return [str(root)] + [[str(p.relative_to(root)) if p != root else p.name, *_stat(p)] for p in files]


def _stat(path: Path) -> tuple[int, int]:
    info = os.stat(path)
    return info.st_size, info.st_mtime_ns


# --------------------------------------------------------------------------------------------
# The model card


def model_card(plan: Plan, source: Path) -> str:
    """README.md of a pruned directory: what was done, and how to load it."""
    from hpspec.plan.summary import plan_text

    family_class = {"sd3": "SD3Transformer2DModel", "flux": "FluxTransformer2DModel"}.get(plan.target.family, "transformer")
    parts = any(op.kind == "drop_part" for op in plan.ops)
    if parts:
        loading = (
            "Parts of blocks were replaced by parameter-free stand-ins, so plain diffusers `from_pretrained` "
            "does not rebuild this model (it would re-create the dropped parts with random weights). Load it with hpspec:"
        )
    else:
        loading = f"Only whole blocks were removed: plain diffusers loads it (`{family_class}.from_pretrained(DIR)`), and so does hpspec:"
    return "\n".join(
        [
            f"# {plan.target.name}, pruned by hpspec",
            "",
            f"A diffusers `{family_class}` pruned from `{source}` by hpspec {__version__} "
            "(HierarchicalPrune's position pruning). `plan.json` is the exact plan, `provenance.json` and the "
            "safetensors metadata record the sha256 of the source shards.",
            "",
            "```",
            plan_text(plan).rstrip(),
            "```",
            "",
            "Spec:",
            "",
            "```",
            plan.spec.source.rstrip(),
            "```",
            "",
            loading,
            "",
            "```python",
            "import hpspec",
            "",
            'transformer = hpspec.load_pretrained("DIR")  # DIR: this directory',
            "```",
            "",
        ]
    )


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
