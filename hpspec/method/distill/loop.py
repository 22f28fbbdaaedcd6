"""loop: the training loop of the distill stage, PWP and SGDistill on accelerate (METHOD §6).

The teacher is the original transformer, frozen, in eval mode; the student is the pruned one as the
prune stage wrote it, nothing re-initialised. PWP is the plan's freeze set: frozen parameters are
not given to the optimiser, so they get no state, no weight decay and never change. SGDistill
(`hpspec.method.sgdistill`) freezes more (`mode=binary`) or sets a learning rate per block
(`mode=inverse`): one optimiser group per scale. AdamW (0.9, 0.999), weight decay 1e-4, constant
learning rate, gradient clipping at 1.0; bf16 autocast when a GPU is present.

The same code runs in one process, under `accelerate launch` on CPUs, or on GPUs (DDP; FSDP and
DeepSpeed through accelerate's config); the draws (`draws`) make N processes see what one sees.
The loss is `objective`, checkpoints `checkpoints`; the stage around it is `hpspec.stages.distill`.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hpspec.core.errors import DistillError, DistillStopped
from hpspec.method.distill.checkpoints import resume, save_checkpoint
from hpspec.method.distill.data import Batch, DistillData
from hpspec.method.distill.draws import draws
from hpspec.method.distill.objective import Capture, Family, losses
from hpspec.method.sgdistill import Guidance, groups
from hpspec.plan.plan import DistillPlan, Plan

if TYPE_CHECKING:
    import torch
    from accelerate import Accelerator, PartialState
    from torch import nn

BETAS = (0.9, 0.999)
WEIGHT_DECAY = 1e-4
CLIP_NORM = 1.0
DEFAULT_CHECKPOINT_EVERY = 500


@dataclass(frozen=True)
class Job:
    """Everything one run needs; built by the stage's `prepare_distill` (every check) before
    anything is written."""

    plan: Plan
    distill: DistillPlan
    student: nn.Module
    teacher: nn.Module
    family: Family
    data: DistillData
    guide: Guidance
    pairs: list[tuple[str, str]]
    run_key: str
    teacher_dir: Path
    table: Path | None
    stop_after: int | None = None
    checkpoint_every: int = DEFAULT_CHECKPOINT_EVERY
    progress: bool = True
    frozen_by_guidance: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Outcome:
    """What a run did: steps, where it resumed, speed, the loss curve, where it ran."""

    steps_run: int
    resumed_from: int
    seconds_per_step: float | None
    curve: list[dict[str, float]]
    processes: int
    mixed_precision: str
    device: str


def make_accelerator(distill: DistillPlan) -> Accelerator:
    """bf16 autocast on a GPU unless accelerate's config says otherwise; fp32 on CPUs."""
    import torch
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs

    precision = os.environ.get("ACCELERATE_MIXED_PRECISION") or ("bf16" if torch.cuda.is_available() else "no")
    # Without an output or a task loss, norm_out and proj_out get no gradient: DDP must allow that.
    unused = distill.output == 0 and distill.task == 0
    handlers = [DistributedDataParallelKwargs(find_unused_parameters=unused)]
    return Accelerator(cpu=not torch.cuda.is_available(), mixed_precision=precision, kwargs_handlers=handlers)


def process_state() -> PartialState:
    """This process's place among those `accelerate launch` (or torchrun) started.

    Without a GPU the state must be asked for on CPUs, else accelerate sees one process per launch:
    `accelerate launch --multi_gpu --num_processes N` (torchrun underneath) then gives N gloo
    processes. (`accelerate launch --cpu --num_processes N` starts one process unless it is given
    an MPI hostfile.)
    """
    import torch
    from accelerate import PartialState

    return PartialState(cpu=not torch.cuda.is_available())


def optimizer_for(student: nn.Module, guide: Guidance, lr: float) -> torch.optim.Optimizer:
    """AdamW over the trainable parameters only, one group per update scale (lr · scale)."""
    import torch

    params = dict(student.named_parameters())
    trainable = [n for n, p in params.items() if p.requires_grad]
    grouped = groups(trainable, guide)
    if not grouped:
        raise DistillError("nothing to train: every parameter is frozen (by `preserve` and SGDistill)")
    param_groups = [
        {"params": [params[n] for n in names], "lr": lr * scale, "hpspec_scale": scale}
        for scale, names in grouped.items()
    ]
    return torch.optim.AdamW(param_groups, lr=lr, betas=BETAS, weight_decay=WEIGHT_DECAY)


def train(job: Job, accelerator: Accelerator, checkpoints: Path) -> tuple[Outcome, nn.Module]:
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
    start, curve = resume(checkpoints, accelerator)
    trainable = [p for p in student.parameters() if p.requires_grad]
    _, height, width = job.data.shapes.latent
    window = _Window()
    log_every = max(1, distill.steps // 100)
    bar = _progress_bar(job, accelerator, start)
    began = time.monotonic()
    for step in range(start, distill.steps):
        draw = draws(
            distill.seed, step, distill.batch, len(job.data), job.data.shapes.latent, job.data.unconditional_fraction
        )
        mine = draw.slice(rank * local, (rank + 1) * local)
        batch = _to(job.data.batch(mine.rows, mine.uniform, mine.unconditional), accelerator.device)
        terms = losses(job, student, batch, mine, (height, width), student_capture, teacher_capture, accelerator)
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
            save_checkpoint(accelerator, checkpoints, step + 1, curve, job.run_key)
            bar.close()
            raise DistillStopped(
                f"stopped at step {step + 1} of {distill.steps} (--stop-after {job.stop_after}); "
                f"the checkpoint is in {checkpoints}; the same command again resumes from it"
            )
        if (step + 1) % job.checkpoint_every == 0 and step + 1 < distill.steps:
            save_checkpoint(accelerator, checkpoints, step + 1, curve, job.run_key)
    bar.close()
    ran = distill.steps - start
    seconds = (time.monotonic() - began) / ran if ran else None
    device = str(accelerator.device)
    return Outcome(ran, start, seconds, curve, world, str(accelerator.mixed_precision), device), student


def _to(batch: Batch, device: torch.device) -> Batch:
    return Batch(batch.latents.to(device), batch.states.to(device), batch.pooled.to(device))


class _Window:
    """Loss terms summed since the last log line; their mean over steps and processes."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.count = 0

    def add(self, terms: Mapping[str, torch.Tensor]) -> None:
        for name, value in terms.items():
            self.sums[name] = self.sums.get(name, 0.0) + float(value.detach())
        self.count += 1

    def mean(self, accelerator: Accelerator) -> dict[str, float]:
        import torch

        names = sorted(self.sums)
        local = torch.tensor([self.sums[n] / self.count for n in names], device=accelerator.device)
        reduced = accelerator.reduce(local, reduction="mean") if accelerator.num_processes > 1 else local
        self.sums, self.count = {}, 0
        return {n: float(v) for n, v in zip(names, reduced.tolist())}


def _progress_bar(job: Job, accelerator: Accelerator, start: int) -> Any:
    from tqdm.auto import tqdm

    enabled = job.progress and accelerator.is_main_process
    return tqdm(total=job.distill.steps, initial=start, desc="distill", unit="step", disable=not enabled, leave=False)


def _fix_deepspeed_batch(accelerator: Accelerator, local: int) -> None:
    """DeepSpeed wants its micro-batch size even without a data loader."""
    plugin = getattr(accelerator.state, "deepspeed_plugin", None)
    if plugin is not None:
        plugin.deepspeed_config["train_micro_batch_size_per_gpu"] = local
        plugin.deepspeed_config.setdefault("gradient_clipping", CLIP_NORM)
