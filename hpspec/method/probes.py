"""probes: cheap per-block measures from one pass of the unpruned model (no scorer, no removals).

Forward hooks on every block see its input and output image stream and record, per call:
`cosine` (per token over channels, averaged over tokens and images: KOALA, ShortGPT), `mse` (the
mean squared change, output minus input, over every element: how Flux.1-Lite chose its blocks) and
`cka` (linear CKA between input and output, rows = every token of every image: PPCL). Each block's
value is the mean over its calls (sampling steps), as docs/sensitivity.md says.

Per part (``parts``): a part's residual contribution. At each call the block runs again on the same
inputs with that one part swapped for its stand-in (what `drop block[i].part` compiles to; the
caller gives the swap), and the same three measures compare the block's real output with that
output: every stream it returns (text and image tokens, concatenated along tokens). A part that
adds nothing scores cosine 1, mse 0, CKA 1.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
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


def joined(output: Any) -> torch.Tensor:
    """Every stream a block returns (a tensor, or a (text, image) tuple with None for a missing one),
    concatenated along tokens."""
    import torch

    streams = [t for t in (output if isinstance(output, tuple) else (output,)) if t is not None]
    return streams[0] if len(streams) == 1 else torch.cat(streams, dim=-2)


# (stack, block) -> [(part word, a context manager that swaps that part out of the live transformer)]
PartSwaps = Mapping[tuple[str, int], Sequence[tuple[str, Callable[[], AbstractContextManager[Any]]]]]


MEASURES: dict[str, Callable[[Any, Any], float]] = {
    "cosine": mean_cosine,
    "mse": mean_squared_change,
    "cka": linear_cka,
}


class probe_recorder:
    """Forward hooks on every block; `()` returns one Probe per block (then one per part given in
    `parts`), each measure averaged over calls."""

    def __init__(
        self, transformer: nn.Module, graph: ModelGraph, names: Sequence[str] = PROBES, parts: PartSwaps | None = None
    ):
        self.transformer, self.graph, self.names = transformer, graph, tuple(names)
        self.parts = dict(parts or {})
        self.calls: dict[tuple[str, int, str | None], list[dict[str, float]]] = {}
        self.handles: list[Any] = []
        self.rerunning = False

    def __enter__(self) -> Callable[[], list[Probe]]:
        for stack in self.graph.stacks:
            for index, module in enumerate(self.transformer.get_submodule(stack.module)):
                hook = self._hook(stack.name, stack.module, index)
                self.handles.append(module.register_forward_hook(hook, with_kwargs=True))
        return self.values

    def __exit__(self, *exc: object) -> None:
        for handle in self.handles:
            handle.remove()

    def _record(self, key: tuple[str, int, str | None], a: Any, b: Any) -> None:
        self.calls.setdefault(key, []).append({name: MEASURES[name](a, b) for name in self.names})

    def _hook(self, stack: str, module_path: str, index: int) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
            if self.rerunning:  # the block's own run without a part: not a call to record
                return
            streams = block_streams(args, kwargs, output)
            if streams is not None:
                self._record((stack, index, None), *streams)
            for word, swap in self.parts.get((stack, index), ()):
                self.rerunning = True
                try:
                    with swap():  # the block object itself may be replaced (a converted last block)
                        without = self.transformer.get_submodule(f"{module_path}.{index}")(*args, **kwargs)
                finally:
                    self.rerunning = False
                self._record((stack, index, word), joined(output), joined(without))

        return hook

    def values(self) -> list[Probe]:
        """Block rows in model order, each followed by its part rows in the order they were given."""
        order = {s.name: i for i, s in enumerate(self.graph.stacks)}
        words = {key: [w for w, _ in swaps] for key, swaps in self.parts.items()}

        def position(key: tuple[str, int, str | None]) -> tuple[int, int, int]:
            stack, block, part = key
            rank = -1 if part is None else words.get((stack, block), []).index(part)
            return order[stack], block, rank

        probes = []
        for (stack, block, part), calls in sorted(self.calls.items(), key=lambda kv: position(kv[0])):
            mean = {name: sum(c[name] for c in calls) / len(calls) for name in self.names}
            probes.append(Probe(stack, block, mean.get("cosine"), mean.get("mse"), mean.get("cka"), len(calls), part))
        return probes
