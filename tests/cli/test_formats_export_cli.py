"""`compile --to LAYOUT` with distill or quantize declared: the last float stage exported into
OUT/exported through the same writers, checked with the real loaders (diffusers' `from_single_file`
and its GGUF path) against the stage folders diffusers reads today; and the combinations that
cannot be, refused in one line before anything runs."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from hpspec.model.formats.gguf_header import read_gguf
from tests.cli.test_formats_cli import Cli, flux_loadable  # noqa: F401 - the fixture
from tests.tiny_models import build, forward, inputs, isolated, same_tensors, save

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")


@pytest.fixture(scope="module", autouse=True)
def _isolated(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    with isolated(tmp_path_factory.mktemp("cache")):
        yield


@pytest.fixture(scope="module")
def flux(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save(build("flux"), tmp_path_factory.mktemp("models") / "flux")


def _compile(cli: Cli, tmp_path: Path, spec: str, model: Path | str, *extra: str) -> tuple[int, str, Path]:
    (tmp_path / "spec.hps").write_text(spec, encoding="utf-8")
    out = tmp_path / "out"
    result = cli("compile", tmp_path / "spec.hps", "--model", model, "--out", out, "--no-report", *extra)
    return result.code, result.err, out


def test_distilled_weights_are_exported_in_the_layout_and_diffusers_reads_them(cli: Cli, tmp_path: Path) -> None:
    from diffusers import SD3Transformer2DModel

    spec = "target demo\ndrop blocks[9, 11]\ndistill steps=2 batch=4\n"
    code, err, out = _compile(cli, tmp_path, spec, "demo", "--data", "demo", "--to", "sai")
    assert code == 0, err
    exported = out / "exported"
    assert sorted(p.name for p in exported.glob("transformer*")) == ["transformer.safetensors"]
    distilled = SD3Transformer2DModel.from_pretrained(out / "distilled", torch_dtype=torch.float32).state_dict()
    single = SD3Transformer2DModel.from_single_file(
        str(exported / "transformer.safetensors"), config=str(exported), torch_dtype=torch.float32
    )
    assert same_tensors(single.state_dict(), distilled)  # bit for bit: the distilled weights, in the sai layout
    pruned = load_file(out / "pruned" / "diffusion_pytorch_model.safetensors")
    name = "transformer_blocks.7.ff.net.2.weight"  # trained by the distillation
    assert not torch.equal(pruned[name].float(), distilled[name])


def test_quantize_int8_is_exported_as_a_q8_0_gguf_with_its_except_modules_in_float(
    cli: Cli,
    tmp_path: Path,
    flux: Path,
    flux_loadable: None,  # noqa: F811
) -> None:
    from diffusers import FluxTransformer2DModel, GGUFQuantizationConfig

    spec = 'drop double_blocks[1]\nquantize int8 except "single_transformer_blocks.0"\n'
    code, err, out = _compile(cli, tmp_path, spec, flux, "--to", "gguf")
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == ["exported", "pruned"]  # no bitsandbytes folder
    path = out / "exported" / "transformer.gguf"
    types = {n: t.type for n, t in read_gguf(path).tensors.items()}
    assert types["double_blocks.0.img_attn.qkv.weight"] == types["single_blocks.1.linear1.weight"] == "q8_0"
    assert types["single_blocks.0.linear1.weight"] == types["single_blocks.0.linear2.weight"] == "f16"  # except
    loaded = FluxTransformer2DModel.from_single_file(
        str(path), quantization_config=GGUFQuantizationConfig(compute_dtype=torch.float32), config=str(out / "exported")
    )
    reference = FluxTransformer2DModel.from_pretrained(out / "pruned", torch_dtype=torch.float32)
    feed = inputs("flux")
    expected = forward(reference, feed)
    assert float((forward(loaded, feed) - expected).norm() / expected.norm()) <= 2e-2  # as q8_0's bound elsewhere
    kept = loaded.single_transformer_blocks[0].proj_out.weight
    assert torch.equal(kept.float(), reference.single_transformer_blocks[0].proj_out.weight.half().float())


CANNOT = {
    "int8 into a bfl file": ("quantize int8\n", "bfl", "a bfl file holds float weights"),
    "int8 as gguf q4_0": (
        "quantize int8\n",
        "gguf:q4_0",
        "q4_0 is another kind of quantization; `quantize int8` is GGUF q8_0",
    ),
    "nf4 as gguf": ("quantize nf4\n", "gguf", "nf4 stores bitsandbytes' NormalFloat-4 code book"),
    "part drops": ("drop single_block[0].attn\ndistill steps=1 batch=1\n", "bfl", "the plan drops parts of blocks"),
}


@pytest.mark.parametrize("case", list(CANNOT))
def test_a_combination_that_cannot_be_exported_is_one_line_and_nothing_written(
    cli: Cli, tmp_path: Path, flux: Path, case: str
) -> None:
    extra, to, message = CANNOT[case]
    code, err, out = _compile(cli, tmp_path, "drop double_blocks[1]\n" + extra, flux, "--to", to, "--data", "demo")
    assert code == 1 and err.count("\n") == 1 and err.startswith("error:") and message in err, err
    assert not out.exists()
