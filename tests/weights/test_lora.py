"""LoRA adapters through a plan (`hpspec.weights.lora`), against diffusers' and peft's own code.

A LoRA is made with peft on the full tiny model and saved with diffusers' `save_lora_weights`.
(a) diffusers loads it into the full model and fuses it, then `hpspec.apply` prunes; (b) the full
model is pruned, hpspec remaps the LoRA, diffusers loads the remapped file into the pruned model
and fuses it. Both outputs must agree; the naive route (the un-remapped LoRA into the pruned model)
must not. kohya and original-layout files are made by this file's own converter, written from the
documented reference names (not hpspec's key maps), and read back by diffusers' kohya converter
(FLUX) or by this file's inverse converter.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")
pytest.importorskip("peft")

from safetensors.torch import load_file, save_file  # noqa: E402

from hpspec.core.errors import LoraError  # noqa: E402
from hpspec.model.graph import graph_from_module  # noqa: E402
from hpspec.weights.lora.run import remap_adapters, summary  # noqa: E402
from hpspec.weights.prune import apply  # noqa: E402
from tests.tiny_models import build, forward, isolated, plan_for  # noqa: E402

BLOCK_TARGETS = [
    "attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0", "attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj",
    "attn.to_add_out", "norm1.linear", "norm1_context.linear", "ff.net.0.proj", "ff.net.2", "ff_context.net.0.proj",
    "ff_context.net.2", "attn2.to_q", "attn2.to_k", "attn2.to_v", "attn2.to_out.0",
]  # fmt: skip
SINGLE_TARGETS = ["norm.linear", "proj_mlp", "proj_out"]
RANK, ALPHA = 4, 8
FILE = "pytorch_lora_weights.safetensors"

# Each case covers: block drops (renumbering), part drops, SD3's last-block conversion (dropping
# block 5 makes block 4 context-pre-only: its text modulation keeps 2 of 6 chunks), SD3.5 Medium's
# dual-attention renumbering, FLUX's two stacks.
CASES = {
    "sd3": "drop blocks[1], blocks[5], block[2].mlp, block[3].context_norm",
    "sd35m": "drop blocks[1], blocks[5], block[2].attn2, block[0].context_mlp",
    "flux": "drop double_blocks[1], single_blocks[2], double_block[0].context_mlp, single_block[0].mlp",
}


@pytest.fixture(autouse=True, scope="module")
def _isolated(tmp_path_factory: pytest.TempPathFactory) -> object:
    with isolated(tmp_path_factory.mktemp("cache")):
        yield


def pipeline_class(kind: str) -> Any:
    from diffusers import FluxPipeline, StableDiffusion3Pipeline

    return FluxPipeline if kind == "flux" else StableDiffusion3Pipeline


def make_lora(kind: str, directory: Path) -> Path:
    """A peft LoRA (random, non-zero B) on every Linear of the blocks, saved by diffusers."""
    from peft import LoraConfig, get_peft_model_state_dict

    model = build(kind)
    names = {n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    targets = [n for n in names if any(n.endswith("." + t) for t in BLOCK_TARGETS + SINGLE_TARGETS) and "blocks." in n]
    config = LoraConfig(r=RANK, lora_alpha=ALPHA, init_lora_weights=False, target_modules=sorted(targets))
    torch.manual_seed(7)
    model.add_adapter(config)
    with torch.no_grad():  # larger than peft's init, so that a misplaced module shows
        for name, parameter in model.named_parameters():
            if "lora_" in name:
                parameter.normal_(0.0, 0.3)
    state = get_peft_model_state_dict(model)
    pipeline_class(kind).save_lora_weights(
        directory, transformer_lora_layers=state, transformer_lora_adapter_metadata=config.to_dict()
    )
    return directory / FILE


def fused(model: torch.nn.Module, lora: Path | dict[str, torch.Tensor], **kwargs: Any) -> torch.nn.Module:
    """diffusers loads the LoRA into `model`, fuses it and removes the adapter layers."""
    if isinstance(lora, Path):
        model.load_lora_adapter(str(lora.parent), weight_name=lora.name, prefix="transformer", **kwargs)
    else:
        model.load_lora_adapter(lora, prefix="transformer", **kwargs)
    model.fuse_lora()
    model.unload_lora()
    return model


def route_a(kind: str, spec: str, lora: Path) -> torch.Tensor:
    model = fused(build(kind), lora)
    plan = plan_for(build(kind), spec)
    return forward(apply(plan, model))


def remapped(kind: str, spec: str, lora: Path, out: Path, to: str = "same") -> Path:
    full = build(kind)
    plan = plan_for(full, spec)
    return remap_adapters(plan, graph_from_module(full), [lora], out, to=to)[0].out


def pruned(kind: str, spec: str) -> torch.nn.Module:
    return apply(plan_for(build(kind), spec), build(kind))


@pytest.fixture(scope="module")
def loras(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return {kind: make_lora(kind, tmp_path_factory.mktemp(kind)) for kind in CASES}


@pytest.mark.parametrize("kind", list(CASES))
def test_remapped_diffusers_lora_equals_lora_then_prune(kind: str, loras: dict[str, Path], tmp_path: Path) -> None:
    spec, lora = CASES[kind], loras[kind]
    expected = route_a(kind, spec, lora)
    out = remapped(kind, spec, lora, tmp_path / "lora")
    got = forward(fused(pruned(kind, spec), out))
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)
    assert not torch.allclose(
        expected, route_a(kind, "drop blocks[1]" if kind != "flux" else "drop double_blocks[1]", lora)
    )
    # the naive route: the same LoRA, un-remapped, into the pruned model (what fits is loaded, as
    # diffusers and ComfyUI do with a warning for the rest)
    model = pruned(kind, spec)
    shapes = {n: p.shape for n, p in model.named_parameters()}
    naive = {
        k: v
        for k, v in load_file(lora).items()
        if shapes.get(k.removeprefix("transformer.").replace(".lora_A", "").replace(".lora_B", "")) is not None
        and _fits(k, v, shapes)
    }
    wrong = forward(fused(model, naive))
    assert (wrong - expected).abs().max() > 100 * max((got - expected).abs().max().item(), 1e-6)


def _fits(key: str, value: torch.Tensor, shapes: dict[str, torch.Size]) -> bool:
    weight = shapes[key.removeprefix("transformer.").replace(".lora_A", "").replace(".lora_B", "")]
    return value.shape[1] == weight[1] if ".lora_A." in key else value.shape[0] == weight[0]


def test_coverage_counts_and_norms(loras: dict[str, Path], tmp_path: Path) -> None:
    import json

    from safetensors import safe_open

    kind, spec = "sd3", CASES["sd3"]
    full = build(kind)
    plan = plan_for(full, spec)
    item = remap_adapters(plan, graph_from_module(full), [loras[kind]], tmp_path)[0]
    state = load_file(loras[kind])
    modules = {k.rsplit(".", 2)[0] for k in state if k.endswith("lora_A.weight")}
    scale = ALPHA / RANK

    def norm(stem: str, rows: slice = slice(None)) -> float:
        update = state[f"{stem}.lora_B.weight"].double() @ state[f"{stem}.lora_A.weight"].double() * scale
        return float(update[rows].norm())

    gone = [m for m in modules if ".transformer_blocks.1." in m or ".transformer_blocks.5." in m]
    gone += [m for m in modules if ".transformer_blocks.2.ff." in m or ".transformer_blocks.3.norm1_context." in m]
    gone += [m for m in modules if ".transformer_blocks.4." in m and (".ff_context." in m or ".to_add_out" in m)]
    total = sum(norm(m) for m in modules)
    trim = "transformer.transformer_blocks.4.norm1_context.linear"
    dim = state[f"{trim}.lora_B.weight"].shape[0] // 6
    lost = sum(norm(m) for m in gone) + norm(trim) - norm(trim, slice(0, 2 * dim))
    assert item.coverage.total.modules == len(modules)
    assert item.coverage.total.kept_modules == len(modules) - len(gone)
    assert item.coverage.total.norm_kept == pytest.approx(1 - lost / total, rel=1e-9)
    report = json.loads(item.coverage_path.read_text())
    assert report["total"]["kept_modules"] == len(modules) - len(gone)
    assert report["dropped_blocks"] == {"block": [1, 5]}
    assert f"{len(modules) - len(gone)} of {len(modules)} modules kept (blocks 1, 5 dropped)" in summary(item)
    with safe_open(item.out, "pt") as handle:
        meta = handle.metadata()
    with safe_open(loras[kind], "pt") as handle:
        assert json.loads(meta["lora_adapter_metadata"]) == json.loads(handle.metadata()["lora_adapter_metadata"])
    assert len(meta["hpspec_adapter_sha256"]) == 64 and meta["hpspec_plan_sha256"] == plan.sha256


def test_a_lora_for_another_width_names_the_module(loras: dict[str, Path], tmp_path: Path) -> None:
    state = load_file(loras["sd3"])
    key = "transformer.transformer_blocks.0.attn.to_q.lora_A.weight"
    state[key] = torch.zeros(RANK, 48)
    save_file(state, tmp_path / "wide.safetensors")
    full = build("sd3")
    with pytest.raises(LoraError, match=r"transformer_blocks\.0\.attn\.to_q.*another architecture or width"):
        remap_adapters(
            plan_for(full, "drop blocks[1]"), graph_from_module(full), [tmp_path / "wide.safetensors"], tmp_path / "o"
        )
    assert not (tmp_path / "o").exists()


def test_keys_it_cannot_place_are_kept_apart(loras: dict[str, Path], tmp_path: Path) -> None:
    state = load_file(loras["sd3"])
    text = {"text_encoder.text_model.encoder.layers.0.self_attn.q_proj.lora_A.weight": torch.ones(RANK, 32)}
    lokr = {"lora_unet_joint_blocks_2_x_block_attn_qkv.lokr_w1": torch.ones(2, 2)}
    save_file({**state, **text, **lokr}, tmp_path / "mixed.safetensors")
    full = build("sd3")
    item = remap_adapters(
        plan_for(full, "drop blocks[1]"), graph_from_module(full), [tmp_path / "mixed.safetensors"], tmp_path / "o"
    )[0]
    written = load_file(item.out)
    assert torch.equal(written[next(iter(text))], next(iter(text.values())))  # text encoder: applies unchanged
    assert next(iter(lokr)) not in written
    assert set(load_file(item.apart_path)) == set(lokr)
    assert item.coverage.apart == {next(iter(lokr)): "a LyCORIS (LoHa/LoKr) weight"}
