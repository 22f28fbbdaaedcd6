"""validate: a plan read back from a file must agree with itself, and with the model it is applied to.

A plan is a file a user can edit. `prune` trusts its ops, index maps and config rewrite, so an
edit that compile could never produce (an index map with a gap, a swap or -1; a `drop_part` naming
`transformer_blocks` or `pos_embed`, its `params` fixed to match; a config override) would write a
checkpoint that does not load. Two checks refuse such a plan, each a `PlanError` naming the file:

- `check_plan` (every plan read, no model needed): stacks' counts, dropped lists and index maps
  agree (each index map an order-preserving bijection of the kept blocks onto 0..n-1), every op
  lies inside its stack, and the config rewrite states exactly the new block counts.
- `check_plan_fits` (once the model's graph is known): every op names a real block or part of
  it, with the modules and parameter count the graph gives, and the stacks, the last-block
  conversion and the config rewrite are what compile derives from those ops on that graph.
"""

from __future__ import annotations

from hpspec.core.errors import PlanError
from hpspec.model.graph import ModelGraph
from hpspec.plan.compile import _config_updates, _last_block_conversion, _stacks
from hpspec.plan.plan import Op, Plan, StackPlan

HAND_EDITED = "the plan was edited by hand or is damaged; compile it again from its spec"


def check_plan(plan: Plan, where: str) -> None:
    """The plan agrees with itself (see the module's docstring); a PlanError otherwise."""
    for name, stack in plan.stacks.items():
        _check_stack(name, stack, where)
    for op in plan.ops:
        _check_op_in_range(op, plan, where)
    dropped = {(op.stack, op.block) for op in plan.ops if op.kind == "drop_block"}
    listed = {(name, i) for name, stack in plan.stacks.items() for i in stack.dropped}
    if dropped != listed:
        raise PlanError(f"{where}: the drop_block ops and the stacks' `dropped` lists disagree; {HAND_EDITED}")


def _check_stack(name: str, stack: StackPlan, where: str) -> None:
    dropped = stack.dropped
    if sorted(set(dropped)) != dropped or any(not 0 <= i < stack.before for i in dropped):
        raise PlanError(f"{where}: stack `{name}`: `dropped` must list blocks of 0..{stack.before - 1} once, in order")
    kept = [i for i in range(stack.before) if i not in set(dropped)]
    expected = {str(old): new for new, old in enumerate(kept)}
    if stack.index_map != expected or stack.after != len(kept):
        raise PlanError(
            f"{where}: stack `{name}`: the index map must number the {len(kept)} kept blocks 0..{len(kept) - 1} "
            f"in their order (and `after` be {len(kept)}); {_first_difference(stack.index_map, expected)}; {HAND_EDITED}"
        )


def _first_difference(found: dict[str, int], expected: dict[str, int]) -> str:
    for key in sorted(set(found) | set(expected), key=lambda k: (len(k), k)):
        if found.get(key) != expected.get(key):
            return f"block {key} maps to {found.get(key)!r}, expected {expected.get(key)!r}"
    return "the counts differ"


def _check_op_in_range(op: Op, plan: Plan, where: str) -> None:
    stack = plan.stacks.get(op.stack)
    if stack is None:
        raise PlanError(f"{where}: an op names stack `{op.stack}`; the plan's stacks are {', '.join(plan.stacks)}")
    if not 0 <= op.block < stack.before:
        raise PlanError(f"{where}: an op names {op.stack}[{op.block}]; the stack has blocks 0..{stack.before - 1}")
    if (op.kind == "drop_part") != (op.part is not None):
        raise PlanError(f"{where}: a {op.kind} op on {op.stack}[{op.block}] with part {op.part!r}; {HAND_EDITED}")


def check_plan_fits(plan: Plan, graph: ModelGraph, where: str) -> None:
    """The plan's ops are real on `graph`, and everything derived from them is what compile derives."""
    for op in plan.ops:
        if op.kind != "convert_last_block":
            _check_op_on_graph(op, graph, where)
    drops = [op for op in plan.ops if op.kind != "convert_last_block"]
    conversions = [op for op in plan.ops if op.kind == "convert_last_block"]
    if conversions != _last_block_conversion(graph, drops):
        raise PlanError(f"{where}: the last-block conversion is not the one these drops need; {HAND_EDITED}")
    stacks = _stacks(graph, drops)
    if stacks != plan.stacks:
        raise PlanError(f"{where}: the stacks do not follow from the plan's ops on this model; {HAND_EDITED}")
    config = _config_updates(graph, stacks)
    if config != plan.config:
        extra = sorted(set(plan.config) - set(config)) or sorted(k for k in config if plan.config.get(k) != config[k])
        raise PlanError(
            f"{where}: the config rewrite {plan.config} is not what the drops imply ({config}; "
            f"first difference: `{extra[0] if extra else '?'}`); {HAND_EDITED}"
        )


def _check_op_on_graph(op: Op, graph: ModelGraph, where: str) -> None:
    stack = graph.stack(op.stack)
    if stack is None or not 0 <= op.block < len(stack):
        raise PlanError(f"{where}: an op names {op.stack}[{op.block}], which this model does not have")
    block = stack.blocks[op.block]
    if op.part is None:
        modules, params = [block.module], block.params
    else:
        part = block.part(op.part)
        if part is None:
            raise PlanError(
                f"{where}: a drop_part names `{op.part}` on {op.stack}[{op.block}], which is not one of its parts "
                f"({', '.join(block.words)}); {HAND_EDITED}"
            )
        modules, params = [f"{block.module}.{m}" for m in part.modules], part.params
    if op.modules != modules or op.params != params:
        raise PlanError(
            f"{where}: the op dropping {op.stack}[{op.block}]{'.' + op.part if op.part else ''} names modules "
            f"{op.modules} ({op.params:,} parameters); this model's are {modules} ({params:,}); {HAND_EDITED}"
        )
