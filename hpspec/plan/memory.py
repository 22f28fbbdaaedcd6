"""memory: what the distill stage holds per GPU, before anyone rents one (no torch).

Parameter-state terms are exact counts from the plan: the student's weights (every parameter
after pruning), the frozen teacher (every parameter before), and gradients, fp32 master copies
and AdamW's two moments for the TRAINABLE parameters only (the freeze set, PWP: a frozen block
holds no gradient and no optimizer state). ZeRO-2 shards gradients and optimizer states across the
GPUs, ZeRO-3 and FSDP (FULL_SHARD) the student's weights too. Activations are an ESTIMATE from the
FLOP model's shapes (tokens per image, the attention width, the student's blocks). docs/distill.md
has the formulas.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from hpspec.core.errors import UsageError
from hpspec.model.arch import architecture
from hpspec.model.flops import attention_width
from hpspec.model.graph import ModelGraph
from hpspec.plan.plan import Plan

STRATEGIES = ("ddp", "zero2", "zero3", "fsdp")
CARDS_GB = (24, 40, 80)
HEADROOM = 0.9  # a card "fits" when the total is at most 90% of it (CUDA context, allocator fragmentation)
VAE_DOWNSAMPLE = 8  # latent pixels per image pixel side, every SD3 and FLUX VAE
ACTIVATION_BYTES_PER_TOKEN_WIDTH = 34  # stored bytes per token x width x block (16-bit, flash attention)
GB = 10**9


@dataclass(frozen=True)
class Precision:
    """Bytes per parameter of each state."""

    name: str
    weight: int  # student and teacher weights
    grad: int  # gradient of a trainable parameter
    master: int  # fp32 master copy of a trainable parameter (0: the weights are fp32 already)
    adam: int  # AdamW's m and v, fp32 each


PRECISIONS = {
    "bf16": Precision("bf16", weight=2, grad=2, master=4, adam=8),  # bf16 weights, fp32 master (DeepSpeed's bf16)
    "fp32": Precision("fp32", weight=4, grad=4, master=0, adam=8),  # fp32 weights under autocast (hpspec's loop)
}
SHARDED = {  # strategy -> (student weights, gradients, master + optimizer) divided by the GPU count
    "ddp": (False, False, False),
    "zero2": (False, True, True),
    "zero3": (True, True, True),
    "fsdp": (True, True, True),
}


@dataclass(frozen=True)
class Memory:
    """Bytes per GPU of the distill stage under one strategy."""

    strategy: str
    gpus: int
    batch: int  # per GPU
    tokens: int  # image + text tokens per sample
    student_weights: int
    teacher: int
    gradients: int
    optimizer: int  # fp32 master + AdamW m, v
    activations: int  # an estimate

    @property
    def total(self) -> int:
        return self.student_weights + self.teacher + self.gradients + self.optimizer + self.activations

    def fits(self, card_gb: int) -> bool:
        return self.total <= HEADROOM * card_gb * GB


def image_tokens(graph: ModelGraph, size: int | None, default: int) -> int:
    """Tokens per image at `size` pixels a side (square); the FLOP model's default without one."""
    if size is None:
        return default
    per_token = VAE_DOWNSAMPLE * architecture(graph.family).latents.multiple_for(graph.config)
    if size <= 0 or size % per_token:
        raise UsageError(f"--size must be a positive multiple of {per_token} pixels for {graph.family}, got {size}")
    return (size // per_token) ** 2


def _share(count: int, sharded: bool, gpus: int) -> int:
    return -(-count // gpus) if sharded else count  # a shard rounds up


def training_memory(
    plan: Plan,
    graph: ModelGraph,
    gpus: int,
    strategy: str,
    batch: int | None = None,
    size: int | None = None,
    precision: str = "bf16",
) -> Memory:
    """The distill stage's bytes per GPU for `plan` on `gpus` GPUs under `strategy`."""
    if gpus < 1:
        raise UsageError(f"--train-gpus must be at least 1, got {gpus}")
    if strategy not in SHARDED:
        raise UsageError(f"--strategy must be one of {', '.join(STRATEGIES)}, got {strategy!r}")
    bytes_of = PRECISIONS[precision]
    weights_sharded, grads_sharded, optimizer_sharded = SHARDED[strategy]
    trainable = plan.freeze.trainable_params
    per_gpu = batch if batch is not None else (plan.distill.batch if plan.distill is not None else 1)
    if per_gpu < 1:
        raise UsageError(f"--batch must be at least 1, got {per_gpu}")
    default_tokens = plan.flops.image_tokens if plan.flops is not None else 0
    text = plan.flops.text_tokens if plan.flops is not None else 0
    tokens = image_tokens(graph, size, default_tokens) + text
    blocks = sum(stack.after for stack in plan.stacks.values())
    activations = ACTIVATION_BYTES_PER_TOKEN_WIDTH * tokens * attention_width(graph) * per_gpu * blocks
    return Memory(
        strategy=strategy,
        gpus=gpus,
        batch=per_gpu,
        tokens=tokens,
        student_weights=bytes_of.weight * _share(plan.params.after_prune, weights_sharded, gpus),
        teacher=bytes_of.weight * plan.params.before,
        gradients=bytes_of.grad * _share(trainable, grads_sharded, gpus),
        optimizer=(bytes_of.master + bytes_of.adam) * _share(trainable, optimizer_sharded, gpus),
        activations=activations,
    )


def _gb(count: int) -> str:
    return f"{count / GB:.2f}"


def memory_text(chosen: Memory, rows: Sequence[Memory], precision: str = "bf16") -> str:
    """`total per GPU: X GB` for the chosen strategy, its terms, and a table of every strategy."""
    fits = [f"{card} GB" for card in CARDS_GB if chosen.fits(card)]
    lines = [
        f"training memory ({chosen.strategy}, {chosen.gpus} GPU{'s' * (chosen.gpus != 1)}, batch {chosen.batch} "
        f"per GPU, {chosen.tokens} tokens per sample, {precision})",
        f"  student weights  {_gb(chosen.student_weights):>9} GB",
        f"  frozen teacher   {_gb(chosen.teacher):>9} GB",
        f"  gradients        {_gb(chosen.gradients):>9} GB  (trainable parameters only)",
        f"  optimizer        {_gb(chosen.optimizer):>9} GB  (fp32 master + AdamW m, v; trainable only)",
        f"  activations      {_gb(chosen.activations):>9} GB  (an estimate, see docs/distill.md)",
        f"total per GPU: {_gb(chosen.total)} GB",
        f"fits: {', '.join(fits) if fits else 'none of ' + '/'.join(str(c) for c in CARDS_GB) + ' GB'} cards",
        "",
        f"{'strategy':<9}{'weights':>9}{'teacher':>9}{'grads':>9}{'optim':>9}{'activ':>9}{'total':>9}  "
        + "  ".join(f"{card}GB" for card in CARDS_GB),
    ]
    for row in rows:
        marks = "  ".join(f"{'yes' if row.fits(card) else 'no':>4}" for card in CARDS_GB)
        terms = (row.student_weights, row.teacher, row.gradients, row.optimizer, row.activations, row.total)
        lines.append(f"{row.strategy:<9}" + "".join(f"{_gb(t):>9}" for t in terms) + f"  {marks}")
    lines.append("(GB = 10^9 bytes; a card fits at <= 90% of it)")
    return "\n".join(lines) + "\n"


def memory_report(
    plan: Plan,
    graph: ModelGraph,
    gpus: int,
    strategy: str,
    batch: int | None = None,
    size: int | None = None,
    precision: str = "bf16",
) -> str:
    """The text `hpspec plan --train-gpus N --strategy S` prints."""
    rows = [training_memory(plan, graph, gpus, s, batch, size, precision) for s in STRATEGIES]
    chosen = training_memory(plan, graph, gpus, strategy, batch, size, precision)
    return memory_text(chosen, rows, precision)
