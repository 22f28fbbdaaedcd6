"""An estimate of a transformer's forward FLOPs, per part, from its graph alone (no torch).

Every weight matrix (or patch convolution) costs 2 x its size x the tokens it is applied to; each
attention costs 4 x tokens^2 x width (scores, then the weighted sum). Which tokens each module sees
is architecture data (`[flops]` in arch/*.toml). Norms, activations, biases and the softmax are
left out: the estimate is what a plan removes, for comparing against measured latency.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from hpspec.model.arch import evaluate, flops_tokens
from hpspec.model.graph import Block, ModelGraph, Part, Tensor


@dataclass(frozen=True)
class Tokens:
    image: int
    text: int

    def of(self, kind: str) -> int:
        return {"image": self.image, "text": self.text, "joint": self.image + self.text, "cond": 1}[kind]


def tokens_for(graph: ModelGraph) -> Tokens | None:
    """Token counts at the family's default resolution; None when the config cannot say."""
    rule = graph.arch.flops
    override = flops_tokens().get(graph.name, {})
    names = dict(graph.config)
    try:
        image = override.get("image_tokens", evaluate(rule.image_tokens, names))
        text = override.get("text_tokens", evaluate(rule.text_tokens, names))
    except TypeError:  # a config without sample_size / patch_size (a bare safetensors file)
        return None
    return Tokens(int(image), int(text))


def _kind(prefixes: Mapping[str, str], name: str) -> str | None:
    """The token class of the longest prefix that `name` starts with."""
    best = max((p for p in prefixes if name == p or name.startswith(p + ".") or (p.endswith("_") and name.startswith(p))),
               key=len, default=None)  # fmt: skip
    return prefixes[best] if best is not None else None


def _matrix_flops(tensors: tuple[Tensor, ...], prefixes: Mapping[str, str], tokens: Tokens) -> int:
    total = 0
    for tensor in tensors:
        if tensor.buffer or len(tensor.shape) < 2:
            continue  # biases, norm weights, buffers
        kind = _kind(prefixes, tensor.name)
        if kind is not None:
            total += 2 * tensor.numel * tokens.of(kind)
    return total


def part_flops(graph: ModelGraph, block: Block, part: Part, tokens: Tokens) -> int:
    prefixes, attention = graph.arch.flops_prefixes(block.kind)
    total = _matrix_flops(part.tensors, prefixes, tokens)
    width = attention_width(graph)
    for module in part.modules:
        kind = attention.get(module)
        if kind is not None:
            total += 4 * tokens.of(kind) ** 2 * width
    return total


def outside_flops(graph: ModelGraph, tokens: Tokens) -> int:
    return sum(_matrix_flops(o.tensors, graph.arch.flops.outside, tokens) for o in graph.outside)


def tensor_flops(graph: ModelGraph, block: Block, tensors: tuple[Tensor, ...], tokens: Tokens) -> int:
    """FLOPs of some of a block's weight matrices (what the last-block conversion removes)."""
    prefixes, _ = graph.arch.flops_prefixes(block.kind)
    return _matrix_flops(tensors, prefixes, tokens)


def attention_width(graph: ModelGraph) -> int:
    """The attention width (the residual stream's): the rows of the first block's query projection."""
    for block in graph.blocks:
        for part in block.parts:
            for tensor in part.tensors:
                if tensor.name == "attn.to_q.weight":
                    return tensor.shape[0]
    return 0
