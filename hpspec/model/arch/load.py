"""load: the architecture data files read once, validated by `rules`, and the accessors over them.

`architecture(family)` is one family's data file (`sd3.toml`, `flux.toml`); `builtin_models()` and
`families()` come from `models.toml`. A malformed file is one line of ArchitectureDataError that
names the file and the key.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Mapping
from functools import cache, lru_cache
from importlib import resources
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from hpspec.core.errors import ArchitectureDataError
from hpspec.model.arch.rules import Architecture, BuiltinModel, Models

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10
    import tomli as tomllib

MODELS_FILE = "models.toml"
DATA_PACKAGE = "hpspec.model.arch"  # where the *.toml files lie

RuleT = TypeVar("RuleT", bound=BaseModel)


def load_toml(filename: str, package: str = DATA_PACKAGE) -> dict[str, Any]:
    """A data file of `package` (the arch data by default), parsed; one ArchitectureDataError line if it is not TOML."""
    text = resources.files(package).joinpath(filename).read_text(encoding="utf-8")
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise ArchitectureDataError(f"{filename}: {error}") from None


def validated(model: type[RuleT], data: Mapping[str, Any], where: str) -> RuleT:
    """`data` as `model`; the first problem as one line: `sd3.toml parts.attn.tensors.3: ...`."""
    try:
        return model.model_validate(data)
    except ValidationError as error:
        first = error.errors()[0]
        at = ".".join(str(p) for p in first["loc"])
        message = str(first["msg"]).removeprefix("Value error, ")
        more = f" (and {error.error_count() - 1} more)" if error.error_count() > 1 else ""
        raise ArchitectureDataError(f"{where}{' ' + at if at else ''}: {message}{more}") from None


@lru_cache(maxsize=1)
def _models() -> Models:
    return validated(Models, load_toml(MODELS_FILE), MODELS_FILE)


def families() -> tuple[str, ...]:
    """The model families hpspec knows, one data file each."""
    return _models().families


def builtin_models() -> Mapping[str, BuiltinModel]:
    return _models().models


def flops_tokens() -> Mapping[str, Mapping[str, int]]:
    """Per-target token counts that differ from their family's (models.toml [flops_tokens])."""
    return _models().flops_tokens


@cache
def architecture(family: str) -> Architecture:
    if family not in families():
        raise ArchitectureDataError(f"unknown model family {family!r}; known: {', '.join(families())}")
    where = f"{family}.toml"
    arch = validated(Architecture, load_toml(where), where)
    if arch.family != family:
        raise ArchitectureDataError(f"{where}: `family` must be {family!r}")
    return arch


def class_name_of(family: str) -> str | None:
    """The diffusers class hpspec names for a family (model cards, loading); None for an unknown family."""
    return architecture(family).class_name if family in families() else None


def family_of_class(class_name: object) -> str | None:
    """The family whose data names this diffusers class, or None."""
    return next((f for f in families() if class_name in architecture(f).class_names), None)


def class_names() -> tuple[str, ...]:
    """Every diffusers transformer class hpspec knows, family by family."""
    return tuple(c for f in families() for c in architecture(f).class_names)


def family_of_tensors(names: Iterable[str]) -> str | None:
    """The family whose [detect] prefixes the tensor names match (a checkpoint without a config)."""
    listed = list(names)
    return next((f for f in families() if architecture(f).detect.matches(listed)), None)


def trimmed_modules() -> frozenset[str]:
    """The modules a last-block conversion trims rather than removes, over every family ([last_block] trims)."""
    return frozenset(rule.trims for f in families() if (rule := architecture(f).last_block) is not None)


def stand_in_kind(module: str) -> str | None:
    """The stand-in for a module a part drop removes, by its name inside a block ([stand_ins])."""
    return _stand_ins().get(module)


def norm_layout(class_name: str) -> tuple[str, ...] | None:
    """What an adaptive norm's parameter-free stand-in returns, by the norm's diffusers class."""
    return _norm_layouts().get(class_name)


@lru_cache(maxsize=1)
def _stand_ins() -> Mapping[str, str]:
    return _merged("stand_ins", {f: dict(architecture(f).stand_ins) for f in families()})


@lru_cache(maxsize=1)
def _norm_layouts() -> Mapping[str, tuple[str, ...]]:
    return _merged("norm_layouts", {f: dict(architecture(f).norm_layouts) for f in families()})


ValueT = TypeVar("ValueT")


def _merged(table: str, per_family: Mapping[str, Mapping[str, ValueT]]) -> dict[str, ValueT]:
    """One table over every family: diffusers module and class names mean the same in each."""
    merged: dict[str, ValueT] = {}
    for family, entries in per_family.items():
        for name, value in entries.items():
            if merged.setdefault(name, value) != value:
                raise ArchitectureDataError(f"{family}.toml {table}.{name}: differs from another family's")
    return merged
