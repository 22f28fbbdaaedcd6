"""scaffold: a target -> a commented skeleton spec (`hpspec init`).

The skeleton names its target and nothing else is active: every statement is a commented example
that is valid for this target once uncommented (the tests hold it to that), followed by every block
of every stack with its parameters, so the author can choose from real numbers. The text is in
fmt's canonical form.
"""

from __future__ import annotations

import os
from pathlib import Path

from hpspec.core.diagnostics import lines_of
from hpspec.lang.fmt import quote
from hpspec.model.graph import ModelGraph
from hpspec.model.targets import target_names
from hpspec.plan.summary import graph_text


def target_line(value: str, output: Path | None = None) -> str:
    """`target NAME` for a built-in, else the quoted path, relative to where the spec will live."""
    if value in target_names():
        return f"target {value}"
    if output is None:
        return f"target {quote(value)}"
    relative = os.path.relpath(Path(value).resolve(), Path(output).resolve().parent)
    return f"target {quote(Path(relative).as_posix())}"


def skeleton(graph: ModelGraph, target: str) -> str:
    """The skeleton spec for `graph`; `target` is its `target` line."""
    lines = [
        f"# A compression spec for {graph.name}, started by `hpspec init`.",
        "# Uncomment and edit what you want; `hpspec check` this file, `hpspec plan` shows what it does.",
        "",
        target,
        "",
        *_drop_examples(graph),
        "",
        "# PWP: while distilling, freeze everything before the first dropped block or part.",
        "# preserve auto",
        "",
        "# Distillation; unset options take the reference recipe's defaults.",
        "# distill weight=uniform steps=64000 lr=1e-4",
        "",
        "# 4-bit weights; what `except` names stays in full precision.",
        f"# quantize nf4{_quantize_exception(graph)}",
        "",
        *_inventory(graph),
    ]
    return "\n".join(lines) + "\n"


def _drop_examples(graph: ModelGraph) -> list[str]:
    """A late run of whole blocks from the last stack, one part of an earlier block of the first."""
    words = ", ".join(dict.fromkeys(w for b in graph.blocks for w in b.words))
    lines = [
        "# Drop whole blocks (slices are end-exclusive, like Python) or parts of blocks, which become",
        f"# identities. Parts: {words}.",
    ]
    last, first = graph.stacks[-1], graph.stacks[0]
    start = 2 * len(last) // 3
    stop = min(start + 4, len(last) - 1)  # spare the last block: dropping it converts another
    if stop - start > 1:
        lines.append(f"# drop {last.name}[{start}:{stop}]")
    elif stop - start == 1:
        lines.append(f"# drop {last.singular}[{start}]")
    taken = set(range(start, stop)) if first is last else set()
    candidates = [b for b in reversed(first.blocks[: len(first) // 2 + 1]) if b.index not in taken]
    if candidates:
        block = candidates[0]
        part = "context_mlp" if block.part("context_mlp") is not None else block.words[-1]
        lines.append(f"# drop {first.singular}[{block.index}].{part}")
    return lines


def _quantize_exception(graph: ModelGraph) -> str:
    modules = [o.module for o in graph.outside]
    return ' except "context_embedder"' if "context_embedder" in modules else ""


def _inventory(graph: ModelGraph) -> list[str]:
    """`hpspec graph TARGET`, commented: every block with its parameters, by part."""
    listing = lines_of(graph_text(graph).rstrip("\n"))
    return ["# Every block, with its parameters by part (`hpspec graph`):", "#"] + [
        f"# {line}".rstrip() for line in listing
    ]
