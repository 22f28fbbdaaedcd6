"""lora_rules: the frozen pydantic model `lora.toml` (how LoRA adapter files name their tensors) is
validated into on load. The facts are data; `hpspec.weights.lora` reads them.

    >>> lora_rules().kohya.name("double_blocks.0.img_attn.qkv")
    'lora_unet_double_blocks_0_img_attn_qkv'
"""

from __future__ import annotations

from functools import cache

from pydantic import model_validator

from hpspec.model.arch.load import load_toml, validated
from hpspec.model.formats.rules import DATA_PACKAGE, Rule

LORA_FILE = "lora.toml"


class Pair(Rule):
    """The down and up weight names of one LoRA module (`lora_A`/`lora_B`, `lora_down`/`lora_up`)."""

    name: str
    down: str
    up: str


class DiffusersNaming(Rule):
    prefixes: tuple[str, ...]
    written: str
    pair: str  # the name of the pair `--to diffusers` writes


class OriginalNaming(Rule):
    prefixes: tuple[str, ...]


class KohyaNaming(Rule):
    """`prefix` + a module name with `separator` replaced by `replacement`."""

    prefix: str
    separator: str
    replacement: str

    def name(self, module: str) -> str:
        """The kohya name of a module (an original-layout or diffusers name)."""
        return self.prefix + module.replace(self.separator, self.replacement)


class Apart(Rule):
    """Markers of keys hpspec does not place: name prefixes (text encoders), name parts (the rest)."""

    text_encoder: tuple[str, ...]
    lycoris: tuple[str, ...]
    dora: tuple[str, ...]


class LoraRules(Rule):
    alpha: str
    weight: str
    pairs: tuple[Pair, ...]
    diffusers: DiffusersNaming
    original: OriginalNaming
    kohya: KohyaNaming
    apart: Apart

    @model_validator(mode="after")
    def _distinct(self) -> LoraRules:
        names = [n for p in self.pairs for n in (p.down, p.up)]
        if len(set(names)) != len(names):
            raise ValueError("the down/up names of `pairs` must all differ")
        if self.diffusers.pair not in {p.name for p in self.pairs}:
            raise ValueError(f"diffusers.pair {self.diffusers.pair!r} is none of `pairs`")
        return self

    @property
    def diffusers_pair(self) -> Pair:
        """The pair diffusers' names are written with."""
        return next(p for p in self.pairs if p.name == self.diffusers.pair)


@cache
def lora_rules() -> LoraRules:
    """`lora.toml`, validated."""
    return validated(LoraRules, load_toml(LORA_FILE, DATA_PACKAGE), LORA_FILE)
