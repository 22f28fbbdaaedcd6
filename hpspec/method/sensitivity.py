"""The sensitivity table (schema v1, pinned): what removing each block or part costs.

Written by `hpspec analyze` (measured, or imported from the reference code's released table) and
read by `suggest`, the distill stage (SGDistill) and the report. Entries keep their order: the
reference's greedy selection breaks ties by the table's order.

JSON:
    schema_version: 1
    target: {name, fingerprint}
    scorer: {name, metrics, higher_is_better}
    settings: {prompts, seeds, steps, ...}; settings_hash: sha256 of the settings
    full_score: the unpruned model's score
    entries: [{stack, block, part (null: whole block), score, delta}], delta = full_score - score (ΔP)
    cosine: [{stack, block, value}]: a block's input-output cosine similarity (KOALA, ShortGPT)
Added fields (schema v1 only grows): entries[].metrics and full_metrics, the metrics behind a
measured score; probes: [{stack, block, part, cosine, mse, cka, calls}], the cheap probes of one
pass (`hpspec analyze --probe`; a measure not asked for is null; `part` null for a block's own
input-output probes, else that part's residual contribution).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from hpspec.core.errors import SensitivityError
from hpspec.core.io import read_json_input
from hpspec.model.graph import ModelGraph

SCHEMA_VERSION = 1
REFERENCE_SEPARATOR = "<tab>"  # the released table writes the five characters, not a tab


@dataclass(frozen=True)
class Entry:
    stack: str
    block: int
    part: str | None  # None: the whole block
    score: float
    delta: float  # ΔP = full_score - score; negative when removal helped
    metrics: dict[str, float] = field(default_factory=dict)  # each metric behind the score, when measured


@dataclass(frozen=True)
class Cosine:
    stack: str
    block: int
    value: float


@dataclass(frozen=True)
class Probe:
    """One block's cheap probes over one pass of the unpruned model, each the mean over its calls."""

    stack: str
    block: int
    cosine: float | None = None  # input-output cosine of the image stream (KOALA, ShortGPT)
    mse: float | None = None  # mean squared change, output minus input
    cka: float | None = None  # linear CKA between input and output
    calls: int = 0  # the block's calls averaged over
    # Added in schema v1: a part's residual contribution (the block's output with the part against
    # without it, on the same inputs); None: the block's own input-output probes.
    part: str | None = None


@dataclass(frozen=True)
class ScorerInfo:
    name: str
    metrics: list[str]
    higher_is_better: bool = True


@dataclass(frozen=True)
class TargetRef:
    name: str
    fingerprint: str


@dataclass(frozen=True)
class SensitivityTable:
    target: TargetRef
    scorer: ScorerInfo
    settings: dict[str, Any]
    full_score: float
    entries: list[Entry]
    cosine: list[Cosine] = field(default_factory=list)
    full_metrics: dict[str, float] = field(default_factory=dict)
    probes: list[Probe] = field(default_factory=list)  # added in schema v1 (fields only grow)
    schema_version: int = SCHEMA_VERSION

    @property
    def settings_hash(self) -> str:
        return settings_hash(self.settings)

    def to_json(self) -> str:
        data = asdict(self)
        data["settings_hash"] = self.settings_hash
        if not self.probes:  # an added field: tables without probes stay byte for byte what they were
            del data["probes"]
        # Entries keep their order (it breaks ties in selection); only dict keys are sorted.
        return json.dumps(data, sort_keys=True, indent=2, ensure_ascii=False) + "\n"

    def entry(self, stack: str, block: int, part: str | None) -> Entry | None:
        return next((e for e in self.entries if (e.stack, e.block, e.part) == (stack, block, part)), None)

    @property
    def has_block_rows(self) -> bool:
        return any(e.part is None for e in self.entries)

    def block_delta(self, stack: str, block: int) -> tuple[float, str] | None:
        """A block's ΔP: its own row, else the sum of its parts' rows. Says which it used."""
        row = self.entry(stack, block, None)
        if row is not None:
            return row.delta, "block row"
        parts = [e.delta for e in self.entries if e.stack == stack and e.block == block and e.part is not None]
        return (sum(parts), "sum of part rows") if parts else None


def settings_hash(settings: dict[str, Any]) -> str:
    text = json.dumps(settings, sort_keys=True, separators=(",", ":"))
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


# --------------------------------------------------------------------------------------------
# Reading and checking


def load_table(path: Path) -> SensitivityTable:
    data = read_json_input(Path(path), "sensitivity table")
    return table_from_json(data, str(path))


def table_from_json(data: Any, where: str) -> SensitivityTable:
    if not isinstance(data, dict):
        raise SensitivityError(f"{where}: a sensitivity table is a JSON object")
    if data.get("schema_version") != SCHEMA_VERSION:
        hint = (
            " (the reference's released table? import it with `hpspec analyze --import-reference`)"
            if _looks_like_reference(data)
            else ""
        )
        raise SensitivityError(
            f"{where}: schema_version {data.get('schema_version')!r}, expected {SCHEMA_VERSION}{hint}"
        )
    try:
        table = SensitivityTable(
            target=TargetRef(**data["target"]),
            scorer=ScorerInfo(**data["scorer"]),
            settings=dict(data["settings"]),
            full_score=float(data["full_score"]),
            entries=[Entry(**e) for e in data["entries"]],
            cosine=[Cosine(**c) for c in data.get("cosine", [])],
            full_metrics=dict(data.get("full_metrics", {})),
            probes=[Probe(**p) for p in data.get("probes", [])],
        )
    except (KeyError, TypeError, ValueError) as error:
        raise SensitivityError(f"{where}: not a sensitivity table: {type(error).__name__}: {error}") from None
    for entry in table.entries:
        if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in (entry.score, entry.delta)):
            raise SensitivityError(f"{where}: entry {entry.stack}[{entry.block}] {entry.part} has a non-finite score")
    return table


def _looks_like_reference(data: dict) -> bool:
    return any(REFERENCE_SEPARATOR in str(k) for k in data)


def check_table_fits(table: SensitivityTable, graph: ModelGraph, where: str) -> None:
    """Every entry names a block and part the model has; the fingerprints agree."""
    if table.target.fingerprint != graph.fingerprint:
        raise SensitivityError(
            f"{where}: measured on {table.target.name} ({table.target.fingerprint}), "
            f"not on {graph.name} ({graph.fingerprint})"
        )
    for entry in table.entries:
        stack = graph.stack(entry.stack)
        if stack is None or not 0 <= entry.block < len(stack):
            raise SensitivityError(
                f"{where}: entry names {entry.stack}[{entry.block}], which {graph.name} does not have"
            )
        if entry.part is not None and stack.blocks[entry.block].part(entry.part) is None:
            raise SensitivityError(f"{where}: {entry.stack}[{entry.block}] has no part {entry.part!r}")


# --------------------------------------------------------------------------------------------
# The reference code's released table


@dataclass(frozen=True)
class ImportReport:
    table: SensitivityTable
    skipped: list[str]  # keys naming parts the model does not have, with why


def import_reference(
    data: Any, graph: ModelGraph, full_score: float, where: str, scorer: str = "hpsv2"
) -> ImportReport:
    """Read `{"31<tab>ff": 30.79, ...}` (score after removal) into a table for `graph`.

    Reference part names become hpspec words through the architecture data (`reference` of each
    part). Keys naming a part the model lacks (the released table's "37 ff_context": block 37 is
    context-pre-only) are skipped and reported.
    """
    if not isinstance(data, dict) or not data:
        raise SensitivityError(f'{where}: expected a JSON object of "BLOCK<tab>PART": score')
    if len(graph.stacks) != 1:
        raise SensitivityError(
            f"{where}: the reference table format numbers one stack; {graph.name} has {len(graph.stacks)}"
        )
    stack = graph.stacks[0]
    words = _reference_words(graph)
    entries, skipped = [], []
    for key, score in data.items():
        block_text, separator, name = str(key).partition(REFERENCE_SEPARATOR)
        if not separator or not block_text.strip().isdigit():
            raise SensitivityError(f'{where}: key {key!r} is not "BLOCK<tab>PART"')
        if not isinstance(score, (int, float)) or isinstance(score, bool) or not math.isfinite(score):
            raise SensitivityError(f"{where}: key {key!r} has a non-numeric score {score!r}")
        block, name = int(block_text), name.strip()
        if name not in words:
            raise SensitivityError(
                f"{where}: key {key!r}: unknown reference part {name!r}; known: {', '.join(sorted(words))}"
            )
        if block >= len(stack):
            raise SensitivityError(f"{where}: key {key!r}: {graph.name} has blocks 0–{len(stack) - 1}")
        word = words[name]
        if stack.blocks[block].part(word) is None:
            skipped.append(f"{key!r}: block {block} ({stack.blocks[block].kind}) has no {word}")
            continue
        entries.append(Entry(stack.name, block, word, float(score), full_score - float(score)))
    table = SensitivityTable(
        target=TargetRef(graph.name, graph.fingerprint),
        scorer=ScorerInfo(scorer, [scorer], True),
        settings={"source": "reference", "file": Path(where).name},
        full_score=full_score,
        entries=entries,
    )
    return ImportReport(table, skipped)


def _reference_words(graph: ModelGraph) -> dict[str, str]:
    """Reference part name -> hpspec word (the first part claiming that name: `attn` over `attn2`)."""
    words: dict[str, str] = {}
    for rules in (graph.arch.parts, graph.arch.single_parts):
        for word, rule in rules.items():
            words.setdefault(rule.reference, word)
    return words


def entries_for(table: SensitivityTable, stack: str, parts_only: bool) -> Iterable[Entry]:
    return (e for e in table.entries if e.stack == stack and (e.part is not None) == parts_only)
