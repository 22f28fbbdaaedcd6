"""The plan's JSON Schema (generated from the plan dataclasses) and reading plans back.

Plans come in from disk (stage directories, `hpspec diff`, `hpspec report`), so they are validated
with pydantic against the same dataclasses that wrote them. Kept out of `hpspec.plan` so that
`check` and `plan` do not pay for pydantic.
"""

from __future__ import annotations

import json
import sys
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hpspec.core.errors import PlanError
from hpspec.core.io import parse_json, read_text_input
from hpspec.plan.plan import SCHEMA_VERSION, Plan
from hpspec.plan.validate import check_plan

if TYPE_CHECKING:
    from pydantic import TypeAdapter


@lru_cache(maxsize=1)
def _adapter() -> TypeAdapter[Plan]:
    from pydantic import TypeAdapter

    return TypeAdapter(Plan)


def plan_json_schema() -> dict[str, Any]:
    schema = _adapter().json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = f"hpspec plan, schema version {SCHEMA_VERSION}"
    return schema


def load_plan(text: str, where: str = "plan") -> Plan:
    """A Plan from its JSON, validated; a PlanError that says what is wrong otherwise."""
    from pydantic import ValidationError

    data = parse_json(text, where, "plan", PlanError)
    version = data.get("schema_version") if isinstance(data, dict) else None
    if version != SCHEMA_VERSION:
        raise PlanError(f"{where}: plan schema_version {version!r}; this hpspec reads version {SCHEMA_VERSION}")
    try:
        plan: Plan = _adapter().validate_python(data)
    except ValidationError as error:
        first = error.errors()[0]
        location = ".".join(str(p) for p in first["loc"])
        raise PlanError(f"{where}: not a valid plan: {location}: {first['msg']}") from None
    check_plan(plan, where)  # a plan must agree with itself (index maps, ops, config) before anything uses it
    return plan


def load_plan_file(path: Path) -> Plan:
    return load_plan(read_text_input(Path(path), "plan", limit=64 << 20), str(path))


if __name__ == "__main__":
    sys.stdout.write(json.dumps(plan_json_schema(), indent=2, sort_keys=True) + "\n")
