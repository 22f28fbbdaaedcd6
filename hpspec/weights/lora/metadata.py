"""metadata: peft's LoraConfig as diffusers stores it in a LoRA file, read and kept true after pruning.

diffusers writes peft's config as JSON under `lora_adapter_metadata`, each key prefixed with the
component (`transformer.lora_alpha`). Its scale is `lora_alpha / r`, per module through
`alpha_pattern` and `rank_pattern` (a key matches a module whose name ends with it). Module names
in `target_modules` and the patterns are renamed through the plan like the tensors; names of
modules the plan removes go. `--to diffusers` of a kohya file puts its alphas here.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping
from typing import Any

from hpspec.plan.plan import Plan
from hpspec.plan.quantize_layout import under
from hpspec.weights.checkpoint.layout import removed_modules, renamed

PEFT_METADATA = "lora_adapter_metadata"  # diffusers' key for peft's LoraConfig in a LoRA file
COMPONENT = "transformer."
PATTERNS = ("rank_pattern", "alpha_pattern")


def peft_config(metadata: Mapping[str, str]) -> dict[str, Any]:
    """peft's config of the transformer from a file's metadata, without the component prefix; {} if none."""
    try:
        config = json.loads(metadata.get(PEFT_METADATA, "{}"))
    except (ValueError, RecursionError):  # not JSON, or JSON no reader accepts
        return {}
    if not isinstance(config, dict):
        return {}
    return {k.removeprefix(COMPONENT): v for k, v in config.items() if "." not in k.removeprefix(COMPONENT)}


def _matches(pattern: Mapping[str, Any], module: str) -> Any:
    return next((v for k, v in pattern.items() if module == k or module.endswith("." + k)), None)


def peft_alpha(config: Mapping[str, Any], module: str) -> float | None:
    """The module's `lora_alpha` per peft's config (its alpha_pattern first), or None."""
    value = _matches(config.get("alpha_pattern") or {}, module)
    if value is None:
        value = config.get("lora_alpha")
    return float(value) if isinstance(value, (int, float)) else None


def renamed_metadata(metadata: Mapping[str, str], plan: Plan) -> dict[str, str]:
    """The metadata with peft's module names renamed through the plan (removed ones dropped)."""
    if PEFT_METADATA not in metadata:
        return dict(metadata)
    try:
        config = json.loads(metadata[PEFT_METADATA])
    except (ValueError, RecursionError):  # not JSON, or JSON no reader accepts
        return dict(metadata)
    if not isinstance(config, dict):
        return dict(metadata)
    removed, before = removed_modules(plan), json.dumps(config, sort_keys=True)

    def rename(name: str) -> str | None:
        new = renamed(plan, name)
        return None if new is None or under(name, removed) else new

    for key, value in list(config.items()):
        field = key.removeprefix(COMPONENT)
        if field == "target_modules" and isinstance(value, list):
            config[key] = [n for n in (rename(v) for v in value if isinstance(v, str)) if n is not None]
        elif field in PATTERNS and isinstance(value, dict):
            config[key] = {n: v for k, v in value.items() if (n := rename(k)) is not None}
    after = json.dumps(config, sort_keys=True)
    return dict(metadata) if after == before else {**metadata, PEFT_METADATA: after}


def alpha_metadata(metadata: Mapping[str, str], modules: Mapping[str, tuple[int, float]]) -> dict[str, str]:
    """peft's config for diffusers' names: module -> (rank, alpha), the most common as r and lora_alpha."""
    ranks = Counter(r for r, _ in modules.values()).most_common(1)[0][0]
    alphas = Counter(a for _, a in modules.values()).most_common(1)[0][0]
    config = {
        "r": ranks,
        "lora_alpha": alphas,
        "rank_pattern": {m: r for m, (r, _) in sorted(modules.items()) if r != ranks},
        "alpha_pattern": {m: a for m, (_, a) in sorted(modules.items()) if a != alphas},
        "target_modules": sorted(modules),
        "peft_type": "LORA",
    }
    return {**metadata, PEFT_METADATA: json.dumps({COMPONENT + k: v for k, v in config.items()}, sort_keys=True)}
