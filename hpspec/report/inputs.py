"""The report's inputs: a plan and, optionally, a sensitivity table, an evaluation, an evidence
table, an older plan and SGDistill scales, read from files and checked before anything renders.

Input formats are documented in docs/report.md.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hpspec.core.errors import ReportError
from hpspec.core.io import read_json_input, read_text_input
from hpspec.core.paths import SCALES_NAME
from hpspec.method.sensitivity import SensitivityTable, load_table
from hpspec.plan.front import plan_spec
from hpspec.plan.plan import Plan
from hpspec.plan.schema import load_plan
from hpspec.report.contact_sheet import load_contact_sheet
from hpspec.report.images import checked_grid
from hpspec.report.lora import load_coverage


@dataclass(frozen=True)
class ReportInputs:
    plan: Plan
    sensitivity: SensitivityTable | None = None
    evaluation: Mapping[str, Any] | None = None  # `hpspec eval` JSON, optionally with `images`
    evidence: Sequence[Mapping[str, Any]] | None = None  # rows of a comparison table
    against: Plan | None = None
    labels: tuple[str, str] = ("old plan", "this plan")  # names of `against` and `plan` in the diff
    scales: Mapping[str, float] | None = None  # SGDistill scales (a distill stage's scales.json)
    lora: Sequence[Mapping[str, Any]] | None = None  # `hpspec lora` coverage files (report/lora.py)
    contact_sheet: Mapping[str, Any] | None = None  # `analyze --save-images` beside the table (report/contact_sheet.py)


def is_number(value: Any) -> bool:
    """A finite int or float (not a bool): what a table cell may show as a number."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_evaluation(data: Any, where: str) -> Mapping[str, Any]:
    """An `hpspec eval` result: `metrics` names numeric top-level keys; `reference` has the same shape."""
    if not isinstance(data, Mapping) or not isinstance(data.get("metrics"), list):
        raise ReportError(
            f"{where}: an evaluation is a JSON object with a `metrics` list (the output of `hpspec eval`)"
        )
    for name in data["metrics"]:
        if not isinstance(name, str) or not is_number(data.get(name)):
            raise ReportError(f"{where}: metric {name!r} has no numeric value")
    if "reference" in data and not isinstance(data["reference"], Mapping):
        raise ReportError(f"{where}: `reference` is an evaluation object")
    if "images" in data:
        checked_grid(data["images"], where)
    return data


def check_evidence(data: Any, where: str) -> list[dict[str, Any]]:
    """A list of row objects (or `{"rows": [...]}`): one row per method or configuration."""
    rows = data.get("rows") if isinstance(data, dict) else data
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise ReportError(f"{where}: evidence is a JSON list of row objects, or an object with `rows`")
    return rows


def load_plan_input(path: str | Path, target: str | None = None) -> Plan:
    """A plan JSON, or a spec compiled here (a plan always starts with `{`, a spec never does)."""
    text = read_text_input(Path(path), "plan or spec", 64 << 20)
    if text.lstrip().startswith("{"):
        return load_plan(text, str(path))
    return plan_spec(path, target)


def load_inputs(
    plan: str | Path,
    sensitivity: str | Path | None = None,
    evaluation: str | Path | None = None,
    evidence: str | Path | None = None,
    against: str | Path | None = None,
    target: str | None = None,
    scales: str | Path | None = None,
    lora: Sequence[str | Path] | None = None,
) -> ReportInputs:
    """The inputs of `hpspec report`, each read and checked (paths as the command line gives them)."""
    return ReportInputs(
        plan=load_plan_input(plan, target),
        sensitivity=load_table(Path(sensitivity)) if sensitivity else None,
        evaluation=check_evaluation(read_json_input(Path(evaluation), "evaluation"), str(evaluation))
        if evaluation
        else None,
        evidence=check_evidence(read_json_input(Path(evidence), "evidence table"), str(evidence)) if evidence else None,
        against=load_plan_input(against, target) if against else None,
        labels=(str(against), str(plan)) if against else ("old plan", "this plan"),
        scales=read_json_input(Path(scales), "scales") if scales else None,
        lora=[load_coverage(p) for p in lora] if lora else None,
        contact_sheet=load_contact_sheet(Path(sensitivity)) if sensitivity else None,
    )


def stage_inputs(directory: Path, plan: Plan, sensitivity: str | Path | None = None) -> ReportInputs:
    """A stage directory's report: its plan, the sensitivity table it used, and the SGDistill
    scales a distill stage wrote beside them."""
    scales_file = Path(directory) / SCALES_NAME
    scales = read_json_input(scales_file, SCALES_NAME) if scales_file.is_file() else None
    return ReportInputs(plan, sensitivity=load_table(Path(sensitivity)) if sensitivity else None, scales=scales)
