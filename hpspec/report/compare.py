"""The comparison page: several plans of one model side by side, one self-contained HTML page
(`hpspec demo` writes it as `hpspec-demo/report.html`).

Its inputs are plain data: the comparison table (one row per model, cells already formatted), the
plans whose block maps are drawn on one depth axis, optionally the sensitivity table (its heatmap
crossed where the first plan drops) and an image grid (per prompt, one image per model). It is
drawn with the plan report's own pieces: block maps and heatmaps from `hpspec.report.blockmap`,
SVG from `hpspec.report.svg`, the same templates and stylesheet, autoescaped; like the plan
report it has no scripts, fonts, links or images outside itself, and no clock.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hpspec.core.errors import ReportError
from hpspec.core.io import write_text_atomic
from hpspec.core.version import __version__
from hpspec.method.sensitivity import SensitivityTable
from hpspec.plan.plan import Plan
from hpspec.report.blockmap import Fates, block_map, stack_layouts
from hpspec.report.html import environment, sensitivity_section
from hpspec.report.images import checked_png


@dataclass(frozen=True)
class ImageColumn:
    """One model's images in the grid: one base64 PNG per prompt, in the prompts' order."""

    name: str
    images: Sequence[str]


@dataclass(frozen=True)
class Comparison:
    title: str
    subtitle: str
    columns: Sequence[str]  # the table's header
    rows: Sequence[Sequence[str]]  # one row per model; the first column names it
    plans: Sequence[tuple[str, Plan]]  # (name, plan), drawn in this order; all of one target
    sensitivity: SensitivityTable | None = None
    prompts: Sequence[str] = ()
    images: Sequence[ImageColumn] = ()
    notes: Sequence[str] = ()
    badges: Sequence[str] = ()
    kicker: str = "hpspec comparison"
    text_columns: frozenset[str] = field(default_factory=frozenset)  # left-aligned besides the first


def render_comparison(comparison: Comparison) -> str:
    """The page as one string."""
    return environment().get_template("compare.html").render(page=comparison_page(comparison))


def write_comparison(path: str | Path, comparison: Comparison) -> None:
    """Render and write atomically."""
    write_text_atomic(Path(path), render_comparison(comparison))


def comparison_page(comparison: Comparison) -> dict[str, Any]:
    """Everything the template shows, as plain data; sections without input are None."""
    if not comparison.plans:
        raise ReportError("a comparison needs at least one plan")
    targets = {plan.target.fingerprint for _, plan in comparison.plans}
    if len(targets) != 1:
        raise ReportError("a comparison draws plans of one model: these plans have different targets")
    name, first = comparison.plans[0]
    layouts, _ = stack_layouts(first)
    groups, legend = _block_maps(comparison.plans)
    sensitivity = sensitivity_section(comparison.sensitivity, first, layouts, Fates.of(first, None))
    if sensitivity is not None:  # "this plan" of the plan report's heatmap is the first one here
        sensitivity = {**sensitivity, "block_note": f"{sensitivity['block_note']}. Crossed cells: dropped by {name}."}
    return {
        "title": comparison.title,
        "subtitle": comparison.subtitle,
        "kicker": comparison.kicker,
        "badges": list(comparison.badges),
        "table": _table(comparison),
        "notes": list(comparison.notes),
        "block_maps": groups,
        "legend": legend,
        "sensitivity": sensitivity,
        "images": _images(comparison),
        "footer": f"hpspec {__version__} · {first.target.name} ({first.target.fingerprint})",
    }


def _table(comparison: Comparison) -> dict[str, Any]:
    width = len(comparison.columns)
    if any(len(row) != width for row in comparison.rows):
        raise ReportError(f"every row of the comparison has {width} cells, one per column")
    css = ["" if i == 0 or name in comparison.text_columns else "num" for i, name in enumerate(comparison.columns)]
    return {
        "columns": [{"text": name, "css": css[i]} for i, name in enumerate(comparison.columns)],
        "rows": [[{"text": text, "css": css[i]} for i, text in enumerate(row)] for row in comparison.rows],
    }


def _block_maps(plans: Sequence[tuple[str, Plan]]) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
    """Per stack, every plan's map of it (the same columns, so depths line up); one legend."""
    groups: dict[str, dict[str, Any]] = {}
    legend: dict[str, dict[str, str]] = {}
    for name, plan in plans:
        layouts, note = stack_layouts(plan)
        page = block_map(plan, layouts, Fates.of(plan, None), note)
        for stack in page["stacks"]:
            group = groups.setdefault(stack.name, {"title": f"{stack.name}: {stack.columns} blocks", "rows": []})
            group["rows"].append({"name": name, "title": stack.title, "stack": stack})
        for item in page["legend"]:
            legend.setdefault(item["css"], item)
    return list(groups.values()), list(legend.values())


def _images(comparison: Comparison) -> dict[str, Any] | None:
    if not comparison.images:
        return None
    prompts = list(comparison.prompts)
    for column in comparison.images:
        if len(column.images) != len(prompts):
            raise ReportError(
                f"images of {column.name}: {len(column.images)} for {len(prompts)} prompts; expected one per prompt"
            )
    rows = [
        {
            "prompt": prompt,
            "cells": [
                {"name": c.name, "image": checked_png(c.images[i], f"images of {c.name}")} for c in comparison.images
            ],
        }
        for i, prompt in enumerate(prompts)
    ]
    lead = "Per prompt, the same seed: the original model's image, then each method's."
    return {"lead": lead, "columns": [c.name for c in comparison.images], "rows": rows}
