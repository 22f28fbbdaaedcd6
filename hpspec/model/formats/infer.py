"""infer: a transformer's diffusers config.json read from its tensor names and shapes alone.

The widths are read from shapes (the patch embedder gives the hidden width and input channels,
the context embedder the text width, ...). What shapes cannot say, it takes from the known
architecture (models.toml) and says so in `Inferred.assumed`: the head width where there are no
qk-norm weights to read it from, FLUX's rotary axes, SD3's sample size.

    >>> shapes = {"x_embedder.weight": (8, 4), "transformer_blocks.0.attn.norm_q.weight": (4,)}
    >>> _head(shapes, "flux", 8, []) == 4
    True
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from hpspec.core.errors import LayoutError
from hpspec.model.arch import builtin_models, class_name_of
from hpspec.model.formats.keymap import expand
from hpspec.model.formats.rules import KeyMap

METADATA_LAYOUT = "hpspec.layout"  # safetensors metadata / GGUF field: the layout hpspec wrote
METADATA_CONFIG = "hpspec.config"  # the diffusers config.json, as JSON text
HINTS = (
    "attention_head_dim",
    "num_attention_heads",
    "axes_dims_rope",
    "sample_size",
    "patch_size",
)  # not in the shapes
Shapes = Mapping[str, tuple[int, ...]]  # diffusers name -> shape


@dataclass(frozen=True)
class Inferred:
    config: Mapping[str, Any]  # the diffusers config.json of the transformer
    assumed: tuple[str, ...]  # facts not read from shapes, each with where it came from


def diffusers_shapes(
    rule: KeyMap | None, shapes: Shapes, counts: Mapping[str, Sequence[int]]
) -> dict[str, tuple[int, ...]]:
    """Shapes by diffusers name of every whole (unfused) tensor of an original-layout file."""
    if rule is None:
        return dict(shapes)
    provisional: dict[str, Any] = {key: len(found) for key, found in counts.items()}
    blocks = range(max(provisional.values(), default=0))
    provisional.update(
        num_attention_heads=1,
        attention_head_dim=1,
        qk_norm="rms_norm",
        guidance_embeds=True,
        dual_attention_layers=tuple(blocks),
    )
    out = {}
    for fused in expand(rule, provisional, counts):
        piece = fused.pieces[0]
        if len(fused.pieces) == 1 and piece.begin is None and fused.original in shapes:
            out[piece.name] = shapes[fused.original]
    return out


def infer_config(family: str, shapes: Shapes, counts: Mapping[str, Sequence[int]], where: str) -> Inferred:
    """The config of a `family` transformer from its diffusers-named shapes and block counts."""
    assumed: list[str] = []
    try:
        config = _flux(shapes, counts, assumed) if family == "flux" else _sd3(shapes, counts, assumed)
    except KeyError as missing:
        raise LayoutError(
            f"{where}: cannot infer the {family} config: no tensor {missing.args[0]!r} (its diffusers name)"
        ) from None
    except (ValueError, IndexError, ZeroDivisionError):  # a shape of the wrong rank or size
        raise LayoutError(
            f"{where}: cannot infer the {family} config: its tensors' shapes are not those of a {family} transformer"
        ) from None
    return Inferred({"_class_name": class_name_of(family), **config}, tuple(assumed))


def with_hints(inferred: Inferred, hints: Mapping[str, Any], where: str) -> Inferred:
    """The facts shapes cannot say (head width, rotary axes, sample size) taken from a given config.

    Its widths must agree with the shapes'; the block counts stay those of the file."""
    config = dict(inferred.config)
    width = config["num_attention_heads"] * config["attention_head_dim"]
    given = hints.get("num_attention_heads", 0) * hints.get("attention_head_dim", 0)
    if given != width:
        raise LayoutError(f"{where}: the config given says a width of {given}, the weights {width}")
    keys = [k for k in HINTS if k in hints]
    config.update({k: hints[k] for k in keys})
    assumed = tuple(a for a in inferred.assumed if a.split(" ", 1)[0] not in keys)
    return Inferred(config, assumed)


def _known(family: str, key: str) -> tuple[str, Any]:
    """The first built-in model of `family` and its value of `key` (the known architecture)."""
    for name, model in builtin_models().items():
        if model.family == family and key in model.config:
            return name, model.config[key]
    raise LayoutError(f"no built-in {family} model knows {key!r}")


def _head(shapes: Shapes, family: str, dim: int, assumed: list[str]) -> int:
    norms = sorted(n for n in shapes if n.endswith(".attn.norm_q.weight"))
    if norms:
        return shapes[norms[0]][0]
    model, head = _known(family, "attention_head_dim")
    if dim % head:  # not a released width: one head is a guess that converts right but may not load right
        assumed.append(
            f"attention_head_dim = {dim}: no qk-norm weights to read it from and {model}'s {head} does not divide the width; one head assumed"
        )
        return dim
    assumed.append(f"attention_head_dim = {head}: no qk-norm weights to read it from; {model}'s")
    return int(head)


def _flux(shapes: Shapes, counts: Mapping[str, Sequence[int]], assumed: list[str]) -> dict[str, Any]:
    dim, in_channels = shapes["x_embedder.weight"]
    head = _head(shapes, "flux", dim, assumed)
    model, axes = _known("flux", "axes_dims_rope")
    if sum(axes) != head:  # rotary axes are not in the weights: split the head as FLUX.1 does (1 : 3.5 : 3.5)
        first = max(2, head // 16 * 2)
        second = (head - first) // 4 * 2  # every axis even: rotary pairs
        axes = [first, second, head - first - second]
        assumed.append(f"axes_dims_rope = {axes}: not in the weights; FLUX.1's proportions for head width {head}")
    else:
        assumed.append(f"axes_dims_rope = {list(axes)}: not in the weights; {model}'s")
    assumed.append("patch_size = 1: diffusers' FLUX packs 2x2 patches outside the transformer")
    out = shapes["proj_out.weight"][0]
    return {
        "attention_head_dim": head,
        "axes_dims_rope": list(axes),
        "guidance_embeds": "time_text_embed.guidance_embedder.linear_1.weight" in shapes,
        "in_channels": in_channels,
        "joint_attention_dim": shapes["context_embedder.weight"][1],
        "num_attention_heads": dim // head,
        "num_layers": len(counts.get("num_layers", ())),
        "num_single_layers": len(counts.get("num_single_layers", ())),
        "out_channels": None if out == in_channels else out,
        "patch_size": 1,
        "pooled_projection_dim": shapes["time_text_embed.text_embedder.linear_1.weight"][1],
    }


def _sd3(shapes: Shapes, counts: Mapping[str, Sequence[int]], assumed: list[str]) -> dict[str, Any]:
    dim, in_channels, patch, _ = shapes["pos_embed.proj.weight"]
    head = _head(shapes, "sd3", dim, assumed)
    model, sample = _known("sd3", "sample_size")
    assumed.append(f"sample_size = {sample}: not in the weights; {model}'s")
    layers = len(counts.get("num_layers", ()))
    dual = [i for i in range(layers) if f"transformer_blocks.{i}.attn2.to_out.0.weight" in shapes]
    config: dict[str, Any] = {
        "attention_head_dim": head,
        "caption_projection_dim": shapes["context_embedder.weight"][0],
        "in_channels": in_channels,
        "joint_attention_dim": shapes["context_embedder.weight"][1],
        "num_attention_heads": dim // head,
        "num_layers": layers,
        "out_channels": shapes["proj_out.weight"][0] // (patch * patch),
        "patch_size": patch,
        "pooled_projection_dim": shapes["time_text_embed.text_embedder.linear_1.weight"][1],
        "pos_embed_max_size": math.isqrt(shapes["pos_embed.pos_embed"][1]),
        "sample_size": sample,
    }
    if dual:
        config["dual_attention_layers"] = dual
    if any(n.endswith(".attn.norm_q.weight") for n in shapes):
        config["qk_norm"] = "layer_norm" if any(n.endswith(".attn.norm_q.bias") for n in shapes) else "rms_norm"
    return config
