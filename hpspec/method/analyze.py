"""analyze: measure what removing each block (and each part) costs -> a sensitivity table.

Each entry removes one block or one part through the real pipeline (a one-line spec, checked and
planned, its modules swapped IN PLACE for their stand-ins and put back afterwards), generates the fixed prompt set for every seed, and
scores the images. The entry's score is the mean of the scorer's metrics (all in [0, 1], higher
is better); each metric is kept beside it. In the same pass over the unpruned model, forward hooks
record each block's input-output cosine similarity on the image stream (KOALA, ShortGPT).

Resumable: every finished entry is appended to a `.partial` JSONL file beside the output (keyed by
the settings' hash) and not redone. Under `accelerate launch`, rank r takes entries r, r+n, ...;
rank 0 merges the shares and writes the table.
"""

from __future__ import annotations

import copy
import functools
import json
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hpspec.core import faults
from hpspec.core.errors import PlanError
from hpspec.core.io import write_text_atomic
from hpspec.demo.models import DIGITS, DemoModel
from hpspec.lang.parse import parse
from hpspec.method.evaluate import Generator, Scorer
from hpspec.method.kept_images import ImageKeeper
from hpspec.method.probes import probe_recorder
from hpspec.method.sensitivity import Cosine, Entry, ScorerInfo, SensitivityTable, TargetRef, settings_hash
from hpspec.model.graph import ModelGraph, graph_from_module
from hpspec.plan.check import check
from hpspec.plan.compile import compile_plan
from hpspec.plan.plan import Plan

if TYPE_CHECKING:
    from torch import nn


@dataclass(frozen=True)
class Subject:
    """What analysis measures: a transformer, how to generate with it, and how to score."""

    name: str
    transformer: nn.Module
    generator_for: Callable[[nn.Module], Generator]
    scorer: Scorer
    scorer_name: str


@dataclass(frozen=True)
class Settings:
    prompts: list[str]
    seeds: list[int]
    parts: bool
    generator: dict[str, Any]  # steps, guidance, ...

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Removal:
    stack: str
    block: int
    part: str | None

    @property
    def key(self) -> str:
        return f"{self.stack}[{self.block}]" + (f".{self.part}" if self.part else "")

    def spec_line(self) -> str:
        return f"drop {self.stack[:-1]}[{self.block}]" + (f".{self.part}" if self.part else "")


def removals(graph: ModelGraph, parts: bool) -> list[Removal]:
    """Every whole block, then (with parts) every part of every block, in model order."""
    items = []
    for stack in graph.stacks:
        for block in stack.blocks:
            items.append(Removal(stack.name, block.index, None))
            if parts:
                items.extend(Removal(stack.name, block.index, word) for word in block.words)
    return items


def removal_plan(graph: ModelGraph, removal: Removal) -> Plan:
    """The plan of one removal's one-line spec: what `hpspec compile` would build from it."""
    return compile_plan(check(parse(removal.spec_line() + "\n", f"<analyze {removal.key}>"), graph))


@contextmanager
def swapped(transformer: nn.Module, plan: Plan) -> Iterator[nn.Module]:
    """The transformer pruned IN PLACE as `plan` says, every module put back on exit (also on an error).

    Dropped parts become their stand-ins (`weights.surgery`), dropped blocks leave the block list,
    and the last-block conversion works on a copy of that one block; the config rewrite is undone
    too. No copy of the transformer: peak memory is one model (and one block).
    """
    from torch import nn  # torch

    from hpspec.weights.checkpoint.layout import dropped_part_modules
    from hpspec.weights.surgery import convert_to_context_pre_only, parent_of, replace_part

    saved: list[tuple[nn.Module, str, nn.Module]] = []  # (parent, attribute, the original), in order
    config = getattr(transformer, "_internal_dict", None)  # diffusers' config, which register_to_config replaces

    def put(path: str, module: nn.Module) -> None:
        parent, name = parent_of(transformer, path)
        saved.append((parent, name, getattr(parent, name)))
        setattr(parent, name, module)

    try:
        for op in plan.ops:
            if op.kind == "convert_last_block":
                path = f"{plan.stacks[op.stack].module}.{op.block}"
                block = copy.deepcopy(transformer.get_submodule(path))
                convert_to_context_pre_only(block, plan.target.family)
                put(path, block)
        for path in dropped_part_modules(plan):
            replaced = replace_part(transformer, path)
            if replaced is not None:
                saved.append(replaced)
        for stack in plan.stacks.values():
            if stack.dropped:
                blocks = transformer.get_submodule(stack.module)
                put(stack.module, nn.ModuleList(b for i, b in enumerate(blocks) if i not in stack.dropped))
        if plan.config:
            transformer.register_to_config(**plan.config)  # type: ignore[operator]  # a diffusers ModelMixin
        count = sum(p.numel() for p in transformer.parameters())
        if count != plan.params.after_prune:
            raise PlanError(
                f"analyze: the swapped model holds {count} parameters, the plan says {plan.params.after_prune}"
            )
        yield transformer
    finally:
        for parent, name, original in reversed(saved):
            setattr(parent, name, original)
        if config is not None:
            transformer._internal_dict = config


def score_of(metrics: dict[str, float]) -> float:
    return sum(metrics.values()) / len(metrics)


def measure(subject: Subject, settings: Settings, sink: Callable[[Any], None] | None = None) -> dict[str, float]:
    """The scorer's metrics over every prompt and seed. A generator that yields `batches` and a
    scorer whose metrics are means over images (`per_image`) are scored batch by batch as the images
    come, none kept; otherwise all images are scored together. `sink` sees each batch of images."""
    generator = subject.generator_for(subject.transformer)
    batches = getattr(generator, "batches", None)
    if batches is None or not getattr(subject.scorer, "per_image", False):
        import torch

        images = torch.cat([generator.generate(list(settings.prompts), seed) for seed in settings.seeds])
        if sink is not None:
            sink(images)
        return dict(subject.scorer.score(images, list(settings.prompts) * len(settings.seeds)))
    sums: dict[str, float] = {}
    count = 0
    for seed in settings.seeds:
        for images, prompts in batches(settings.prompts, seed):
            if sink is not None:
                sink(images)
            for name, value in subject.scorer.score(images, prompts).items():
                sums[name] = sums.get(name, 0.0) + float(value) * len(prompts)
            count += len(prompts)
    return {name: total / count for name, total in sorted(sums.items())}


def analyze(
    subject: Subject,
    settings: Settings,
    output: Path,
    progress: bool = True,
    rank: int = 0,
    world: int = 1,
    barrier: Callable[[], None] = lambda: None,
    save_images: int = 0,
) -> SensitivityTable | None:
    """Measure every removal; rank 0 returns (and writes) the table, other ranks return None.

    `save_images` N keeps each entry's first N images as PNGs (`hpspec.method.kept_images`)."""
    graph = graph_from_module(subject.transformer, subject.name)
    digest = settings_hash(settings.as_dict())
    todo = removals(graph, settings.parts)
    partial = _partial_path(output, rank)
    done = _load_partial(partial, digest)

    full_key = "__full__"
    keeper = ImageKeeper(output, save_images)
    if full_key not in done and rank == 0:
        with cosine_recorder(subject.transformer, graph) as cosines:
            metrics = measure(subject, settings, keeper.sink(full_key))
        keeper.save(full_key)
        _append(partial, digest, full_key, {"metrics": metrics, "cosine": cosines()})
        done[full_key] = {"metrics": metrics, "cosine": cosines()}
    mine = [r for i, r in enumerate(todo) if i % world == rank and r.key not in done]
    for removal in _progress(mine, progress, rank):
        with swapped(subject.transformer, removal_plan(graph, removal)):
            metrics = measure(subject, settings, keeper.sink(removal.key))
        keeper.save(removal.key)
        _append(partial, digest, removal.key, {"metrics": metrics})
        faults.point("analyze.after_entry", partial)
        done[removal.key] = {"metrics": metrics}
    barrier()
    if rank != 0:
        return None
    for other in range(1, world):
        done.update(_load_partial(_partial_path(output, other), digest))
    table = _table(subject, graph, settings, todo, done[full_key], done)
    write_text_atomic(output, table.to_json())
    keeper.write_index(settings.prompts, settings.seeds, [full_key, *(r.key for r in todo)])
    for r in range(world):
        _partial_path(output, r).unlink(missing_ok=True)
    return table


def _table(
    subject: Subject, graph: ModelGraph, settings: Settings, todo: Sequence[Removal], full: dict, done: dict
) -> SensitivityTable:
    full_score = score_of(full["metrics"])
    entries = []
    for removal in todo:
        metrics = done[removal.key]["metrics"]
        score = score_of(metrics)
        entries.append(Entry(removal.stack, removal.block, removal.part, score, full_score - score, metrics))
    return SensitivityTable(
        target=TargetRef(graph.name, graph.fingerprint),
        scorer=ScorerInfo(subject.scorer_name, sorted(full["metrics"]), True),
        settings=settings.as_dict(),
        full_score=full_score,
        entries=entries,
        cosine=[Cosine(c["stack"], c["block"], c["value"]) for c in full["cosine"]],
        full_metrics=dict(full["metrics"]),
    )


def _progress(items: Sequence[Removal], enabled: bool, rank: int) -> Iterator[Removal]:
    if not enabled:
        yield from items
        return
    from tqdm import tqdm

    with tqdm(items, desc=f"analyze (rank {rank})" if rank else "analyze", unit="removal") as bar:
        for item in bar:
            bar.set_postfix_str(item.key)
            yield item


def _partial_path(output: Path, rank: int) -> Path:
    return output.with_name(f".{output.name}.partial.rank{rank}.jsonl")


def _load_partial(path: Path, digest: str) -> dict[str, dict]:
    """Finished entries of an interrupted run with the same settings (a torn last line is ignored)."""
    done: dict[str, dict] = {}
    if not path.is_file():
        return done
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except (ValueError, RecursionError):  # a torn line, or one nobody but a vandal writes
            continue
        if record.get("settings_hash") == digest:
            done[record["key"]] = record["value"]
    return done


def _append(path: Path, digest: str, key: str, value: dict) -> None:
    with path.open("a", encoding="utf-8") as handle:
        handle.write(json.dumps({"settings_hash": digest, "key": key, "value": value}) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


# --------------------------------------------------------------------------------------------
# KOALA / ShortGPT: cosine similarity between a block's input and output image stream


class cosine_recorder(probe_recorder):
    """The probes' block hooks with the cosine alone; `()` returns [{stack, block, value}], each the
    mean over the block's calls (the table's `cosine` field)."""

    def __init__(self, transformer: nn.Module, graph: ModelGraph):
        super().__init__(transformer, graph, ("cosine",))

    def __enter__(self) -> Callable[[], list[dict[str, Any]]]:  # type: ignore[override]
        super().__enter__()
        return self.cosines

    def cosines(self) -> list[dict[str, Any]]:
        return [{"stack": p.stack, "block": p.block, "value": p.cosine} for p in self.values()]


# --------------------------------------------------------------------------------------------
# Cheap probes: one pass of the unpruned model, no scorer, no removals


def probe_analysis(subject: Subject, settings: Settings, names: Sequence[str], output: Path) -> SensitivityTable:
    """One generation pass over the prompt set with probe hooks -> a table of probes (no entries).

    With `cosine` among the names the table's `cosine` field is filled too (same values), so
    `suggest --method koala` ranks by it. With `settings.parts`, each part's residual contribution
    follows its block's row. The table has no scorer, so its `full_score` is 0.
    """
    import torch

    graph = graph_from_module(subject.transformer, subject.name)
    generator = subject.generator_for(subject.transformer)
    parts = part_swaps(subject.transformer, graph) if settings.parts else None
    with probe_recorder(subject.transformer, graph, names, parts) as probes, torch.no_grad():
        for seed in settings.seeds:
            generator.generate(settings.prompts, seed)
    measured = probes()
    table = SensitivityTable(
        target=TargetRef(graph.name, graph.fingerprint),
        scorer=ScorerInfo("none (probes only)", [], True),
        settings={**settings.as_dict(), "probes": list(names)},
        full_score=0.0,
        entries=[],
        cosine=[Cosine(p.stack, p.block, p.cosine) for p in measured if p.cosine is not None and p.part is None],
        probes=measured,
    )
    write_text_atomic(output, table.to_json())
    return table


def part_swaps(transformer: nn.Module, graph: ModelGraph) -> dict[tuple[str, int], list[tuple[str, Any]]]:
    """For each block, each part's in-place swap (its one-line spec's plan, compiled once)."""
    swaps: dict[tuple[str, int], list[tuple[str, Any]]] = {}
    for removal in removals(graph, parts=True):
        if removal.part is not None:
            swap = functools.partial(swapped, transformer, removal_plan(graph, removal))
            swaps.setdefault((removal.stack, removal.block), []).append((removal.part, swap))
    return swaps


# --------------------------------------------------------------------------------------------
# Subjects


def demo_subject(
    model_dir: Path | None = None,
    steps: int | None = None,
    guidance: float | None = None,
    model: DemoModel = DIGITS,
) -> tuple[Subject, dict[str, Any]]:
    """An embedded demo (`model`, the digits by default; or a directory shaped like it) with its scorer."""
    # torch, diffusers and the text encoder: imported when a demo is loaded
    from hpspec.demo.sampler import DemoGenerator
    from hpspec.demo.text import load_text_encoder

    transformer = model.load_transformer(model_dir)
    encoder = load_text_encoder()
    knobs = {"steps": steps or model.steps, "guidance": guidance if guidance is not None else model.guidance}

    def generator_for(module: nn.Module) -> Generator:
        return DemoGenerator(module, encoder, **knobs)

    return Subject(model.subject, transformer, generator_for, model.make_scorer(), model.scorer_label), knobs
