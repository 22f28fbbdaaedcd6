"""objective: the distillation loss (METHOD §6), and how a family's transformer is called.

Teacher and student see the same noisy latents x_t = (1 - σ) x0 + σ ε (SD3's convention: the model
predicts v = ε - x0 at timestep 1000 σ). The loss is

    output · MSE(v_student, v_teacher)
  + features · Σ_blocks Σ_streams MSE(student block output, teacher block output)
  + task · MSE(v_student, ε - x0)

where the blocks are the kept blocks with trainable parameters, each matched to the teacher's block
it came from (the plan's index map).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from hpspec.method.sgdistill import kept_blocks
from hpspec.model.arch import architecture
from hpspec.model.families.flux import image_ids, pack_latents
from hpspec.plan.plan import DistillPlan, Plan
from hpspec.plan.quantize_layout import under

if TYPE_CHECKING:
    import torch
    from accelerate import Accelerator
    from torch import nn

    from hpspec.method.distill.data import Batch
    from hpspec.method.distill.draws import Draws

FLUX_GUIDANCE = 3.5  # the guidance value a guidance-distilled FLUX (dev) is run at
PRECISE_INPUTS = ("timestep", "guidance", "img_ids", "txt_ids")  # embedded in fp32 by diffusers; bf16 would round them


# --------------------------------------------------------------------------------------------
# The models and how a family's transformer is called


@dataclass(frozen=True)
class Family:
    """How one model family lays out latents and is called."""

    name: str
    config: Mapping[str, Any]

    def layout(self, latents: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> what the transformer takes: FLUX packs 2x2 patches into tokens ([latents] pack)."""
        return pack_latents(latents, architecture(self.name).latents.pack)

    def inputs(self, x: torch.Tensor, sigma: torch.Tensor, batch: Batch, height: int, width: int) -> dict[str, Any]:
        common = {
            "hidden_states": x,
            "encoder_hidden_states": batch.states,
            "pooled_projections": batch.pooled,
            "return_dict": False,
        }
        if self.name != "flux":
            return {**common, "timestep": sigma * 1000}
        import torch

        extra: dict[str, Any] = {
            "timestep": sigma,  # FLUX scales by 1000 inside
            "img_ids": image_ids(height, width, architecture(self.name).latents.pack).to(x.device, x.dtype),
            "txt_ids": torch.zeros(batch.states.shape[1], 3, device=x.device, dtype=x.dtype),
        }
        if self.config.get("guidance_embeds"):
            extra["guidance"] = torch.full((x.shape[0],), FLUX_GUIDANCE, device=x.device, dtype=x.dtype)
        return {**common, **extra}


# --------------------------------------------------------------------------------------------
# Block outputs (feature distillation)


class Capture:
    """Forward hooks that keep the outputs of some blocks of a model during one forward pass."""

    def __init__(self, model: nn.Module, paths: Sequence[str]) -> None:
        self.outputs: dict[str, Any] = {}
        self.handles = [model.get_submodule(p).register_forward_hook(self._hook(p)) for p in paths]

    def _hook(self, path: str) -> Callable[..., None]:
        def keep(module: nn.Module, args: Any, output: Any) -> None:
            self.outputs[path] = output

        return keep

    def take(self) -> dict[str, Any]:
        outputs, self.outputs = self.outputs, {}
        return outputs


def feature_pairs(plan: Plan, trainable: Sequence[str]) -> list[tuple[str, str]]:
    """(student block path, teacher block path) for every kept block with trainable parameters."""
    pairs = []
    for block in kept_blocks(plan):
        if any(under(name, (block.path,)) for name in trainable):
            pairs.append((block.path, f"{plan.stacks[block.stack].module}.{block.old}"))
    return pairs


def _streams(output: Any) -> tuple[Any, ...]:
    """A block's outputs as a tuple: (encoder, hidden) for joint blocks, None where a stream ends."""
    return tuple(output) if isinstance(output, (tuple, list)) else (output,)


def feature_loss(
    student: Mapping[str, Any], teacher: Mapping[str, Any], pairs: Sequence[tuple[str, str]]
) -> torch.Tensor:
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
# The loss


class Teaching(Protocol):
    """What the loss reads of a run (the loop's `Job` is one): the settings, the family's calling
    convention, the frozen teacher and the feature pairs (student block, teacher block)."""

    @property
    def distill(self) -> DistillPlan: ...
    @property
    def family(self) -> Family: ...
    @property
    def teacher(self) -> nn.Module: ...
    @property
    def pairs(self) -> list[tuple[str, str]]: ...


def losses(job: Teaching, student: nn.Module, batch: Batch, draw: Draws, size: tuple[int, int], student_capture: Capture,
            teacher_capture: Capture, accelerator: Accelerator) -> dict[str, torch.Tensor]:  # fmt: skip
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
    terms["loss"] = (
        distill.output * terms.get("output", zero)
        + distill.features * terms.get("features", zero)
        + distill.task * terms["task"]
    )
    return terms


def _cast(inputs: Mapping[str, Any], dtype: torch.dtype) -> dict[str, Any]:
    """Latents and text in the teacher's dtype (a bf16 teacher beside an fp32 student on a GPU)."""
    import torch

    def cast(key: str, value: Any) -> Any:
        floating = isinstance(value, torch.Tensor) and value.is_floating_point()
        return value.to(dtype) if floating and key not in PRECISE_INPUTS else value

    return {key: cast(key, value) for key, value in inputs.items()}
