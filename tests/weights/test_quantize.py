"""The quantize stage on tiny SD3 and FLUX models (and the trained demo): layout, bytes, exactness.

Independent references: the back ends' own modules (bitsandbytes' Linear4bit / Linear8bitLt,
quanto's quantize + freeze) built here on the same weights, their own dequantization, a by-hand
decode of the 4-bit format, the Linears to quantize listed by hand, and diffusers' own save of the
same pruned model (its GPU check patched out).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any, Iterator

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from hpspec.plan.front import plan_spec
from hpspec.plan.plan import QuantizePlan
from hpspec.weights.load import load_pretrained
from hpspec.weights.prune import apply
from hpspec.weights.quantize import linears, quantize_model
from hpspec.plan.quantize_layout import payload_bytes, pruned_tensors, quantized_layout, weight_bytes
from hpspec.model.safetensors_header import read_header
from hpspec.plan.schema import load_plan
from hpspec.stages.pipeline import compile_model
from tests.tiny_models import FLUX_CONFIG, SD3_CONFIG, forward, inputs, isolated, plan_for

SCHEMES = ("nf4", "fp4", "int8", "int4")
# Drops that exercise every rewrite: a part, a whole block, the last block (conversion), and an exception.
SPECS = {
    "sd3": "drop block[5]\ndrop block[2].mlp, block[3].context_norm\nquantize {scheme} except block[1].attn, \"context_embedder\"\n",
    "flux": "drop single_block[1].mlp, double_block[0].context_mlp\nquantize {scheme} except single_block[2]\n",
}


@pytest.fixture(scope="module", autouse=True)
def _isolated(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    with isolated(tmp_path_factory.mktemp("cache")):
        yield


def gaussian(kind: str, seed: int = 0, std: float = 0.02) -> nn.Module:
    """A tiny model with Gaussian weights at a transformer's usual scale (what 4-bit formats are
    designed for); the shared tiny models' N(0, 0.2) makes the network chaotic on purpose."""
    from diffusers import FluxTransformer2DModel, SD3Transformer2DModel

    torch.manual_seed(seed)
    model = FluxTransformer2DModel(**FLUX_CONFIG) if kind == "flux" else SD3Transformer2DModel(**SD3_CONFIG)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.ndim >= 2:
                parameter.normal_(0.0, std)
    return model.eval()


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("sources")
    for kind in ("sd3", "flux"):
        gaussian(kind).save_pretrained(root / kind)
    return {kind: root / kind for kind in ("sd3", "flux")}


@pytest.fixture(scope="module")
def compiled(sources: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, str], Path]:
    """prune -> quantize through `compile` for every family and scheme."""
    root = tmp_path_factory.mktemp("compiled")
    out = {}
    for kind, source in sources.items():
        for scheme in SCHEMES:
            plan = plan_for(source, SPECS[kind].format(scheme=scheme))
            result = compile_model(plan, source, root / f"{kind}-{scheme}", progress=False)
            assert [r.stage for r in result.results] == ["prune", "quantize"]
            out[(kind, scheme)] = result.results[-1].out
    return out


def bf16(feed: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in feed.items()}


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm())


def data(directory: Path) -> dict[str, tuple[str, tuple[int, ...], int]]:
    return {e.name: (e.dtype, e.shape, e.nbytes) for f in directory.glob("*.safetensors") for e in read_header(f).tensors.values()}


# --------------------------------------------------------------------------------------------
# Layout and bytes: the plan predicts every written tensor


@pytest.mark.parametrize("kind", ["sd3", "flux"])
@pytest.mark.parametrize("scheme", SCHEMES)
def test_written_tensors_are_the_plans_prediction(compiled: dict, kind: str, scheme: str) -> None:
    out = compiled[(kind, scheme)]
    plan = load_plan((out / "plan.json").read_text())
    written = data(out)
    assert plan.quantize is not None and plan.quantize.scheme == scheme
    buffers = sum(n for name, (_, _, n) in written.items() if name == "pos_embed.pos_embed")
    assert sum(n for _, _, n in written.values()) - buffers == plan.bytes.after_quantize
    provenance = json.loads((out / "provenance.json").read_text())
    assert provenance["bytes"] == plan.bytes.after_quantize


@pytest.mark.parametrize("kind", ["sd3", "flux"])
def test_layout_from_the_graph_alone(sources: dict[str, Path], compiled: dict, kind: str) -> None:
    """quantize_layout, torch-free from the unpruned graph, names every written tensor exactly."""
    from hpspec.plan.check import check
    from hpspec.model.targets import graph_from_path
    from hpspec.lang.parse import parse
    from hpspec.plan.compile import _ops, _stacks

    for scheme in SCHEMES:
        checked = check(parse(SPECS[kind].format(scheme=scheme)), graph_from_path(sources[kind]))
        ops = _ops(checked.graph, checked)
        plan = load_plan((compiled[(kind, scheme)] / "plan.json").read_text())
        assert plan.quantize is not None
        layout = quantized_layout(pruned_tensors(checked.graph, ops, _stacks(checked.graph, ops)), scheme, "bf16", plan.quantize.except_modules)
        written = {name: (dtype, shape) for name, (dtype, shape, _) in data(compiled[(kind, scheme)]).items()}
        predicted = {t.name: (t.dtype if not t.buffer else written.get(t.name, ("", ()))[0], t.shape) for t in layout}
        assert predicted == written
        assert weight_bytes(layout) == plan.bytes.after_quantize


def test_no_fake_four_bit() -> None:
    """Codes and per-block statistics: at most 0.6 bytes a weight, on the real models' shapes."""
    for spec in ("specs/sd3.5-large-turbo/moderate.hps", "specs/flux.1-schnell/example.hps"):
        plan = plan_spec(spec)
        from hpspec.plan.check import check, load_target
        from hpspec.lang.parse import parse_file
        from hpspec.plan.compile import _ops, _stacks

        parsed = parse_file(spec)
        graph = load_target(parsed)
        checked = check(parsed, graph)
        ops = _ops(graph, checked)
        tensors = pruned_tensors(graph, ops, _stacks(graph, ops))
        weights = sum(t.shape[0] * t.shape[1] for t in tensors if len(t.shape) == 2 and t.name.endswith(".weight"))
        for scheme in ("nf4", "fp4", "int4"):
            layout = quantized_layout(tensors, scheme, "bf16", [])
            assert payload_bytes(layout) / weights <= 0.6, (spec, scheme)
        assert plan.bytes.after_quantize is not None and plan.bytes.after_quantize < 0.3 * plan.bytes.after_prune


def test_tiny_payload_is_packed(compiled: dict) -> None:
    """Two codes a byte in the files (a fake 4-bit would store one byte or more per weight)."""
    for kind in ("sd3", "flux"):
        written = data(compiled[(kind, "nf4")])
        model = load_pretrained(compiled[(kind, "nf4")])
        for path, module in _quantized(model):
            n = module.in_features * module.out_features
            assert written[f"{path}.weight"] == ("U8", ((n + 1) // 2, 1), (n + 1) // 2)
            assert written[f"{path}.weight.absmax"][2] == -(-n // 64)  # one byte a block of 64


# --------------------------------------------------------------------------------------------
# Values: every Linear against the library's own dequantization, the whole model against bf16


def _quantized(model: nn.Module) -> list[tuple[str, nn.Module]]:
    from hpspec.weights.quantize import quantized_types

    return [(p, m) for p, m in model.named_modules() if isinstance(m, quantized_types())]


def _decode_4bit(module: Any) -> torch.Tensor:
    """The bitsandbytes 4-bit format decoded by hand: high nibble first, code[i] * absmax[block],
    absmax itself an 8-bit code * nested absmax (per 256 blocks) + offset."""
    state = module.weight.quant_state
    codes = module.weight.data.view(-1)
    idx = torch.stack([codes >> 4, codes & 0x0F], dim=1).view(-1).long()[: state.shape.numel()]
    absmax = state.state2.code[state.absmax.long()] * state.state2.absmax.repeat_interleave(256)[: state.absmax.numel()] + state.offset
    values = state.code[idx].view(-1, 64) if idx.numel() % 64 == 0 else None
    assert values is not None
    return (values * absmax.view(-1, 1)).view(state.shape).to(state.dtype)


# The spec's exceptions, written here by hand as module paths after pruning (block 1 keeps its
# index: only the last block goes before it).
EXCEPT = {"sd3": ("transformer_blocks.1.attn.", "context_embedder"), "flux": ("single_transformer_blocks.2.",)}


def _backend_classes(scheme: str) -> tuple[type, ...]:
    """The back end's own classes (hpspec's subclass them to pick the CPU code path)."""
    if scheme == "int4":
        return (_quanto().QLinear,)
    import bitsandbytes as bnb

    return (bnb.nn.Linear8bitLt,) if scheme == "int8" else (bnb.nn.Linear4bit,)


def _quanto() -> Any:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        import optimum.quanto as oq
    return oq


def their_linear(linear: nn.Module, scheme: str) -> nn.Module:
    """The back end's own module for `linear`'s weights at bf16, built here as its documentation
    says (not by hpspec): quanto's quantize + freeze; bitsandbytes' Params4bit / Int8Params."""
    import bitsandbytes as bnb

    linear = copy.deepcopy(linear).to(torch.bfloat16)
    if scheme == "int4":
        oq, holder = _quanto(), nn.Sequential(linear)
        oq.quantize(holder, weights=oq.qint4)
        oq.freeze(holder)
        return holder[0]
    bias = linear.bias is not None
    module: nn.Module
    if scheme == "int8":
        module = bnb.nn.Linear8bitLt(linear.in_features, linear.out_features, bias, has_fp16_weights=False, threshold=6.0)
        module.weight = bnb.nn.Int8Params(linear.weight.data, requires_grad=False, has_fp16_weights=False)
    else:
        module = bnb.nn.Linear4bit(linear.in_features, linear.out_features, bias, torch.bfloat16, compress_statistics=True, quant_type=scheme)
        module.weight = bnb.nn.Params4bit(linear.weight.data, requires_grad=False, quant_type=scheme)
        # Its AVX512-BF16 CPU kernel repacks the weight at the first forward and drops the double
        # quantization (off in hpspec's Linear4bit too, backends/bnb.py): the plain CPU path here.
        module.support_avx512bf16_for_cpu = False
    if bias:
        module.bias = nn.Parameter(linear.bias.data, requires_grad=False)
    # int8 in train mode: bitsandbytes' CPU path, dequantize-then-matmul at bf16 (eval runs LLM.int8).
    return module.to("cpu").train(scheme == "int8")


def _their_output(theirs: nn.Module, scheme: str, x: torch.Tensor) -> torch.Tensor:
    """What the back end's own module computes. bitsandbytes' CPU 4-bit kernel misplaces blocks
    when in_features is not a multiple of 64: there its codes are decoded by hand instead."""
    if scheme in ("nf4", "fp4") and theirs.in_features % 64:
        return F.linear(x, _decode_4bit(theirs), None if theirs.bias is None else theirs.bias)
    with torch.no_grad():
        return theirs(x)


def _tinygemm(theirs: nn.Module) -> bool:
    """quanto repacks group-128 bf16 weights for TinyGemm on a CPU, converting the shift lossily
    (hpspec does not): there the back end's own output agrees to bf16 rounding, not bit for bit."""
    return type(theirs.weight).__name__ == "TinyGemmWeightQBitsTensor"


@pytest.mark.parametrize("scheme", SCHEMES)
def test_each_linear_is_the_back_ends_own_module(compiled: dict, scheme: str) -> None:
    """Every Linear of the pruned model outside the exceptions (by hand, above) is quantized, and no
    other; each is the back end's own class, holds the codes the back end's own module makes of the
    same weights, and computes what that module computes (and, by hand, dequantize-then-matmul)."""
    import bitsandbytes.functional as bnbf

    for kind in ("sd3", "flux"):
        out = compiled[(kind, scheme)]
        original = apply(load_plan((out / "plan.json").read_text()), gaussian(kind)).to(torch.bfloat16)
        expected = {p for p, m in original.named_modules() if type(m) is nn.Linear and not p.startswith(EXCEPT[kind])}
        model = load_pretrained(out)
        quantized = dict(_quantized(model))
        assert set(quantized) == expected and all(isinstance(m, _backend_classes(scheme)) for m in quantized.values())
        for path, module in quantized.items():
            theirs = their_linear(original.get_submodule(path), scheme)
            ours_state, their_state = module.state_dict(), theirs.state_dict()
            assert ours_state.keys() == their_state.keys(), path
            for name in (n for n in ours_state if ".quant_state." not in n):
                assert ours_state[name].dtype == their_state[name].dtype and torch.equal(ours_state[name], their_state[name]), (path, name)
            x = torch.randn(3, module.in_features, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)
            with torch.no_grad():
                got = module(x)
            if scheme == "int4" and _tinygemm(theirs):
                assert relative(got, _their_output(theirs, scheme, x)) < 0.01, (kind, path)
            else:
                assert torch.equal(got, _their_output(theirs, scheme, x)), (kind, path)
            if scheme == "int4":
                weight = module.weight.dequantize()
                expected_out = torch.matmul(x, weight.t()) + module.bias  # quanto's own linear: matmul, then bias
            else:
                if scheme == "int8":
                    weight = bnbf.int8_vectorwise_dequant(module.weight.data, module.weight.SCB).to(torch.bfloat16)
                else:
                    weight = _decode_4bit(module)
                    if module.in_features % 64 == 0:  # where bitsandbytes' CPU kernel is right, it agrees
                        assert torch.equal(weight, bnbf.dequantize_4bit(module.weight.data, module.weight.quant_state))
                expected_out = F.linear(x, weight.to(torch.bfloat16), None if module.bias is None else module.bias.to(torch.bfloat16))
            assert torch.equal(got, expected_out), (kind, path)


def their_model(base: nn.Module, scheme: str) -> nn.Module:
    """The whole model quantized by the back end itself: quanto's quantize + freeze; for
    bitsandbytes each Linear's weight replaced by its own module's codes, decoded by hand (its CPU
    4-bit kernel misplaces blocks for most of these shapes)."""
    model = copy.deepcopy(base).to(torch.bfloat16)
    if scheme == "int4":
        oq = _quanto()  # quanto would quantize the patch embedding's Conv2d too: Linears only
        oq.quantize(model, weights=oq.qint4, exclude=[p for p, m in model.named_modules() if type(m) is not nn.Linear and p])
        oq.freeze(model)
        return model
    for _, linear in [(p, m) for p, m in model.named_modules() if type(m) is nn.Linear]:
        theirs = their_linear(linear, scheme)
        if scheme == "int8":
            weight = theirs.weight.data.float() * theirs.weight.SCB.view(-1, 1) / 127
        else:
            weight = _decode_4bit(theirs)
        linear.weight.data = weight.to(torch.bfloat16)
    return model


# The error is the point: above a floor (an unquantized model fails), below a ceiling, and at
# the back end's own quantization of the same model (a mis-scaled or partly quantized one fails):
# bit for bit with bitsandbytes; with quanto, whose own model repacks some weights for TinyGemm
# (`_tinygemm`), within a fifth of the quantization error.
ERROR_FLOOR = {"nf4": 0.02, "fp4": 0.02, "int8": 0.001, "int4": 0.02}
FROM_BACKEND = {"nf4": 0.0, "fp4": 0.0, "int8": 0.0, "int4": 0.2}


def _check_whole_model(base: nn.Module, feed: dict[str, torch.Tensor], bounds: dict[str, float]) -> None:
    reference = forward(copy.deepcopy(base).to(torch.bfloat16), feed)
    every = {p for p, m in base.named_modules() if type(m) is nn.Linear}
    for scheme, bound in bounds.items():
        model = copy.deepcopy(base)
        assert set(quantize_model(model, QuantizePlan(scheme, "", "bf16", []))) == every
        assert {p for p, m in model.named_modules() if isinstance(m, _backend_classes(scheme))} == every
        got, theirs = forward(model, feed), forward(their_model(base, scheme), feed)
        error = relative(got, reference)
        print(f"{scheme}: error {error:.4f}, from the back end's own {relative(got, theirs):.4f}")
        assert ERROR_FLOOR[scheme] <= error <= bound, scheme
        assert relative(got, theirs) <= FROM_BACKEND[scheme] * relative(theirs, reference), scheme


@pytest.mark.parametrize("kind", ["sd3", "flux"])
def test_whole_model_error(kind: str) -> None:
    """Against the same model unquantized at bf16, and against the back end's own quantization."""
    _check_whole_model(gaussian(kind), bf16(inputs(kind)), {"nf4": 0.1, "fp4": 0.15, "int8": 0.01, "int4": 0.1})


def test_whole_model_error_on_the_trained_demo() -> None:
    from hpspec.demo.model import load_demo_transformer

    g = torch.Generator().manual_seed(0)
    feed = bf16(dict(hidden_states=torch.randn(2, 1, 8, 8, generator=g), encoder_hidden_states=0.1 * torch.randn(2, 6, 384, generator=g),
                     pooled_projections=0.05 * torch.randn(2, 384, generator=g), timestep=torch.tensor([300.0, 800.0])))  # fmt: skip
    _check_whole_model(load_demo_transformer(), feed, {"nf4": 0.1, "fp4": 0.1, "int8": 0.01, "int4": 0.1})


# --------------------------------------------------------------------------------------------
# Round trip, exceptions, part drops


def _in_memory_and_loaded(out: Path, kind: str) -> tuple[nn.Module, nn.Module]:
    """The output's plan applied to the source model and quantized in memory; the output read back."""
    plan = load_plan((out / "plan.json").read_text())
    assert plan.quantize is not None
    live = apply(plan, gaussian(kind))
    quantize_model(live, plan.quantize)
    return live, load_pretrained(out)


@pytest.mark.parametrize("scheme", SCHEMES)
def test_round_trip_is_bit_exact(sources: dict[str, Path], compiled: dict, scheme: str) -> None:
    """The model quantized in memory and the one read back: same tensors, same output, bit for bit."""
    from hpspec.weights.quantize import quantized_state

    for kind in ("sd3", "flux"):
        live, loaded = _in_memory_and_loaded(compiled[(kind, scheme)], kind)
        a, b = quantized_state(live, scheme), quantized_state(loaded, scheme)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
        feed = bf16(inputs(kind))
        assert torch.equal(forward(live, feed), forward(loaded, feed))


def test_plain_load_state_dict_would_be_wrong(compiled: dict) -> None:
    """Why hpspec has a loader: load_state_dict into a (quantized) Linear4bit copies the codes,
    keeps the old block statistics, and says nothing."""
    import bitsandbytes as bnb

    loaded = load_pretrained(compiled[("sd3", "nf4")])
    _, module = _quantized(loaded)[0]
    fresh = bnb.nn.Linear4bit(module.in_features, module.out_features, module.bias is not None, torch.bfloat16, quant_type="nf4").to("cpu")
    fresh.load_state_dict(module.state_dict(), strict=False)
    assert torch.equal(fresh.weight.data, module.weight.data)
    x = torch.randn(2, module.in_features).to(torch.bfloat16)
    assert not torch.allclose(fresh(x).float(), module(x).float(), atol=1e-2)


def test_exceptions_stay_in_full_precision(sources: dict[str, Path], compiled: dict) -> None:
    out = compiled[("sd3", "nf4")]
    plan = load_plan((out / "plan.json").read_text())
    assert plan.quantize is not None
    assert plan.quantize.except_modules == ["transformer_blocks.1.attn", "context_embedder"]
    loaded = load_pretrained(out)
    original = apply(plan, gaussian("sd3")).to(torch.bfloat16)
    kept = dict(linears(loaded))
    assert set(kept) == {"context_embedder", *(p for p, _ in linears(original) if p.startswith("transformer_blocks.1.attn."))}
    for path, module in kept.items():
        assert torch.equal(module.weight, original.get_submodule(path).weight)
    written = data(out)
    assert written["context_embedder.weight"][0] == "BF16"
    assert all(path.startswith(("transformer_blocks.1.attn.", "context_embedder")) is False for path, _ in _quantized(loaded))


def test_quantization_composes_with_part_drop_identities(compiled: dict) -> None:
    """The loaded model holds the stand-ins (written here by hand) where the specs drop parts, the
    same modules as prune-then-quantize in memory everywhere, and computes what that model does."""
    from hpspec.weights.surgery import ParameterFreeAdaNorm

    stand_ins = {
        ("sd3", "int8"): {"transformer_blocks.2.ff": nn.Identity, "transformer_blocks.3.norm1_context": ParameterFreeAdaNorm},
        ("flux", "nf4"): {"single_transformer_blocks.1.proj_mlp": nn.Identity, "transformer_blocks.0.ff_context": nn.Identity},
    }
    for (kind, scheme), expected in stand_ins.items():
        live, loaded = _in_memory_and_loaded(compiled[(kind, scheme)], kind)
        assert {path: type(loaded.get_submodule(path)) for path in expected} == expected
        assert {p: type(m) for p, m in loaded.named_modules()} == {p: type(m) for p, m in live.named_modules()}
        feed = bf16(inputs(kind))
        assert torch.equal(forward(loaded, feed), forward(live, feed))


# --------------------------------------------------------------------------------------------
# diffusers: its own save of the same model is the reference layout


@pytest.fixture
def no_gpu_check(monkeypatch: pytest.MonkeyPatch) -> None:
    from diffusers.quantizers.bitsandbytes.bnb_quantizer import BnB4BitDiffusersQuantizer, BnB8BitDiffusersQuantizer

    for cls in (BnB4BitDiffusersQuantizer, BnB8BitDiffusersQuantizer):
        monkeypatch.setattr(cls, "validate_environment", lambda *args, **kwargs: None)


@pytest.mark.parametrize("scheme", SCHEMES)
def test_same_files_as_diffusers_own_save(tmp_path: Path, sources: dict[str, Path], no_gpu_check: None, scheme: str) -> None:
    """A pruned model (one whole block dropped: plain diffusers reads the pruned stage directory),
    quantized by hpspec and by diffusers itself: the same tensors, the same quantization_config."""
    import warnings

    from diffusers import BitsAndBytesConfig, QuantoConfig, SD3Transformer2DModel
    from safetensors.torch import load_file

    from hpspec.stages.quantize import quantize_dir

    plan = plan_for(sources["sd3"], "drop block[4]\n")
    compile_model(plan, sources["sd3"], tmp_path / "hp", progress=False)
    pruned = tmp_path / "hp" / "pruned"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        four_bit = {"load_in_4bit": True, "bnb_4bit_use_double_quant": True, "bnb_4bit_compute_dtype": torch.bfloat16}
        config = {
            "nf4": BitsAndBytesConfig(bnb_4bit_quant_type="nf4", **four_bit),
            "fp4": BitsAndBytesConfig(bnb_4bit_quant_type="fp4", **four_bit),
            "int8": BitsAndBytesConfig(load_in_8bit=True),
            "int4": QuantoConfig(weights_dtype="int4"),
        }[scheme]
        theirs = SD3Transformer2DModel.from_pretrained(pruned, quantization_config=config, torch_dtype=torch.bfloat16, device_map="cpu")
        assert len(theirs.transformer_blocks) == 5
        theirs.save_pretrained(tmp_path / "diffusers")
    written = quantize_dir(pruned, tmp_path / "ours", plan, scheme=scheme)
    assert written.diffusers_readable
    ours, reference = load_file(tmp_path / "ours" / "diffusion_pytorch_model.safetensors"), load_file(tmp_path / "diffusers" / "diffusion_pytorch_model.safetensors")
    assert ours.keys() == reference.keys()
    for name in ours:
        if ".quant_state." in name:  # hpspec pads the JSON to a fixed width: the same JSON
            assert json.loads(bytes(ours[name].numpy())) == json.loads(bytes(reference[name].numpy()))
        else:
            assert ours[name].dtype == reference[name].dtype and torch.equal(ours[name], reference[name]), name
    their_config = json.loads((tmp_path / "diffusers" / "config.json").read_text())
    our_config = json.loads((tmp_path / "ours" / "config.json").read_text())
    assert our_config["quantization_config"] == their_config["quantization_config"] and our_config["num_layers"] == 5
    with warnings.catch_warnings():  # and plain diffusers reads hpspec's output back
        warnings.simplefilter("ignore", FutureWarning)
        again = SD3Transformer2DModel.from_pretrained(tmp_path / "ours", torch_dtype=torch.bfloat16, device_map="cpu")
    again_state = {k: v for k, v in again.state_dict().items() if ".quant_state." not in k}
    assert all(torch.equal(v, ours[k]) for k, v in again_state.items())


# --------------------------------------------------------------------------------------------
# quanto without its C++ extension; the plan; the CLI


def test_int4_never_compiles_and_unpacks_as_quanto() -> None:
    from optimum.quanto.library.extensions.cpp import ext

    from hpspec.weights.backends.quanto import unpack

    packed = torch.randint(0, 256, (33, 7), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    default = torch._C.DispatchKeySet(torch._C.DispatchKey.CompositeExplicitAutograd)
    for bits in (2, 4):
        assert torch.equal(unpack(packed, bits), torch.ops.quanto.unpack.default.redispatch(default, packed, bits))
        assert torch.equal(torch.ops.quanto.unpack(packed, bits), unpack(packed, bits))
    assert ext._lib is None  # quanto's C++ extension was never built nor loaded


def test_plan_states_bytes_and_older_plans_load() -> None:
    moderate = plan_spec("specs/sd3.5-large-turbo/moderate.hps")
    assert moderate.quantize is not None and moderate.quantize.scheme == "nf4"
    assert moderate.bytes.after_quantize == 3_281_145_980
    medium = plan_spec("specs/sd3.5-medium/reference.hps")
    assert medium.quantize is None and medium.bytes.after_quantize is None
    data = json.loads(moderate.to_json())
    del data["bytes"]["after_quantize"]
    assert load_plan(json.dumps(data)).bytes.after_quantize is None


def test_cli_quantize(cli: Any, sources: dict[str, Path], tmp_path: Path) -> None:
    spec = tmp_path / "q.hps"
    spec.write_text(f'target "{sources["sd3"]}"\ndrop block[3].mlp\nquantize int4\n')
    assert cli("prune", spec, "--model", sources["sd3"], "--out", tmp_path / "pruned").code == 0
    result = cli("quantize", spec, "--model", tmp_path / "pruned", "--out", tmp_path / "q")
    assert result.code == 0, result.err
    assert "quantize: wrote" in result.out
    again = cli("quantize", spec, "--model", tmp_path / "pruned", "--out", tmp_path / "q")
    assert "up to date" in again.out
    assert cli("quantize", spec, "--model", tmp_path / "q", "--out", tmp_path / "q2").code != 0


@pytest.mark.parametrize("scheme", SCHEMES)
def test_runs_under_inference_mode(compiled: dict, scheme: str) -> None:
    """Samplers run in torch.inference_mode: every scheme's modules compute there the same."""
    model = load_pretrained(compiled[("flux", scheme)])
    feed = bf16(inputs("flux"))
    expected = forward(model, feed)
    with torch.inference_mode():
        assert torch.equal(model(**feed, return_dict=False)[0], expected)
