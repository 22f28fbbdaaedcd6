"""Single-file layouts and GGUF with real tensors: hpspec's byte-range conversions against
diffusers' own converters and loaders, bit for bit; GGUF within each type's error."""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file

from hpspec.core.errors import HpspecError, LayoutError
from hpspec.model.formats import detect_file
from hpspec.model.formats.gguf_header import gguf_config, read_gguf
from hpspec.weights.formats.convert import convert
from hpspec.weights.formats.gguf import convert_to_gguf, drop_blocks, parse_type
from tests.tiny_models import build, forward, inputs, isolated, same_tensors, save

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")


@pytest.fixture(scope="module", autouse=True)
def _isolated(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    with isolated(tmp_path_factory.mktemp("cache")):
        yield


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """The diffusers folder of a tiny model of a kind (sd3, sd35m, flux), saved once."""
    root = tmp_path_factory.mktemp("models")
    done: dict[str, Path] = {}

    def get(kind: str) -> Path:
        if kind not in done:
            done[kind] = save(build(kind), root / kind, shard_bytes=200_000 if kind == "sd35m" else None)
        return done[kind]

    return get


def flux_converter() -> Callable[..., dict[str, torch.Tensor]]:
    """diffusers' FLUX converter with its one hard-coded constant (inner_dim = 3072, FLUX.1's width)
    read from the checkpoint instead: the same code, so a tiny FLUX converts."""
    from diffusers.loaders import single_file_utils

    source = inspect.getsource(single_file_utils.convert_flux_transformer_checkpoint_to_diffusers)
    assert source.count("inner_dim = 3072") == 1
    source = source.replace("inner_dim = 3072", 'inner_dim = checkpoint["img_in.weight"].shape[0]')
    namespace = dict(vars(single_file_utils))
    exec(source, namespace)  # noqa: S102 - diffusers' own source, one constant changed
    return namespace["convert_flux_transformer_checkpoint_to_diffusers"]  # type: ignore[no-any-return]


@pytest.fixture
def flux_loadable(monkeypatch: pytest.MonkeyPatch) -> Callable[..., dict[str, torch.Tensor]]:
    """`from_single_file` of a tiny FLUX, through `flux_converter`."""
    from diffusers.loaders import single_file_model

    converter = flux_converter()
    monkeypatch.setitem(
        single_file_model.SINGLE_FILE_LOADABLE_CLASSES["FluxTransformer2DModel"], "checkpoint_mapping_fn", converter
    )
    return converter


def diffusers_converter(kind: str) -> Callable[..., dict[str, torch.Tensor]]:
    from diffusers.loaders import single_file_utils

    return flux_converter() if kind == "flux" else single_file_utils.convert_sd3_transformer_checkpoint_to_diffusers


def model_class(kind: str) -> Any:
    from diffusers import FluxTransformer2DModel, SD3Transformer2DModel

    return FluxTransformer2DModel if kind == "flux" else SD3Transformer2DModel


@pytest.mark.parametrize(
    ("kind", "layout"), [("sd3", "sai"), ("sd35m", "sai"), ("sd35m", "comfyui"), ("flux", "bfl"), ("flux", "comfyui")]
)
def test_original_layout_matches_diffusers_converter_and_loader(
    tmp_path: Path, saved: Callable[[str], Path], flux_loadable: Any, kind: str, layout: str
) -> None:
    reference = build(kind).state_dict()
    single = tmp_path / f"{kind}.safetensors"
    written = convert(saved(kind), single, layout)
    assert written.layout == layout and detect_file(single).layout_name == layout
    assert same_tensors(diffusers_converter(kind)(load_file(single)), reference)  # diffusers reads hpspec's file
    hints = json.loads(
        (saved(kind) / "config.json").read_text()
    )  # head width: plain SD3 has no qk-norm to read it from
    back = convert(single, tmp_path / "back", "diffusers", hints=hints)  # and hpspec reads it back
    assert same_tensors(load_file(tmp_path / "back" / "diffusion_pytorch_model.safetensors"), reference)
    assert {k: v for k, v in back.config.items() if v is not None} == {
        k: hints[k] for k in back.config if hints.get(k) is not None
    }
    loaded = model_class(kind).from_single_file(str(single), config=str(saved(kind)), torch_dtype=torch.float32)
    assert same_tensors(loaded.state_dict(), reference)


def test_fp8_bytes_are_carried_as_they_are(tmp_path: Path, saved: Callable[[str], Path]) -> None:
    reference = build("flux").state_dict()
    fp8 = {
        n: t.to(torch.float8_e4m3fn if "single" in n else torch.float8_e5m2) if t.ndim == 2 else t
        for n, t in reference.items()
    }
    folder = tmp_path / "fp8"
    folder.mkdir()
    save_file(fp8, folder / "diffusion_pytorch_model.safetensors")
    (folder / "config.json").write_text((saved("flux") / "config.json").read_text())
    written = convert(folder, tmp_path / "fp8_bfl.safetensors", "bfl")
    assert {"F8_E4M3", "F8_E5M2"} <= set(written.dtypes)
    back = convert(tmp_path / "fp8_bfl.safetensors", tmp_path / "fp8_back", "diffusers")
    again = load_file(back.out / "diffusion_pytorch_model.safetensors")
    assert all(
        again[n].dtype == t.dtype and torch.equal(again[n].view(torch.uint8), t.view(torch.uint8))
        for n, t in fp8.items()
    )
    gguf_file = convert_to_gguf(tmp_path / "fp8_bfl.safetensors", tmp_path / "fp8.gguf", "f32")
    dequantized = _dequantized(gguf_file)
    assert torch.equal(
        dequantized["double_blocks.0.img_mlp.0.weight"], fp8["transformer_blocks.0.ff.net.0.proj.weight"].float()
    )  # E5M2
    assert torch.equal(
        dequantized["single_blocks.0.linear2.weight"], fp8["single_transformer_blocks.0.proj_out.weight"].float()
    )  # E4M3


def test_bf16_to_gguf_f16_and_bf16_are_exact(tmp_path: Path, saved: Callable[[str], Path]) -> None:
    bf16 = {n: t.to(torch.bfloat16) for n, t in build("flux").state_dict().items()}
    save_file(bf16, tmp_path / "bf16.safetensors")
    original = load_file(convert(tmp_path / "bf16.safetensors", tmp_path / "bfl.safetensors", "bfl").out)
    for kind, cast in [("f16", torch.float16), ("bf16", torch.bfloat16)]:
        path = convert_to_gguf(tmp_path / "bfl.safetensors", tmp_path / f"{kind}.gguf", kind)
        found, back = read_gguf(path), _dequantized(path)
        for name, tensor in original.items():
            expected = tensor.float() if found.tensors[name].type == "f32" else tensor.to(cast).float()
            assert torch.equal(back[name], expected), (kind, name)


def test_a_file_with_a_gap_in_its_blocks_is_renumbered(tmp_path: Path, saved: Callable[[str], Path]) -> None:
    convert(saved("flux"), tmp_path / "full.safetensors", "bfl")
    kept = {n: t for n, t in load_file(tmp_path / "full.safetensors").items() if not n.startswith("double_blocks.1.")}
    save_file(kept, tmp_path / "gap.safetensors")
    back = convert(tmp_path / "gap.safetensors", tmp_path / "gap", "diffusers")
    assert back.config["num_layers"] == 2
    tensors = load_file(back.out / "diffusion_pytorch_model.safetensors")
    reference = build("flux").state_dict()
    assert torch.equal(
        tensors["transformer_blocks.1.attn.to_k.weight"], reference["transformer_blocks.2.attn.to_k.weight"]
    )


def test_an_all_in_one_file_converts_its_transformer_and_lists_the_rest(
    tmp_path: Path, saved: Callable[[str], Path]
) -> None:
    convert(saved("sd3"), tmp_path / "comfy.safetensors", "comfyui")
    tensors = load_file(tmp_path / "comfy.safetensors")
    tensors["text_encoders.clip_g.transformer.text_model.final_layer_norm.weight"] = torch.ones(4)
    tensors["first_stage_model.decoder.conv_out.bias"] = torch.ones(3)
    save_file(tensors, tmp_path / "all.safetensors")
    back = convert(tmp_path / "all.safetensors", tmp_path / "out", "diffusers")
    assert back.ignored == {"VAE (first_stage_model.*)": 1, "text encoders (text_encoders.*)": 1}
    assert same_tensors(load_file(back.out / "diffusion_pytorch_model.safetensors"), build("sd3").state_dict())


def test_outputs_are_atomic_and_never_overwritten_unasked(tmp_path: Path, saved: Callable[[str], Path]) -> None:
    out = tmp_path / "x.safetensors"
    out.write_text("old")
    with pytest.raises(HpspecError, match="already exists"):
        convert(saved("sd3"), out, "sai")
    assert out.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["x.safetensors"]
    with pytest.raises(LayoutError, match="cannot be written in the 'bfl' layout; it can be: diffusers, sai, comfyui"):
        convert(saved("sd3"), tmp_path / "y.safetensors", "bfl")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.safetensors"]


def _dequantized(path: Path) -> dict[str, torch.Tensor]:
    import gguf
    import numpy as np

    reader = gguf.GGUFReader(path)
    return {t.name: torch.from_numpy(np.array(gguf.quants.dequantize(t.data, t.tensor_type))) for t in reader.tensors}


TOLERANCE = {"f16": 1e-3, "q8_0": 1e-2, "q4_0": 0.2}  # max |error| / max |weight|, per tensor


# per model kind: a quantized tensor, an embedder weight kept in F16 and a bias kept in F32 (city96's rules)
GGUF_NAMES = {
    "flux": ("double_blocks.0.img_attn.qkv.weight", "time_in.in_layer.weight", "img_in.bias"),
    "sd35m": ("joint_blocks.0.x_block.attn2.qkv.weight", "t_embedder.mlp.0.weight", "x_embedder.proj.bias"),
}


@pytest.mark.parametrize(("model", "kind"), [("flux", "f16"), ("flux", "q8_0"), ("flux", "Q4_0"), ("sd35m", "q8_0")])
def test_gguf_reads_back_within_its_type_error_and_loads_in_diffusers(
    tmp_path: Path, saved: Callable[[str], Path], flux_loadable: Any, model: str, kind: str
) -> None:  # flux_loadable: diffusers' GGUF loader runs its FLUX converter too
    from diffusers import GGUFQuantizationConfig

    wanted = parse_type(kind)
    path = convert_to_gguf(saved(model), tmp_path / f"{model}-{wanted}.gguf", kind)
    found = read_gguf(path)
    quantized_name, embedder, bias = GGUF_NAMES[model]
    assert found.arch == ("flux" if model == "flux" else "sd3") and found.tensors[quantized_name].type == wanted
    assert found.tensors[embedder].type == "f16" and found.tensors[bias].type == "f32"
    reference = load_file(
        convert(saved(model), tmp_path / "original.safetensors", "bfl" if model == "flux" else "sai").out
    )
    back = _dequantized(path)
    assert back.keys() == reference.keys()
    for name, tensor in reference.items():
        written = found.tensors[name].type
        if written in ("f32", "f16"):  # exact after the cast
            assert torch.equal(back[name], tensor if written == "f32" else tensor.half().float()), name
        else:
            assert float((back[name] - tensor).abs().max()) <= TOLERANCE[written] * float(tensor.abs().max()), name
    assert {k: v for k, v in gguf_config(found).config.items() if v is not None} == {
        k: v
        for k, v in json.loads((saved(model) / "config.json").read_text()).items()
        if k in gguf_config(found).config and v is not None
    }  # the graph of a GGUF, from its header
    loaded = model_class(model).from_single_file(
        str(path), quantization_config=GGUFQuantizationConfig(compute_dtype=torch.float32), config=str(saved(model))
    )
    feed = inputs(model)
    expected = forward(build(model), feed)
    error = float((forward(loaded, feed) - expected).norm() / expected.norm())
    assert error <= {"f16": 1e-3, "q8_0": 2e-2, "q4_0": 0.1}[wanted]  # output error, relative


def test_gguf_blocks_drop_without_dequantizing(tmp_path: Path, saved: Callable[[str], Path]) -> None:
    path = convert_to_gguf(saved("flux"), tmp_path / "flux-q8_0.gguf", "q8_0")
    out = drop_blocks(path, tmp_path / "dropped.gguf", {"num_single_layers": [1]})
    before, after = read_gguf(path), read_gguf(out)
    assert (
        "single_blocks.3.linear1.weight" not in after.tensors
        and after.tensors["single_blocks.2.linear1.weight"].type == "q8_0"
    )
    with path.open("rb") as a, out.open("rb") as b:
        for old, new in [
            ("single_blocks.2.linear1.weight", "single_blocks.1.linear1.weight"),
            ("double_blocks.0.img_attn.qkv.weight",) * 2,
        ]:
            x, y = before.tensors[old], after.tensors[new]
            a.seek(x.begin)
            b.seek(y.begin)
            assert a.read(x.end - x.begin) == b.read(y.end - y.begin)
    assert '"num_single_layers": 3' in str(after.fields["hpspec.config"])


def test_gguf_bad_types_and_architectures_are_one_line(tmp_path: Path) -> None:
    with pytest.raises(
        LayoutError,
        match="GGUF type 'Q3_K' cannot be written \\(hpspec writes q4_k, q5_k, q6_k; the gguf package can read the other K-quants but not write them\\)",
    ):
        parse_type("Q3_K")
    import gguf

    writer = gguf.GGUFWriter(path=None, arch="llama")
    writer.write_header_to_file(path=tmp_path / "llama.gguf")
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    writer.close()
    with pytest.raises(LayoutError, match="a GGUF of architecture 'llama'; hpspec knows flux, sd3"):
        read_gguf(tmp_path / "llama.gguf")


def test_q4_k_decodes_with_the_gguf_packages_dequantizer_better_than_q4_1() -> None:
    import gguf
    import numpy as np

    from hpspec.weights.formats.kquants import quantize_q4_k

    rng = np.random.default_rng(0)
    x = (rng.standard_normal((32, 512)) * 0.02).astype(np.float32)
    x[3, 7], x[9, 300] = 0.5, -0.4  # outliers, as trained weights have
    x[5] = 0.0  # a row of zeros
    x[6] = 0.25  # a constant row
    encoded = quantize_q4_k(x)
    assert encoded.shape == (32, 512 // 256 * 144) and encoded.dtype == np.uint8
    back = gguf.quants.dequantize(encoded, gguf.GGMLQuantizationType.Q4_K)
    assert np.array_equal(back[5], x[5]) and np.allclose(back[6], x[6], atol=1e-3)

    def rmse(y: np.ndarray) -> float:
        return float(np.sqrt(np.mean((y - x) ** 2)) / np.sqrt(np.mean(x**2)))

    q4_1 = gguf.GGMLQuantizationType.Q4_1
    assert rmse(back) < rmse(gguf.quants.dequantize(gguf.quants.quantize(x, q4_1), q4_1)) < 0.1


def _k_rows() -> Any:
    import numpy as np

    rng = np.random.default_rng(0)
    x = (rng.standard_normal((32, 512)) * 0.02).astype(np.float32)
    x[3, 7], x[9, 300] = 0.5, -0.4  # outliers, as trained weights have
    x[5] = 0.0  # a row of zeros
    x[6] = 0.25  # a constant row
    return x


def test_q6_k_and_q5_k_decode_with_the_gguf_packages_dequantizer_each_below_the_next_lower_type() -> None:
    import gguf
    import numpy as np

    from hpspec.weights.formats.kquants import quantize_q4_k, quantize_q5_k, quantize_q6_k

    x = _k_rows()
    errors = {}
    for name, encode in [("Q4_K", quantize_q4_k), ("Q5_K", quantize_q5_k), ("Q6_K", quantize_q6_k)]:
        kind = gguf.GGMLQuantizationType[name]
        encoded = encode(x)
        assert encoded.dtype == np.uint8 and encoded.shape == (32, 2 * gguf.GGML_QUANT_SIZES[kind][1])
        back = gguf.quants.dequantize(encoded, kind)
        assert back.shape == x.shape and np.array_equal(back[5], x[5]), name
        assert np.allclose(back[6], x[6], atol=1e-3), name
        errors[name] = float(np.sqrt(np.mean((back - x) ** 2)) / np.sqrt(np.mean(x**2)))
    legacy = {}
    for name in ("Q5_1", "Q8_0"):  # the gguf package's own quantizers, on the same rows
        kind = gguf.GGMLQuantizationType[name]
        legacy[name] = float(
            np.sqrt(np.mean((gguf.quants.dequantize(gguf.quants.quantize(x, kind), kind) - x) ** 2))
            / np.sqrt(np.mean(x**2))
        )
    assert legacy["Q8_0"] < errors["Q6_K"] < errors["Q5_K"] < errors["Q4_K"]
    assert errors["Q5_K"] < legacy["Q5_1"]  # as Q4_K beats Q4_1
    blocks = x.reshape(-1, 16)  # Q6_K without its search: each 16's largest |x| at code -32, float scales
    top = np.take_along_axis(blocks, np.argmax(np.abs(blocks), axis=1)[:, None], axis=1)
    step = np.where(top == 0, 1.0, top / -32)
    plain = (np.clip(np.rint(blocks / step), -32, 31) * step).reshape(x.shape)
    assert errors["Q6_K"] < float(np.sqrt(np.mean((plain - x) ** 2)) / np.sqrt(np.mean(x**2)))
    assert errors["Q6_K"] < 0.6 * errors["Q5_K"] and errors["Q5_K"] < 0.6 * errors["Q4_K"]  # about half per bit


def test_q6_k_keeps_the_sign_of_each_sub_blocks_largest_weight() -> None:
    import gguf
    import numpy as np

    from hpspec.weights.formats.kquants import quantize_q6_k

    x = np.linspace(-1.0, 0.5, 256, dtype=np.float32)[None] * np.array([[1.0], [-1.0]], np.float32)
    back = gguf.quants.dequantize(quantize_q6_k(x), gguf.GGMLQuantizationType.Q6_K)
    assert np.abs(back - x).max() < 1.0 / 32  # half a code step of the largest sub-block, with room


def test_convert_writes_a_q6_k_flux_gguf_the_gguf_reader_decodes(cli: Callable[..., Any], tmp_path: Path) -> None:
    import gguf

    from tests.tiny_models import wide_flux

    model = wide_flux()
    model.save_pretrained(tmp_path / "wide")
    out = tmp_path / "wide-q6_k.gguf"
    result = cli("convert", tmp_path / "wide", "--to", "gguf:Q6_K", "-o", out)
    assert result.code == 0, result.err
    reader = gguf.GGUFReader(out)
    tensors = {t.name: t for t in reader.tensors}
    found = tensors["single_blocks.0.linear2.weight"]  # diffusers' single_transformer_blocks.0.proj_out
    assert found.tensor_type == gguf.GGMLQuantizationType.Q6_K
    assert tensors["img_in.weight"].tensor_type == gguf.GGMLQuantizationType.F16  # embedders stay float
    back = torch.from_numpy(gguf.quants.dequantize(found.data, found.tensor_type).copy())
    expected = model.single_transformer_blocks[0].proj_out.weight.detach()
    assert back.shape == expected.shape
    assert float((back - expected).norm() / expected.norm()) < 0.02


def test_bf16_to_f16_is_torchs_cast_for_every_bit_pattern() -> None:
    import numpy as np

    from hpspec.weights.formats.floats import bf16_to_f16

    bits = np.arange(1 << 16, dtype=np.uint16)
    bits = np.concatenate([bits, bits[::-1], bits])  # across the cast's block boundary (2**17) too
    ours = torch.from_numpy(bf16_to_f16(bits).view(np.int16)).view(torch.float16)
    theirs = torch.from_numpy(bits.view(np.int16)).view(torch.bfloat16).to(torch.float16)
    same = (ours == theirs) | (ours.isnan() & theirs.isnan())
    assert bool(same.all()), int((~same).sum())
    assert bool((ours.view(torch.int16) == theirs.view(torch.int16))[~theirs.isnan()].all())  # signed zeros too
