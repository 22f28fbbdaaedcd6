"""hpspec: a declarative compiler for compressing diffusion transformers.

parse -> check -> plan -> apply -> report. Importing hpspec is cheap: torch is imported only by
the stages that touch tensors (`apply`, `load_pretrained`, ...), on first use.
"""

from __future__ import annotations

from typing import Any

from hpspec.core.version import __version__

__all__ = ["__version__", "parse", "check", "compile_plan", "plan_spec", "apply", "load_pretrained"]

_LAZY = {
    "parse": ("hpspec.lang.parse", "parse"),
    "check": ("hpspec.plan.check", "check"),
    "compile_plan": ("hpspec.plan.compile", "compile_plan"),
    "plan_spec": ("hpspec.plan.front", "plan_spec"),
    "apply": ("hpspec.weights.prune", "apply"),
    "load_pretrained": ("hpspec.weights.load", "load_pretrained"),
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        module, attribute = _LAZY[name]
        return getattr(importlib.import_module(module), attribute)
    raise AttributeError(f"module 'hpspec' has no attribute {name!r}")
