"""selectors: what a selector (`blocks[0:8]`, `block[3].attn`) or a quoted module path names.

Not a rule of its own: `drop`, `preserve` and `quantize except` resolve their selectors here,
each once, and every reason a selector names nothing valid is reported where it is written:

    target sd3.5-medium
    drop blocks[40]
    error: block 40 is out of range
      = help: sd3.5-medium has blocks 0–23; negative indices count from the end
"""

from __future__ import annotations

from collections.abc import Iterable

from hpspec.core.diagnostics import Span, all_of, did_you_mean, one_of
from hpspec.lang import syntax as s
from hpspec.model.graph import Block, ModelGraph
from hpspec.plan.check.checked import Item, Located
from hpspec.plan.check.context import Context


def resolve(ctx: Context, selector: s.Selector) -> list[Located] | None:
    """The items a selector names, or None after reporting why it names nothing valid."""
    words = stack_words(ctx.graph)
    word = selector.stack.text
    if word not in words:
        _unknown_stack(ctx, selector.stack, words)
        return None
    stack_name, singular = words[word]
    stack = ctx.graph.stack(stack_name)
    assert stack is not None
    if singular and (len(selector.indices) != 1 or isinstance(selector.indices[0], s.Slice)):
        plural = next(st.name for st in ctx.graph.stacks if st.name == stack_name)
        ctx.sink.error(
            f"`{word}[...]` takes a single index", selector.span, help=f"write `{plural}[...]` to select several"
        )
        return None
    indices: list[tuple[int, Span]] = []
    ok = True
    for index in selector.indices:
        resolved = _resolve_index(ctx, index, stack_name, len(stack))
        if resolved is None:
            ok = False
        else:
            indices.extend((i, index.span) for i in resolved)
    if not ok:
        return None
    part = selector.part.text if selector.part is not None else None
    if selector.part is not None and not _check_part_word(ctx, selector.part):
        return None
    located = []
    for i, span in indices:
        block = stack.blocks[i]
        if selector.part is not None and part is not None and block.part(part) is None:
            _absent_part(ctx, selector.part, block)
            ok = False
            continue
        located.append(
            Located(Item(ctx.stack_order[stack_name], stack_name, i, part), span if part is None else selector.span)
        )
    return located if ok else None


def stack_words(graph: ModelGraph) -> dict[str, tuple[str, bool]]:
    """Selector word -> (stack name, singular?)."""
    words = {}
    for st in graph.stacks:
        words[st.name] = (st.name, False)
        words[st.singular] = (st.name, True)
    return words


def _unknown_stack(ctx: Context, name: s.Name, words: dict[str, tuple[str, bool]]) -> None:
    stacks = [st.name for st in ctx.graph.stacks]
    if len(stacks) > 1 and name.text in ("blocks", "block"):
        described = " or ".join(f"`{st.name}[...]` (0–{len(st) - 1})" for st in ctx.graph.stacks)
        ctx.sink.error(
            f"`{name.text}` is ambiguous: {ctx.graph.name} has {len(stacks)} stacks of blocks",
            name.span,
            help=f"write {described}",
        )
        return
    ctx.unknown("block selector", name, words, f"{ctx.graph.name} has")


def _range_text(count: int) -> str:
    return f"blocks 0–{count - 1}" if count > 1 else ("block 0" if count == 1 else "no blocks")


def _resolve_index(ctx: Context, index: s.Index | s.Slice, stack: str, count: int) -> list[int] | None:
    if isinstance(index, s.Index):
        if not -count <= index.value < count:
            ctx.sink.error(
                f"{ctx.singular(stack)} {index.value} is out of range",
                index.span,
                help=f"{ctx.graph.name} has {_stack_phrase(ctx, stack, count)}; negative indices count from the end",
            )
            return None
        return [index.value % count]
    if index.step == 0:
        ctx.sink.error("slice step cannot be zero", index.span, help="write a step of 1 or more, or leave it out")
        return None
    for bound in (index.start, index.stop):
        if bound is not None and not -count <= bound <= count:
            ctx.sink.error(
                f"slice bound {bound} is out of range",
                index.span,
                help=f"{ctx.graph.name} has {_stack_phrase(ctx, stack, count)}; a slice's end is exclusive, so it can be at most {count}",
            )
            return None
    selected = list(range(*slice(index.start, index.stop, index.step).indices(count)))
    if not selected:
        ctx.sink.error(
            "empty slice: it selects no block",
            index.span,
            help="slices are end-exclusive, like Python: `25:29` is blocks 25, 26, 27, 28",
        )
        return None
    return selected


def _stack_phrase(ctx: Context, stack: str, count: int) -> str:
    if len(ctx.graph.stacks) == 1:
        return _range_text(count)
    return f"{stack} 0–{count - 1}" if count else f"no {stack}"


def _check_part_word(ctx: Context, name: s.Name) -> bool:
    words = ctx.arch.words
    if name.text in words:
        return True
    if name.text in ctx.arch.foreign:
        word = ctx.arch.foreign[name.text]
        ctx.sink.error(
            f"`{name.text}` is not an hpspec part name",
            name.span,
            help=f"write `{word}`: hpspec uses the paper's words ({one_of(words)})",
        )
        return False
    ctx.unknown("part", name, words, "parts are")
    return False


def _absent_part(ctx: Context, name: s.Name, block: Block) -> None:
    why = ctx.arch.absent.get(name.text, f"a {block.kind} block has no such part")
    if name.text == "attn2":
        dual = [b.index for b in ctx.graph.blocks if b.part("attn2") is not None]
        why += f" ({ctx.graph.name}: {_index_list(dual)})" if dual else f" ({ctx.graph.name} has none)"
    ctx.sink.error(
        f"{ctx.singular(block.stack)} {block.index} has no {name.text}: {why}",
        name.span,
        help=f"{ctx.singular(block.stack)} {block.index} has {all_of(block.words)}",
    )


def _index_list(indices: list[int]) -> str:
    runs: list[str] = []
    start: int | None = None
    for i, value in enumerate(indices):
        if start is None:
            start = value
        if i + 1 == len(indices) or indices[i + 1] != value + 1:
            runs.append(f"{start}" if start == value else f"{start}–{value}")
            start = None
    return "blocks " + ", ".join(runs)


# --------------------------------------------------------------------------------------------
# What dropping a part takes along


def covering_part(graph: ModelGraph, item: Item) -> Item | None:
    """The part whose drop also removes this one (attn covers attn2 in dual blocks)."""
    if item.part is None:
        return None
    block = block_of(graph, item.stack, item.block)
    rules = graph.arch.part_rules(block.kind)
    for word, rule in rules.items():
        if item.part in rule.also and block.part(word) is not None:
            return Item(item.stack_order, item.stack, item.block, word)
    return None


def removed_words(graph: ModelGraph, block: Block, words: Iterable[str]) -> list[str]:
    """The parts that go when `words` are dropped from a block: each word and what it takes along."""
    rules = graph.arch.part_rules(block.kind)
    gone: list[str] = []
    for word in words:
        for w in (word, *rules[word].also):
            if block.part(w) is not None and w not in gone:
                gone.append(w)
    return gone


def is_dropped(graph: ModelGraph, item: Item, dropped: set[Item]) -> bool:
    """Does a spec's drop set remove this item: itself, its whole block, or the part covering it?"""
    return item in dropped or item.whole in dropped or covering_part(graph, item) in dropped


def block_of(graph: ModelGraph, stack: str, index: int) -> Block:
    """Block `index` of a stack of the graph."""
    found = graph.stack(stack)
    assert found is not None
    return found.blocks[index]


# --------------------------------------------------------------------------------------------
# Quoted module paths (`preserve "pos_embed"`, `quantize nf4 except "proj_out"`)


def check_module_path(ctx: Context, entry: s.String, dropped: set[Item], statement: str) -> bool:
    """A quoted module path must name a module of the model that survives pruning."""
    path = entry.value
    outside = [o.module for o in ctx.graph.outside]
    if path in outside:
        return True
    for st in ctx.graph.stacks:
        prefix = st.module + "."
        if path.startswith(prefix):
            index, _, rest = path[len(prefix) :].partition(".")
            if index.isdigit() and int(index) < len(st):
                block = st.blocks[int(index)]
                item = _item_of_module(ctx, block, rest)
                if item is False:
                    break
                if item in dropped or Item(ctx.stack_order[st.name], st.name, block.index) in dropped:
                    ctx.sink.error(
                        f"`{statement}` names {path!r}, which this spec drops",
                        entry.span,
                        help="name a module that survives pruning",
                    )
                    return False
                return True
    suggestion = did_you_mean(path, outside)
    ctx.sink.error(
        f"{path!r} is not a module of {ctx.graph.name}",
        entry.span,
        help=(f"did you mean {suggestion!r}? " if suggestion else "")
        + f"modules outside the blocks: {', '.join(outside)}; for blocks use selectors such as blocks[0:8] or a path like "
        f"'{ctx.graph.stacks[0].module}.0.attn'",
    )
    return False


def _item_of_module(ctx: Context, block: Block, rest: str) -> Item | None | bool:
    """The part a module path inside a block belongs to (None: the whole block; False: no module)."""
    order = ctx.stack_order[block.stack]
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
