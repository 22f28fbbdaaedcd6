"""lora: the report's LoRA section, from the coverage JSON that `hpspec lora` writes beside each
remapped adapter (OUT/lora/<name>.json): per adapter and block, the modules and the share of the
adapter's update norm that survive the plan (docs/lora.md).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from hpspec.core.errors import ReportError
from hpspec.core.io import read_json_input

SHARE_KEYS = ("modules", "kept_modules", "update_norm", "kept_update_norm")


def load_coverage(path: str | Path) -> Mapping[str, Any]:
    """One coverage JSON, checked: a `total` and `blocks` of shares."""
    data = read_json_input(Path(path), "LoRA coverage")
    shares = [data.get("total")] + list((data.get("blocks") or {}).values()) if isinstance(data, Mapping) else []
    if not shares or not all(isinstance(s, Mapping) and all(k in s for k in SHARE_KEYS) for s in shares):
        raise ReportError(
            f"{path}: a LoRA coverage file is the JSON `hpspec lora` writes beside an adapter "
            "(OUT/lora/<name>.json), with `total` and `blocks`"
        )
    return {**data, "file": str(path)}


def _percent(kept: float, whole: float) -> str:
    return f"{100 * kept / whole:.1f}%" if whole else "–"


def lora_rows(reports: Sequence[Mapping[str, Any]] | None) -> list[dict[str, Any]] | None:
    """One row per adapter and block, then its total: modules kept, update norm kept."""
    if not reports:
        return None
    rows = []
    for report in reports:
        name = Path(str(report.get("adapter") or report["file"])).name
        shares = [*report["blocks"].items(), ("total", report["total"])]
        for block, share in shares:
            rows.append(
                {
                    "adapter": name,
                    "block": block,
                    "modules kept": f"{share['kept_modules']} of {share['modules']}",
                    "update norm kept": _percent(share["kept_update_norm"], share["update_norm"]),
                }
            )
    return rows
