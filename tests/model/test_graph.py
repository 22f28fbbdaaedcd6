"""graph: exact parameter counts per part, against diffusers itself; four sources agree."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from diffusers import FluxTransformer2DModel, SD3Transformer2DModel

from hpspec.model.arch import architecture, builtin_models
from hpspec.core.errors import TargetError
from hpspec.model.graph import ModelGraph, graph_from_builtin, graph_from_config, graph_from_module
from hpspec.model.targets import graph_from_path

TINY_SD3 = dict(
    sample_size=16, patch_size=2, in_channels=4, num_layers=4, attention_head_dim=8, num_attention_heads=4,
    joint_attention_dim=32, caption_projection_dim=32, pooled_projection_dim=32, out_channels=4, pos_embed_max_size=16,
)  # fmt: skip
TINY = {
    "sd3": (SD3Transformer2DModel, TINY_SD3),
    "sd3.5-medium-layout": (SD3Transformer2DModel, {**TINY_SD3, "dual_attention_layers": (0, 1), "qk_norm": "rms_norm"}),
    "flux": (
        FluxTransformer2DModel,
        dict(patch_size=1, in_channels=16, num_layers=2, num_single_layers=3, attention_head_dim=16,
             num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32, guidance_embeds=True,
             axes_dims_rope=(4, 6, 6)),  # fmt: skip
    ),
}


def diffusers_part_count(model: torch.nn.Module, module_path: str, modules: tuple[str, ...]) -> int:
    """The parameters METHOD §3 says a part removes, counted by diffusers' own modules."""
    block = model.get_submodule(module_path)
    total = 0
    for name in modules:
        try:
            total += sum(p.numel() for p in block.get_submodule(name).parameters())
        except AttributeError:
            pass  # e.g. no attn2 in this block
    return total


def assert_graph_matches_model(graph: ModelGraph, model: torch.nn.Module) -> None:
    arch = architecture(graph.family)
    assert graph.params == sum(p.numel() for p in model.parameters())
    for block in graph.blocks:
        rules = arch.part_rules(block.kind)
        for part in block.parts:
            expected = diffusers_part_count(model, block.module, rules[part.word].modules)
            assert part.params == expected, (block.module, part.word)
        assert block.params == sum(p.numel() for p in model.get_submodule(block.module).parameters())


@pytest.mark.parametrize("layout", list(TINY))
def test_tiny_models_counts_and_four_sources_agree(layout: str, tmp_path: Path) -> None:
    cls, config = TINY[layout]
    torch.manual_seed(0)
    model = cls(**config)
    live = graph_from_module(model)
    assert_graph_matches_model(live, model)
    from_config = graph_from_config({"_class_name": cls.__name__, **config}, "tiny", "config:tiny", "F32")
    model.save_pretrained(tmp_path / "transformer")
    from_dir = graph_from_path(tmp_path / "transformer")
    from_pipeline_root = graph_from_path(tmp_path)
    from_file = graph_from_path(tmp_path / "transformer" / "diffusion_pytorch_model.safetensors")
    assert {g.fingerprint for g in (live, from_config, from_dir, from_pipeline_root, from_file)} == {live.fingerprint}
    assert from_dir.params == live.params and from_dir.nbytes == 4 * live.params


@pytest.mark.parametrize("name", list(builtin_models()))
def test_full_size_builtins_match_diffusers_on_meta(name: str) -> None:
    model_info = builtin_models()[name]
    cls = SD3Transformer2DModel if model_info.family == "sd3" else FluxTransformer2DModel
    with torch.device("meta"):
        model = cls(**{k: v for k, v in model_info.config.items() if not k.startswith("_")})
    graph = graph_from_builtin(name)
    assert_graph_matches_model(graph, model)
    assert graph.fingerprint == graph_from_module(model).fingerprint


def test_block_kinds_of_the_real_models() -> None:
    medium = graph_from_builtin("sd3.5-medium")
    kinds = [b.kind for b in medium.blocks]
    assert kinds == ["joint_dual"] * 13 + ["joint"] * 10 + ["context_pre_only"]
    assert medium.blocks[-1].words == ("norm", "context_norm", "attn", "mlp")
    flux = graph_from_builtin("flux.1-dev")
    assert [len(s) for s in flux.stacks] == [19, 38]
    assert flux.stacks[1].blocks[0].words == ("norm", "mlp", "attn")


def test_published_sizes() -> None:
    # SD3.5 Large: 8.06B transformer parameters; FLUX.1: 11.9B.
    assert graph_from_builtin("sd3.5-large").params == 8_056_627_520
    assert graph_from_builtin("flux.1-schnell").params == 11_891_178_560


def test_config_that_lies_about_the_layer_count(tmp_path: Path) -> None:
    cls, config = TINY["sd3"]
    cls(**config).save_pretrained(tmp_path)
    data = json.loads((tmp_path / "config.json").read_text())
    data["num_layers"] = 9
    (tmp_path / "config.json").write_text(json.dumps(data))
    with pytest.raises(Exception, match="num_layers=9 but the weights hold 4 blocks"):
        graph_from_path(tmp_path)


def test_unsupported_class_is_named(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"_class_name": "UNet2DConditionModel"}))
    with pytest.raises(TargetError, match="unsupported model class 'UNet2DConditionModel'"):
        graph_from_path(tmp_path)
