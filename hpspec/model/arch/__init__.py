"""Architecture facts, as data: the TOML files beside this module, validated on load.

`sd3.toml` and `flux.toml` say, per model family, which stacks of blocks exist, which parts each
kind of block has, which diffusers modules each part removes and what stands in for them, the
reference code's name for it, the tensor shapes as expressions over config.json, the last-block
conversion, how latents are packed, and the FLOP rule. `models.toml` holds the families and the
built-in targets. `rules` validates them (frozen pydantic models), `expr` evaluates their
expressions, `load` reads them; code that data cannot say lives in `hpspec.model.families`.
Nothing here imports torch.
"""

from __future__ import annotations

from hpspec.model.arch.expr import compile_expression, evaluate
from hpspec.model.arch.load import (
    architecture,
    builtin_models,
    class_name_of,
    class_names,
    families,
    family_of_class,
    family_of_tensors,
    flops_tokens,
    norm_layout,
    stand_in_kind,
    trimmed_modules,
)
from hpspec.model.arch.rules import (
    TOKEN_CLASSES,
    Architecture,
    BuiltinModel,
    FlopsRule,
    KindRule,
    LastBlockRule,
    LatentRule,
    OutsideRule,
    PartRule,
    StackRule,
    TensorRule,
)

__all__ = [
    "TOKEN_CLASSES",
    "Architecture",
    "BuiltinModel",
    "FlopsRule",
    "KindRule",
    "LastBlockRule",
    "LatentRule",
    "OutsideRule",
    "PartRule",
    "StackRule",
    "TensorRule",
    "architecture",
    "builtin_models",
    "class_name_of",
    "class_names",
    "compile_expression",
    "evaluate",
    "families",
    "family_of_class",
    "family_of_tensors",
    "flops_tokens",
    "norm_layout",
    "stand_in_kind",
    "trimmed_modules",
]
