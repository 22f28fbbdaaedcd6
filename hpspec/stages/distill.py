"""The distill stage: OUT/pruned repaired against the original model into OUT/distilled.

The training itself is `hpspec.method.distill` (objective, loop, checkpoints, data); this module is
the stage around it: every check before anything is written (the teacher is the model the plan
pruned, the data fits it, the sensitivity table fits, the input was pruned by this plan), the
student and teacher loaded, the run's key (what its checkpoints belong to), the distilled weights
written in the pruned directory's layout, and the run under several processes (`accelerate
launch`), where only the main process writes. `distill_demo` is the demo's distillation step.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hpspec.core.errors import DistillError
from hpspec.core.io import TMP_MARKER, dumps_json
from hpspec.core.paths import CARD_NAME, CONFIG_NAME, PLAN_NAME, SCALES_NAME, WEIGHTS_INDEX_SUFFIX
from hpspec.method.distill.checkpoints import checkpoint_root
from hpspec.method.distill.data import check_fits, open_data
from hpspec.method.distill.loop import (
    BETAS,
    CLIP_NORM,
    DEFAULT_CHECKPOINT_EVERY,
    WEIGHT_DECAY,
    Job,
    Outcome,
    make_accelerator,
    process_state,
    train,
)
from hpspec.method.distill.objective import Family, feature_pairs
from hpspec.method.sensitivity import check_table_fits, load_table
from hpspec.method.sgdistill import Guidance, frozen_by, guidance
from hpspec.model.safetensors_header import TORCH_DTYPES as DTYPE_NAMES
from hpspec.model.safetensors_header import read_header
from hpspec.model.targets import DEMO, find_transformer
from hpspec.plan.check import DISTILL_OPTIONS
from hpspec.plan.plan import DistillPlan, Plan
from hpspec.plan.schema import load_plan_file
from hpspec.stages.cards import distilled_card
from hpspec.stages.engine import (
    DistillOptions,
    Stage,
    StageInput,
    StageOptions,
    StageResult,
    Writer,
    require_same_pruning,
    resolve_model,
    run_stage,
    stage_key,
)
from hpspec.weights.checkpoint.source import Source, open_source

if TYPE_CHECKING:
    import torch
    from torch import nn


# --------------------------------------------------------------------------------------------
# The models


def open_teacher(directory: Path, plan: Plan) -> Source:
    """The original checkpoint, validated and checked against the plan (headers only: cheap)."""
    source = open_source(directory)
    if source.graph.fingerprint != plan.target.fingerprint:
        raise DistillError(
            f"--teacher {directory}: is not the model the plan pruned (`{plan.target.name}`, {plan.target.fingerprint}; "
            f"this one is {source.graph.fingerprint}): the teacher is the original, unpruned model"
        )
    return source


def load_teacher(source: Source, dtype: torch.dtype) -> nn.Module:
    """The original transformer, frozen and in eval mode."""
    import diffusers

    cls = getattr(diffusers, str(source.config.get("_class_name")))
    return cls.from_pretrained(source.directory, torch_dtype=dtype).eval().requires_grad_(False)


def load_student(directory: Path, plan: Plan) -> nn.Module:
    """The pruned transformer in float32 (the optimiser's master weights), PWP applied by the loader."""
    import torch

    from hpspec.weights.load import load_pretrained  # torch

    require_same_pruning(plan, Path(directory), "distill")
    return load_pretrained(directory, torch_dtype=torch.float32).train()


def run_key(given: StageInput, teacher: Path, table: Path | None, data: str) -> str:
    """What a checkpoint belongs to: the stage key, and the inputs the stage key does not cover."""
    table_hash = hashlib.sha256(table.read_bytes()).hexdigest() if table is not None else None
    identity = {
        "stage": stage_key(DISTILL, given),
        "teacher": str(teacher.resolve()),
        "table": table_hash,
        "data": data,
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()


# --------------------------------------------------------------------------------------------
# Writing the distilled model (the pruned directory's layout)


def save_distilled(
    state: Mapping[str, torch.Tensor], pruned: Path, out: Path, plan: Plan, note: Mapping[str, str]
) -> list[str]:
    """Every tensor of the pruned checkpoint, from `state`, into the same files, dtypes and order."""
    import torch
    from safetensors.torch import save_file

    dtypes = {
        DTYPE_NAMES[name]: getattr(torch, name) for name in ("float32", "float16", "bfloat16")
    }  # the floats a student trains in
    _, shards = find_transformer(pruned)
    files = []
    for shard in shards:
        header = read_header(shard)
        missing = next((name for name in header.tensors if name not in state), None)
        if missing is not None:
            raise DistillError(f"the trained student has no tensor {missing!r}, which {shard} holds")
        tensors = {name: state[name].detach().to("cpu", dtypes.get(entry.dtype, state[name].dtype)).contiguous()
                   for name, entry in sorted(header.tensors.items(), key=lambda item: item[1].begin)}  # fmt: skip
        save_file(tensors, str(out / shard.name), metadata={**header.metadata, **note})
        os.chmod(out / shard.name, 0o666 & ~_umask())  # safetensors writes 0600; outputs get the usual mode
        files.append(shard.name)
    for extra in [pruned / CONFIG_NAME, *pruned.glob(f"*{WEIGHTS_INDEX_SUFFIX}")]:
        shutil.copyfile(extra, out / extra.name)
    (out / PLAN_NAME).write_text(plan.to_json(), encoding="utf-8")
    return files


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# --------------------------------------------------------------------------------------------
# The stage


@dataclass
class Gate:
    """Under several processes the main one runs `run_stage` (which decides: up to date, refused,
    or run) and tells the others whether to train with it."""

    opened: bool = False

    def open(self) -> None:
        self._say(True)

    def close(self) -> None:
        self._say(False)

    def _say(self, go: bool) -> None:
        from accelerate.utils import broadcast_object_list

        state = process_state()
        if not self.opened and state.num_processes > 1 and state.is_main_process:
            broadcast_object_list([go], from_process=0)
        self.opened = True

    @staticmethod
    def wait() -> bool:
        from accelerate.utils import broadcast_object_list

        return bool(broadcast_object_list([None], from_process=0)[0])


def prepare_distill(given: StageInput, out: Path | None = None, gate: Gate | None = None) -> Writer:
    """Check and load everything (plan, teacher, student, data, table); the writer trains and saves.

        >>> options = StageOptions(distill=DistillOptions(data="demo", teacher="demo"))
        >>> write = prepare_distill(StageInput(plan, Path("OUT/pruned"), options))  # raises before any write
        >>> write(tmp)["steps_this_run"]  # tmp: the temporary directory run_stage renames into place
        300

    `out` is the output path (else read from `tmp`'s name), `gate` the processes' gate under
    `accelerate launch` (`run_distill` passes both).
    """
    import torch

    plan, options = given.plan, given.options.distill
    if plan.distill is None:
        raise DistillError(f"the plan of {plan.spec.path} declares no `distill`; add a distill statement to the spec")
    processes = process_state().num_processes
    if processes > 1 and gate is None:
        raise DistillError("under accelerate launch, run `hpspec distill` (compile's other stages run in one process)")
    if plan.distill.batch % processes:
        raise DistillError(f"distill batch={plan.distill.batch} does not divide over {processes} processes")
    # Cheap checks first (headers, manifest, table), then the weights.
    teacher_dir = _teacher_dir(options)
    source = open_teacher(teacher_dir, plan)
    graph, family = source.graph, Family(source.graph.family, dict(source.config))
    data = open_data(str(options.data))
    check_fits(data, family.name, family.config, f"--data {options.data}")
    table_path = _table_path(plan, options)
    table = load_table(table_path) if table_path is not None and plan.distill.weight == "sensitivity" else None
    if table is not None:
        check_table_fits(table, graph, str(table_path))
    teacher = load_teacher(source, torch.bfloat16 if torch.cuda.is_available() else torch.float32)
    student = load_student(given.source, plan)
    trainable = [n for n, p in student.named_parameters() if p.requires_grad]
    guide = guidance(plan, graph, table, trainable)
    frozen = _freeze_guided(student, guide)
    job = Job(
        plan, plan.distill, student, teacher, family, data, guide, feature_pairs(plan, trainable),
        run_key(given, teacher_dir, table_path if table is not None else None, str(options.data)),
        teacher_dir, table_path if table is not None else None,
        stop_after=options.stop_after, checkpoint_every=int(options.checkpoint_every or DEFAULT_CHECKPOINT_EVERY),
        progress=given.progress, frozen_by_guidance=frozen,
    )  # fmt: skip
    return lambda tmp: _write(job, given, tmp, out, gate)


def _teacher_dir(options: DistillOptions) -> Path:
    teacher = options.teacher
    if teacher is None:
        raise DistillError("distill needs the original model as its teacher: --teacher DIR (compile passes --model)")
    return resolve_model(str(teacher))


def _table_path(plan: Plan, options: DistillOptions) -> Path | None:
    """--sensitivity wins; else the spec's `table=`, read relative to the spec (as `check` does)."""
    assert plan.distill is not None
    if options.sensitivity is not None:
        return Path(str(options.sensitivity))
    if plan.distill.table is None:
        return None
    return Path(plan.spec.path).parent / plan.distill.table


def _freeze_guided(student: nn.Module, guide: Guidance) -> list[str]:
    """SGDistill binary: parameters under a scale-0 path stop requiring gradients."""
    names = frozen_by((n for n, p in student.named_parameters() if p.requires_grad), guide)
    for name in names:
        student.get_parameter(name).requires_grad_(False)
    return names


def _write(job: Job, given: StageInput, tmp: Path, out: Path | None, gate: Gate | None) -> dict[str, Any]:
    """Train (or resume), then write the distilled weights, scales, card; returns provenance extras."""
    if gate is not None:
        gate.open()
    out = Path(out) if out is not None else _stage_out(tmp)
    accelerator = make_accelerator(job.distill)
    outcome, student = train(job, accelerator, checkpoint_root(out) / job.run_key[:16])
    state = accelerator.get_state_dict(student)
    if not accelerator.is_main_process:
        return {}
    note = {"hpspec_stage": "distill", "hpspec_teacher": str(job.teacher_dir)}
    files = save_distilled(state, given.source, tmp, job.plan, note)
    scales = dict(sorted(job.guide.scales.items()))
    if scales:
        (tmp / SCALES_NAME).write_text(dumps_json(scales), encoding="utf-8")
    (tmp / CARD_NAME).write_text(
        distilled_card(job.plan, job.teacher_dir, outcome.curve, bool(job.guide.scales)), encoding="utf-8"
    )
    shutil.rmtree(checkpoint_root(out), ignore_errors=True)
    return _provenance(job, outcome, files, scales)


def _stage_out(tmp: Path) -> Path:
    """The output path a temporary sibling (`.NAME.hpspec-tmp-` and a random suffix) will be renamed to."""
    name = tmp.name
    return tmp.parent / name[1 : name.index(TMP_MARKER)] if name.startswith(".") and TMP_MARKER in name else tmp


def _provenance(job: Job, outcome: Outcome, files: list[str], scales: Mapping[str, float]) -> dict[str, Any]:
    student = job.student
    trainable = sum(p.numel() for p in student.parameters() if p.requires_grad)
    return {
        "teacher": str(job.teacher_dir),
        "data": job.data.describe(),
        "sensitivity_table": str(job.table) if job.table is not None else None,
        "files": files,
        "params": sum(p.numel() for p in student.parameters()),
        "trainable_params": trainable,
        "frozen_by_sensitivity": job.frozen_by_guidance,
        "sgdistill": job.guide.record,
        "scales": dict(scales),
        "feature_blocks": [{"student": s, "teacher": t} for s, t in job.pairs],
        "recipe": {
            **asdict(job.distill),
            "optimizer": "AdamW",
            "betas": list(BETAS),
            "weight_decay": WEIGHT_DECAY,
            "clip_norm": CLIP_NORM,
            "timesteps": "logit-normal(0, 1)",
        },  # fmt: skip
        "processes": outcome.processes,
        "device": outcome.device,
        "mixed_precision": outcome.mixed_precision,
        "resumed_from_step": outcome.resumed_from,
        "steps_this_run": outcome.steps_run,
        "seconds_per_step": round(outcome.seconds_per_step, 4) if outcome.seconds_per_step is not None else None,
        "curve": outcome.curve,
    }


def run_distill(given: StageInput, out: Path, force: bool = False) -> StageResult | None:
    """The distill stage into `out`, in this process or as one of several (`accelerate launch`).

    Only the main process writes; it returns the StageResult, the others None.
    """
    out = Path(out)
    state = process_state()
    if state.num_processes == 1:
        return run_stage(replace(DISTILL, prepare=partial(prepare_distill, out=out)), given, out, force)
    gate = Gate()
    if state.is_main_process:
        try:
            return run_stage(replace(DISTILL, prepare=partial(prepare_distill, out=out, gate=gate)), given, out, force)
        finally:
            gate.close()
    if Gate.wait():
        writer = prepare_distill(given, out, gate)
        with tempfile.TemporaryDirectory(prefix=f".{out.name}.rank{os.getpid()}-") as scratch:
            writer(Path(scratch))
    return None


DISTILL = Stage("distill", "distilled", lambda plan: plan.distill is not None, prepare_distill,
                depends=("distill",), requires=("data",), keyed=("teacher", "sensitivity"))  # fmt: skip
"""The distill stage, declared by a spec's `distill` statement: OUT/pruned -> OUT/distilled (needs --data)."""


# --------------------------------------------------------------------------------------------
# The demo's distillation step (hpspec demo)


def distill_demo(
    pruned: Path,
    out: Path,
    steps: int = 300,
    *,
    lr: float = 1e-4,
    batch: int = 64,
    weight: str = "uniform",
    mode: str = "binary",
    table: Path | None = None,
    seed: int = 0,
    force: bool = False,
    progress: bool = False,
    data: str = DEMO,
    teacher: Path | None = None,
) -> StageResult:
    """Distil a pruned demo checkpoint (`OUT/<method>/pruned`) against the demo on its digits
    (or against `teacher` on `data`: another demo's, see `build.demo_data_folder`).

    The pruned directory's plan gives the freeze set; its distill settings (or the reference
    recipe's, when the spec has none) are replaced by these. Returns the stage's result; its
    provenance holds the loss curve.
    """
    plan = load_plan_file(Path(pruned) / PLAN_NAME)
    base = plan.distill or DistillPlan(**{k: o.default for k, o in DISTILL_OPTIONS.items()})  # type: ignore[arg-type]
    settings = replace(base, steps=steps, lr=lr, batch=batch, weight=weight, mode=mode, table=None, seed=seed)
    plan = replace(plan, distill=settings)
    own = DistillOptions(
        data=data, teacher=str(teacher or resolve_model(DEMO)), sensitivity=str(table) if table else None
    )
    result = run_distill(StageInput(plan, Path(pruned), StageOptions(distill=own), progress), Path(out), force)
    assert result is not None  # one process
    return result
