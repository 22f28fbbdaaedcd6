"""engine: how one stage runs, whichever it is (the stages themselves: prune.py, distill.py,
quantize.py; their order and `compile`: pipeline.py).

Each stage reads a model directory (the original, or the stage before's output) and writes its
own (`OUT/pruned`, `OUT/distilled`, `OUT/quantized`) with the plan that produced it, its
provenance, a short model card and, given a `ReportWriter`, its report.html. Stages are
resumable: a finished stage whose plan and input have not changed is not redone (`--force`
redoes it). A stage first checks everything it can without writing (`prepare`), then writes into
a temporary sibling renamed into place at the end, so a failure leaves nothing at the output
path. What the command line adds to a plan is typed: `StageOptions`, one group per stage.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from hpspec.core import faults
from hpspec.core.errors import HpspecError, PlanError
from hpspec.core.io import atomic_directory, dumps_json, read_json_input, sweep_stale_siblings
from hpspec.core.lock import output_lock
from hpspec.core.paths import PLAN_NAME, PROVENANCE_NAME
from hpspec.core.version import __version__
from hpspec.model import targets
from hpspec.plan.plan import Plan
from hpspec.plan.schema import load_plan_file

Writer = Callable[[Path], dict[str, Any]]  # fills a temporary directory, returns provenance extras

# What a stage directory's plan must share with the plan of a later stage that reads it (distill,
# quantize): the model, the blocks and parts kept, the config rewrite, the parameter count, and
# the freeze set the loader applies. (`bytes` follows from these; its after_quantize is the
# quantize stage's own prediction, absent from a plan without `quantize`.)
PRUNING_FIELDS = ("target", "stacks", "config", "ops", "freeze", "params")


# Writes report.html into a stage directory being written: (directory, plan, sensitivity table).
# The caller (the CLI) passes it in: the report is a floor above the stages.
ReportWriter = Callable[[Path, Plan, "str | None"], None]


@dataclass(frozen=True)
class PruneOptions:
    """What the command line adds to the prune stage."""

    verify: bool = False  # --verify: scan every weight of the input for NaN and infinity first
    to: str | None = None  # --to: the output layout (diffusers, bfl, sai, comfyui, gguf[:TYPE]); None: the input's


@dataclass(frozen=True)
class DistillOptions:
    """What the command line adds to the distill stage (`data` it cannot run without)."""

    data: str | None = None  # --data: `demo`, or a folder of latents and text embeddings
    teacher: str | None = None  # --teacher: the original model (compile passes --model)
    sensitivity: str | None = None  # --sensitivity: the table for SGDistill (and every stage's report)
    stop_after: int | None = None  # --stop-after: stop after N steps of this run, with a checkpoint
    checkpoint_every: int | None = None  # --checkpoint-every: steps between checkpoints


@dataclass(frozen=True)
class QuantizeOptions:
    """What the command line adds to the quantize stage: nothing, the plan says it all."""


OwnOptions = PruneOptions | DistillOptions | QuantizeOptions  # one stage's group


@dataclass(frozen=True)
class StageOptions:
    """The command-line inputs of a run: one group per stage (named as the stage), and the report."""

    prune: PruneOptions = PruneOptions()
    distill: DistillOptions = DistillOptions()
    quantize: QuantizeOptions = QuantizeOptions()
    report: ReportWriter | None = None  # None: no report.html (--no-report, or the Python API)
    export: PruneOptions = PruneOptions()  # compile's --to when distill or quantize run first (stages/export.py)

    def of(self, step: Stage) -> OwnOptions:
        """The options of one stage: `StageOptions().of(PRUNE) == PruneOptions()`."""
        own: OwnOptions = getattr(self, step.name)
        return own


@dataclass(frozen=True)
class StageInput:
    """What a stage runs on: the plan, the directory it reads, the command line's options."""

    plan: Plan
    source: Path  # the model directory the stage reads
    options: StageOptions = StageOptions()
    progress: bool = True


@dataclass(frozen=True)
class Stage:
    """One stage: its command, its directory under OUT, when a spec declares it, and how it runs.

    >>> QUANTIZE = Stage("quantize", "quantized", lambda plan: plan.quantize is not None, prepare_quantize,
    ...                  depends=("quantize",))
    >>> run_stage(QUANTIZE, StageInput(plan, Path("OUT/pruned")), Path("OUT/quantized")).status
    'done'
    """

    name: str  # the command: `hpspec NAME`
    directory: str  # its directory under OUT
    declared: Callable[[Plan], bool]  # does the spec ask for it?
    prepare: Callable[[StageInput], Writer] | None  # None: not implemented in this version
    depends: tuple[str, ...]  # the plan's fields its output depends on (what makes it stale)
    requires: tuple[str, ...] = ()  # its options it cannot run without, e.g. ("data",)
    keyed: tuple[str, ...] = ()  # its other options its output depends on (a changed one redoes it)


@dataclass(frozen=True)
class StageResult:
    """A stage run: where its output is, whether it was done now, and its provenance."""

    stage: str
    out: Path
    status: str  # "done" or "up to date"
    provenance: Mapping[str, Any]


# --------------------------------------------------------------------------------------------
# Running a stage


def run_stage(step: Stage, given: StageInput, out: Path, force: bool = False) -> StageResult:
    """One stage into `out`: skipped when finished for the same plan and input, else (re)done atomically."""
    if step.prepare is None:
        raise HpspecError(f"{step.name} is not implemented in hpspec {__version__}")
    out = Path(out)
    _refuse_overlap(given.source, out)
    with output_lock(out):  # one writer per output: a second run is refused, never sweeps this one's files
        return _run_locked(step, given, out, force)


def _run_locked(step: Stage, given: StageInput, out: Path, force: bool) -> StageResult:
    key = stage_key(step, given)
    sweep_stale_siblings(out)
    if out.exists() and not force:
        previous = read_provenance(out)
        if previous is not None and previous.get("stage_key") == key:
            return StageResult(step.name, out, "up to date", previous)
        why = (
            "holds another plan's or another input's output"
            if previous is not None
            else f"is not a finished hpspec {step.name} output"
        )
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
        if given.options.report is not None:  # the plan's report, with the sensitivity table if one was given
            given.options.report(tmp, given.plan, given.options.distill.sensitivity)
    return StageResult(step.name, out, "done", provenance)


def _refuse_overlap(source: Path, out: Path) -> None:
    """Inputs are never modified: the output may not be, contain, or lie inside the input."""
    a, b = source.resolve(), out.resolve()
    if a == b or a in b.parents or b in a.parents:
        raise HpspecError(f"{out}: overlaps the input {source}; write the output somewhere else")


def read_provenance(directory: Path) -> dict[str, Any] | None:
    """A finished stage directory's provenance.json; None when it has none (or an unreadable one)."""
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
        "options": {name: str(getattr(given.options.of(step), name)) for name in (*step.requires, *step.keyed)},
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
# Inputs


def resolve_model(value: str) -> Path:
    """`--model` (and `--teacher`): a path, or `demo` for the embedded demo transformer."""
    return targets.demo_directory() if value == targets.DEMO else Path(value)


def require_same_pruning(plan: Plan, directory: Path, stage: str) -> None:
    """`directory` (a stage directory hpspec wrote) was pruned by `plan`, or a PlanError naming the
    field that differs: `stage` reads the output of the same spec's prune stage only."""
    written = load_plan_file(Path(directory) / PLAN_NAME)
    differs = next((name for name in PRUNING_FIELDS if getattr(written, name) != getattr(plan, name)), None)
    if differs is not None:
        raise PlanError(
            f"{directory}: was pruned by another plan ({written.spec.path}; its `{differs}` differs from "
            f"{plan.spec.path}'s); {stage} the output of the same spec's prune stage"
        )
