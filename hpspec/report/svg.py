"""Inline SVG charts for the report, made in Python from plain numbers.

Every text and attribute value is escaped here; the result is `Markup` the templates insert as is.
Coordinates are rounded to one decimal so the same numbers always give the same bytes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from markupsafe import Markup, escape

# ColorBrewer OrRd (harm: ΔP > 0) and a teal ramp (removal helped: ΔP < 0), light to dark.
HARM = ("#fff7ec", "#fdd49e", "#fc8d59", "#d7301f", "#7f0000")
HELP = ("#f5fbfa", "#c7eae5", "#5ab4ac", "#01665e")
MISSING = "#eceff3"
INK = "#1f2933"
MUTED = "#6b7785"
# The block map's geometry (rows of 20 px cells with 2 px gaps, 74 px of labels), so the two line
# up; the column pitch comes with each heatmap, as the block map chooses it.
CELL_H, LABEL_W = 22, 74


@dataclass(frozen=True)
class HeatCell:
    value: float | None  # ΔP; None where the table has no row (or the block lacks the part)
    title: str
    dropped: bool


@dataclass(frozen=True)
class Heatmap:
    """One stack's table: rows are parts, columns are blocks, plus one ΔP per block."""

    stack: str
    row_labels: list[str]
    cells: list[list[HeatCell]]  # [row][block]
    block_values: list[float | None]
    block_titles: list[str]
    dropped_blocks: list[bool]
    pitch: int  # px from one block's column to the next


def _num(x: float) -> str:
    text = f"{x:.1f}"
    return text[:-2] if text.endswith(".0") else text


def _mix(a: str, b: str, t: float) -> str:
    ca = [int(a[i : i + 2], 16) for i in (1, 3, 5)]
    cb = [int(b[i : i + 2], 16) for i in (1, 3, 5)]
    return "#" + "".join(f"{round(x + (y - x) * t):02x}" for x, y in zip(ca, cb))


def _ramp(stops: Sequence[str], t: float) -> str:
    t = min(1.0, max(0.0, t)) * (len(stops) - 1)
    i = min(int(t), len(stops) - 2)
    return _mix(stops[i], stops[i + 1], t - i)


def colour(value: float | None, scale: float) -> str:
    """ΔP -> fill: log-scaled so that MLPs (ΔP near 0) and norms (ΔP near 20) both read."""
    if value is None:
        return MISSING
    t = math.log1p(abs(value)) / math.log1p(scale) if scale > 0 else 0.0
    return _ramp(HARM if value >= 0 else HELP, t)


def _svg(width: float, height: float, body: list[str], label: str) -> Markup:
    return Markup(
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {_num(width)} {_num(height)}" '
        f'width="{_num(width)}" height="{_num(height)}" role="img" aria-label="{escape(label)}">'
        + "".join(body)
        + "</svg>"
    )


def _text(x: float, y: float, text: str, anchor: str = "start", size: int = 10, fill: str = INK) -> str:
    return (
        f'<text x="{_num(x)}" y="{_num(y)}" font-size="{size}" text-anchor="{anchor}" fill="{fill}">'
        f"{escape(text)}</text>"
    )


def _rect(x: float, y: float, w: float, h: float, fill: str, title: str = "", extra: str = "") -> str:
    tip = f"<title>{escape(title)}</title>" if title else ""
    return f'<rect x="{_num(x)}" y="{_num(y)}" width="{_num(w)}" height="{_num(h)}" fill="{fill}"{extra}>{tip}</rect>'


def _cross(x: float, y: float, w: float, h: float) -> str:
    return (
        f'<path d="M{_num(x + 3)} {_num(y + 3)}L{_num(x + w - 3)} {_num(y + h - 3)}'
        f'M{_num(x + w - 3)} {_num(y + 3)}L{_num(x + 3)} {_num(y + h - 3)}" stroke="{INK}" stroke-width="1.4"/>'
    )


def heatmap_svg(heat: Heatmap, scale: float) -> Markup:
    """Parts x blocks coloured by ΔP, dropped cells crossed, and a ΔP bar per block below."""
    blocks, w = len(heat.dropped_blocks), heat.pitch
    top, bars_h = 4, 48
    grid_h = len(heat.row_labels) * CELL_H
    width = LABEL_W + blocks * w + 4
    body = []
    for r, label in enumerate(heat.row_labels):
        body.append(_text(LABEL_W - 6, top + r * CELL_H + 14, label, "end", 11))
        for b, cell in enumerate(heat.cells[r]):
            x, y = LABEL_W + b * w, top + r * CELL_H
            body.append(_rect(x, y, w - 2, CELL_H - 2, colour(cell.value, scale), cell.title))
            if cell.dropped:
                body.append(_cross(x, y, w - 2, CELL_H - 2))
    for b, dropped in enumerate(heat.dropped_blocks):
        if dropped:
            x = LABEL_W + b * w
            body.append(
                f'<rect x="{_num(x - 1)}" y="{top - 1}" width="{w}" height="{grid_h}" fill="none" stroke="{INK}" stroke-width="1.5"/>'
            )
    base = top + grid_h + 6
    body.extend(_block_bars(heat, base, bars_h))
    axis = base + bars_h + 12
    for b in range(blocks):
        body.append(_text(LABEL_W + b * w + w / 2 - 1, axis, str(b), "middle", 10, MUTED))
    return _svg(width, axis + 4, body, f"sensitivity of {heat.stack}")


def _block_bars(heat: Heatmap, top: float, height: float) -> list[str]:
    """ΔP per block as bars around a zero line (up: removal hurts; down: it helped)."""
    values = [v for v in heat.block_values if v is not None]
    peak = max((abs(v) for v in values), default=0.0) or 1.0
    negative = any(v < 0 for v in values)
    zero = top + (height * 0.75 if negative else height)
    up, down = zero - top, top + height - zero
    w = heat.pitch
    body = [_text(LABEL_W - 6, top + 10, "ΔP per block", "end", 9, MUTED)]
    for b, value in enumerate(heat.block_values):
        if value is None:
            continue
        x = LABEL_W + b * w + 4
        length = abs(value) / peak * (up if value >= 0 else down)
        y = zero - length if value >= 0 else zero
        body.append(_rect(x, y, w - 10, max(length, 0.5), colour(value, peak), heat.block_titles[b]))
    body.append(
        f'<line x1="{LABEL_W}" x2="{LABEL_W + len(heat.block_values) * w}" y1="{_num(zero)}" y2="{_num(zero)}" stroke="{MUTED}" stroke-width="0.8"/>'
    )
    return body


def legend_svg(scale: float, lowest: float) -> Markup:
    """The colour scale: the most helpful removal on the left, zero, the most harmful on the right."""
    steps, w, h = 24, 7, 12
    body = []
    x = 0.0
    left = [lowest * (1 - i / steps) for i in range(steps)] if lowest < 0 else []
    right = [scale * i / steps for i in range(steps + 1)]
    for value in [*left, *right]:
        body.append(_rect(x, 2, w, h, colour(value, scale)))
        x += w
    labels = [(0.0, f"{lowest:+.2f}")] if left else []
    labels += [(len(left) * w, "0"), (x, f"+{scale:.2f}")]
    body.extend(
        _text(pos, h + 14, text, "middle" if 0 < pos < x else ("start" if pos == 0 else "end"), 9, MUTED)
        for pos, text in labels
    )
    body.append(_rect(x + 14, 2, w * 2, h, MISSING))
    body.append(_text(x + 14 + w * 2 + 4, 12, "no entry", "start", 9, MUTED))
    body.append(_rect(x + 84, 2, w * 2, h, "#ffffff", extra=f' stroke="{INK}" stroke-width="0.6"'))
    body.append(_cross(x + 84, 2, w * 2, h))
    body.append(_text(x + 84 + w * 2 + 4, 12, "dropped by the plan", "start", 9, MUTED))
    return _svg(x + 210, h + 18, body, "colour scale of ΔP")


@dataclass(frozen=True)
class Bar:
    label: str
    value: float
    text: str  # what the bar says at its end
    part: float | None = None  # a kept share of `value`, drawn darker (e.g. kept parameters)


def bars_svg(bars: Sequence[Bar], label: str, width: float = 420) -> Markup:
    """Horizontal bars scaled to the largest value, a label on the left and a number on the right."""
    peak = max((b.value for b in bars), default=0.0) or 1.0
    left, right, row = 104, 150, 20
    span = width - left - right
    body = []
    for i, bar in enumerate(bars):
        y = 4 + i * row
        body.append(_text(left - 6, y + 11, bar.label, "end"))
        length = bar.value / peak * span
        if bar.part is None:
            body.append(_rect(left, y + 1, max(length, 0.5), row - 6, "#5b7fa6", bar.text))
        else:
            body.append(_rect(left, y + 1, max(length, 0.5), row - 6, "#d9e1ea", bar.text))
            body.append(_rect(left, y + 1, max(bar.part / peak * span, 0.5), row - 6, "#5b7fa6", bar.text))
        body.append(_text(left + length + 6, y + 11, bar.text, "start", 10, MUTED))
    return _svg(width, 8 + len(bars) * row, body, label)
