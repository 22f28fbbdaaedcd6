"""suggest: a sensitivity table and a parameter budget -> an explicit spec, chosen by a method.

The command WRITES a spec (each drop commented with its score); the spec, not the command, is what
gets reviewed and compiled. Methods:

- hierarchical (the reference code's rule, METHOD §5): whole blocks in `blocks` are dropped as
  given; then parts inside `within` (minus those blocks) are removed from the highest score after
  removal down (equal scores in the table's order), skipping `exclude` kinds, stopping right after
  the removal that takes the kept fraction (over all transformer parameters) below `keep`.
  With `position_weight`, candidates are ordered by the paper's position-weighted priority
  instead: priority(i, c) = -|ΔP(i, c)| / W_pos(i), W_pos(i) = exp((i - |B|) / |B|), highest
  first, so that at equal ΔP a later block goes first.
  Without `blocks` and `within`, a fixed default rule, stated before any measurement: candidates
  are whole blocks of the last half of each stack (block rows of the table) and parts of the
  middle third, all ranked together by score after removal, highest first.
- koala: whole blocks, highest input-output cosine similarity first.
- bksdm: whole blocks, smallest score drop (ΔP) first.
All methods share the stopping rule. Kept fractions are counted by compiling the spec's plan.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from hpspec.core.errors import HpspecError
from hpspec.lang.parse import parse
from hpspec.method.sensitivity import SensitivityTable
from hpspec.model.graph import ModelGraph
from hpspec.plan.check import Item, check
from hpspec.plan.compile import compile_plan

METHODS = ("hierarchical", "koala", "bksdm")


@dataclass(frozen=True)
class Choice:
    stack: str
    block: int
    part: str | None
    note: str  # why: its score, its cosine, or "given by --blocks"

    @property
    def selector(self) -> str:
        singular = self.stack[:-1]
        return f"{singular}[{self.block}]" + (f".{self.part}" if self.part else "")


@dataclass(frozen=True)
class Suggestion:
    method: str
    keep: float
    kept_fraction: float
    given: tuple[Choice, ...]  # whole blocks dropped as given (--blocks)
    chosen: tuple[Choice, ...]  # picked by the method, in order


@dataclass(frozen=True)
class _Candidate:
    stack: str
    block: int
    part: str | None
    priority: float
    note: str


def suggest(
    method: str,
    graph: ModelGraph,
    table: SensitivityTable,
    keep: float,
    blocks: Sequence[Item] = (),
    within: Sequence[Item] | None = None,
    exclude: Iterable[str] = (),
    position_weight: bool = False,
) -> Suggestion:
    if method not in METHODS:
        raise HpspecError(f"unknown method {method!r}; methods: {', '.join(METHODS)}")
    if not 0 < keep < 1:
        raise HpspecError(f"--keep must be a fraction between 0 and 1, got {keep}")
    given = tuple(Choice(i.stack, i.block, None, "given by --blocks") for i in blocks)
    if method == "hierarchical":
        candidates = _hierarchical(graph, table, given, within, set(exclude), position_weight)
    elif method == "koala":
        candidates = _koala(graph, table)
    else:
        candidates = _bksdm(graph, table)
    chosen, fraction = _greedy(graph, given, candidates, keep)
    return Suggestion(method, keep, fraction, given, tuple(chosen))


def _hierarchical(
    graph: ModelGraph,
    table: SensitivityTable,
    given: Sequence[Choice],
    within: Sequence[Item] | None,
    exclude: set[str],
    position_weight: bool,
) -> list[_Candidate]:
    gone = {(c.stack, c.block) for c in given}
    if within is None and not given:
        allowed = _default_region(graph)
    else:
        allowed = {(i.stack, i.block, i.part) for i in (within or ())}
    candidates = []
    for entry in table.entries:
        if (entry.stack, entry.block) in gone or (entry.part in exclude):
            continue
        if (entry.stack, entry.block, None) not in allowed and (entry.stack, entry.block, entry.part) not in allowed:
            continue
        if within is not None and entry.part is None:
            continue  # the reference removes parts inside --within; whole blocks come from --blocks
        size = len(graph.stack(entry.stack).blocks)  # type: ignore[union-attr]
        priority = -abs(entry.delta) / math.exp((entry.block - size) / size) if position_weight else entry.score
        candidates.append(
            _Candidate(entry.stack, entry.block, entry.part, priority,
                       f"score {entry.score:.4g} after removal (ΔP {entry.delta:+.4g})")
        )  # fmt: skip
    # sorted() is stable: equal priorities keep the table's order, as the reference's loop does.
    return sorted(candidates, key=lambda c: -c.priority)


def _default_region(graph: ModelGraph) -> set[tuple[str, int, str | None]]:
    """Whole blocks of each stack's last half; parts of its middle third (a fixed rule)."""
    region: set[tuple[str, int, str | None]] = set()
    for stack in graph.stacks:
        n = len(stack)
        for block in stack.blocks[n // 2 :]:
            region.add((stack.name, block.index, None))
        for block in stack.blocks[n // 3 : (2 * n) // 3]:
            region.update((stack.name, block.index, word) for word in block.words)
    return region


def _koala(graph: ModelGraph, table: SensitivityTable) -> list[_Candidate]:
    if not table.cosine:
        raise HpspecError(
            "koala ranks blocks by input-output cosine similarity: the table has none (run `hpspec analyze`)"
        )
    ranked = sorted(table.cosine, key=lambda c: -c.value)
    return [_Candidate(c.stack, c.block, None, c.value, f"cosine {c.value:.4f}") for c in ranked]


def _bksdm(graph: ModelGraph, table: SensitivityTable) -> list[_Candidate]:
    rows = [e for e in table.entries if e.part is None]
    if not rows:
        raise HpspecError(
            "bksdm ranks whole blocks by their score drop: the table has no whole-block rows "
            "(run `hpspec analyze` without restricting it to parts)"
        )
    ranked = sorted(rows, key=lambda e: e.delta)
    return [_Candidate(e.stack, e.block, None, -e.delta, f"ΔP {e.delta:+.4g} (score {e.score:.4g})") for e in ranked]


def _greedy(
    graph: ModelGraph, given: Sequence[Choice], candidates: Sequence[_Candidate], keep: float
) -> tuple[list[Choice], float]:
    """Remove candidates in order; stop right after the removal that takes the fraction below keep."""
    measure = _fraction_counter(graph)
    chosen: list[Choice] = []
    start = measure([*given])
    if start is None:
        raise HpspecError("the blocks given by --blocks drop every block: nothing would be left")
    fraction = start
    for candidate in candidates:
        if fraction < keep:
            break
        choice = Choice(candidate.stack, candidate.block, candidate.part, candidate.note)
        if _redundant(choice, [*given, *chosen]):
            continue
        # A whole block supersedes parts of it chosen earlier.
        kept = [c for c in chosen if choice.part is not None or (c.stack, c.block) != (choice.stack, choice.block)]
        trial = measure([*given, *kept, choice])
        if trial is None:
            continue  # would drop every block: not a valid spec
        chosen = [*kept, choice]
        fraction = trial
    if fraction >= keep:
        raise HpspecError(
            f"the candidates run out at {fraction:.4f} of parameters kept, above --keep {keep}: widen --within or --blocks"
        )
    return chosen, fraction


def _redundant(choice: Choice, previous: Sequence[Choice]) -> bool:
    return any(p.stack == choice.stack and p.block == choice.block and p.part in (None, choice.part) for p in previous)


def _fraction_counter(graph: ModelGraph) -> Callable[[Sequence[Choice]], float | None]:
    """The exact kept fraction of a set of drops, by compiling the plan they make."""

    def measure(choices: Sequence[Choice]) -> float | None:
        """None when the drops do not make a valid spec (they would drop every block)."""
        if not choices:
            return 1.0
        try:
            checked = check(parse(_drops_text(choices)), graph)
        except HpspecError:
            return None
        return compile_plan(checked).kept_fraction

    return measure


def _drops_text(choices: Sequence[Choice]) -> str:
    return "".join(f"drop {c.selector}\n" for c in choices)


# --------------------------------------------------------------------------------------------
# Writing the spec


def render_spec(
    suggestion: Suggestion, target_line: str, command: str, table_note: str, extra: Sequence[str] = ()
) -> str:
    lines = [
        "# Written by `hpspec suggest`: review it, then compile it.",
        f"# {command}",
        f"# method {suggestion.method}; {table_note}",
        f"# parameters kept: {suggestion.kept_fraction:.4f} (budget {suggestion.keep})",
        target_line,
        "",
    ]
    if suggestion.given:
        lines.append(f"drop {_selector_list(suggestion.given)}  # given by --blocks")
    lines.extend(f"drop {c.selector}  # {c.note}" for c in suggestion.chosen)
    lines.extend(extra)
    return "\n".join(lines) + "\n"


def _selector_list(choices: Sequence[Choice]) -> str:
    """blocks[25:29, 31:35]: consecutive runs as end-exclusive slices, per stack."""
    out = []
    for stack in dict.fromkeys(c.stack for c in choices):
        indices = sorted(c.block for c in choices if c.stack == stack)
        runs: list[str] = []
        start = indices[0]
        for previous, current in zip(indices, [*indices[1:], None]):
            if current != previous + 1:
                runs.append(str(start) if start == previous else f"{start}:{previous + 1}")
                if current is not None:
                    start = current
        out.append(f"{stack}[{', '.join(runs)}]")
    return ", ".join(out)
