"""K-quant GGUFs (hpspec's own numpy encoders) through diffusers' GGUF loader, beside the gguf
package's own types: each type's output error, in the order llama.cpp's published figures give.

llama.cpp's quantize tool lists, per type, the perplexity a LLaMA-v1-7B gains (examples/quantize,
QUANT_OPTIONS): Q8_0 +0.0004, Q6_K -0.0008, Q5_K_S +0.0400, Q5_0 +0.0683, Q4_K_S +0.0992,
Q4_0 +0.2166. A perplexity is not an output error, so what is compared is the order: Q6_K with
Q8_0 at the top, each K type better than the legacy type of its bits (Q5_K than Q5_0, Q4_K than
Q4_0), and the error roughly halving per bit, as the published rmse of the types does.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from hpspec.model.formats.gguf_header import read_gguf
from hpspec.weights.formats.gguf import convert_to_gguf
from tests.tiny_models import forward, inputs, isolated, wide_flux
from tests.weights.test_formats import flux_loadable  # noqa: F401 - the fixture

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")
TYPES = ("q8_0", "q6_k", "q5_k", "q5_0", "q4_k", "q4_0")


@pytest.fixture(scope="module", autouse=True)
def _isolated(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    with isolated(tmp_path_factory.mktemp("cache")):
        yield


def test_k_quants_load_in_diffusers_in_llama_cpps_order(tmp_path: Path, flux_loadable: Any) -> None:  # noqa: F811
    from diffusers import FluxTransformer2DModel, GGUFQuantizationConfig

    model = wide_flux()
    model.save_pretrained(tmp_path / "wide")
    feed = inputs("flux")
    expected = forward(model, feed)
    errors = {}
    for kind in TYPES:
        path = convert_to_gguf(tmp_path / "wide", tmp_path / f"wide-{kind}.gguf", f"gguf:{kind.upper()}")
        assert read_gguf(path).tensors["double_blocks.0.img_attn.qkv.weight"].type == kind
        loaded = FluxTransformer2DModel.from_single_file(
            str(path),
            quantization_config=GGUFQuantizationConfig(compute_dtype=torch.float32),
            config=str(tmp_path / "wide"),
        )
        assert any(type(p).__name__ == "GGUFParameter" for p in loaded.parameters())  # diffusers dequantizes on the fly
        errors[kind] = float((forward(loaded, feed) - expected).norm() / expected.norm())
    assert errors["q6_k"] < errors["q5_k"] < errors["q4_k"] <= 0.1, errors
    assert errors["q5_k"] < errors["q5_0"] and errors["q4_k"] < errors["q4_0"], errors
    assert errors["q6_k"] < 3 * errors["q8_0"] < errors["q5_k"], errors  # Q6_K nearer Q8_0 than Q5_K
    assert errors["q6_k"] < 0.7 * errors["q5_k"] and errors["q5_k"] < 0.7 * errors["q4_k"], errors  # about half per bit
