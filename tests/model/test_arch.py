"""The architecture data: it loads, its mistakes are one precise line, its expressions cannot run code."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from hpspec.core.errors import ArchitectureDataError
from hpspec.model.arch import (
    architecture,
    evaluate,
    families,
    family_of_tensors,
    stand_in_kind,
)
from hpspec.model.arch.load import load_toml, validated
from hpspec.model.arch.rules import Architecture


def sd3_data() -> dict[str, Any]:
    return copy.deepcopy(load_toml("sd3.toml"))


@pytest.mark.parametrize("family", families())
def test_every_family_loads(family: str) -> None:
    arch = architecture(family)
    assert arch.family == family and arch.class_name == arch.class_names[0]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d["parts"]["attn"].update(modules=["attn", "nowhere"]), "sd3.toml parts.attn: no tensor lies under module 'nowhere'"),
        (lambda d: d["kinds"]["joint"].update(parts=["norm", "wings"]), "sd3.toml: kinds.joint: part 'wings' is not defined"),
        (lambda d: d["parts"]["mlp"]["tensors"].append(["ff.x", "open("]), "sd3.toml parts.mlp.tensors.4.shape: cannot parse 'open('"),
        (lambda d: d.update(colour="blue"), "sd3.toml colour: Extra inputs are not permitted"),
        (lambda d: d.pop("stacks"), "sd3.toml stacks: Field required"),
        (lambda d: d["last_block"].update(keeps=[1, 6]), "sd3.toml last_block: keeps [1, 6] must be chunk indices below chunks = 6"),
        (lambda d: d["flops"]["block"].update(ff="pixels"), "sd3.toml flops.block.ff: Input should be 'image', 'text', 'joint' or 'cond'"),
    ],
)
def test_a_data_mistake_is_one_line_naming_file_and_key(change: Any, message: str) -> None:
    data = sd3_data()
    change(data)
    with pytest.raises(ArchitectureDataError) as error:
        validated(Architecture, data, "sd3.toml")
    assert str(error.value) == message


@pytest.mark.parametrize("text", ["__import__('os')", "dim.real", "[dim]", "(lambda: 1)()", "dim ** 2"])
def test_expressions_refuse_anything_but_arithmetic(text: str) -> None:
    data = sd3_data()
    data["derived"]["evil"] = text
    with pytest.raises(ArchitectureDataError, match="sd3.toml derived"):
        validated(Architecture, data, "sd3.toml")


def test_expressions_evaluate_over_config_values() -> None:
    assert evaluate("index in (dual_attention_layers or ())", {"index": 2, "dual_attention_layers": [1, 2]}) is True
    assert evaluate("index in (dual_attention_layers or ())", {"index": 2}) is False  # absent keys are None
    assert evaluate("patch_size * patch_size * out", {"patch_size": 2, "out": 16}) == 64


def test_family_detection_and_stand_ins_come_from_the_data() -> None:
    assert family_of_tensors(["transformer_blocks.0.attn.to_q.weight"]) == "sd3"
    assert family_of_tensors(["transformer_blocks.0.ff.net.2.bias", "single_transformer_blocks.0.proj_out.bias"]) == "flux"
    assert (stand_in_kind("attn2"), stand_in_kind("proj_out"), stand_in_kind("norm1")) == ("attention", "first_channels", None)
