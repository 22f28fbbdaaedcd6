"""diff: what spec or plan B does differently from A, semantically (`hpspec diff`).

`compare` reads the inputs (specs compiled here, or plan JSON) and computes the `PlanDiff`;
`render` writes it as text, Markdown or JSON, and gives the HTML report its pieces.
"""

from __future__ import annotations

from hpspec.plan.diff.compare import (
    MAX_INPUT_BYTES,
    Change,
    Count,
    FreezeChange,
    PlanDiff,
    Removal,
    diff_plans,
    load_pair,
    selector_text,
)
from hpspec.plan.diff.render import detail_sections, headline, render, table_rows

__all__ = [
    "MAX_INPUT_BYTES", "Change", "Count", "FreezeChange", "PlanDiff", "Removal", "detail_sections", "diff_plans",
    "headline", "load_pair", "render", "selector_text", "table_rows",
]  # fmt: skip
