"""The sensitivity section's probe table: `hpspec analyze --probe` values per block and part."""

from __future__ import annotations

from typing import Any

from hpspec.method.sensitivity import Probe, SensitivityTable

PROBE_HEADER = ("block", "part", "cosine", "mse", "CKA", "calls")


def _value(value: float | None) -> str:
    return "–" if value is None else f"{value:.4g}"


def _row(probe: Probe) -> list[str]:
    where = f"{probe.stack}[{probe.block}]"
    part = probe.part if probe.part is not None else "(block: input → output)"
    return [where, part, _value(probe.cosine), _value(probe.mse), _value(probe.cka), str(probe.calls)]


def probe_section(table: SensitivityTable) -> dict[str, Any] | None:
    """Header and rows of the table's probes (None without probes), in the table's order."""
    if not table.probes:
        return None
    return {"header": list(PROBE_HEADER), "rows": [_row(p) for p in table.probes]}
