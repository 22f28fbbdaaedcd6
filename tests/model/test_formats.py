"""Single-file layouts without torch: the key maps load and tile, the layout and config of a file
are read from its header alone (every built-in model, at full size, in every layout), and bad
files are one line each."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from hpspec.core.errors import LayoutError
from hpspec.model.arch import builtin_models
from hpspec.model.formats import (
    detect_file,
    expand,
    key_map,
    key_map_of_family,
    layouts,
    to_diffusers,
    to_original,
)
from hpspec.model.formats.keymap import renumber
from hpspec.model.formats.rules import Row
from hpspec.model.graph import tensors_from_config
from hpspec.model.safetensors_header import DTYPE_BYTES

Tensors = Mapping[str, tuple[str, tuple[int, ...]]]  # name -> (dtype, shape)


def fake_file(path: Path, tensors: Tensors) -> Path:
    """A valid safetensors file of zeros, sparse on disk: only its header is written."""
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, (dtype, shape) in tensors.items():
        size = math.prod(shape) * DTYPE_BYTES[dtype]
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    with path.open("wb") as handle:
        handle.write(len(raw).to_bytes(8, "little") + raw)
        handle.truncate(8 + len(raw) + offset)
    return path


def original_tensors(config: Mapping[str, Any], dtype: str = "BF16", prefix: str = "") -> dict[str, tuple[str, tuple[int, ...]]]:
    """The tensors of `config`'s model in its family's original layout, shapes through the key map."""
    diffusers = tensors_from_config(config, "test", dtype)
    rule = key_map_of_family(_family(config))
    out = {}
    for fused in expand(rule, config):
        shapes = [diffusers[p.name][0] for p in fused.pieces]
        rows = sum(s[0] if p.begin is None or p.end is None else p.end - p.begin for p, s in zip(fused.pieces, shapes))
        out[prefix + fused.original] = (dtype, (rows, *shapes[0][1:]) if shapes[0] else ())
    return out


def _family(config: Mapping[str, Any]) -> str:
    return "flux" if config["_class_name"].startswith("Flux") else "sd3"


def test_key_maps_load_and_each_diffusers_tensor_is_tiled_once() -> None:
    for name in layouts().maps:
        rule = key_map(name)
        config = next(m.config for m in builtin_models().values() if m.family == rule.family)
        fused = expand(rule, config)
        diffusers = to_diffusers(fused)
        expected = set(tensors_from_config(config, "test"))
        assert set(diffusers) == expected, name
        assert len(to_original(fused)) == len(fused)


def test_a_fused_row_needs_bounds_on_every_piece() -> None:
    with pytest.raises(ValidationError, match="every piece of a fused tensor needs its row bounds"):
        Row.model_validate(["qkv", [["to_q", "0", "dim"], "to_k"]])
    with pytest.raises(ValidationError, match="cannot parse"):
        Row.model_validate(["qkv", [["to_q", "0", "open("]]])


def test_the_swapped_final_modulation_is_two_ranges_in_swapped_order() -> None:
    fused = expand(key_map("bfl"), {"num_attention_heads": 2, "attention_head_dim": 4, "num_layers": 0, "num_single_layers": 0})
    (final,) = [f for f in fused if f.original == "final_layer.adaLN_modulation.1.weight"]
    assert [(p.name, p.begin, p.end) for p in final.pieces] == [("norm_out.linear.weight", 8, 16), ("norm_out.linear.weight", 0, 8)]
    assert [(s.begin, s.end) for s in to_diffusers(fused)["norm_out.linear.weight"]] == [(8, 16), (0, 8)]


@pytest.mark.parametrize("model", sorted(builtin_models()))
@pytest.mark.parametrize("layout", ["original", "comfyui", "diffusers"])
def test_the_config_of_every_builtin_model_is_read_from_its_header(tmp_path: Path, model: str, layout: str) -> None:
    config = builtin_models()[model].config
    if layout == "diffusers":
        tensors: Tensors = {n: (d, s) for n, (s, d) in tensors_from_config(config, "test").items()}
    else:
        tensors = original_tensors(config, prefix="model.diffusion_model." if layout == "comfyui" else "")
    found = detect_file(fake_file(tmp_path / "model.safetensors", tensors))
    assert found.layout_name == {"original": key_map_of_family(found.family).layout}.get(layout, layout)
    assumed = {"sample_size", "axes_dims_rope", "patch_size", "out_channels", "_class_name"}
    for key, value in config.items():
        if key not in assumed:
            assert found.config.get(key) == (list(value) if isinstance(value, tuple) else value), (model, key)
    if found.family == "flux":
        assert found.config["axes_dims_rope"] == list(config["axes_dims_rope"])
    assert "BF16" in found.dtypes and not found.ignored


def test_an_all_in_one_file_takes_the_transformer_and_lists_what_it_ignored(tmp_path: Path) -> None:
    config = builtin_models()["sd3-medium"].config
    tensors = original_tensors(config, prefix="model.diffusion_model.")
    tensors["text_encoders.clip_l.transformer.text_model.embeddings.token_embedding.weight"] = ("F16", (4, 2))
    tensors["text_encoders.t5xxl.transformer.shared.weight"] = ("F16", (4, 2))
    tensors["first_stage_model.decoder.conv_in.weight"] = ("F16", (4, 2))
    found = detect_file(fake_file(tmp_path / "sd3_medium_incl_clips.safetensors", tensors))
    assert found.layout == "sai" and found.prefix == "model.diffusion_model."
    assert found.ignored == {"VAE (first_stage_model.*)": 1, "text encoders (text_encoders.*)": 2}
    assert found.assumed == (  # SD3 Medium has no qk-norm weights: its head width is the known one, and said so
        "attention_head_dim = 64: no qk-norm weights to read it from; sd3-medium's",
        "sample_size = 128: not in the weights; sd3-medium's",
    )
    assert found.config["attention_head_dim"] == 64 and found.config["num_attention_heads"] == 24


def test_gaps_in_block_numbers_are_counted_and_renumbered(tmp_path: Path) -> None:
    config = {**builtin_models()["flux.1-schnell"].config, "num_layers": 3, "num_single_layers": 2}
    tensors = {n: t for n, t in original_tensors(config).items() if not n.startswith("double_blocks.1.")}
    found = detect_file(fake_file(tmp_path / "pruned.safetensors", tensors))
    assert found.counts == {"num_layers": (0, 2), "num_single_layers": (0, 1)} and found.gaps
    assert found.config["num_layers"] == 2
    assert renumber(key_map("bfl"), "double_blocks.2.img_mlp.0.weight", found.counts) == "double_blocks.1.img_mlp.0.weight"
    assert renumber(key_map("bfl"), "txt_in.weight", found.counts) == "txt_in.weight"


def test_an_unknown_layout_names_the_prefixes_found_and_the_layouts_known(tmp_path: Path) -> None:
    path = fake_file(tmp_path / "odd.safetensors", {"encoder.layers.0.weight": ("F16", (2, 2)), "decoder.out.weight": ("F16", (2,))})
    with pytest.raises(LayoutError) as error:
        detect_file(path)
    message = str(error.value)
    assert "\n" not in message and "unknown single-file layout" in message
    assert "encoder.* (1), decoder.* (1)" in message
    assert "layouts known: diffusers (transformer_blocks.*), bfl (double_blocks.*), sai (joint_blocks.*)" in message
    assert "model.diffusion_model.* (comfyui)" in message


def test_mixed_layouts_in_one_file_are_refused(tmp_path: Path) -> None:
    tensors = {"double_blocks.0.img_mod.lin.weight": ("F16", (2, 2)), "joint_blocks.0.x_block.attn.qkv.weight": ("F16", (6, 2))}
    with pytest.raises(LayoutError, match=r"mixed key layouts in one file: bfl \('double_blocks.0.img_mod.lin.weight'\) and sai"):
        detect_file(fake_file(tmp_path / "mixed.safetensors", tensors))


@pytest.mark.parametrize(("name", "data"), [("model.ckpt", b"\x80\x02}q\x00."), ("model.safetensors", b"PK\x03\x04rest")])
def test_a_pickle_file_is_refused_before_it_is_parsed(tmp_path: Path, name: str, data: bytes) -> None:
    (tmp_path / name).write_bytes(data)
    with pytest.raises(LayoutError, match="a pickle \\(torch.save\\) checkpoint: hpspec never unpickles") as error:
        detect_file(tmp_path / name)
    assert "\n" not in str(error.value)


def test_reading_layouts_imports_no_torch_numpy_or_gguf() -> None:
    code = "import sys, hpspec.model.formats, hpspec.weights.formats.convert, hpspec.weights.formats.gguf; print(sorted(m for m in ('torch', 'numpy', 'gguf', 'diffusers') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
