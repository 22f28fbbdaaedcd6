"""check: syntax tree x model graph -> `CheckedSpec`, or every diagnostic at once.

Selectors are resolved against the real graph (slices, negative indices, parts per block kind);
conflicts are errors, not silent precedence; redundancy is a warning. Every message says what
would have been valid.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from hpspec.lang import syntax as s
from hpspec.core.diagnostics import Diagnostic, DiagnosticSink, Span, all_of, did_you_mean, one_of
from hpspec.core.errors import HpspecError, SpecError
from hpspec.model.graph import Block, ModelGraph, resolve_target, target_names
from hpspec.plan.schemes import COMPUTE_DTYPES, SCHEMES


@dataclass(frozen=True)
class DistillOption:
    kind: str  # "choice", "int", "float", "path"
    default: object
    choices: tuple[str, ...] = ()
    minimum: int = 1  # for "int"


# The distill keys of language v1; defaults are the reference recipe's (METHOD §6).
DISTILL_OPTIONS: dict[str, DistillOption] = {
    "weight": DistillOption("choice", "uniform", ("uniform", "sensitivity")),
    "mode": DistillOption("choice", "binary", ("binary", "inverse")),
    "table": DistillOption("path", None),
    "threshold": DistillOption("float", None),
    "steps": DistillOption("int", 64000),
    "lr": DistillOption("float", 1e-4),
    "batch": DistillOption("int", 64),
    "output": DistillOption("float", 1.0),
    "features": DistillOption("float", 1e-4),
    "task": DistillOption("float", 0.0),
    "seed": DistillOption("int", 0, minimum=0),
}
QUANTIZE_OPTIONS: dict[str, DistillOption] = {
    "compute": DistillOption("choice", "bf16", COMPUTE_DTYPES),
}


@dataclass(frozen=True)
class Item:
    """One resolved thing a selector names: a whole block (part None) or one part of one block."""

    stack_order: int
    stack: str
    block: int
    part: str | None = None

    def sort_key(self) -> tuple[int, int, str]:
        """Model order: stack, block, then the whole block before its parts."""
        return self.stack_order, self.block, self.part or ""

    @property
    def whole(self) -> "Item":
        """The whole block this item lies in."""
        return Item(self.stack_order, self.stack, self.block)

    def describe(self) -> str:
        """As a user writes it: `block[22].context_mlp`, `single_block[3]`."""
        singular = self.stack[:-1] if self.stack.endswith("s") else self.stack
        return f"{singular}[{self.block}]" + (f".{self.part}" if self.part else "")


@dataclass(frozen=True)
class Located:
    item: Item
    span: Span


@dataclass(frozen=True)
class PreserveSetting:
    auto: bool
    items: tuple[Item, ...]  # explicit selectors
    modules: tuple[str, ...]  # explicit quoted module paths (names before pruning)


@dataclass(frozen=True)
class QuantizeSetting:
    scheme: str
    except_items: tuple[Item, ...]
    except_modules: tuple[str, ...]
    options: dict[str, object] = field(hash=False)


@dataclass(frozen=True)
class CheckedSpec:
    spec: s.Spec
    graph: ModelGraph
    drops: tuple[Item, ...]  # sorted, unique, after promotion
    promoted: tuple[Item, ...]  # blocks whose every part was dropped
    preserve: PreserveSetting | None
    distill: dict[str, object] | None
    quantize: QuantizeSetting | None
    diagnostics: tuple[Diagnostic, ...]  # warnings (errors raise SpecError)


# --------------------------------------------------------------------------------------------
# Target


def load_target(spec: s.Spec, override: str | None = None) -> ModelGraph:
    """The graph the spec is checked against: `--target` wins over the spec's `target`."""
    sink = DiagnosticSink(spec.path)
    targets = spec.of_type(s.Target)
    for extra in targets[1:]:
        sink.error(
            "a spec has one target",
            extra.span,
            help=f"the target is already set on line {targets[0].span.line}",
        )
    base = Path(spec.path).parent if spec.path not in ("<spec>", "-") else Path(".")
    graph = None
    try:
        if override is not None:
            graph = resolve_target(override, Path("."))
        elif targets:
            value = targets[0].value
            graph = resolve_target(
                value.value if isinstance(value, s.String) else value.text, base, quoted=isinstance(value, s.String)
            )
        else:
            sink.error(
                "the spec names no target",
                None,
                help=f"add `target NAME` (one of {', '.join(target_names())}) or a quoted path, or pass --target",
            )
    except HpspecError as error:
        if override is not None or not targets:
            raise
        message, _, help_text = str(error).partition("; did you mean")
        sink.error(message, targets[0].value.span, help=("did you mean" + help_text) if help_text else None)
    if sink.has_errors:
        raise SpecError(DiagnosticSink(spec.path, [*spec.diagnostics, *sink.items]).sorted(), spec.source)
    assert graph is not None
    return graph


# --------------------------------------------------------------------------------------------
# The checker


def check(spec: s.Spec, graph: ModelGraph) -> CheckedSpec:
    return _Checker(spec, graph).run()


class _Checker:
    def __init__(self, spec: s.Spec, graph: ModelGraph):
        self.spec, self.graph = spec, graph
        self.sink = DiagnosticSink(spec.path, list(spec.diagnostics))
        self.arch = graph.arch
        self.stack_order = {st.name: i for i, st in enumerate(graph.stacks)}

    # -- entry ---------------------------------------------------------------------------------

    def run(self) -> CheckedSpec:
        drops = self.check_drops()
        drops, promoted = self.promote(drops)
        self.check_not_everything(drops)
        preserve = self.check_preserve(drops)
        distill = self.check_distill()
        quantize = self.check_quantize(drops)
        diagnostics = self.sink.sorted()
        if self.sink.has_errors:
            raise SpecError(diagnostics, self.spec.source)
        return CheckedSpec(self.spec, self.graph, drops, promoted, preserve, distill, quantize, diagnostics)

    # -- selectors -----------------------------------------------------------------------------

    def stack_words(self) -> dict[str, tuple[str, bool]]:
        """Selector word -> (stack name, singular?)."""
        words = {}
        for st in self.graph.stacks:
            words[st.name] = (st.name, False)
            words[st.singular] = (st.name, True)
        return words

    def resolve(self, selector: s.Selector) -> list[Located] | None:
        """The items a selector names, or None after reporting why it names nothing valid."""
        words = self.stack_words()
        word = selector.stack.text
        if word not in words:
            self.unknown_stack(selector.stack, words)
            return None
        stack_name, singular = words[word]
        stack = self.graph.stack(stack_name)
        assert stack is not None
        if singular and (len(selector.indices) != 1 or isinstance(selector.indices[0], s.Slice)):
            plural = next(st.name for st in self.graph.stacks if st.name == stack_name)
            self.sink.error(
                f"`{word}[...]` takes a single index",
                selector.span,
                help=f"write `{plural}[...]` to select several",
            )
            return None
        indices: list[tuple[int, Span]] = []
        ok = True
        for index in selector.indices:
            resolved = self.resolve_index(index, stack_name, len(stack))
            if resolved is None:
                ok = False
            else:
                indices.extend((i, index.span) for i in resolved)
        if not ok:
            return None
        part = selector.part.text if selector.part is not None else None
        if part is not None and not self.check_part_word(selector.part, stack_name):
            return None
        located = []
        for i, span in indices:
            block = stack.blocks[i]
            if part is not None and block.part(part) is None:
                self.absent_part(selector.part, block)
                ok = False
                continue
            located.append(Located(Item(self.stack_order[stack_name], stack_name, i, part), span if part is None else selector.span))
        return located if ok else None

    def unknown_stack(self, name: s.Name, words: dict[str, tuple[str, bool]]) -> None:
        stacks = [st.name for st in self.graph.stacks]
        if len(stacks) > 1 and name.text in ("blocks", "block"):
            described = " or ".join(f"`{st.name}[...]` (0–{len(st) - 1})" for st in self.graph.stacks)
            self.sink.error(
                f"`{name.text}` is ambiguous: {self.graph.name} has {len(stacks)} stacks of blocks",
                name.span,
                help=f"write {described}",
            )
            return
        self.unknown("block selector", name, words, f"{self.graph.name} has")

    def range_text(self, count: int) -> str:
        return f"blocks 0–{count - 1}" if count > 1 else ("block 0" if count == 1 else "no blocks")

    def resolve_index(self, index: s.Index | s.Slice, stack: str, count: int) -> list[int] | None:
        if isinstance(index, s.Index):
            if not -count <= index.value < count:
                self.sink.error(
                    f"{self.singular(stack)} {index.value} is out of range",
                    index.span,
                    help=f"{self.graph.name} has {self.stack_phrase(stack, count)}; negative indices count from the end",
                )
                return None
            return [index.value % count]
        if index.step == 0:
            self.sink.error("slice step cannot be zero", index.span, help="write a step of 1 or more, or leave it out")
            return None
        for bound in (index.start, index.stop):
            if bound is not None and not -count <= bound <= count:
                self.sink.error(
                    f"slice bound {bound} is out of range",
                    index.span,
                    help=f"{self.graph.name} has {self.stack_phrase(stack, count)}; a slice's end is exclusive, so it can be at most {count}",
                )
                return None
        selected = list(range(*slice(index.start, index.stop, index.step).indices(count)))
        if not selected:
            self.sink.error(
                "empty slice: it selects no block",
                index.span,
                help=f"slices are end-exclusive, like Python: `25:29` is blocks 25, 26, 27, 28",
            )
            return None
        return selected

    def singular(self, stack: str) -> str:
        st = self.graph.stack(stack)
        return st.singular.replace("_", " ") if st else "block"

    def stack_phrase(self, stack: str, count: int) -> str:
        if len(self.graph.stacks) == 1:
            return self.range_text(count)
        return f"{stack} 0–{count - 1}" if count else f"no {stack}"

    def check_part_word(self, name: s.Name, stack: str) -> bool:
        words = self.arch.words
        if name.text in words:
            return True
        if name.text in self.arch.foreign:
            word = self.arch.foreign[name.text]
            self.sink.error(
                f"`{name.text}` is not an hpspec part name",
                name.span,
                help=f"write `{word}`: hpspec uses the paper's words ({one_of(words)})",
            )
            return False
        self.unknown("part", name, words, "parts are")
        return False

    def unknown(self, what: str, name: s.Name, choices: Iterable[str], listing: str) -> None:
        """`unknown WHAT `x``, with "did you mean" and the valid choices."""
        suggestion = did_you_mean(name.text, choices)
        self.sink.error(
            f"unknown {what} `{name.text}`",
            name.span,
            help=(f"did you mean `{suggestion}`? " if suggestion else "") + f"{listing} {one_of(choices)}",
        )

    def absent_part(self, name: s.Name, block: Block) -> None:
        why = self.arch.absent.get(name.text, f"a {block.kind} block has no such part")
        if name.text == "attn2":
            dual = [b.index for b in self.graph.blocks if b.part("attn2") is not None]
            why += f" ({self.graph.name}: {self.index_list(dual)})" if dual else f" ({self.graph.name} has none)"
        self.sink.error(
            f"{self.singular(block.stack)} {block.index} has no {name.text}: {why}",
            name.span,
            help=f"{self.singular(block.stack)} {block.index} has {all_of(block.words)}",
        )

    @staticmethod
    def index_list(indices: list[int]) -> str:
        runs, start = [], None
        for i, value in enumerate(indices):
            if start is None:
                start = value
            if i + 1 == len(indices) or indices[i + 1] != value + 1:
                runs.append(f"{start}" if start == value else f"{start}–{value}")
                start = None
        return "blocks " + ", ".join(runs)

    # -- drop ----------------------------------------------------------------------------------

    def check_drops(self) -> dict[Item, Span]:
        seen: dict[Item, Span] = {}
        for statement in self.spec.of_type(s.Drop):
            for selector in statement.selectors:
                for located in self.resolve(selector) or ():
                    self.add_drop(seen, located)
        return seen

    def add_drop(self, seen: dict[Item, Span], located: Located) -> None:
        item = located.item
        whole = item.whole
        if item in seen:
            self.sink.warning(
                f"{item.describe()} is dropped twice",
                located.span,
                help=f"it is already dropped on line {seen[item].line}",
            )
            return
        if item.part is not None and whole in seen:
            self.sink.warning(
                f"{item.describe()} is already dropped with the whole {self.singular(item.stack)} {item.block}",
                located.span,
                help=f"the block is dropped on line {seen[whole].line}",
            )
            return
        covering = self.covering_part(item)
        if covering is not None and covering in seen:
            self.sink.warning(
                f"{item.describe()} is already dropped with {covering.describe()}",
                located.span,
                help=f"dropping `{covering.part}` removes `{item.part}` too (line {seen[covering].line})",
            )
            return
        seen[item] = located.span

    def covering_part(self, item: Item) -> Item | None:
        """The part whose drop also removes this one (attn covers attn2 in dual blocks)."""
        if item.part is None:
            return None
        block = self.graph.stack(item.stack).blocks[item.block]  # type: ignore[union-attr]
        rules = self.arch.part_rules(block.kind)
        for word, rule in rules.items():
            if item.part in rule.also and block.part(word) is not None:
                return Item(item.stack_order, item.stack, item.block, word)
        return None

    def promote(self, seen: dict[Item, Span]) -> tuple[tuple[Item, ...], tuple[Item, ...]]:
        items = set(seen)
        promoted = []
        by_block: dict[tuple[int, str, int], list[Item]] = {}
        for item in items:
            if item.part is not None:
                by_block.setdefault((item.stack_order, item.stack, item.block), []).append(item)
        for (order, stack, index), parts in sorted(by_block.items()):
            block = self.graph.stack(stack).blocks[index]  # type: ignore[union-attr]
            gone = set(removed_words(self.graph, block, [p.part for p in parts if p.part]))
            whole = Item(order, stack, index)
            if whole in items or gone != set(block.words):
                continue
            last = max((seen[p] for p in parts), key=lambda sp: sp.start)
            self.sink.warning(
                f"every part of {self.singular(stack)} {index} is dropped: it becomes a whole-block drop",
                last,
                help="a whole-block drop adds nothing to the streams, while identity parts still add their gated, "
                "normalised inputs: the function changes (as in the reference code)",
            )
            items.difference_update(parts)
            items.add(whole)
            promoted.append(whole)
        return tuple(sorted(items, key=Item.sort_key)), tuple(promoted)

    def check_not_everything(self, drops: tuple[Item, ...]) -> None:
        whole = {(i.stack, i.block) for i in drops if i.part is None}
        if self.graph.blocks and len(whole) == len(self.graph.blocks):
            statements = self.spec.of_type(s.Drop)
            self.sink.error(
                f"this spec drops every block of {self.graph.name}",
                statements[-1].span if statements else None,
                help="keep at least one block",
            )

    # -- preserve ------------------------------------------------------------------------------

    def check_preserve(self, drops: tuple[Item, ...]) -> PreserveSetting | None:
        statements = self.spec.of_type(s.Preserve)
        if not statements:
            return None
        dropped = set(drops)
        auto_span: Span | None = None
        items: list[Item] = []
        modules: list[str] = []
        for statement in statements:
            for entry in statement.items:
                if isinstance(entry, s.Auto):
                    if auto_span is not None:
                        self.sink.warning("`preserve auto` is written twice", entry.span)
                    auto_span = auto_span or entry.span
                elif isinstance(entry, s.String):
                    if self.check_module_path(entry, dropped, "preserve"):
                        modules.append(entry.value)
                else:
                    for located in self.resolve(entry) or ():
                        if self.preserving_dropped(located, dropped):
                            continue
                        items.append(located.item)
        if auto_span is not None and not drops:
            self.sink.warning(
                "nothing is dropped, so `preserve auto` freezes every parameter",
                auto_span,
                help="PWP freezes everything before the first removed block or part",
            )
        return PreserveSetting(auto_span is not None, tuple(sorted(set(items), key=Item.sort_key)), tuple(dict.fromkeys(modules)))

    def preserving_dropped(self, located: Located, dropped: set[Item]) -> bool:
        item = located.item
        if item.whole in dropped:
            self.sink.error(
                f"{self.singular(item.stack)} {item.block} is both dropped and preserved",
                located.span,
                help="a dropped block has nothing to freeze: remove it from `preserve` or from `drop`",
            )
            return True
        if item.part is not None and (item in dropped or (self.covering_part(item) in dropped)):
            self.sink.error(
                f"{item.describe()} is both dropped and preserved",
                located.span,
                help="a dropped part has nothing to freeze",
            )
            return True
        return False

    def check_module_path(self, entry: s.String, dropped: set[Item], statement: str) -> bool:
        """A quoted module path must name a module of the model that survives pruning."""
        path = entry.value
        outside = [o.module for o in self.graph.outside]
        if path in outside:
            return True
        for st in self.graph.stacks:
            prefix = st.module + "."
            if path.startswith(prefix):
                index, _, rest = path[len(prefix) :].partition(".")
                if index.isdigit() and int(index) < len(st):
                    block = st.blocks[int(index)]
                    item = self.item_of_module(block, rest)
                    if item is False:
                        break
                    if item in dropped or Item(self.stack_order[st.name], st.name, block.index) in dropped:
                        self.sink.error(
                            f"`{statement}` names {path!r}, which this spec drops",
                            entry.span,
                            help="name a module that survives pruning",
                        )
                        return False
                    return True
        suggestion = did_you_mean(path, outside)
        self.sink.error(
            f"{path!r} is not a module of {self.graph.name}",
            entry.span,
            help=(f"did you mean {suggestion!r}? " if suggestion else "")
            + f"modules outside the blocks: {', '.join(outside)}; for blocks use selectors such as blocks[0:8] or a path like "
            f"'{self.graph.stacks[0].module}.0.attn'",
        )
        return False

    def item_of_module(self, block: Block, rest: str) -> Item | None | bool:
        """The part a module path inside a block belongs to (None: the whole block; False: no module)."""
        order = self.stack_order[block.stack]
        if not rest:
            return Item(order, block.stack, block.index)
        for part in block.parts:
            for module in part.modules:
                if rest == module or rest.startswith(module + ".") or module.startswith(rest + "."):
                    return Item(order, block.stack, block.index, part.word)
        for part in block.parts:
            if any(t.name.startswith(rest + ".") or t.name == rest for t in part.tensors):
                return Item(order, block.stack, block.index, part.word)
        return False

    # -- distill / quantize --------------------------------------------------------------------

    def check_distill(self) -> dict[str, object] | None:
        statements = self.spec.of_type(s.Distill)
        if not statements:
            return None
        for extra in statements[1:]:
            self.sink.error(
                "a spec has one `distill` statement",
                extra.span,
                help=f"put all its options on line {statements[0].span.line}",
            )
        values = self.options(statements[0].options, DISTILL_OPTIONS, "distill")
        if "mode" in values and values.get("weight") != "sensitivity":
            span = next(o.span for o in statements[0].options if o.key.text == "mode")
            self.sink.warning("`mode` has an effect only with `weight=sensitivity`", span)
        if values.get("table") is not None and self.spec.path not in ("<spec>", "-"):
            table = Path(self.spec.path).parent / str(values["table"])
            if not table.is_file():
                span = next(o.value.span for o in statements[0].options if o.key.text == "table")
                self.sink.warning(
                    f"sensitivity table {values['table']!r} does not exist yet",
                    span,
                    help=f"it is read relative to the spec, as {table}; `hpspec analyze -o` writes one",
                )
        return {key: values.get(key, option.default) for key, option in DISTILL_OPTIONS.items()}

    def options(self, options: Iterable[s.Option], known: dict[str, DistillOption], statement: str) -> dict[str, object]:
        values: dict[str, object] = {}
        spans: dict[str, Span] = {}
        for option in options:
            key = option.key.text
            if key not in known:
                self.unknown(f"`{statement}` option", option.key, known, "options are")
                continue
            if key in spans:
                self.sink.error(
                    f"`{key}` is given twice", option.key.span, help=f"it is already set on line {spans[key].line}"
                )
                continue
            value = self.option_value(option, known[key])
            if value is not None:
                values[key], spans[key] = value, option.span
        return values

    def option_value(self, option: s.Option, spec: DistillOption) -> object | None:
        value, key = option.value, option.key.text
        if spec.kind == "choice":
            if isinstance(value, s.Name) and value.text in spec.choices:
                return value.text
            text = value.text if isinstance(value, (s.Name, s.Number)) else value.value
            suggestion = did_you_mean(text, spec.choices)
            self.sink.error(
                f"`{key}` must be {one_of(spec.choices)}",
                value.span,
                help=f"did you mean `{suggestion}`?" if suggestion else None,
            )
            return None
        if spec.kind == "path":
            if isinstance(value, s.String):
                return value.value
            self.sink.error(f"`{key}` takes a quoted path", value.span, help=f'for example: {key}="sensitivity.json"')
            return None
        if isinstance(value, s.Number):
            if spec.kind == "int":
                if value.is_int and int(value.text) >= spec.minimum:
                    return int(value.text)
                wanted = "a positive integer" if spec.minimum == 1 else f"an integer of at least {spec.minimum}"
                self.sink.error(f"`{key}` must be {wanted}", value.span)
                return None
            number = float(value.text)
            if number < 0 or number != number or number in (float("inf"),):
                self.sink.error(f"`{key}` must be a finite number of at least 0", value.span)
                return None
            return number
        self.sink.error(
            f"`{key}` must be {'an integer' if spec.kind == 'int' else 'a number'}",
            value.span,
            help=f"for example: {key}={spec.default if spec.default is not None else 1}",
        )
        return None

    def check_quantize(self, drops: tuple[Item, ...]) -> QuantizeSetting | None:
        statements = self.spec.of_type(s.Quantize)
        if not statements:
            return None
        for extra in statements[1:]:
            self.sink.error("a spec has one `quantize` statement", extra.span, help=f"the first is on line {statements[0].span.line}")
        statement = statements[0]
        scheme = statement.scheme.text
        if scheme not in SCHEMES:
            self.unknown("quantization scheme", statement.scheme, SCHEMES, "schemes are")
        dropped = set(drops)
        items, modules = [], []
        for entry in statement.exceptions:
            if isinstance(entry, s.String):
                if self.check_module_path(entry, dropped, "quantize except"):
                    modules.append(entry.value)
                continue
            for located in self.resolve(entry) or ():
                item = located.item
                if item in dropped or item.whole in dropped or self.covering_part(item) in dropped:
                    self.sink.error(
                        f"the quantize exception names {item.describe()}, which this spec drops",
                        located.span,
                        help="only what survives pruning can stay in full precision",
                    )
                    continue
                items.append(item)
        options = self.options(statement.options, QUANTIZE_OPTIONS, "quantize")
        resolved = {key: options.get(key, option.default) for key, option in QUANTIZE_OPTIONS.items()}
        return QuantizeSetting(scheme, tuple(sorted(set(items), key=Item.sort_key)), tuple(dict.fromkeys(modules)), resolved)


def removed_words(graph: ModelGraph, block: Block, words: Iterable[str]) -> list[str]:
    """The parts that go when `words` are dropped from a block: each word and what it takes along."""
    rules = graph.arch.part_rules(block.kind)
    gone: list[str] = []
    for word in words:
        for w in (word, *rules[word].also):
            if block.part(w) is not None and w not in gone:
                gone.append(w)
    return gone
