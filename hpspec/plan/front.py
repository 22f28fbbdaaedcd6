"""front: spec text or file -> parse -> target -> check -> plan, written once.

Every command that starts from a spec goes through here (`hpspec check`, `plan`, `diff`, `report`,
the stages' `compile`, `hpspec.plan_spec`). The graph a spec is checked against is `--target`,
else the spec's own `target`, else a caller's fallback: the model a stage reads, the other side
of a diff. Torch-free.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from hpspec.lang import syntax as s
from hpspec.lang.parse import parse_file
from hpspec.model.graph import ModelGraph
from hpspec.plan.check import CheckedSpec, check, load_target
from hpspec.plan.compile import compile_plan
from hpspec.plan.plan import Plan

Fallback = Callable[[], "ModelGraph | None"]  # the graph for a spec that names no target (None: there is none)


def graph_for(spec: s.Spec, target: str | None = None, fallback: Fallback | None = None) -> ModelGraph:
    """The graph `spec` is checked against: `target`, else the spec's `target`, else `fallback`'s."""
    if target is None and fallback is not None and not spec.of_type(s.Target):
        graph = fallback()
        if graph is not None:
            return graph
    return load_target(spec, target)


def check_spec(spec: s.Spec, target: str | None = None, fallback: Fallback | None = None) -> CheckedSpec:
    """A parsed spec, checked against its graph (`SpecError` with every diagnostic on an error)."""
    return check(spec, graph_for(spec, target, fallback))


def check_file(
    path: str | Path, target: str | None = None, *, recover: bool = False, fallback: Fallback | None = None
) -> CheckedSpec:
    """A spec file, parsed and checked; with `recover` its syntax errors join the checker's."""
    return check_spec(parse_file(path, recover=recover), target, fallback)


def plan_file(
    path: str | Path, target: str | None = None, *, fallback: Fallback | None = None
) -> tuple[Plan, CheckedSpec]:
    """A spec file compiled: its plan, and the checked spec (its warnings, its source)."""
    checked = check_file(path, target, fallback=fallback)
    return compile_plan(checked), checked


def plan_spec(spec_path: str | Path, target: str | None = None) -> Plan:
    """parse -> target -> check -> plan, for one spec file (`hpspec.plan_spec`)."""
    return plan_file(spec_path, target)[0]
