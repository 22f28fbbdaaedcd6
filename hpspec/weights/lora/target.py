"""target: the plan and the full model a LoRA command remaps through.

`hpspec lora` takes a stage directory (its plan.json), a plan file, or a spec; the adapter's
modules are placed on the FULL model the plan was compiled for: `--model` when given, else the
plan's own target (a built-in, the demo, or the path it was compiled against), checked by
fingerprint.
"""

from __future__ import annotations

from pathlib import Path

from hpspec.core.errors import LoraError
from hpspec.core.paths import PLAN_NAME
from hpspec.model.graph import ModelGraph, graph_from_builtin
from hpspec.model.targets import DEMO, graph_from_path, resolve_target
from hpspec.plan.front import plan_file
from hpspec.plan.plan import Plan
from hpspec.plan.schema import load_plan_file
from hpspec.weights.checkpoint.source import check_fingerprint

SOURCE_KINDS = ("safetensors:", "config:")  # graph sources that name a path


def plan_and_model(source: str, model: Path | None = None, target: str | None = None) -> tuple[Plan, ModelGraph]:
    """The plan of a stage directory, plan file or spec, and the graph of the full model it prunes."""
    path = Path(source)
    if path.is_dir() and (path / PLAN_NAME).is_file():
        plan = load_plan_file(path / PLAN_NAME)
    elif source.endswith(".json"):
        plan = load_plan_file(path)
    else:
        fallback = (lambda: graph_from_path(model)) if model is not None else None
        plan, checked = plan_file(source, target, fallback=fallback)
        if model is None:
            return plan, checked.graph
    graph = graph_from_path(model) if model is not None else full_model(plan)
    check_fingerprint(plan, graph, str(model) if model is not None else plan.target.source)
    return plan, graph


def full_model(plan: Plan) -> ModelGraph:
    """The graph of the plan's own target, or a LoraError asking for --model."""
    source = plan.target.source
    if source.startswith("builtin:"):
        return graph_from_builtin(source.removeprefix("builtin:"))
    if source == "hpspec:demo":
        return resolve_target(DEMO)
    kind = next((k for k in SOURCE_KINDS if source.startswith(k)), None)
    if kind is not None:
        where = Path(source.removeprefix(kind))
        if where.exists():
            return graph_from_path(where.parent if kind == "config:" else where)
    raise LoraError(
        f"the plan of {plan.spec.path} was compiled for `{plan.target.name}` ({source}), which is not here; "
        "pass the full (unpruned) model with --model"
    )
