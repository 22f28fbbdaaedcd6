"""Plain-text views of graphs, plans and diagnostics, for the terminal (and for CI logs)."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence

from hpspec.core.diagnostics import Diagnostic, lines_of, render_all, shown
from hpspec.model.graph import ModelGraph
from hpspec.plan.plan import Plan


def human_count(n: int) -> str:
    for unit, size in (("B", 10**9), ("M", 10**6), ("k", 10**3)):
        if abs(n) >= size:
            return f"{n / size:.2f}{unit}"
    return str(n)


def human_bytes(n: int) -> str:
    """Decimal units, as the plan states them."""
    for unit, size in (("GB", 10**9), ("MB", 10**6), ("kB", 10**3)):
        if abs(n) >= size:
            return f"{n / size:.2f} {unit}"
    return f"{n} B"


def table(rows: Sequence[Sequence[str]], header: Sequence[str]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
             for row in [header, *rows]]  # fmt: skip
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(line.rstrip() for line in lines)


def graph_text(graph: ModelGraph) -> str:
    """Every block and part with its parameter count, so that users learn the names."""
    out = [
        f"{graph.name}  ({graph.family}, {graph.source})",
        f"parameters {graph.params:,} ({human_count(graph.params)}), weights {human_bytes(graph.nbytes)} as {graph.dtype}",
        f"fingerprint {graph.fingerprint}",
        "",
    ]
    before = [o for o in graph.outside if o.position == "before"]
    after = [o for o in graph.outside if o.position == "after"]
    out.extend(f"  {o.module:<24} {o.params:>16,}" for o in before)
    for stack in graph.stacks:
        words = list(dict.fromkeys(w for b in stack.blocks for w in b.words))
        rows = []
        for block in stack.blocks:
            counts = [f"{block.part(w).params:,}" if block.part(w) else "-" for w in words]  # type: ignore[union-attr]
            rows.append([f"{stack.singular}[{block.index}]", block.kind, *counts, f"{block.params:,}"])
        out.append("")
        out.append(f"{stack.name} ({len(stack)}, module {stack.module}):")
        out.append(_indent(table(rows, ["selector", "kind", *words, "total"])))
    out.append("")
    out.extend(f"  {o.module:<24} {o.params:>16,}" for o in after)
    return "\n".join(out) + "\n"


def plan_text(plan: Plan) -> str:
    """A short table: stacks, blocks and parts dropped, parameters and bytes, fraction kept."""
    lines = [f"plan for {plan.target.name}  (spec {plan.spec.path}, graph {plan.target.fingerprint})", ""]
    lines.extend(_stack_lines(plan))
    lines.append("")
    lines.extend(_size_lines(plan))
    lines.append("")
    lines.extend(_setting_lines(plan))
    return "\n".join(lines) + "\n"


def _stack_lines(plan: Plan) -> list[str]:
    """The stacks' table, each block's dropped parts, and the last-block conversion."""
    rows = []
    for name, stack in plan.stacks.items():
        parts = [op for op in plan.ops if op.kind == "drop_part" and op.stack == name]
        rows.append(
            [
                name,
                str(stack.before),
                str(stack.after),
                _ranges(stack.dropped) or "-",
                str(len(parts)) if parts else "-",
            ]
        )
    lines = [table(rows, ["stack", "before", "after", "blocks dropped", "parts dropped"])]
    for name in plan.stacks:
        by_block: dict[int, list[str]] = {}
        for op in plan.ops:
            if op.kind == "drop_part" and op.stack == name:
                by_block.setdefault(op.block, []).append(op.part or "")
        for block, words in sorted(by_block.items()):
            lines.append(f"  {name[:-1]}[{block}]: {', '.join(words)}")
    for op in plan.ops:
        if op.kind == "convert_last_block":
            lines.append(
                f"block {op.block} becomes the last block ({op.new_index} after renumbering): converted to "
                f"context-pre-only ({op.params:,} dead parameters removed)"
            )
    return lines


def _size_lines(plan: Plan) -> list[str]:
    """Parameters and weight bytes before and after, the paper's memory figures, FLOPs."""
    p, b = plan.params, plan.bytes
    rows = [
        ["parameters", f"{p.before:,}", f"{p.after_prune:,}", f"{100 * p.after_prune / p.before:.1f}%"],
        [
            f"weight bytes ({b.dtype})",
            human_bytes(b.before),
            human_bytes(b.after_prune),
            f"{100 * b.after_prune / b.before:.1f}%",
        ],
    ]
    lines = [table(rows, ["", "before", "after prune", "kept"])]
    lines.append("(weight bytes, decimal units; peak memory in a forward pass is a different measure)")
    if b.after_quantize is not None and plan.quantize is not None:
        lines.append(
            f"weight bytes: {human_bytes(b.before)} ({b.dtype}) -> {human_bytes(b.after_prune)} after prune -> "
            f"{human_bytes(b.after_quantize)} after quantize ({plan.quantize.scheme}, the rest {plan.quantize.compute}); "
            f"{100 * b.after_quantize / b.before:.1f}% of before"
        )
    lines.extend(_paper_memory(plan))
    if plan.flops is not None:
        f = plan.flops
        lines.append(
            f"forward FLOPs at {f.image_tokens} image + {f.text_tokens} text tokens: {f.before / 1e12:.3g} T -> "
            f"{f.after_prune / 1e12:.3g} T ({100 * (1 - f.after_prune / f.before):.1f}% fewer; an estimate)"
        )
    return lines


def _setting_lines(plan: Plan) -> list[str]:
    """The freeze set, and the distill and quantize settings."""
    lines = [
        f"freeze: {plan.freeze.rule}; {plan.freeze.frozen_params:,} frozen, {plan.freeze.trainable_params:,} trainable"
    ]
    if plan.distill is not None:
        d = plan.distill
        lines.append(f"distill: weight={d.weight} mode={d.mode} steps={d.steps} lr={d.lr} batch={d.batch}")
    if plan.quantize is not None:
        q = plan.quantize
        extra = f", except {', '.join(q.except_modules)}" if q.except_modules else ""
        lines.append(f"quantize: {q.scheme} ({q.backend}), compute {q.compute}{extra}")
    return lines


# METHOD §8: peak GPU memory of one transformer forward (batch 1, 1024², bf16), not weight bytes.
PAPER_MEMORY = {
    "sd3.5-large-turbo": "15.8 GB original -> 12.6 GB at ~20% pruned -> 3.56 GB HPP+PWP+Q (3.24 GB at ~30% + Q)",
}


def _paper_memory(plan: Plan) -> list[str]:
    memory = PAPER_MEMORY.get(plan.target.name)
    if memory is None:
        return []
    return [f"paper, peak forward memory (batch 1, 1024², a different measure): {memory}"]


def _ranges(indices: Iterable[int]) -> str:
    values = sorted(indices)
    runs, start = [], None
    for i, value in enumerate(values):
        start = value if start is None else start
        if i + 1 == len(values) or values[i + 1] != value + 1:
            runs.append(str(start) if start == value else f"{start}–{value}")
            start = None
    return ", ".join(runs)


def _indent(text: str, by: str = "  ") -> str:
    return "\n".join(by + line for line in lines_of(text))


def diagnostics_text(diagnostics: Sequence[Diagnostic], source: str | None) -> str:
    """One file's diagnostics for a terminal: long lines cut, repeats merged, at most `MAX_SHOWN`."""
    text = render_all(diagnostics, source)
    return text + "\n" if text else ""


def diagnostics_github(diagnostics: Sequence[Diagnostic]) -> str:
    """Workflow commands that GitHub Actions turns into inline annotations (repeats merged, as in text)."""
    lines = []
    items, left_out = shown(diagnostics)
    for d, more in items:
        props = [f"file={_gh_property(d.path)}"]
        if d.span is not None:
            props += [f"line={d.span.line}", f"col={d.span.column}", f"endColumn={d.span.end_column}"]
        props.append("title=hpspec")
        message = d.message + (f" ({d.help})" if d.help else "") + (f" (and {more:,} more like it)" if more else "")
        lines.append(f"::{d.severity} {','.join(props)}::{_gh_data(message)}")
    if left_out:
        note = f"{left_out:,} more diagnostics not shown"
        lines.append(f"::notice file={_gh_property(diagnostics[0].path)},title=hpspec::{_gh_data(note)}")
    return "".join(line + "\n" for line in lines)


def _gh_data(text: str) -> str:
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _gh_property(text: str) -> str:
    return _gh_data(text).replace(":", "%3A").replace(",", "%2C")


def diagnostics_json(results: Sequence[tuple[str, Sequence[Diagnostic], str | None]]) -> str:
    return (
        json.dumps(
            [
                {
                    "path": path,
                    "ok": not any(d.severity == "error" for d in diags) and error is None,
                    "error": error,
                    "diagnostics": [d.to_json() for d in diags],
                }
                for path, diags, error in results
            ],
            indent=2,
            sort_keys=True,
        )
        + "\n"
    )
