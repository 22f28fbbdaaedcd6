"""LoRA adapters through a plan (`hpspec.weights.lora`), against diffusers' and peft's own code.

A LoRA is made with peft on the full tiny model and saved with diffusers' `save_lora_weights`.
(a) diffusers loads it into the full model and fuses it, then `hpspec.apply` prunes; (b) the full
model is pruned, hpspec remaps the LoRA, diffusers loads the remapped file into the pruned model
and fuses it. Both outputs must agree; the naive route (the un-remapped LoRA into the pruned model)
must not. kohya and original-layout files are made by this file's own converter, written from the
documented reference names (not hpspec's key maps), and read back by this file's inverse converter
(diffusers' own kohya FLUX converter assumes FLUX.1's full widths, so it cannot read a tiny model's).
"""

from __future__ import annotations

import hashlib
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
    "sd35m": "drop blocks[0], blocks[5], block[1].attn2, block[3].context_mlp",  # block 2 (dual) -> 1
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
    if kind == "sd35m":  # old block 2's second attention is block 1's now; old block 1's (dropped part) is gone
        names = set(load_file(out))
        assert "transformer.transformer_blocks.1.attn2.to_q.lora_A.weight" in names
        assert not any(".transformer_blocks.0.attn2." in k for k in names)
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
    assert meta["hpspec_adapter_sha256"] == hashlib.sha256(loras[kind].read_bytes()).hexdigest()
    assert meta["hpspec_plan_sha256"] == plan.sha256


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


# --------------------------------------------------------------------------------------------
# kohya and the original layouts, converted by this file from the reference names (Stability AI's
# SD3 `joint_blocks`, Black Forest Labs' FLUX `double_blocks`/`single_blocks`); a fused module's
# LoRA is the exact fusion of its pieces' LoRAs: down weights stacked, up weights block-diagonal.

SAI_BLOCK = {
    "x_block.attn.qkv": ("attn.to_q", "attn.to_k", "attn.to_v"),
    "context_block.attn.qkv": ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"),
    "x_block.attn.proj": ("attn.to_out.0",),
    "x_block.adaLN_modulation.1": ("norm1.linear",),
    "x_block.mlp.fc1": ("ff.net.0.proj",),
    "x_block.mlp.fc2": ("ff.net.2",),
    "context_block.attn.proj": ("attn.to_add_out",),
    "context_block.adaLN_modulation.1": ("norm1_context.linear",),  # the last block's: (shift, scale)
    "context_block.mlp.fc1": ("ff_context.net.0.proj",),
    "context_block.mlp.fc2": ("ff_context.net.2",),
    "x_block.attn2.qkv": ("attn2.to_q", "attn2.to_k", "attn2.to_v"),
    "x_block.attn2.proj": ("attn2.to_out.0",),
}
BFL_DOUBLE = {
    "img_mod.lin": ("norm1.linear",),
    "txt_mod.lin": ("norm1_context.linear",),
    "img_attn.qkv": ("attn.to_q", "attn.to_k", "attn.to_v"),
    "txt_attn.qkv": ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"),
    "img_attn.proj": ("attn.to_out.0",),
    "txt_attn.proj": ("attn.to_add_out",),
    "img_mlp.0": ("ff.net.0.proj",),
    "img_mlp.2": ("ff.net.2",),
    "txt_mlp.0": ("ff_context.net.0.proj",),
    "txt_mlp.2": ("ff_context.net.2",),
}
BFL_SINGLE = {
    "modulation.lin": ("norm.linear",),
    "linear1": ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp"),
    "linear2": ("proj_out",),
}
STACKS = {
    "sd3": [("joint_blocks", "transformer_blocks", "num_layers", SAI_BLOCK)],
    "flux": [
        ("double_blocks", "transformer_blocks", "num_layers", BFL_DOUBLE),
        ("single_blocks", "single_transformer_blocks", "num_single_layers", BFL_SINGLE),
    ],
}


def _swapped(kind: str, config: Any, i: int, name: str) -> bool:
    return kind == "sd3" and i == config["num_layers"] - 1 and name == "context_block.adaLN_modulation.1"


def _halves(up: torch.Tensor) -> torch.Tensor:
    half = up.shape[0] // 2
    return torch.cat([up[half:], up[:half]])


def _stem(style: str, name: str) -> str:
    return "lora_unet_" + name.replace(".", "_") if style == "kohya" else "diffusion_model." + name


def to_original_layout(lora: Path, kind: str, model: torch.nn.Module, style: str, out: Path) -> Path:
    """A diffusers LoRA as a kohya file (lora_down/lora_up/alpha) or a `diffusion_model.` file (scale baked in)."""
    state, scale = load_file(lora), ALPHA / RANK
    written: dict[str, torch.Tensor] = {}
    family = "flux" if kind == "flux" else "sd3"
    for original, diffusers, count, table in STACKS[family]:
        for i in range(model.config[count]):
            for name, parts in table.items():
                stems = [f"transformer.{diffusers}.{i}.{p}" for p in parts]
                if not any(f"{s}.lora_A.weight" in state for s in stems):
                    continue
                down = torch.cat([state[f"{s}.lora_A.weight"] for s in stems])
                up = torch.block_diag(*[state[f"{s}.lora_B.weight"] for s in stems])
                up = _halves(up) if _swapped(family, model.config, i, name) else up
                stem = _stem(style, f"{original}.{i}.{name}")
                if style == "kohya":
                    written |= {f"{stem}.lora_down.weight": down, f"{stem}.lora_up.weight": up}
                    written[f"{stem}.alpha"] = torch.tensor(scale * down.shape[0])
                else:
                    written |= {f"{stem}.lora_A.weight": down, f"{stem}.lora_B.weight": up * scale}
    save_file({k: v.contiguous() for k, v in written.items()}, out)
    return out


def from_original_layout(path: Path, kind: str, model: torch.nn.Module, style: str) -> dict[str, torch.Tensor]:
    """The inverse, for `model` (full or pruned): a diffusers state dict with the scale baked in."""
    state = load_file(path)
    sizes = {n: m.out_features for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    down_name, up_name = ("lora_down", "lora_up") if style == "kohya" else ("lora_A", "lora_B")
    family = "flux" if kind == "flux" else "sd3"
    out: dict[str, torch.Tensor] = {}
    for original, diffusers, count, table in STACKS[family]:
        for i in range(model.config[count]):
            for name, parts in table.items():
                stem = _stem(style, f"{original}.{i}.{name}")
                if f"{stem}.{down_name}.weight" not in state:
                    continue
                down, up = state.pop(f"{stem}.{down_name}.weight"), state.pop(f"{stem}.{up_name}.weight")
                if style == "kohya":
                    up = up * (state.pop(f"{stem}.alpha").item() / down.shape[0])
                up = _halves(up) if _swapped(family, model.config, i, name) else up
                offset = 0
                for part in parts:
                    size = sizes[f"{diffusers}.{i}.{part}"]
                    out[f"transformer.{diffusers}.{i}.{part}.lora_A.weight"] = down
                    out[f"transformer.{diffusers}.{i}.{part}.lora_B.weight"] = up[offset : offset + size]
                    offset += size
                assert offset == up.shape[0]
    assert not state, f"keys this converter did not read: {sorted(state)[:3]}"
    return out


@pytest.mark.parametrize(
    "kind,style", [("sd3", "kohya"), ("sd35m", "original"), ("flux", "original"), ("flux", "kohya")]
)
def test_remapped_original_layout_lora(kind: str, style: str, loras: dict[str, Path], tmp_path: Path) -> None:
    spec = CASES[kind] if kind != "flux" else "drop double_blocks[1], single_blocks[2], double_block[0].context_mlp"
    source = to_original_layout(loras[kind], kind, build(kind), style, tmp_path / f"{style}.safetensors")
    expected = forward(
        apply(plan_for(build(kind), spec), fused(build(kind), from_original_layout(source, kind, build(kind), style)))
    )
    out = remapped(kind, spec, source, tmp_path / "lora")
    assert all(k.startswith("lora_unet_" if style == "kohya" else "diffusion_model.") for k in load_file(out))
    model = pruned(kind, spec)
    got = forward(fused(model, from_original_layout(out, kind, model, style)))
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)
    # and the same function as the diffusers-format LoRA it was converted from
    torch.testing.assert_close(got, route_a(kind, spec, loras[kind]), atol=1e-4, rtol=1e-4)


def test_a_partly_kept_fused_module_needs_diffusers_names(loras: dict[str, Path], tmp_path: Path) -> None:
    spec = "drop single_block[0].mlp, double_blocks[1]"
    source = to_original_layout(loras["flux"], "flux", build("flux"), "kohya", tmp_path / "kohya.safetensors")
    with pytest.raises(LoraError, match=r"single_blocks\.0\.linear1.*--to diffusers"):
        remapped("flux", spec, source, tmp_path / "lora")
    out = remapped("flux", spec, source, tmp_path / "lora", to="diffusers")
    assert all(k.startswith("transformer.") and ".alpha" not in k for k in load_file(out))
    got = forward(fused(pruned("flux", spec), out))  # the alphas travel in peft's config (metadata)
    torch.testing.assert_close(got, route_a("flux", spec, loras["flux"]), atol=1e-4, rtol=1e-4)


def test_peft_prefix_and_no_prefix_give_the_same_tensors(loras: dict[str, Path], tmp_path: Path) -> None:
    state = load_file(loras["sd35m"])
    reference = load_file(remapped("sd35m", CASES["sd35m"], loras["sd35m"], tmp_path / "ref"))
    for prefix in ("base_model.model.", ""):
        source = tmp_path / f"p{len(prefix)}.safetensors"
        save_file({prefix + k.removeprefix("transformer."): v for k, v in state.items()}, source)
        out = load_file(remapped("sd35m", CASES["sd35m"], source, tmp_path / f"o{len(prefix)}"))
        assert out.keys() == {prefix + k.removeprefix("transformer.") for k in reference}
        assert all(torch.equal(out[prefix + k.removeprefix("transformer.")], v) for k, v in reference.items())


def test_an_adapter_for_another_model_is_refused(tmp_path: Path) -> None:
    save_file(
        {"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.ones(4, 8)}, tmp_path / "x.safetensors"
    )
    full = build("flux")
    with pytest.raises(
        LoraError, match=r"no key names a LoRA module of this flux model; the first is 'lora_unet_down_blocks"
    ):
        remap_adapters(
            plan_for(full, "drop double_blocks[1]"), graph_from_module(full), [tmp_path / "x.safetensors"], tmp_path
        )


def test_the_input_is_never_replaced(loras: dict[str, Path]) -> None:
    full = build("sd3")
    with pytest.raises(LoraError, match="would replace the input"):
        remap_adapters(
            plan_for(full, "drop blocks[1]"), graph_from_module(full), [loras["sd3"]], loras["sd3"].parent, force=True
        )
