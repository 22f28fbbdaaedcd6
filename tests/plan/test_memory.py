"""Training memory (`hpspec plan --train-gpus`): parameter-state bytes against a live model's count.

The tiny model is pruned by `hpspec.apply`, which also sets the plan's freeze set (PWP) as
`requires_grad` flags; the test counts parameters and trainable parameters itself and writes the
bytes per parameter from the formulas in docs/distill.md (bf16: weights 2, grads 2, fp32 master 4,
AdamW m + v 8; fp32: 4, 4, 0, 8), then the ZeRO/FSDP sharding by hand.
"""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

from hpspec.core.errors import UsageError  # noqa: E402
from hpspec.model.graph import graph_from_module  # noqa: E402
from hpspec.plan.memory import STRATEGIES, memory_report, training_memory  # noqa: E402
from hpspec.weights.prune import apply  # noqa: E402
from tests.tiny_models import build, isolated, plan_for  # noqa: E402

SPECS = {
    "sd3": "drop block[3]\ndrop block[1].context_mlp\npreserve auto\n",
    "flux": "drop single_blocks[2]\ndrop double_blocks[1].mlp\npreserve auto\n",
}
BYTES = {"bf16": (2, 2, 4 + 8), "fp32": (4, 4, 0 + 8)}  # weights, grads, master + Adam m, v


@pytest.fixture(autouse=True, scope="module")
def _isolated(tmp_path_factory: pytest.TempPathFactory) -> object:
    with isolated(tmp_path_factory.mktemp("cache")):
        yield


def _ceil(a: int, b: int) -> int:
    return -(-a // b)


@pytest.mark.parametrize("kind", sorted(SPECS))
def test_parameter_states_equal_a_live_count(kind: str) -> None:
    teacher = build(kind)
    graph = graph_from_module(teacher)
    teacher_params = sum(p.numel() for p in teacher.parameters())
    plan = plan_for(teacher, SPECS[kind])
    student = apply(plan, build(kind))  # prunes and applies the plan's freeze set (requires_grad)
    student_params = sum(p.numel() for p in student.parameters())
    trainable = sum(p.numel() for p in student.parameters() if p.requires_grad)
    assert 0 < trainable < student_params < teacher_params  # PWP froze something, the spec removed something
    for precision, (weight, grad, optimizer) in BYTES.items():
        for gpus in (1, 3, 8):
            for strategy in STRATEGIES:
                memory = training_memory(plan, graph, gpus, strategy, batch=2, precision=precision)
                shard_weights = strategy in ("zero3", "fsdp")
                shard_states = strategy != "ddp"
                assert memory.teacher == weight * teacher_params
                assert memory.student_weights == weight * (
                    _ceil(student_params, gpus) if shard_weights else student_params
                )
                assert memory.gradients == grad * (_ceil(trainable, gpus) if shard_states else trainable)
                assert memory.optimizer == optimizer * (_ceil(trainable, gpus) if shard_states else trainable)


def test_activation_estimate_from_shapes() -> None:
    model = build("sd3")
    graph = graph_from_module(model)
    plan = plan_for(model, "drop block[3]\n")
    width = model.transformer_blocks[0].attn.to_q.out_features
    blocks = len(model.transformer_blocks) - 1
    size, patch = 128, model.config.patch_size
    tokens = (size // 8 // patch) ** 2 + 333  # image tokens at 128 px (VAE /8, patch 2) + SD3's padded text
    memory = training_memory(plan, graph, 2, "zero2", batch=3, size=size)
    assert memory.tokens == tokens
    assert memory.activations == 34 * tokens * width * 3 * blocks
    assert memory.total == sum(
        (memory.student_weights, memory.teacher, memory.gradients, memory.optimizer, memory.activations)
    )
    with pytest.raises(UsageError, match="multiple of 16"):
        training_memory(plan, graph, 2, "zero2", size=100)
    with pytest.raises(UsageError, match="at least 1"):
        training_memory(plan, graph, 0, "ddp")


def test_report_text_names_every_strategy_and_the_chosen_total() -> None:
    model = build("sd3")
    plan = plan_for(model, "drop block[3]\npreserve auto\n")
    text = memory_report(plan, graph_from_module(model), 4, "zero3", batch=1, size=128)
    chosen = training_memory(plan, graph_from_module(model), 4, "zero3", batch=1, size=128)
    assert f"total per GPU: {chosen.total / 1e9:.2f} GB" in text
    table = text.split("strategy")[-1]
    assert all(f"\n{s} " in table for s in STRATEGIES)


def test_cli_plan_prints_memory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from hpspec.cli.app import main

    spec = Path(__file__).parents[2] / "specs" / "sd3.5-large-turbo" / "moderate.hps"
    assert main(["plan", str(spec), "--train-gpus", "8", "--strategy", "zero2", "--batch", "4", "--size", "1024"]) == 0
    out = capsys.readouterr().out
    assert "training memory (zero2, 8 GPUs, batch 4 per GPU" in out
    assert "total per GPU:" in out and "\nfsdp " in out
    assert main(["plan", str(spec), "--train-gpus", "8", "--size", "1000"]) == 2  # a usage error
    assert "error: --size must be a positive multiple of 16" in capsys.readouterr().err
