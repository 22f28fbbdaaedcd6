"""rules: the frozen pydantic models the architecture data files are validated into on load.

One model per table of `sd3.toml` / `flux.toml` / `models.toml` (the TOML comments say what each
field means). Unknown keys are refused, every expression is parsed (see `expr`), and the cross
references (a kind's parts, a part's modules, a foreign name's word) are checked, so a mistake in
the data is one precise error at load time, not a wrong graph later.

    >>> TensorRule.model_validate(["norm1.linear.bias", "6 * dim"])
    TensorRule(name='norm1.linear.bias', shape='6 * dim', when=None, buffer=False)
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Annotated, Any, Literal, get_args

from pydantic import AfterValidator, BaseModel, ConfigDict, model_validator

from hpspec.core.errors import ArchitectureDataError
from hpspec.model.arch.expr import compile_expression, evaluate
from hpspec.model.safetensors_header import TORCH_DTYPES

TokenClass = Literal["image", "text", "joint", "cond"]
TOKEN_CLASSES: tuple[str, ...] = get_args(TokenClass)
StandIn = Literal["attention", "identity", "first_channels"]  # see [stand_ins] in sd3.toml, flux.toml
NormSlot = Literal["x", "1", "0"]  # an adaptive norm stand-in's output: LN(x), a gate of ones, zeros
BUFFER_FLAG = "buffer"  # a tensor's third entry that marks a persistent buffer, not a condition


def _parses(text: str) -> str:
    try:
        compile_expression(text)
    except ArchitectureDataError as error:
        raise ValueError(str(error).removeprefix("expression: ")) from None
    return text


Expression = Annotated[str, AfterValidator(_parses)]  # a shape or condition over config values


class Rule(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class TensorRule(Rule):
    """A tensor a config implies: `[name, shape]`, `[name, shape, condition]` or `[name, shape, "buffer"]`."""

    name: str
    shape: Expression
    when: Expression | None = None
    buffer: bool = False

    @model_validator(mode="before")
    @classmethod
    def _from_list(cls, entry: Any) -> Any:
        if not isinstance(entry, list):
            return entry
        if not (2 <= len(entry) <= 3 and all(isinstance(e, str) for e in entry)):
            raise ValueError(f"a tensor is [name, shape] or [name, shape, condition]: {entry!r}")
        name, shape, *rest = entry
        flag = rest[0] if rest else None
        buffer = flag == BUFFER_FLAG
        return {"name": name, "shape": shape, "when": None if buffer else flag, "buffer": buffer}


class PartRule(Rule):
    word: str  # the table's key: the language's word for the part
    modules: tuple[str, ...]  # module prefixes inside a block
    also: tuple[str, ...] = ()  # other parts this one takes with it (attn takes attn2)
    reference: str
    effect: str
    tensors: tuple[TensorRule, ...]

    @model_validator(mode="after")
    def _modules_hold_tensors(self) -> PartRule:
        for module in self.modules:
            if not any(t.name.startswith(module + ".") for t in self.tensors):
                raise ValueError(f"no tensor lies under module {module!r}")
        return self


class StackRule(Rule):
    name: str  # the language's plural word: blocks, double_blocks, single_blocks
    singular: str
    module: str  # diffusers ModuleList attribute
    count: str  # config key with the number of blocks


class KindRule(Rule):
    name: str  # the table's key
    parts: tuple[str, ...]  # in registration order
    describe: str
    stack: str | None = None
    has: tuple[str, ...] = ()
    lacks: tuple[str, ...] = ()
    when: Expression
    single_stream: bool = False  # its parts are `single_parts`, its FLOPs `flops.single_*`
    index_list: str | None = None  # config key listing these blocks' indices (renumbered by drops)


class OutsideRule(Rule):
    module: str
    position: Literal["before", "after"]  # around the stacks, in registration order
    tensors: tuple[TensorRule, ...]


class FlopsRule(Rule):
    """Which tokens each module sees, for the plan's FLOP estimate (see the TOML's [flops])."""

    image_tokens: Expression
    text_tokens: Expression
    outside: Mapping[str, TokenClass] = {}  # module prefix -> image | text | joint | cond
    block: Mapping[str, TokenClass] = {}
    attention: Mapping[str, TokenClass] = {}
    single_block: Mapping[str, TokenClass] = {}
    single_attention: Mapping[str, TokenClass] = {}


class DetectRule(Rule):
    """A checkpoint without a config is this family's when its tensor names match (see [detect])."""

    has: tuple[str, ...] = ()  # some tensor name starts with each of these
    lacks: tuple[str, ...] = ()  # no tensor name starts with any of these

    def matches(self, names: Iterable[str]) -> bool:
        listed = list(names)
        return all(any(n.startswith(p) for n in listed) for p in self.has) and not any(
            n.startswith(p) for n in listed for p in self.lacks
        )


class LastBlockRule(Rule):
    """The last-block conversion (see [last_block]): what makes a block the new last one."""

    kind: str  # the last block's kind: dropping such a block converts the new last block into it
    removes: tuple[str, ...]  # modules inside the block the conversion deletes
    flags: tuple[str, ...]  # attributes of the live block (and its modules) set to True
    trims: str  # the modulation Linear that keeps some chunks of its rows
    chunks: int
    keeps: tuple[int, ...]  # chunk indices kept, in their new order

    @model_validator(mode="after")
    def _keeps_in_range(self) -> LastBlockRule:
        if self.chunks < 1 or not self.keeps or any(not 0 <= k < self.chunks for k in self.keeps):
            raise ValueError(f"keeps {list(self.keeps)} must be chunk indices below chunks = {self.chunks}")
        return self

    def kept_rows(self, rows: int) -> int:
        """Rows (or parameters, or bytes) of the trimmed Linear that stay."""
        return rows * len(self.keeps) // self.chunks

    @property
    def removed_share(self) -> float:
        """The fraction of the trimmed Linear's work that goes."""
        return (self.chunks - len(self.keeps)) / self.chunks


class LatentRule(Rule):
    """How latents (B, C, H, W) reach the transformer (see [latents]); expressions see `pack` too."""

    pack: int  # latent pixels per token side packed into one token (1: none)
    channels: Expression  # the latent channels the transformer takes
    multiple: Expression  # height and width must be multiples of this
    max_side: str | None = None  # config key bounding the tokens per side

    def channels_for(self, config: Mapping[str, Any]) -> int:
        return int(evaluate(self.channels, {**config, "pack": self.pack}))

    def multiple_for(self, config: Mapping[str, Any]) -> int:
        return int(evaluate(self.multiple, {**config, "pack": self.pack}))


class Architecture(Rule):
    family: str
    class_names: tuple[str, ...]  # diffusers classes; the first is the one hpspec names
    detect: DetectRule
    stacks: tuple[StackRule, ...]
    derived: tuple[tuple[str, Expression], ...] = ()
    outside: tuple[OutsideRule, ...]
    kinds: tuple[KindRule, ...]
    kind_values: Mapping[str, Mapping[str, Expression]] = {}
    absent: Mapping[str, str] = {}
    parts: Mapping[str, PartRule]  # block parts (the double-stream / joint ones)
    single_parts: Mapping[str, PartRule] = {}  # FLUX single-stream blocks
    foreign: Mapping[str, str] = {}  # other tools' names -> the hpspec word
    stand_ins: Mapping[str, StandIn] = {}  # module name inside a block -> what replaces it
    norm_layouts: Mapping[str, tuple[NormSlot, ...]] = {}  # adaptive norm class -> its stand-in's outputs
    last_block: LastBlockRule | None = None
    latents: LatentRule
    flops: FlopsRule

    @model_validator(mode="before")
    @classmethod
    def _name_tables(cls, data: Any) -> Any:
        """TOML tables keyed by name -> entries that carry their name (kinds in their order)."""
        if not isinstance(data, dict):
            return data
        data = dict(data)
        for key in ("parts", "single_parts"):
            if isinstance(data.get(key), dict):
                data[key] = {w: {**e, "word": w} if isinstance(e, dict) else e for w, e in data[key].items()}
        if isinstance(data.get("kinds"), dict):
            data["kinds"] = [{**e, "name": n} if isinstance(e, dict) else e for n, e in data["kinds"].items()]
        if isinstance(data.get("derived"), dict):
            data["derived"] = list(data["derived"].items())
        return data

    @model_validator(mode="after")
    def _references(self) -> Architecture:
        stacks = {s.name for s in self.stacks}
        for kind in self.kinds:
            known = self.single_parts if kind.single_stream else self.parts
            missing = [w for w in kind.parts if w not in known]
            if missing:
                raise ValueError(f"kinds.{kind.name}: part {missing[0]!r} is not defined")
            if kind.stack is not None and kind.stack not in stacks:
                raise ValueError(f"kinds.{kind.name}: unknown stack {kind.stack!r}")
        words = set(self.words)
        for name, word in self.foreign.items():
            if word not in words:
                raise ValueError(f"foreign.{name}: {word!r} is not a part word")
        if self.last_block is not None and self.last_block.kind not in {k.name for k in self.kinds}:
            raise ValueError(f"last_block: unknown kind {self.last_block.kind!r}")
        return self

    @property
    def words(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys([*self.parts, *self.single_parts]))

    @property
    def class_name(self) -> str:
        """The diffusers class hpspec names for this family (model cards, loading)."""
        return self.class_names[0]

    def stack(self, name: str) -> StackRule:
        return next(s for s in self.stacks if s.name == name)

    def kind(self, name: str) -> KindRule:
        return next(k for k in self.kinds if k.name == name)

    def part_rules(self, kind: str) -> Mapping[str, PartRule]:
        return self.single_parts if self.kind(kind).single_stream else self.parts

    def flops_prefixes(self, kind: str) -> tuple[Mapping[str, str], Mapping[str, str]]:
        """(matrix prefixes, attention modules) of a block kind's FLOP rule."""
        if self.kind(kind).single_stream:
            return self.flops.single_block, self.flops.single_attention
        return self.flops.block, self.flops.attention


class BuiltinModel(Rule):
    name: str  # the table's key
    family: str
    dtype: str  # the torch dtype name the released weights are stored in
    source: str
    config: Mapping[str, Any]

    @model_validator(mode="after")
    def _known_dtype(self) -> BuiltinModel:
        if self.dtype not in TORCH_DTYPES:
            raise ValueError(f"dtype {self.dtype!r} is not one of {', '.join(TORCH_DTYPES)}")
        return self


class Models(Rule):
    """models.toml: the families (one data file each), the built-in targets, FLOP token overrides."""

    families: tuple[str, ...]
    models: Mapping[str, BuiltinModel]
    flops_tokens: Mapping[str, Mapping[str, int]] = {}

    @model_validator(mode="before")
    @classmethod
    def _name_models(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("models"), dict):
            named = {n: {**e, "name": n} if isinstance(e, dict) else e for n, e in data["models"].items()}
            data = {**data, "models": named}
        return data

    @model_validator(mode="after")
    def _known_families(self) -> Models:
        for model in self.models.values():
            if model.family not in self.families:
                raise ValueError(f"models.{model.name}: unknown family {model.family!r}")
        return self
