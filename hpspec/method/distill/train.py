"""distill: the distill stage, PWP and SGDistill on accelerate (METHOD §6).

The teacher is the original transformer, frozen, in eval mode; the student is the pruned one as the
prune stage wrote it, nothing re-initialised. Both see the same noisy latents
x_t = (1 - σ) x0 + σ ε, σ logit-normal (SD3's convention: the model predicts v = ε - x0 at
timestep 1000 σ). The loss is

    output · MSE(v_student, v_teacher)
  + features · Σ_blocks Σ_streams MSE(student block output, teacher block output)
  + task · MSE(v_student, ε - x0)

where the blocks are the kept blocks with trainable parameters, each matched to the teacher's block
it came from (the plan's index map). PWP is the plan's freeze set: frozen parameters are not given
to the optimiser, so they get no state, no weight decay and never change. SGDistill
(`hpspec.sgdistill`) freezes more (`mode=binary`) or sets a learning rate per block
(`mode=inverse`). AdamW (0.9, 0.999), weight decay 1e-4, constant learning rate, gradient clipping
at 1.0; bf16 autocast when a GPU is present.

The same code runs in one process, under `accelerate launch` on CPUs, or on GPUs (DDP; FSDP and
DeepSpeed through accelerate's config). Every random draw of step s comes from a generator seeded by
(seed, s) over the whole global batch, of which each process takes its slice: runs are
deterministic under a seed, N processes see what one sees, and a resumed run continues exactly.
Checkpoints (accelerate's `save_state`) go to a hidden sibling of the output,
`.NAME.checkpoints/`, which the stage's atomic output does not sweep and which is removed when
the stage finishes.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

from hpspec.core.errors import HpspecError
from hpspec.core.io import dumps_json
from hpspec.core.paths import CARD_NAME, CONFIG_NAME, PLAN_NAME, WEIGHTS_INDEX_SUFFIX
from hpspec.plan.plan import DistillPlan, Plan
from hpspec.stages.engine import StageInput, StageResult, Writer, model_card, run_stage, stage, stage_key

if TYPE_CHECKING:
    import torch
    from accelerate import Accelerator, PartialState
    from torch import nn

    from hpspec.weights.checkpoint import Source
    from hpspec.method.distill.data import Batch, DistillData
    from hpspec.method.sgdistill import Guidance

BETAS = (0.9, 0.999)
WEIGHT_DECAY = 1e-4
CLIP_NORM = 1.0
FLUX_GUIDANCE = 3.5  # the guidance value a guidance-distilled FLUX (dev) is run at
DEFAULT_CHECKPOINT_EVERY = 500
SCALES_NAME = "scales.json"
PROGRESS_NAME = "hpspec-progress.json"
STOPPED_EXIT_CODE = 3


class DistillError(HpspecError):
    """The distill stage cannot run with these inputs."""


class DistillStopped(DistillError):
    """The run stopped early as asked (`--stop-after`); its checkpoint resumes it."""

    exit_code = STOPPED_EXIT_CODE


# --------------------------------------------------------------------------------------------
# The models and how a family's transformer is called


@dataclass(frozen=True)
class Family:
    """How one model family lays out latents and is called."""

    name: str
    config: Mapping[str, Any]

    def layout(self, latents: "torch.Tensor") -> "torch.Tensor":
        """(B, C, H, W) -> what the transformer takes: FLUX packs 2x2 patches into tokens."""
        if self.name != "flux":
            return latents
        b, c, h, w = latents.shape
        return latents.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, (h // 2) * (w // 2), c * 4)

    def inputs(self, x: "torch.Tensor", sigma: "torch.Tensor", batch: "Batch", height: int, width: int) -> dict[str, Any]:
        common = {"hidden_states": x, "encoder_hidden_states": batch.states, "pooled_projections": batch.pooled, "return_dict": False}
        if self.name != "flux":
            return {**common, "timestep": sigma * 1000}
        import torch

        ids = torch.zeros(height // 2, width // 2, 3)
        ids[..., 1] += torch.arange(height // 2)[:, None]
        ids[..., 2] += torch.arange(width // 2)[None, :]
        extra: dict[str, Any] = {
            "timestep": sigma,  # FLUX scales by 1000 inside
            "img_ids": ids.reshape(-1, 3).to(x.device, x.dtype),
            "txt_ids": torch.zeros(batch.states.shape[1], 3, device=x.device, dtype=x.dtype),
        }
        if self.config.get("guidance_embeds"):
            extra["guidance"] = torch.full((x.shape[0],), FLUX_GUIDANCE, device=x.device, dtype=x.dtype)
        return {**common, **extra}


def open_teacher(directory: Path, plan: Plan) -> "Source":
    """The original checkpoint, validated and checked against the plan (headers only: cheap)."""
    from hpspec.weights.checkpoint import open_source

    source = open_source(directory)
    if source.graph.fingerprint != plan.target.fingerprint:
        raise DistillError(
            f"--teacher {directory}: is not the model the plan pruned (`{plan.target.name}`, {plan.target.fingerprint}; "
            f"this one is {source.graph.fingerprint}): the teacher is the original, unpruned model"
        )
    return source


def load_teacher(source: "Source", dtype: "torch.dtype") -> "nn.Module":
    """The original transformer, frozen and in eval mode."""
    import diffusers

    cls = getattr(diffusers, str(source.config.get("_class_name")))
    return cls.from_pretrained(source.directory, torch_dtype=dtype).eval().requires_grad_(False)


def load_student(directory: Path, plan: Plan) -> "nn.Module":
    """The pruned transformer in float32 (the optimiser's master weights), PWP applied by the loader."""
    import torch

    from hpspec.weights.prune import load_pretrained
    from hpspec.plan.schema import load_plan_file

    written = load_plan_file(Path(directory) / PLAN_NAME)
    prune_fields = stage("prune").depends
    if any(getattr(written, name) != getattr(plan, name) for name in prune_fields):
        raise DistillError(f"{directory}: was pruned by another plan than the one distilling it (compare its plan.json)")
    return load_pretrained(directory, torch_dtype=torch.float32).train()


# --------------------------------------------------------------------------------------------
# Random draws: a pure function of (seed, step), over the global batch


@dataclass(frozen=True)
class Draws:
    rows: "torch.Tensor"
    uniform: "torch.Tensor"
    unconditional: "torch.Tensor"
    noise: "torch.Tensor"
    sigma: "torch.Tensor"

    def slice(self, start: int, stop: int) -> "Draws":
        return Draws(*(t[start:stop] for t in (self.rows, self.uniform, self.unconditional, self.noise, self.sigma)))


def _generator(seed: int, stream: int, index: int) -> "torch.Generator":
    import torch

    mixed = hashlib.sha256(f"{seed}:{stream}:{index}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(mixed[:8], "little") >> 1)


@lru_cache(maxsize=4)
def _epoch_order(seed: int, epoch: int, count: int) -> "torch.Tensor":
    import torch

    return torch.randperm(count, generator=_generator(seed, 0, epoch))


def draws(seed: int, step: int, batch: int, count: int, latent: Sequence[int], unconditional: float) -> Draws:
    """Step `step`'s examples (each epoch a fresh permutation), variants, prompt dropout, noise and σ."""
    import torch

    positions = torch.arange(step * batch, (step + 1) * batch)
    rows = torch.stack([_epoch_order(seed, int(p) // count, count)[int(p) % count] for p in positions])
    gen = _generator(seed, 1, step)
    uniform = torch.rand(batch, generator=gen)
    dropped = torch.rand(batch, generator=gen) < unconditional
    noise = torch.randn((batch, *latent), generator=gen)
    sigma = torch.sigmoid(torch.randn(batch, generator=gen))  # logit-normal(0, 1), SD3's training density
    return Draws(rows, uniform, dropped, noise, sigma)


# --------------------------------------------------------------------------------------------
# Block outputs (feature distillation)


class Capture:
    """Forward hooks that keep the outputs of some blocks of a model during one forward pass."""

    def __init__(self, model: "nn.Module", paths: Sequence[str]) -> None:
        self.outputs: dict[str, Any] = {}
        self.handles = [model.get_submodule(p).register_forward_hook(self._hook(p)) for p in paths]

    def _hook(self, path: str) -> Callable[..., None]:
        def keep(module: "nn.Module", args: Any, output: Any) -> None:
            self.outputs[path] = output

        return keep

    def take(self) -> dict[str, Any]:
        outputs, self.outputs = self.outputs, {}
        return outputs


def feature_pairs(plan: Plan, trainable: Sequence[str]) -> list[tuple[str, str]]:
    """(student block path, teacher block path) for every kept block with trainable parameters."""
    from hpspec.method.sgdistill import kept_blocks, under

    pairs = []
    for block in kept_blocks(plan):
        if any(under(name, block.path) for name in trainable):
            pairs.append((block.path, f"{plan.stacks[block.stack].module}.{block.old}"))
    return pairs


def _streams(output: Any) -> tuple[Any, ...]:
    """A block's outputs as a tuple: (encoder, hidden) for joint blocks, None where a stream ends."""
    return tuple(output) if isinstance(output, (tuple, list)) else (output,)


def feature_loss(student: Mapping[str, Any], teacher: Mapping[str, Any], pairs: Sequence[tuple[str, str]]) -> "torch.Tensor":
    """Σ MSE over matched blocks and both streams; a stream the student's block no longer has (the
    converted last block's text stream) is skipped."""
    import torch
    import torch.nn.functional as F

    total = torch.zeros(())
    for s_path, t_path in pairs:
        for s_out, t_out in zip(_streams(student[s_path]), _streams(teacher[t_path])):
            if isinstance(s_out, torch.Tensor) and isinstance(t_out, torch.Tensor):
                total = total.to(s_out.device) + F.mse_loss(s_out.float(), t_out.float())
    return total


# --------------------------------------------------------------------------------------------
# One training job


@dataclass
class Job:
    """Everything one run needs; built by `prepare` (every check) before anything is written."""

    plan: Plan
    distill: DistillPlan
    student: "nn.Module"
    teacher: "nn.Module"
    family: Family
    data: "DistillData"
    guide: "Guidance"
    pairs: list[tuple[str, str]]
    run_key: str
    teacher_dir: Path
    table: Path | None
    stop_after: int | None = None
    checkpoint_every: int = DEFAULT_CHECKPOINT_EVERY
    progress: bool = True
    frozen_by_guidance: list[str] = field(default_factory=list)


@dataclass
class Outcome:
    steps_run: int
    resumed_from: int
    seconds_per_step: float | None
    curve: list[dict[str, float]]
    processes: int
    mixed_precision: str
    device: str


def make_accelerator(distill: DistillPlan) -> "Accelerator":
    """bf16 autocast on a GPU unless accelerate's config says otherwise; fp32 on CPUs."""
    import torch
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs

    precision = os.environ.get("ACCELERATE_MIXED_PRECISION") or ("bf16" if torch.cuda.is_available() else "no")
    # Without an output or a task loss, norm_out and proj_out get no gradient: DDP must allow that.
    unused = distill.output == 0 and distill.task == 0
    handlers = [DistributedDataParallelKwargs(find_unused_parameters=unused)]
    return Accelerator(cpu=not torch.cuda.is_available(), mixed_precision=precision, kwargs_handlers=handlers)


def process_state() -> "PartialState":
    """This process's place among those `accelerate launch` (or torchrun) started.

    Without a GPU the state must be asked for on CPUs, else accelerate sees one process per launch:
    `accelerate launch --multi_gpu --num_processes N` (torchrun underneath) then gives N gloo
    processes. (`accelerate launch --cpu --num_processes N` starts one process unless it is given
    an MPI hostfile.)
    """
    import torch
    from accelerate import PartialState

    return PartialState(cpu=not torch.cuda.is_available())


def optimizer_for(student: "nn.Module", guide: "Guidance", lr: float) -> "torch.optim.Optimizer":
    """AdamW over the trainable parameters only, one group per update scale (lr · scale)."""
    import torch

    from hpspec.method.sgdistill import groups

    params = dict(student.named_parameters())
    trainable = [n for n, p in params.items() if p.requires_grad]
    grouped = groups(trainable, guide)
    if not grouped:
        raise DistillError("nothing to train: every parameter is frozen (by `preserve` and SGDistill)")
    param_groups = [{"params": [params[n] for n in names], "lr": lr * scale, "hpspec_scale": scale} for scale, names in grouped.items()]
    return torch.optim.AdamW(param_groups, lr=lr, betas=BETAS, weight_decay=WEIGHT_DECAY)


def train(job: Job, accelerator: "Accelerator", checkpoints: Path) -> tuple[Outcome, "nn.Module"]:
    """Run (or resume) the job's steps, checkpointing into `checkpoints`; returns the outcome and the
    prepared student. Stops early with DistillStopped when `stop_after` says so."""
    distill = job.distill
    world, rank = accelerator.num_processes, accelerator.process_index
    local = distill.batch // world
    optimizer = optimizer_for(job.student, job.guide, distill.lr)
    student_capture = Capture(job.student, [s for s, _ in job.pairs])
    teacher_capture = Capture(job.teacher, [t for _, t in job.pairs])
    _fix_deepspeed_batch(accelerator, local)
    student, optimizer = accelerator.prepare(job.student, optimizer)
    job.teacher.to(accelerator.device)
    start, curve = _resume(checkpoints, accelerator)
    trainable = [p for p in student.parameters() if p.requires_grad]
    _, height, width = job.data.shapes.latent
    window = _Window()
    log_every = max(1, distill.steps // 100)
    bar = _progress_bar(job, accelerator, start)
    began = time.monotonic()
    for step in range(start, distill.steps):
        draw = draws(distill.seed, step, distill.batch, len(job.data), job.data.shapes.latent, job.data.unconditional_fraction)
        mine = draw.slice(rank * local, (rank + 1) * local)
        batch = _to(job.data.batch(mine.rows, mine.uniform, mine.unconditional), accelerator.device)
        terms = _losses(job, student, batch, mine, (height, width), student_capture, teacher_capture, accelerator)
        optimizer.zero_grad(set_to_none=True)
        accelerator.backward(terms["loss"])
        accelerator.clip_grad_norm_(trainable, CLIP_NORM)
        optimizer.step()
        window.add(terms)
        bar.update(1)
        if (step + 1) % log_every == 0 or step + 1 == distill.steps:
            curve.append({"step": step + 1, **window.mean(accelerator)})
            bar.set_postfix(loss=f"{curve[-1]['loss']:.4g}")
        done_here = step + 1 - start
        if job.stop_after is not None and done_here >= job.stop_after and step + 1 < distill.steps:
            _save_checkpoint(job, accelerator, checkpoints, step + 1, curve)
            bar.close()
            raise DistillStopped(
                f"stopped at step {step + 1} of {distill.steps} (--stop-after {job.stop_after}); "
                f"the checkpoint is in {checkpoints}; the same command again resumes from it"
            )
        if (step + 1) % job.checkpoint_every == 0 and step + 1 < distill.steps:
            _save_checkpoint(job, accelerator, checkpoints, step + 1, curve)
    bar.close()
    ran = distill.steps - start
    seconds = (time.monotonic() - began) / ran if ran else None
    device = str(accelerator.device)
    return Outcome(ran, start, seconds, curve, world, str(accelerator.mixed_precision), device), student


def _losses(job: Job, student: "nn.Module", batch: "Batch", draw: Draws, size: tuple[int, int], student_capture: Capture,
            teacher_capture: Capture, accelerator: "Accelerator") -> dict[str, "torch.Tensor"]:  # fmt: skip
    import torch
    import torch.nn.functional as F

    distill, family = job.distill, job.family
    device = accelerator.device
    x0 = family.layout(batch.latents)
    eps = family.layout(draw.noise.to(device))
    sigma = draw.sigma.to(device)
    s = sigma.view(-1, *([1] * (x0.dim() - 1)))
    x_t = (1 - s) * x0 + s * eps
    inputs = family.inputs(x_t, sigma, batch, *size)
    need_teacher = distill.output != 0 or distill.features != 0
    with accelerator.autocast():
        if need_teacher:
            with torch.no_grad():
                teacher_v = job.teacher(**_cast(inputs, next(job.teacher.parameters()).dtype))[0]
        student_v = student(**inputs)[0].float()
    terms = {"task": F.mse_loss(student_v, eps - x0)}
    teacher_features = teacher_capture.take()
    student_features = student_capture.take()
    if need_teacher:
        terms["output"] = F.mse_loss(student_v, teacher_v.float())
        terms["features"] = feature_loss(student_features, teacher_features, job.pairs)
    zero = torch.zeros((), device=device)
    terms["loss"] = distill.output * terms.get("output", zero) + distill.features * terms.get("features", zero) + distill.task * terms["task"]
    return terms


PRECISE_INPUTS = ("timestep", "guidance", "img_ids", "txt_ids")  # embedded in fp32 by diffusers; bf16 would round them


def _cast(inputs: Mapping[str, Any], dtype: "torch.dtype") -> dict[str, Any]:
    """Latents and text in the teacher's dtype (a bf16 teacher beside an fp32 student on a GPU)."""
    import torch

    def cast(key: str, value: Any) -> Any:
        floating = isinstance(value, torch.Tensor) and value.is_floating_point()
        return value.to(dtype) if floating and key not in PRECISE_INPUTS else value

    return {key: cast(key, value) for key, value in inputs.items()}


def _to(batch: "Batch", device: "torch.device") -> "Batch":
    from hpspec.method.distill.data import Batch

    return Batch(batch.latents.to(device), batch.states.to(device), batch.pooled.to(device))


class _Window:
    """Loss terms summed since the last log line; their mean over steps and processes."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.count = 0

    def add(self, terms: Mapping[str, "torch.Tensor"]) -> None:
        for name, value in terms.items():
            self.sums[name] = self.sums.get(name, 0.0) + float(value.detach())
        self.count += 1

    def mean(self, accelerator: "Accelerator") -> dict[str, float]:
        import torch

        names = sorted(self.sums)
        local = torch.tensor([self.sums[n] / self.count for n in names], device=accelerator.device)
        reduced = accelerator.reduce(local, reduction="mean") if accelerator.num_processes > 1 else local
        self.sums, self.count = {}, 0
        return {n: float(v) for n, v in zip(names, reduced.tolist())}


def _progress_bar(job: Job, accelerator: "Accelerator", start: int) -> Any:
    from tqdm.auto import tqdm

    enabled = job.progress and accelerator.is_main_process
    return tqdm(total=job.distill.steps, initial=start, desc="distill", unit="step", disable=not enabled, leave=False)


def _fix_deepspeed_batch(accelerator: "Accelerator", local: int) -> None:
    """DeepSpeed wants its micro-batch size even without a data loader."""
    plugin = getattr(accelerator.state, "deepspeed_plugin", None)
    if plugin is not None:
        plugin.deepspeed_config["train_micro_batch_size_per_gpu"] = local
        plugin.deepspeed_config.setdefault("gradient_clipping", CLIP_NORM)


# --------------------------------------------------------------------------------------------
# Checkpoints


def checkpoint_root(out: Path) -> Path:
    """Beside the output, outside the temporary siblings the stage sweeps: `.NAME.checkpoints`."""
    return out.parent / f".{out.name}.checkpoints"


def _save_checkpoint(job: Job, accelerator: "Accelerator", checkpoints: Path, step: int, curve: list[dict[str, float]]) -> None:
    target = checkpoints / f"step-{step:09d}"
    accelerator.save_state(str(target))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (target / PROGRESS_NAME).write_text(dumps_json({"step": step, "curve": curve, "run_key": job.run_key}), encoding="utf-8")
        for older in checkpoints.glob("step-*"):  # the one just written is complete: older ones go
            if older != target:
                shutil.rmtree(older, ignore_errors=True)
    accelerator.wait_for_everyone()


def _resume(checkpoints: Path, accelerator: "Accelerator") -> tuple[int, list[dict[str, float]]]:
    """The latest complete checkpoint of this run (same plan, inputs, teacher, table, data), if any."""
    complete = sorted(p for p in checkpoints.glob("step-*") if (p / PROGRESS_NAME).is_file())
    if not complete:
        return 0, []
    latest = complete[-1]
    progress = json.loads((latest / PROGRESS_NAME).read_text(encoding="utf-8"))
    accelerator.load_state(str(latest))
    return int(progress["step"]), list(progress["curve"])


def run_key(given: StageInput, teacher: Path, table: Path | None, data: str) -> str:
    """What a checkpoint belongs to: the stage key, and the inputs the stage key does not cover."""
    table_hash = hashlib.sha256(table.read_bytes()).hexdigest() if table is not None else None
    identity = {"stage": stage_key(stage("distill"), given), "teacher": str(teacher.resolve()), "table": table_hash, "data": data}
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()


# --------------------------------------------------------------------------------------------
# Writing the distilled model (the pruned directory's layout)


def save_distilled(state: Mapping[str, "torch.Tensor"], pruned: Path, out: Path, plan: Plan, note: Mapping[str, str]) -> list[str]:
    """Every tensor of the pruned checkpoint, from `state`, into the same files, dtypes and order."""
    import torch
    from safetensors.torch import save_file

    from hpspec.model.graph import find_transformer
    from hpspec.model.safetensors_header import read_header

    dtypes = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}
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


def distill_card(plan: Plan, teacher: Path, outcome: Outcome, guide: "Guidance") -> str:
    first, last = (outcome.curve[0], outcome.curve[-1]) if outcome.curve else ({}, {})
    assert plan.distill is not None
    lines = [
        "",
        "## Distillation",
        "",
        f"Distilled against `{teacher}` for {plan.distill.steps} steps (batch {plan.distill.batch}, lr {plan.distill.lr:g}, "
        f"weight `{plan.distill.weight}`" + (f", mode `{plan.distill.mode}`" if plan.distill.weight == "sensitivity" else "") + ").",
        f"Loss {first.get('loss', float('nan')):.4g} at step {first.get('step', 0)} -> {last.get('loss', float('nan')):.4g} "
        f"at step {last.get('step', 0)}; `provenance.json` has the curve" + (", `scales.json` the update scales." if guide.scales else "."),
        "",
    ]
    return model_card(plan, teacher).rstrip("\n") + "\n" + "\n".join(lines)


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


def prepare_distill(given: StageInput) -> Writer:
    """Check and load everything (plan, teacher, student, data, table); the writer trains and saves."""
    import torch

    from hpspec.method.distill.data import check_fits, open_data
    from hpspec.method.sensitivity import check_table_fits, load_table
    from hpspec.method.sgdistill import guidance

    plan, options = given.plan, given.options
    if plan.distill is None:
        raise DistillError(f"the plan of {plan.spec.path} declares no `distill`; add a distill statement to the spec")
    processes = process_state().num_processes
    if processes > 1 and options.get("gate") is None:
        raise DistillError("under accelerate launch, run `hpspec distill` (compile's other stages run in one process)")
    if plan.distill.batch % processes:
        raise DistillError(f"distill batch={plan.distill.batch} does not divide over {processes} processes")
    # Cheap checks first (headers, manifest, table), then the weights.
    teacher_dir = _teacher_dir(options)
    source = open_teacher(teacher_dir, plan)
    graph, family = source.graph, Family(source.graph.family, dict(source.config))
    data = open_data(str(options["data"]))
    check_fits(data, family.name, family.config, f"--data {options['data']}")
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
        run_key(given, teacher_dir, table_path if table is not None else None, str(options["data"])),
        teacher_dir, table_path if table is not None else None,
        stop_after=options.get("stop_after"), checkpoint_every=int(options.get("checkpoint_every") or DEFAULT_CHECKPOINT_EVERY),
        progress=given.progress, frozen_by_guidance=frozen,
    )  # fmt: skip
    return lambda tmp: _write(job, given, tmp)


def _teacher_dir(options: Mapping[str, Any]) -> Path:
    from hpspec.stages.engine import resolve_model

    teacher = options.get("teacher")
    if teacher is None:
        raise DistillError("distill needs the original model as its teacher: --teacher DIR (compile passes --model)")
    return resolve_model(str(teacher))


def _table_path(plan: Plan, options: Mapping[str, Any]) -> Path | None:
    """--sensitivity wins; else the spec's `table=`, read relative to the spec (as `check` does)."""
    assert plan.distill is not None
    if options.get("sensitivity") is not None:
        return Path(str(options["sensitivity"]))
    if plan.distill.table is None:
        return None
    return Path(plan.spec.path).parent / plan.distill.table


def _freeze_guided(student: "nn.Module", guide: "Guidance") -> list[str]:
    """SGDistill binary: parameters under a scale-0 path stop requiring gradients."""
    from hpspec.method.sgdistill import frozen_by

    names = frozen_by((n for n, p in student.named_parameters() if p.requires_grad), guide)
    for name in names:
        student.get_parameter(name).requires_grad_(False)
    return names


def _write(job: Job, given: StageInput, tmp: Path) -> dict[str, Any]:
    gate = given.options.get("gate")
    if gate is not None:
        gate.open()
    out = Path(given.options["out"]) if given.options.get("out") else _stage_out(tmp)
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
    (tmp / CARD_NAME).write_text(distill_card(job.plan, job.teacher_dir, outcome, job.guide), encoding="utf-8")
    shutil.rmtree(checkpoint_root(out), ignore_errors=True)
    return _provenance(job, outcome, files, scales)


def _stage_out(tmp: Path) -> Path:
    """The output path a temporary sibling (`.NAME.hpspec-tmp-` and a random suffix) will be renamed to."""
    from hpspec.core.io import TMP_MARKER

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
        "recipe": {**asdict(job.distill), "optimizer": "AdamW", "betas": list(BETAS), "weight_decay": WEIGHT_DECAY, "clip_norm": CLIP_NORM,
                   "timesteps": "logit-normal(0, 1)"},  # fmt: skip
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
    given = replace(given, options={**given.options, "out": str(out)})
    step = stage("distill")
    state = process_state()
    if state.num_processes == 1:
        return run_stage(step, given, out, force)
    gate = Gate()
    given = replace(given, options={**given.options, "gate": gate})
    if state.is_main_process:
        try:
            return run_stage(step, given, out, force)
        finally:
            gate.close()
    if Gate.wait():
        writer = prepare_distill(given)
        with tempfile.TemporaryDirectory(prefix=f".{out.name}.rank{os.getpid()}-") as scratch:
            writer(Path(scratch))
    return None


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
) -> StageResult:
    """Distil a pruned demo checkpoint (`OUT/<method>/pruned`) against the demo on its digits.

    The pruned directory's plan gives the freeze set; its distill settings (or the reference
    recipe's, when the spec has none) are replaced by these. Returns the stage's result; its
    provenance holds the loss curve.
    """
    from hpspec.plan.check import DISTILL_OPTIONS
    from hpspec.plan.schema import load_plan_file
    from hpspec.stages.engine import resolve_model

    plan = load_plan_file(Path(pruned) / PLAN_NAME)
    base = plan.distill or DistillPlan(**{k: o.default for k, o in DISTILL_OPTIONS.items()})  # type: ignore[arg-type]
    settings = replace(base, steps=steps, lr=lr, batch=batch, weight=weight, mode=mode, table=None, seed=seed)
    plan = replace(plan, distill=settings)
    options = {"data": "demo", "teacher": str(resolve_model("demo")), "sensitivity": str(table) if table else None, "report": False}
    result = run_distill(StageInput(plan, Path(pruned), options, progress), Path(out), force)
    assert result is not None  # one process
    return result

