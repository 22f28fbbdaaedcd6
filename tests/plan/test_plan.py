"""plan: exact parameter and byte counts against diffusers models of the pruned shape; freeze sets."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from diffusers import FluxTransformer2DModel, SD3Transformer2DModel

from hpspec.model.arch import builtin_models
from hpspec.plan.check import check
from hpspec.model.graph import graph_from_builtin
from hpspec.lang.parse import parse
from hpspec.plan.compile import compile_plan
from hpspec.plan.front import plan_spec
from hpspec.plan.plan import Plan

from tests.conftest import REPO


def plan_of(source: str, target: str = "sd3.5-large-turbo") -> Plan:
    return compile_plan(check(parse(source), graph_from_builtin(target)))


def meta_params(name: str, **overrides: object) -> int:
    """Parameters of the built-in model rebuilt by diffusers with some config changed."""
    info = builtin_models()[name]
    cls = SD3Transformer2DModel if info.family == "sd3" else FluxTransformer2DModel
    config = {k: v for k, v in info.config.items() if not k.startswith("_")}
    with torch.device("meta"):
        model = cls(**{**config, **overrides})
    return sum(p.numel() for p in model.parameters())


def test_moderate_spec_keeps_about_78_9_percent() -> None:
    plan = plan_spec(REPO / "specs/sd3.5-large-turbo/moderate.hps")
    assert plan.params.after_prune == meta_params("sd3.5-large-turbo", num_layers=30)
    assert plan.kept_fraction == pytest.approx(0.789, abs=0.001)  # 78.85%
    assert plan.bytes.after_prune == 2 * plan.params.after_prune  # bf16
    assert plan.stacks["blocks"].dropped == [25, 26, 27, 28, 31, 32, 33, 34]
    assert plan.stacks["blocks"].index_map["29"] == 25 and plan.stacks["blocks"].index_map["37"] == 29
    assert plan.config == {"num_layers": 30}


def test_dropping_the_last_block_converts_the_new_last_one() -> None:
    plan = plan_of("drop block[37]")
    assert [op.kind for op in plan.ops] == ["drop_block", "convert_last_block"]
    convert = plan.ops[1]
    assert (convert.block, convert.new_index) == (36, 36)
    assert convert.modules == [
        "transformer_blocks.36.attn.to_add_out",
        "transformer_blocks.36.ff_context",
        "transformer_blocks.36.norm1_context.linear",
    ]
    # Exactly the model diffusers builds with one layer fewer (its last block context-pre-only).
    assert plan.params.after_prune == meta_params("sd3.5-large-turbo", num_layers=37)


def test_dual_attention_layers_are_renumbered() -> None:
    plan = plan_of("drop blocks[2, 20]", "sd3.5-medium")
    assert plan.config == {"num_layers": 22, "dual_attention_layers": list(range(12))}
    expected = meta_params("sd3.5-medium", num_layers=22, dual_attention_layers=tuple(range(12)))
    assert plan.params.after_prune == expected


def test_flux_single_block_drops() -> None:
    plan = plan_spec(REPO / "specs/flux.1-schnell/example.hps")
    single = plan.stacks["single_blocks"]
    assert (single.before, single.after) == (38, 30)
    ff_context = 3072 * 12288 + 12288 + 12288 * 3072 + 3072  # Linear(3072 -> 4x) and back, with biases
    assert plan.params.after_prune == meta_params("flux.1-schnell", num_single_layers=30) - 2 * ff_context
    assert plan.config == {"num_single_layers": 30}


def test_part_drops_remove_what_diffusers_holds_in_those_modules() -> None:
    plan = plan_of("drop block[3].attn", "sd3.5-medium")
    attn, attn2 = plan.ops  # in a dual-attention block, attn takes attn2 along (the reference's rule)
    assert (attn.part, attn.modules, attn.reason) == ("attn", ["transformer_blocks.3.attn"], "spec")
    assert (attn2.part, attn2.modules, attn2.reason) == ("attn2", ["transformer_blocks.3.attn2"], "with_attn")
    with torch.device("meta"):
        info = builtin_models()["sd3.5-medium"]
        model = SD3Transformer2DModel(**{k: v for k, v in info.config.items() if not k.startswith("_")})
    block = model.transformer_blocks[3]
    assert attn.params == sum(p.numel() for p in block.attn.parameters())
    assert attn2.params == sum(p.numel() for p in block.attn2.parameters())
    by_kind = plan.params.by_part_kind
    assert by_kind["attn2"].before - by_kind["attn2"].after == attn2.params
    assert plan.params.before - plan.params.after_prune == attn.params + attn2.params


def test_same_meaning_same_ops_and_deterministic_json() -> None:
    a = plan_of("drop blocks[25:29]\ndrop block[22].context_mlp\npreserve auto")
    b = plan_of("preserve auto;drop block[22].context_mlp  # why\ndrop blocks[25, 26, 27, 28]")
    assert a.ops == b.ops and a.freeze == b.freeze and a.params == b.params
    assert plan_of("drop blocks[25:29]").to_json() == plan_of("drop blocks[25:29]").to_json()
    assert json.loads(a.to_json())["schema_version"] == 1


def test_preserve_auto_freezes_everything_before_the_first_removal() -> None:
    plan = plan_spec(REPO / "specs/sd3.5-large-turbo/moderate.hps")
    blocks = [f"transformer_blocks.{i}" for i in range(30)]
    assert plan.freeze.rule == "auto"
    assert plan.freeze.frozen == ["pos_embed", "time_text_embed", "context_embedder", *blocks[:25]]
    assert plan.freeze.trainable == [*blocks[25:], "norm_out", "proj_out"]
    assert plan.freeze.frozen_params + plan.freeze.trainable_params == plan.params.after_prune


def test_preserve_auto_inside_a_block_splits_it_at_the_removed_part() -> None:
    plan = plan_of("drop block[22].attn\ndrop blocks[30]\npreserve auto")
    assert plan.freeze.frozen[-3:] == [
        "transformer_blocks.21",
        "transformer_blocks.22.norm1.linear",
        "transformer_blocks.22.norm1_context.linear",
    ]
    assert plan.freeze.trainable[:3] == ["transformer_blocks.22.ff", "transformer_blocks.22.ff_context", "transformer_blocks.23"]
    # A block whose only unfrozen part is the dropped one is frozen whole.
    whole = plan_of("drop block[22].context_mlp\npreserve auto")
    assert (whole.freeze.frozen[-1], whole.freeze.trainable[0]) == ("transformer_blocks.22", "transformer_blocks.23")


def test_explicit_preserve_replaces_auto_unless_auto_is_written() -> None:
    explicit = plan_of("drop blocks[30]\npreserve blocks[0:2], \"context_embedder\"")
    assert explicit.freeze.rule == "explicit"
    assert explicit.freeze.frozen == ["context_embedder", "transformer_blocks.0", "transformer_blocks.1"]
    both = plan_of("drop blocks[30]\npreserve auto, block[35]")
    assert both.freeze.rule == "auto+explicit"
    assert "transformer_blocks.34" in both.freeze.frozen  # old 35, renumbered
    nothing = plan_of("drop blocks[30]")
    assert (nothing.freeze.rule, nothing.freeze.frozen) == ("none", [])
    assert nothing.freeze.trainable_params == nothing.params.after_prune


def test_quantize_exceptions_are_renumbered_module_paths() -> None:
    plan = plan_of('drop blocks[2]\nquantize nf4 except block[5].attn, "transformer_blocks.7.ff", "proj_out"')
    assert plan.quantize is not None
    assert plan.quantize.except_modules == ["transformer_blocks.4.attn", "transformer_blocks.6.ff", "proj_out"]
    assert (plan.quantize.scheme, plan.quantize.backend, plan.quantize.compute) == ("nf4", "bitsandbytes", "bf16")


def test_distill_defaults_are_the_reference_recipe() -> None:
    plan = plan_of("drop blocks[30]\ndistill steps=10")
    assert plan.distill is not None
    assert (plan.distill.steps, plan.distill.lr, plan.distill.batch) == (10, 1e-4, 64)
    assert (plan.distill.output, plan.distill.features, plan.distill.task) == (1.0, 1e-4, 0.0)


def test_json_schema_in_docs_is_current() -> None:
    from hpspec.plan.schema import plan_json_schema

    documented = json.loads((REPO / "docs/plan-schema.json").read_text())
    assert documented == plan_json_schema(), "regenerate with: python -m hpspec.plan.schema > docs/plan-schema.json"


def test_plans_validate_against_their_schema() -> None:
    from hpspec.plan.schema import load_plan

    plan = plan_spec(REPO / "specs/sd3.5-large-turbo/moderate.hps")
    assert load_plan(plan.to_json()) == plan
