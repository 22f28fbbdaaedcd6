"""report: a plan (with, optionally, a sensitivity table, an evaluation, an evidence table and an
older plan) -> one self-contained HTML page.

This module turns the inputs (`hpspec.report.inputs`) into plain data (dataclasses of strings and
numbers, SVG made in `hpspec.report.svg`); the Jinja2 templates in `hpspec/report/templates` only
lay it out, with autoescape and strict undefined. The page has no scripts, fonts, images or links
outside itself, and no clock: the same inputs give the same bytes.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from hpspec.core.diagnostics import lines_of
from hpspec.core.errors import ReportError, SensitivityError
from hpspec.core.io import write_text_atomic
from hpspec.core.paths import REPORT_NAME
from hpspec.core.version import __version__
from hpspec.method.sensitivity import SensitivityTable
from hpspec.plan.diff import detail_sections, diff_plans, headline, table_rows
from hpspec.plan.plan import Op, Plan
from hpspec.plan.summary import human_bytes, human_count
from hpspec.report.blockmap import (
    Fates,
    StackLayout,
    block_map,
    column_pitch,
    heatmap,
    part_label,
    reason_text,
    stack_layouts,
)
from hpspec.report.images import checked_grid
from hpspec.report.inputs import ReportInputs, check_evaluation, is_number, stage_inputs
from hpspec.report.lora import lora_rows
from hpspec.report.probes import probe_section
from hpspec.report.svg import Bar, bars_svg, heatmap_svg, legend_svg

# --------------------------------------------------------------------------------------------
# Rendering


def render_report(inputs: ReportInputs) -> str:
    """The page as one string."""
    return environment().get_template("report.html").render(page=build_page(inputs))


def write_report(path: str | Path, inputs: ReportInputs) -> None:
    """Render and write atomically (the compile stages call this for their report.html)."""
    write_text_atomic(Path(path), render_report(inputs))


def write_stage_report(directory: Path, plan: Plan, sensitivity: str | None = None) -> None:
    """A stage directory's report.html: its plan, with the sensitivity table the stage used and the
    SGDistill scales a distill stage wrote beside it (the stages' `ReportWriter`)."""
    write_report(Path(directory) / REPORT_NAME, stage_inputs(directory, plan, sensitivity))


def environment() -> Any:
    try:
        import jinja2
    except ImportError:
        raise ReportError("the HTML report needs Jinja2: pip install 'hpspec[report]'") from None
    return jinja2.Environment(
        loader=jinja2.PackageLoader("hpspec.report", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )


def build_page(inputs: ReportInputs) -> dict[str, Any]:
    """Everything the templates show, as plain data; sections without input are None."""
    plan = inputs.plan
    layouts, layout_note = stack_layouts(plan)
    diff = _diff(inputs.against, plan, inputs.labels)
    fates = Fates.of(plan, diff, inputs.scales)
    return {
        "title": f"hpspec report: {plan.target.name}",
        "target": plan.target.name,
        "spec_path": plan.spec.path,
        "badges": _badges(plan),
        "summary": _summary(plan),
        "block_map": block_map(plan, layouts, fates, layout_note),
        "sensitivity": sensitivity_section(inputs.sensitivity, plan, layouts, fates),
        "contact_sheet": inputs.contact_sheet,
        "evaluation": _evaluation(inputs.evaluation),
        "evidence": evidence_table(inputs.evidence),
        "lora": evidence_table(lora_rows(inputs.lora)),
        "diff": diff,
        "ops": [_op_row(op, plan) for op in plan.ops],
        "training": _training(plan),
        "spec": _spec(plan),
        "footer": f"hpspec {__version__} · plan sha256 {plan.sha256}",
    }


# --------------------------------------------------------------------------------------------
# Summary


def _share(n: int, total: int) -> str:
    return f"{100 * n / total:.1f}%" if total else "–"


def _badges(plan: Plan) -> list[str]:
    blocks = sum(len(s.dropped) for s in plan.stacks.values())
    parts = sum(op.kind == "drop_part" for op in plan.ops)
    badges = [f"{_share(plan.params.after_prune, plan.params.before)} of parameters kept",
              f"{blocks} block{'s' * (blocks != 1)} and {parts} part{'s' * (parts != 1)} dropped"]  # fmt: skip
    if plan.freeze.rule != "none":
        badges.append(f"PWP: {plan.freeze.rule}")
    if plan.distill is not None:
        badges.append(f"distill: {plan.distill.weight} ({plan.distill.mode})")
    if plan.quantize is not None:
        badges.append(f"quantize: {plan.quantize.scheme}")
    return badges


def _summary(plan: Plan) -> dict[str, Any]:
    """Parameters and weight bytes before and after each stage, as table rows and bar charts."""
    p, b = plan.params, plan.bytes
    sizes: list[tuple[str, int, int | None]] = [
        ("original", p.before, b.before),
        ("after prune", p.after_prune, b.after_prune),
    ]
    if plan.quantize is not None:
        quantized = getattr(b, "after_quantize", None)  # added to plans by a later schema
        sizes.append(
            (
                f"after quantize ({plan.quantize.scheme})",
                p.after_prune,
                quantized if isinstance(quantized, int) else None,
            )
        )
    stages = [
        [stage, f"{params:,}", _share(params, p.before), human_bytes(size) if size is not None else "not estimated in this plan",
         _share(size, b.before) if size is not None else "–"]
        for stage, params, size in sizes
    ]  # fmt: skip
    bars = [Bar(stage.split(" (")[0], size, human_bytes(size) + (f" · {_share(size, b.before)}" if i else ""))
            for i, (stage, _, size) in enumerate(sizes) if size is not None]  # fmt: skip
    kinds = [Bar(part_label(k), c.before, f"{_share(c.after, c.before)} of {human_count(c.before)} kept", c.after)
             for k, c in p.by_part_kind.items()]  # fmt: skip
    return {
        "stages": stages,
        "bytes_unit": f"weight bytes as {b.dtype} ({b.unit})",
        "bytes_chart": bars_svg(bars, "weight bytes per stage"),
        "kinds_chart": bars_svg(kinds, "parameters kept per kind of part"),
        "identity": _identity(plan),
    }


def _identity(plan: Plan) -> list[dict[str, str]]:
    rows = [
        ("target", f"{plan.target.name} ({plan.target.family})"),
        ("target source", plan.target.source),
        ("graph fingerprint", plan.target.fingerprint),
        ("spec", plan.spec.path),
        ("spec sha256", plan.spec.sha256),
        ("plan sha256", plan.sha256),
        ("plan schema", f"v{plan.schema_version}, written by hpspec {plan.hpspec_version}"),
        ("report", f"hpspec {__version__}"),
    ]
    return [{"key": k, "value": v} for k, v in rows]


# --------------------------------------------------------------------------------------------
# Sensitivity


def sensitivity_section(
    table: SensitivityTable | None, plan: Plan, layouts: list[StackLayout], fates: Fates
) -> dict[str, Any] | None:
    if table is None:
        return None
    if table.target.fingerprint != plan.target.fingerprint:
        raise SensitivityError(
            f"the sensitivity table was measured on {table.target.name} ({table.target.fingerprint}), "
            f"not on the plan's {plan.target.name} ({plan.target.fingerprint})"
        )
    deltas = [e.delta for e in table.entries]
    scale, lowest = max([0.0, *deltas]), min([0.0, *deltas])
    maps = [
        heatmap(table, layout, fates, column_pitch(layouts))
        for layout in layouts
        if any(e.stack == layout.name for e in table.entries)
    ]
    helped = sum(d < 0 for d in deltas)
    return {
        "scorer": table.scorer.name,
        "facts": [
            {
                "key": "scorer",
                "value": f"{table.scorer.name} ({', '.join(table.scorer.metrics)}), higher is {'better' if table.scorer.higher_is_better else 'worse'}",
            },
            {"key": "full model", "value": f"{table.full_score:.4g}"},
            {
                "key": "entries",
                "value": f"{len(table.entries)} ({'block and part rows' if table.has_block_rows else 'part rows only'})",
            },
            {
                "key": "removal helped",
                "value": f"{helped} entr{'ies' if helped != 1 else 'y'} score above the full model (ΔP < 0)",
            },
            {"key": "settings", "value": table.settings_hash},
        ],
        "legend": legend_svg(scale, lowest),
        "maps": [{"title": h.stack, "svg": heatmap_svg(h, scale)} for h in maps],
        "block_note": "ΔP per block: its own row" if table.has_block_rows else "ΔP per block: the sum of its part rows",
        "probes": probe_section(table),
    }


# --------------------------------------------------------------------------------------------
# Evaluation and evidence


def _number(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:.4g}" if math.isfinite(value) else str(value)
    if isinstance(value, str):
        return value
    return json.dumps(value, sort_keys=True, ensure_ascii=False)


def _evaluation(result: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if result is None:
        return None
    result = check_evaluation(result, "evaluation")
    reference = result.get("reference") if isinstance(result.get("reference"), Mapping) else {}
    drops = result.get("relative_drop") if isinstance(result.get("relative_drop"), Mapping) else {}
    rows = []
    for name in result["metrics"]:
        ref = reference.get(name)
        rows.append(
            [
                name,
                _number(result[name]),
                _number(ref),
                f"{100 * drops[name]:.2f}%" if is_number(drops.get(name)) else "–",
            ]
        )
    facts = []
    if is_number(result.get("degradation")):
        facts.append({"key": "degradation (mean relative drop)", "value": f"{100 * result['degradation']:.2f}%"})
    if is_number(result.get("latency_s_per_image")):
        ref = reference.get("latency_s_per_image")
        against = f" (reference {1000 * ref:.2f} ms)" if is_number(ref) else ""
        facts.append({"key": "latency per image", "value": f"{1000 * result['latency_s_per_image']:.2f} ms{against}"})
    if "num_images" in result:
        facts.append({"key": "images scored", "value": _number(result["num_images"])})
    grid = checked_grid(result["images"], "evaluation") if "images" in result else None
    images = None
    if grid is not None:
        images = [
            {"prompt": p, "original": o, "pruned": q}
            for p, o, q in zip(grid["prompts"], grid["original"], grid["pruned"])
        ]
    return {"metrics": rows, "facts": facts, "images": images}


def evidence_table(rows: Sequence[Mapping[str, Any]] | None) -> dict[str, Any] | None:
    """Rows as given; a column whose values are all numbers (or empty) is right-aligned."""
    if rows is None:
        return None
    names = list(dict.fromkeys(str(k) for row in rows for k in row))
    numeric = {c: all(row.get(c) is None or is_number(row.get(c)) for row in rows) for c in names}
    css = {c: "num" if numeric[c] else "" for c in names}
    return {
        "columns": [{"text": c, "css": css[c]} for c in names],
        "rows": [[{"text": _number(row.get(c)), "css": css[c]} for c in names] for row in rows],
    }


# --------------------------------------------------------------------------------------------
# Against an older plan


def _diff(old: Plan | None, new: Plan, labels: tuple[str, str]) -> dict[str, Any] | None:
    """`hpspec diff`'s view of the change, its code spans marked for the templates."""
    if old is None:
        return None
    d = diff_plans(old, new, labels)
    return {
        "labels": list(labels),
        "headline": headline(d),
        "rows": table_rows(d),
        "sections": [
            {"title": title, "lines": [code_spans(line) for line in lines]} for title, lines in detail_sections(d)
        ],
        "new": [(r.stack, r.block, r.part) for r in d.dropped],
        "restored": [(r.stack, r.block, r.part) for r in d.restored],
    }


def code_spans(text: str) -> list[dict[str, Any]]:
    """`a `b` c` -> [{text: "a ", code: False}, {text: "b", code: True}, {text: " c", code: False}]."""
    return [{"text": piece, "code": i % 2 == 1} for i, piece in enumerate(text.split("`")) if piece]


# --------------------------------------------------------------------------------------------
# Operations, training settings, spec source


def _op_row(op: Op, plan: Plan) -> dict[str, str]:
    singular = op.stack.removesuffix("s")
    selector = f"{singular}[{op.block}]" + (f".{op.part}" if op.part else "")
    if op.kind == "convert_last_block":
        selector += f" → last block ({op.new_index})"
    return {
        "kind": op.kind.replace("_", " "),
        "selector": selector,
        "modules": ", ".join(op.modules),
        "params": f"{op.params:,}",
        "share": _share(op.params, plan.params.before),
        "reason": reason_text(op.reason),
    }


def _training(plan: Plan) -> dict[str, Any]:
    f = plan.freeze
    kept = f.frozen_params + f.trainable_params
    freeze = [
        {"key": "rule", "value": f.rule},
        {"key": "frozen", "value": f"{f.frozen_params:,} parameters ({_share(f.frozen_params, kept)} of those kept)"},
        {"key": "trainable", "value": f"{f.trainable_params:,} parameters ({_share(f.trainable_params, kept)})"},
    ]
    distill = (
        [{"key": k, "value": _number(v)} for k, v in asdict(plan.distill).items() if k != "scales"]
        if plan.distill
        else None
    )
    quantize = None
    if plan.quantize is not None:
        q = plan.quantize
        quantize = [{"key": "scheme", "value": q.scheme}, {"key": "backend", "value": q.backend}, {"key": "compute", "value": q.compute},
                    {"key": "kept in full precision", "value": ", ".join(q.except_modules) or "nothing"}]  # fmt: skip
    return {"freeze": freeze, "frozen": ", ".join(f.frozen) or "nothing", "trainable": ", ".join(f.trainable) or "nothing",
            "distill": distill, "quantize": quantize}  # fmt: skip


@dataclass(frozen=True)
class SpecLine:
    number: int
    code: str
    comment: str
    notes: list[dict[str, str]] = field(default_factory=list)


def _spec(plan: Plan) -> dict[str, Any]:
    by_line: dict[int | None, list[dict[str, str]]] = {}
    for d in plan.spec.diagnostics:
        where = f"line {d.line}, column {d.column}" if d.line is not None and d.column is not None else ""
        note = {"severity": d.severity, "message": d.message, "help": d.help or "", "where": where}
        by_line.setdefault(d.line, []).append(note)
    lines = []
    for number, text in enumerate(lines_of(plan.spec.source), start=1):
        code, comment = split_comment(text)
        lines.append(SpecLine(number, code, comment, by_line.pop(number, [])))
    loose = [n for notes in by_line.values() for n in notes]  # no line, or past the end
    return {"path": plan.spec.path, "lines": lines, "loose": loose, "count": len(plan.spec.diagnostics)}


def split_comment(line: str) -> tuple[str, str]:
    """(code, `# comment`) of one spec line; a `#` inside a string is code."""
    quoted = escaped = False
    for i, char in enumerate(line):
        if escaped:
            escaped = False
        elif char == "\\" and quoted:
            escaped = True
        elif char == '"':
            quoted = not quoted
        elif char == "#" and not quoted:
            return line[:i], line[i:]
    return line, ""
