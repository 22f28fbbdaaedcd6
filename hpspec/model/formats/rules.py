"""rules: the frozen pydantic models the single-file key maps (`bfl.toml`, `sai.toml`,
`layouts.toml`) are validated into on load.

A key map is a list of groups; a group's rows map a tensor of the original layout to one or more
diffusers tensors, each with a contiguous row range (see bfl.toml for the format). Every
expression is parsed on load, a fused row must bound each of its pieces, and unknown keys are
refused, so a mistake in the data is one precise error at load time.

    >>> Row.model_validate(["img_in", "x_embedder"])
    Row(original='img_in', pieces=(Piece(name='x_embedder', begin=None, end=None),))
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import cache
from typing import Any

from pydantic import BaseModel, ConfigDict, model_validator

from hpspec.core.errors import ArchitectureDataError
from hpspec.model.arch import families
from hpspec.model.arch.load import load_toml, validated
from hpspec.model.arch.rules import Expression

DATA_PACKAGE = "hpspec.model.formats"
LAYOUTS_FILE = "layouts.toml"
DEFAULT_SUFFIXES = ("weight", "bias")


class Rule(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Piece(Rule):
    """Rows [begin, end) of one diffusers tensor; no bounds: the whole tensor."""

    name: str
    begin: Expression | None = None
    end: Expression | None = None

    @model_validator(mode="before")
    @classmethod
    def _from_list(cls, data: Any) -> Any:
        if isinstance(data, str):
            return {"name": data}
        if isinstance(data, (list, tuple)):
            if len(data) != 3:
                raise ValueError(f"a piece is [diffusers, begin, end], got {list(data)!r}")
            return {"name": data[0], "begin": data[1], "end": data[2]}
        return data


class Row(Rule):
    """One original tensor as the concatenation of its diffusers pieces, in order."""

    original: str
    pieces: tuple[Piece, ...]

    @model_validator(mode="before")
    @classmethod
    def _from_list(cls, data: Any) -> Any:
        if not isinstance(data, (list, tuple)):
            return data
        if len(data) != 2:
            raise ValueError(f"a row is [original, diffusers] or [original, [pieces]], got {list(data)!r}")
        original, target = data
        return {"original": original, "pieces": [target] if isinstance(target, str) else target}

    @model_validator(mode="after")
    def _bounded(self) -> Row:
        if len(self.pieces) > 1 and any(p.begin is None or p.end is None for p in self.pieces):
            raise ValueError(f"{self.original!r}: every piece of a fused tensor needs its row bounds")
        return self


class Group(Rule):
    """Rows under one pair of name prefixes, expanded per block index when `count` is given."""

    original: str
    diffusers: str
    count: str | None = None  # the config key that counts the blocks `{i}` runs over
    when: Expression = "True"  # over the config, [derived] and `i`
    suffixes: tuple[str, ...] = DEFAULT_SUFFIXES
    tensors: tuple[Row, ...]

    @model_validator(mode="after")
    def _indexed(self) -> Group:
        indexed = "{i}" in self.original
        if indexed != (self.count is not None) or indexed != ("{i}" in self.diffusers):
            raise ValueError("a group with `count` needs `{i}` in both prefixes, and one without needs none")
        return self


class KeyMap(Rule):
    """One single-file layout's map to diffusers' names."""

    layout: str
    family: str
    describe: str
    markers: tuple[str, ...]  # name prefixes that only this layout uses
    derived: Mapping[str, Expression] = {}
    groups: tuple[Group, ...]

    @model_validator(mode="after")
    def _known_family(self) -> KeyMap:
        if self.family not in families():
            raise ValueError(f"unknown family {self.family!r}; known: {', '.join(families())}")
        return self


class PrefixRule(Rule):
    name: str
    prefix: str
    describe: str


class Layouts(Rule):
    maps: tuple[str, ...]
    diffusers_markers: tuple[str, ...]
    prefixes: tuple[PrefixRule, ...]
    ignored: Mapping[str, str]  # top-level prefix of another model in an all-in-one file -> what it is


@cache
def layouts() -> Layouts:
    """`layouts.toml`: the maps, the prefix rules and what an all-in-one file's other prefixes are."""
    return validated(Layouts, load_toml(LAYOUTS_FILE, DATA_PACKAGE), LAYOUTS_FILE)


@cache
def key_map(layout: str) -> KeyMap:
    """The key map of one single-file layout (`bfl`, `sai`), validated."""
    if layout not in layouts().maps:
        raise ArchitectureDataError(f"no key map for layout {layout!r}; known: {', '.join(layouts().maps)}")
    filename = f"{layout}.toml"
    rule = validated(KeyMap, load_toml(filename, DATA_PACKAGE), filename)
    if rule.layout != layout:
        raise ArchitectureDataError(f"{filename}: says layout {rule.layout!r}")
    return rule


def key_map_of_family(family: str) -> KeyMap:
    """The single-file layout of a model family (FLUX: bfl, SD3: sai)."""
    for name in layouts().maps:
        if key_map(name).family == family:
            return key_map(name)
    raise ArchitectureDataError(f"no single-file layout for family {family!r}")
