"""probes: cheap per-block measures from one pass of the unpruned model (no scorer, no removals).

Forward hooks on every block see its input and output image stream and record, per call:
`cosine` (per token over channels, averaged over tokens and images: KOALA, ShortGPT), `mse` (the
mean squared change, output minus input, over every element: how Flux.1-Lite chose its blocks) and
`cka` (linear CKA between input and output, rows = every token of every image: PPCL). Each block's
value is the mean over its calls (sampling steps), as docs/sensitivity.md says.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from hpspec.core.diagnostics import did_you_mean
from hpspec.core.errors import UsageError
from hpspec.method.sensitivity import Probe
from hpspec.model.graph import ModelGraph

if TYPE_CHECKING:
    import torch
    from torch import nn

PROBES = ("cosine", "mse", "cka")


def parse_probes(text: str) -> tuple[str, ...]:
    """`cosine,mse,cka` -> the names, in PROBES' order; an unknown name is a usage error."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    for name in names:
        if name not in PROBES:
            close = did_you_mean(name, PROBES)
            hint = f" (did you mean {close!r}?)" if close else ""
            raise UsageError(f"--probe: unknown probe {name!r}; expected some of {', '.join(PROBES)}{hint}")
    if not names:
        raise UsageError(f"--probe: expected some of {', '.join(PROBES)}, comma-separated")
    return tuple(p for p in PROBES if p in names)


def block_streams(args: tuple, kwargs: dict, output: Any) -> tuple[torch.Tensor, torch.Tensor] | None:
    """A block call's image stream before and after (a joint block returns (text, image))."""
    before = kwargs.get("hidden_states", args[0] if args else None)
    after = output[-1] if isinstance(output, tuple) else output
    if before is None or after is None or before.shape != after.shape:
        return None
    return before, after


def mean_cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    import torch

    return float(torch.nn.functional.cosine_similarity(a.float(), b.float(), dim=-1).mean())


def mean_squared_change(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((b.double() - a.double()).pow(2).mean())


def linear_cka(a: torch.Tensor, b: torch.Tensor) -> float:
    """Linear CKA of two (..., channels) activations, every token of every image a row."""
    x = a.double().reshape(-1, a.shape[-1])
    y = b.double().reshape(-1, b.shape[-1])
    x, y = x - x.mean(0), y - y.mean(0)
    cross = (x.T @ y).pow(2).sum()
    return float(cross / ((x.T @ x).norm() * (y.T @ y).norm()))


MEASURES: dict[str, Callable[[Any, Any], float]] = {
    "cosine": mean_cosine,
    "mse": mean_squared_change,
    "cka": linear_cka,
}


class probe_recorder:
    """Forward hooks on every block; `()` returns one Probe per block, each measure averaged over calls."""

    def __init__(self, transformer: nn.Module, graph: ModelGraph, names: Sequence[str] = PROBES):
        self.transformer, self.graph, self.names = transformer, graph, tuple(names)
        self.calls: dict[tuple[str, int], list[dict[str, float]]] = {}
        self.handles: list[Any] = []

    def __enter__(self) -> Callable[[], list[Probe]]:
        for stack in self.graph.stacks:
            for index, module in enumerate(self.transformer.get_submodule(stack.module)):
                self.handles.append(module.register_forward_hook(self._hook(stack.name, index), with_kwargs=True))
        return self.values

    def __exit__(self, *exc: object) -> None:
        for handle in self.handles:
            handle.remove()

    def _hook(self, stack: str, index: int) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
            streams = block_streams(args, kwargs, output)
            if streams is not None:
                call = {name: MEASURES[name](*streams) for name in self.names}
                self.calls.setdefault((stack, index), []).append(call)

        return hook

    def values(self) -> list[Probe]:
        order = {s.name: i for i, s in enumerate(self.graph.stacks)}
        probes = []
        for (stack, block), calls in sorted(self.calls.items(), key=lambda kv: (order[kv[0][0]], kv[0][1])):
            mean = {name: sum(c[name] for c in calls) / len(calls) for name in self.names}
            probes.append(Probe(stack, block, mean.get("cosine"), mean.get("mse"), mean.get("cka"), len(calls)))
        return probes
