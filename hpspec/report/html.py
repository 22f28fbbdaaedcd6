"""report: a plan (with, optionally, a sensitivity table, an evaluation, an evidence table and an
older plan) -> one self-contained HTML page.

This module turns the inputs into plain data (dataclasses of strings and numbers, SVG made in
`report_svg`); the Jinja2 templates in `hpspec/templates` only lay it out, with autoescape and
strict undefined. The page has no scripts, fonts, images or links outside itself, and no clock:
the same inputs give the same bytes. Input formats are documented in docs/report.md.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from hpspec.core.version import __version__
from hpspec.core.errors import HpspecError
from hpspec.plan.plan import Op, Plan
from hpspec.report.blockmap import Fates, StackLayout, block_map, column_pitch, heatmap, part_label, reason_text, stack_layouts
from hpspec.method.sensitivity import SensitivityError, SensitivityTable
from hpspec.plan.summary import human_bytes, human_count


class ReportError(HpspecError):
    """A report input is malformed, or the report cannot be rendered here."""


@dataclass(frozen=True)
class ReportInputs:
    plan: Plan
    sensitivity: SensitivityTable | None = None
    evaluation: Mapping[str, Any] | None = None  # `hpspec eval` JSON, optionally with `images`
    evidence: Sequence[Mapping[str, Any]] | None = None  # rows of a comparison table
    against: Plan | None = None
    labels: tuple[str, str] = ("old plan", "this plan")  # names of `against` and `plan` in the diff
    scales: Mapping[str, float] | None = None  # SGDistill scales (a distill stage's scales.json)


# --------------------------------------------------------------------------------------------
# Rendering


def render_report(inputs: ReportInputs) -> str:
    """The page as one string."""
    return _environment().get_template("report.html").render(page=build_page(inputs))


def write_report(path: str | Path, inputs: ReportInputs) -> None:
    """Render and write atomically (the compile stages call this for their report.html)."""
    from hpspec.core.io import write_text_atomic

    write_text_atomic(Path(path), render_report(inputs))


def _environment() -> Any:
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
        "sensitivity": _sensitivity(inputs.sensitivity, plan, layouts, fates),
        "evaluation": _evaluation(inputs.evaluation),
        "evidence": _evidence(inputs.evidence),
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
    from hpspec.report.svg import Bar, bars_svg

    p, b = plan.params, plan.bytes
    sizes: list[tuple[str, int, int | None]] = [("original", p.before, b.before), ("after prune", p.after_prune, b.after_prune)]
    if plan.quantize is not None:
        quantized = getattr(b, "after_quantize", None)  # added to plans by a later schema
        sizes.append((f"after quantize ({plan.quantize.scheme})", p.after_prune, quantized if isinstance(quantized, int) else None))
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


def _sensitivity(table: SensitivityTable | None, plan: Plan, layouts: list[StackLayout], fates: Fates) -> dict[str, Any] | None:
    if table is None:
        return None
    from hpspec.report.svg import legend_svg

    if table.target.fingerprint != plan.target.fingerprint:
        raise SensitivityError(
            f"the sensitivity table was measured on {table.target.name} ({table.target.fingerprint}), "
            f"not on the plan's {plan.target.name} ({plan.target.fingerprint})"
        )
    deltas = [e.delta for e in table.entries]
    scale, lowest = max([0.0, *deltas]), min([0.0, *deltas])
    maps = [heatmap(table, layout, fates, column_pitch(layouts)) for layout in layouts if any(e.stack == layout.name for e in table.entries)]
    from hpspec.report.svg import heatmap_svg

    helped = sum(d < 0 for d in deltas)
    return {
        "scorer": table.scorer.name,
        "facts": [
            {"key": "scorer", "value": f"{table.scorer.name} ({', '.join(table.scorer.metrics)}), higher is {'better' if table.scorer.higher_is_better else 'worse'}"},
            {"key": "full model", "value": f"{table.full_score:.4g}"},
            {"key": "entries", "value": f"{len(table.entries)} ({'block and part rows' if table.has_block_rows else 'part rows only'})"},
            {"key": "removal helped", "value": f"{helped} entr{'ies' if helped != 1 else 'y'} score above the full model (ΔP < 0)"},
            {"key": "settings", "value": table.settings_hash},
        ],
        "legend": legend_svg(scale, lowest),
        "maps": [{"title": h.stack, "svg": heatmap_svg(h, scale)} for h in maps],
        "block_note": "ΔP per block: its own row" if table.has_block_rows else "ΔP per block: the sum of its part rows",
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


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _evaluation(result: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if result is None:
        return None
    from hpspec.report.images import checked_grid

    result = check_evaluation(result, "evaluation")
    reference = result.get("reference") if isinstance(result.get("reference"), Mapping) else {}
    drops = result.get("relative_drop") if isinstance(result.get("relative_drop"), Mapping) else {}
    rows = []
    for name in result["metrics"]:
        ref = reference.get(name)
        rows.append([name, _number(result[name]), _number(ref), f"{100 * drops[name]:.2f}%" if _is_number(drops.get(name)) else "–"])
    facts = []
    if _is_number(result.get("degradation")):
        facts.append({"key": "degradation (mean relative drop)", "value": f"{100 * result['degradation']:.2f}%"})
    if _is_number(result.get("latency_s_per_image")):
        ref = reference.get("latency_s_per_image")
        against = f" (reference {1000 * ref:.2f} ms)" if _is_number(ref) else ""
        facts.append({"key": "latency per image", "value": f"{1000 * result['latency_s_per_image']:.2f} ms{against}"})
    if "num_images" in result:
        facts.append({"key": "images scored", "value": _number(result["num_images"])})
    grid = checked_grid(result["images"], "evaluation") if "images" in result else None
    images = None
    if grid is not None:
        images = [{"prompt": p, "original": o, "pruned": q} for p, o, q in zip(grid["prompts"], grid["original"], grid["pruned"])]
    return {"metrics": rows, "facts": facts, "images": images}


def check_evaluation(data: Any, where: str) -> Mapping[str, Any]:
    """An `hpspec eval` result: `metrics` names numeric top-level keys; `reference` has the same shape."""
    if not isinstance(data, Mapping) or not isinstance(data.get("metrics"), list):
        raise ReportError(f"{where}: an evaluation is a JSON object with a `metrics` list (the output of `hpspec eval`)")
    for name in data["metrics"]:
        if not isinstance(name, str) or not _is_number(data.get(name)):
            raise ReportError(f"{where}: metric {name!r} has no numeric value")
    if "reference" in data and not isinstance(data["reference"], Mapping):
        raise ReportError(f"{where}: `reference` is an evaluation object")
    if "images" in data:
        from hpspec.report.images import checked_grid

        checked_grid(data["images"], where)
    return data


def check_evidence(data: Any, where: str) -> list[dict[str, Any]]:
    """A list of row objects (or `{"rows": [...]}`): one row per method or configuration."""
    rows = data.get("rows") if isinstance(data, dict) else data
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise ReportError(f"{where}: evidence is a JSON list of row objects, or an object with `rows`")
    return rows


def _evidence(rows: Sequence[Mapping[str, Any]] | None) -> dict[str, Any] | None:
    """Rows as given; a column whose values are all numbers (or empty) is right-aligned."""
    if rows is None:
        return None
    names = list(dict.fromkeys(str(k) for row in rows for k in row))
    numeric = {c: all(row.get(c) is None or _is_number(row.get(c)) for row in rows) for c in names}
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
    from hpspec.plan.diff import detail_sections, diff_plans, headline, table_rows

    d = diff_plans(old, new, labels)
    return {
        "labels": list(labels),
        "headline": headline(d),
        "rows": table_rows(d),
        "sections": [{"title": title, "lines": [code_spans(line) for line in lines]} for title, lines in detail_sections(d)],
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
    distill = [{"key": k, "value": _number(v)} for k, v in asdict(plan.distill).items() if k != "scales"] if plan.distill else None
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
    for number, text in enumerate(plan.spec.source.splitlines(), start=1):
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


# --------------------------------------------------------------------------------------------
# Reading the inputs of `hpspec report`


def load_plan_input(path: str | Path, target: str | None = None) -> Plan:
    """A plan JSON, or a spec compiled here (a plan always starts with `{`, a spec never does)."""
    from hpspec.core.io import read_text_input

    text = read_text_input(Path(path), "plan or spec", 64 << 20)
    if text.lstrip().startswith("{"):
        from hpspec.plan.schema import load_plan

        return load_plan(text, str(path))
    from hpspec.plan.plan import plan_spec

    return plan_spec(path, target)


def load_inputs(
    plan: str | Path,
    sensitivity: str | Path | None = None,
    evaluation: str | Path | None = None,
    evidence: str | Path | None = None,
    against: str | Path | None = None,
    target: str | None = None,
    scales: str | Path | None = None,
) -> ReportInputs:
    from hpspec.core.io import read_json_input
    from hpspec.method.sensitivity import load_table

    return ReportInputs(
        plan=load_plan_input(plan, target),
        sensitivity=load_table(Path(sensitivity)) if sensitivity else None,
        evaluation=check_evaluation(read_json_input(Path(evaluation), "evaluation"), str(evaluation)) if evaluation else None,
        evidence=check_evidence(read_json_input(Path(evidence), "evidence table"), str(evidence)) if evidence else None,
        against=load_plan_input(against, target) if against else None,
        labels=(str(against), str(plan)) if against else ("old plan", "this plan"),
        scales=read_json_input(Path(scales), "scales") if scales else None,
    )
