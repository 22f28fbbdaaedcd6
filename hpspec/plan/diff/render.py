"""render: a `PlanDiff` as text, Markdown or JSON (`hpspec diff --format`), and the pieces the
HTML report shows (the short table, the detail sections, the headline).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from hpspec.plan.diff.compare import FreezeChange, PlanDiff, Removal, selector_text
from hpspec.plan.summary import human_bytes, table


def render(diff: PlanDiff, form: str) -> str:
    if form == "json":
        return diff.to_json()
    return _markdown(diff) if form == "markdown" else _text(diff)


def _signed(n: int) -> str:
    return f"{n:+,}" if n else "0"


def table_rows(d: PlanDiff) -> list[list[str]]:
    """The short table: [what, before, after, change] rows, counts with thousands separators."""
    rows = []
    for stack, count in d.blocks_dropped.items():
        if count.before or count.after:
            rows.append([f"{stack} dropped", str(count.before), str(count.after), _signed(count.delta)])
    if d.parts_dropped.before or d.parts_dropped.after:
        p = d.parts_dropped
        rows.append(["parts dropped", str(p.before), str(p.after), _signed(p.delta)])
    rows.append(
        [
            "parameters",
            *(f"{n:,} ({_share(n, d.params_total)})" for n in (d.params.before, d.params.after)),
            _signed(d.params.delta),
        ]
    )
    delta = d.bytes.delta
    signed_bytes = ("+" if delta > 0 else "") + human_bytes(delta) if delta else "0"
    rows.append([f"weight bytes ({d.dtype})", human_bytes(d.bytes.before), human_bytes(d.bytes.after), signed_bytes])
    if d.frozen_params.before or d.frozen_params.after:
        f = d.frozen_params
        rows.append(["frozen parameters", f"{f.before:,}", f"{f.after:,}", _signed(f.delta)])
    return rows


def _share(n: int, total: int) -> str:
    return f"{100 * n / total:.1f}%" if total else "-"


def detail_sections(d: PlanDiff) -> list[tuple[str, list[str]]]:
    """The details, as (title, items), empty sections left out; items mark code with backticks."""
    sections = [
        ("Target", [f"{_value(d.target.before)} → {_value(d.target.after)}"] if d.target else []),
        ("Newly dropped", _removal_lines(d.dropped, "already gone")),
        ("Restored", _removal_lines(d.restored, "still dropped")),
        (
            "Last-block conversion",
            [*(_conversion(r, True) for r in d.converted), *(_conversion(r, False) for r in d.unconverted)],
        ),
        ("Freeze", _freeze_lines(d.freeze)),
        ("Settings", [f"`{c.what}`: {_value(c.before)} → {_value(c.after)}" for c in d.settings]),
    ]
    return [(title, items) for title, items in sections if items]


def _removal_lines(removals: Iterable[Removal], remainder: str) -> list[str]:
    """Plain whole blocks as one selector per stack (`blocks[25:29, 31]`), the rest one a line."""
    whole: dict[str, list[Removal]] = {}
    others = []
    for r in removals:
        if r.part is None and not r.parts:
            whole.setdefault(r.stack, []).append(r)
        else:
            extra = f"; {', '.join(r.parts)} {remainder}" if r.parts else ""
            others.append(f"`{r.selector}`: {r.params:,} parameters{extra}")
    lines = []
    for stack, blocks in whole.items():
        count = f" ({len(blocks)} blocks)" if len(blocks) > 1 else ""
        selector = selector_text(stack, [r.block for r in blocks])
        lines.append(f"`{selector}`{count}: {sum(r.params for r in blocks):,} parameters")
    return lines + others


def _conversion(r: Removal, new: bool) -> str:
    if new:
        return f"`{r.selector}` becomes the context-pre-only last block: {r.params:,} parameters go"
    return f"`{r.selector}` is no longer converted to the last block: {r.params:,} parameters stay"


def _freeze_lines(changes: Iterable[FreezeChange]) -> list[str]:
    """One line per kind of change, blocks collapsed into selectors: `blocks[0:8]`: trainable → frozen."""
    groups: dict[tuple[str, str], dict[str | None, list[FreezeChange]]] = {}
    for change in changes:
        groups.setdefault((change.before, change.after), {}).setdefault(change.stack, []).append(change)
    lines = []
    for (before, after), by_stack in groups.items():
        names: list[str] = []
        for stack, items in by_stack.items():
            if stack is None:
                names.extend(f"`{c.module}`" for c in items)
            else:
                names.append(f"`{selector_text(stack, [c.block for c in items if c.block is not None])}`")
        lines.append(f"{', '.join(names)}: {before} → {after}")
    return lines


def _value(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, Mapping):
        return " ".join(f"`{k}={v}`" for k, v in value.items() if v is not None) or "on"
    if isinstance(value, (list, tuple)):
        return ", ".join(f"`{v}`" for v in value) if value else "nothing"
    return f"`{value}`"


def headline(d: PlanDiff) -> str:
    """One sentence: what moves, and the parameter change as a share of the model."""
    if d.empty:
        return "No semantic change: both compile to the same plan."
    moved = [f"target {_value(d.target.before)} → {_value(d.target.after)}"] if d.target else []
    blocks = [r for r in d.dropped if r.part is None], [r for r in d.restored if r.part is None]
    parts = [r for r in d.dropped if r.part], [r for r in d.restored if r.part]
    for items, noun, verb in ((blocks[0], "block", "newly dropped"), (parts[0], "part", "newly dropped"),
                              (blocks[1], "block", "restored"), (parts[1], "part", "restored")):  # fmt: skip
        if items:
            moved.append(f"{len(items)} {noun}{'s' * (len(items) != 1)} {verb}")
    delta = d.params.delta
    moved.append(
        f"parameters {_signed(delta)} ({delta / d.params_total:+.2%} of the model)" if delta else "parameters unchanged"
    )
    return "; ".join(moved) + "."


def _markdown(d: PlanDiff) -> str:
    lines = [f"### hpspec diff: `{d.a}` → `{d.b}`", "", f"**{headline(d)}**", ""]
    if d.empty:
        return "\n".join(lines)
    lines += ["| | before | after | change |", "|---|---:|---:|---:|"]
    lines += [f"| {' | '.join(row)} |" for row in table_rows(d)]
    for title, items in detail_sections(d):
        lines += ["", f"**{title}**", ""]
        lines += [f"- {item}" for item in items]
    return "\n".join(lines) + "\n"


def _text(d: PlanDiff) -> str:
    lines = [f"hpspec diff: {d.a} -> {d.b}", headline(d)]
    if d.empty:
        return "\n".join(lines) + "\n"
    lines += ["", table(table_rows(d), ["", "before", "after", "change"])]
    for title, items in detail_sections(d):
        lines += ["", f"{title}:"]
        lines += ["  " + item.replace("`", "") for item in items]
    return "\n".join(lines) + "\n"
