"""prune: a plan applied to a live diffusers transformer (`hpspec.apply`).

The surgery itself (stand-ins for dropped parts, the last-block conversion, the freeze set) is in
`surgery`; loading a pruned directory back is `load.load_pretrained`. `apply` checks the plan's
fingerprint before it cuts and the parameter count after.
"""

from __future__ import annotations

from torch import nn

from hpspec.model.graph import graph_from_module
from hpspec.plan.plan import Plan
from hpspec.weights.checkpoint.layout import dropped_part_modules
from hpspec.weights.checkpoint.source import check_fingerprint
from hpspec.weights.surgery import convert_to_context_pre_only, finish_pruned, parent_of, replace_part


def apply(plan: Plan, model: nn.Module) -> nn.Module:
    """Prune `model` in place as `plan` says and return it.

    Raises PlanError when the plan was compiled for another model (fingerprints differ) or when the
    result does not hold exactly `plan.params.after_prune` parameters.
    """
    check_fingerprint(plan, graph_from_module(model), f"module:{type(model).__name__}")
    # The conversion first, while the block still holds the weights it keeps; then part drops
    # (a dropped context_norm of the new last block takes the converted norm's form: LN(c) alone).
    for op in plan.ops:
        if op.kind == "convert_last_block":
            convert_to_context_pre_only(
                model.get_submodule(f"{plan.stacks[op.stack].module}.{op.block}"), plan.target.family
            )
    for path in dropped_part_modules(plan):
        replace_part(model, path)
    for stack in plan.stacks.values():
        if stack.dropped:
            blocks: nn.ModuleList = model.get_submodule(stack.module)  # type: ignore[assignment]
            parent, name = parent_of(model, stack.module)
            setattr(parent, name, nn.ModuleList(block for i, block in enumerate(blocks) if i not in stack.dropped))
    if plan.config:
        model.register_to_config(**plan.config)  # type: ignore[operator]  # a diffusers ModelMixin
    finish_pruned(plan, model, f"module:{type(model).__name__}")
    return model
