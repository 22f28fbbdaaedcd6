"""The hostile-input figures: fuzzed specs, corrupt checkpoints and faults during compile, as one table.

    python bench/fuzz.py [--specs 10000] [--seed 0]

- Specs: generated from the grammar, mutated by token and by byte, hostile and junk
  (tests/hostile_corpus.py), each read from a file and taken through parse, check, plan and fmt
  against its target (sd3.5-large-turbo, sd3.5-medium, flux.1-schnell, demo in turn). Goals: at
  least 30% parse and 10% reach a plan; no crash (an exception other than HpspecError), no hang
  (over 1 s for a spec under 10 KB), no fmt that is not a fixed point or changes the statements.
- Corrupt checkpoints (tests/hostile_checkpoints.py): each compiled; goal: every one a clear
  error (exit 1, one line naming the file and the problem) and nothing at the output path.
- Faults: a compile killed (SIGKILL), crashed and out of disk at every fault point
  (hpspec.faults); goal: the complete output or none at the output path, and nothing left behind
  once the next run has swept.
- Round two (tests/hostile_rounds.py): `check` of one-line specs of 10 KB to 1 MB in their own
  process (seconds and peak RSS per size; goal: output and memory linear in the input), hostile
  JSON (a 5,000-digit integer, 10,000 nested arrays) at every JSON input, configs of 10^4+1 to
  10^9 layers (goal: refused by the sanity bound), concurrent runs (two writers, a --force racing
  a failing run, a source rewritten mid-copy: --rounds each; goal: racing run refused, outputs
  lost 0) and hand-edited plans (goal: each refused in one line, nothing written).

Exits 1 when a goal is missed, after printing what missed it. Torch is not needed.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # the corpora live beside the tests that use them too

from hpspec.core.faults import ACTIONS, POINTS  # noqa: E402
from tests.hostile_checkpoints import (  # noqa: E402
    CORRUPTIONS,
    SPEC,
    clear_error,
    compile_in_process,
    contents,
    damaged,
    inject,
    leftovers,
    write_checkpoint,
)
from tests.hostile_rounds import check_sized, concurrency, hostile_json, huge_count, plan_edits  # noqa: E402
from tests.hostile_corpus import KINDS, STAGES, Tally, Vocabulary, corpus, load_graphs, run_corpus, seed_specs, watchdog  # noqa: E402

PARSE_GOAL, PLAN_GOAL = 0.30, 0.10
STAGE_LABELS = {"read": "read (UTF-8, at most 1 MB)", "parse": "parsed", "check": "checked", "plan": "planned"}
HANG_SECONDS, HANG_BYTES = 1.0, 10_000


@dataclass
class Checkpoints:
    """What the corrupt checkpoints and the fault runs gave."""

    cases: int = 0
    clear: int = 0
    fault_runs: int = 0
    fault_expected: int = 0
    whole_or_none: int = 0
    left_behind: list[str] = field(default_factory=list)
    unclear: list[str] = field(default_factory=list)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--specs", type=int, default=10_000, help="specs to generate (default 10,000)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rounds", type=int, default=20, help="rounds of each concurrency scenario (default 20)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="hpspec-bench-fuzz-") as directory:
        os.environ["HPSPEC_CACHE_DIR"] = str(Path(directory) / "cache")  # no trace in the user's cache
        started = time.monotonic()
        tally = fuzz_specs(args.specs, args.seed)
        specs_s = time.monotonic() - started
        checkpoints = Checkpoints()
        corrupt(Path(directory), checkpoints)
        fault(Path(directory), checkpoints)
        second = round_two(Path(directory) / "round-two", args.rounds)
    print(table(tally, checkpoints, args.seed, specs_s))
    print(second_table(second))
    misses = goals_missed(tally, checkpoints) + second_missed(second)
    for miss in misses:
        print(f"MISSED: {miss}")
    return 1 if misses else 0


# --------------------------------------------------------------------------------------------
# The three corpora


def fuzz_specs(count: int, seed: int) -> Tally:
    graphs = load_graphs()
    vocabularies = {name: Vocabulary.of(graph) for name, graph in graphs.items()}
    return run_corpus(corpus(count, seed, vocabularies, seed_specs(REPO)), graphs, limit=30, hang_seconds=HANG_SECONDS)


def corrupt(root: Path, found: Checkpoints) -> None:
    good = write_checkpoint(root / "good")
    spec = root / "spec.hps"
    spec.write_text(SPEC, encoding="utf-8")
    for corruption in CORRUPTIONS:
        out = root / "corrupt-out"
        with damaged(root, good, corruption) as (model, named), watchdog(60):
            run = compile_in_process(spec, model, out, *corruption.flags)
        problem = clear_error(run, named, corruption.problem)
        found.cases += 1
        found.clear += problem is None
        found.unclear += [f"{corruption.name}: {problem}"] if problem else []
        found.left_behind += [str(p) for p in leftovers(out)]


def fault(root: Path, found: Checkpoints) -> None:
    good, spec = root / "good", root / "spec.hps"
    reference_out = root / "reference"
    assert compile_in_process(spec, good, reference_out).code == 0
    reference = contents(reference_out / "pruned")
    for point in POINTS:
        for action in (a for a in ACTIONS if a != "stop"):  # `stop` pauses a run for the concurrency rounds
            out = root / f"fault-{point}-{action}" / "out"
            outcome = inject(point, action, spec, good, out, reference)
            found.fault_runs += 1
            found.fault_expected += outcome.expected
            found.whole_or_none += outcome.whole_or_none
            found.left_behind += [f"{point}:{action}: {p}" for p in outcome.left_behind]


# --------------------------------------------------------------------------------------------
# The table


def table(tally: Tally, found: Checkpoints, seed: int, specs_s: float) -> str:
    kinds = [kind for kind in KINDS if tally.kinds[kind]]
    header = ["", "all", *kinds]
    rows = [["specs tried", tally.tried, *(tally.kinds[k] for k in kinds)]]
    by_kind = tally.by_kind
    for stage in STAGES:
        shares = [_share(by_kind[k][stage], tally.kinds[k]) for k in kinds]
        rows.append([f"  {STAGE_LABELS[stage]}", _share(tally.reached[stage], tally.tried), *shares])
    rows += [
        ["  formatted by fmt", _share(tally.formatted, tally.tried), *(_share(by_kind[k]["fmt"], tally.kinds[k]) for k in kinds)],
        ["  crashes (not HpspecError)", len(tally.crashes), *(_count(tally.crashes, k) for k in kinds)],
        [f"  hangs (> {HANG_SECONDS:g} s, < {HANG_BYTES // 1000} KB)", len(tally.hangs), *(_count(tally.hangs, k) for k in kinds)],
        ["  fmt not a fixed point / changed", len(tally.fmt_problems), *(_count(tally.fmt_problems, k) for k in kinds)],
        ["  slowest spec, s", f"{tally.slowest:.2f}"],
        ["  all specs, s", f"{specs_s:.0f}"],
        ["corrupt checkpoints", found.cases],
        ["  clear errors", found.clear],
        ["fault runs (points x kill/raise/enospc)", found.fault_runs],
        ["  failed as injected", found.fault_expected],
        ["  whole output or none", found.whole_or_none],
        ["outputs left behind", len(found.left_behind)],
    ]
    widths = [max(len(str(row[i])) for row in [header, *rows] if i < len(row)) for i in range(len(header))]
    lines = [f"hpspec hostile-input figures (seed {seed})"]
    for row in [header, *rows]:
        cells = [str(row[0]).ljust(widths[0])] + [str(cell).rjust(widths[i + 1]) for i, cell in enumerate(row[1:])]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def _share(count: int, total: int) -> str:
    return f"{count} ({100 * count / total:.0f}%)" if total else "0"


def _count(found: list, kind: str) -> int:
    return sum(case.kind == kind for case, _ in found)


def goals_missed(tally: Tally, found: Checkpoints) -> list[str]:
    misses = [f"crash: {case.kind} {case.data[:120]!r}: {crash}" for case, crash in tally.crashes[:20]]
    misses += [f"hang: {case.kind} {len(case.data)} bytes, {seconds:.2f} s: {case.data[:80]!r}" for case, seconds in tally.hangs[:20]]
    misses += [f"fmt: {problem}: {case.data[:120]!r}" for case, problem in tally.fmt_problems[:20]]
    if tally.reached["parse"] < PARSE_GOAL * tally.tried:
        misses.append(f"only {tally.reached['parse']} of {tally.tried} specs parse (goal {PARSE_GOAL:.0%})")
    if tally.reached["plan"] < PLAN_GOAL * tally.tried:
        misses.append(f"only {tally.reached['plan']} of {tally.tried} specs reach a plan (goal {PLAN_GOAL:.0%})")
    misses += [f"unclear error: {line}" for line in found.unclear]
    if found.fault_expected < found.fault_runs or found.whole_or_none < found.fault_runs:
        misses.append("a fault run did not fail as injected, or left part of an output at the output path")
    misses += [f"left behind: {path}" for path in found.left_behind]
    return misses


# --------------------------------------------------------------------------------------------
# Round two: sizes, hostile JSON, huge counts, concurrency, hand-edited plans

SIZES = (10_000, 100_000, 1_000_000)
LAYERS = (10_001, 1_000_000, 1_000_000_000)


@dataclass
class RoundTwo:
    sizes: list = field(default_factory=list)  # SizeRun per size
    json_cases: int = 0
    json_unclear: list[str] = field(default_factory=list)
    counts: list[tuple[int, float, bool]] = field(default_factory=list)  # layers, seconds, refused by the bound
    concurrency: dict[str, tuple[int, int, int]] = field(default_factory=dict)
    plan_cases: int = 0
    plan_unclear: list[str] = field(default_factory=list)


def round_two(root: Path, rounds: int) -> RoundTwo:
    root.mkdir(parents=True)
    found = RoundTwo(sizes=[check_sized(root, size) for size in SIZES])
    found.json_cases, found.json_unclear = hostile_json(root)
    found.counts = [(layers, *huge_count(root, layers)) for layers in LAYERS]
    found.concurrency = concurrency(root / "concurrency", rounds)
    found.plan_cases, found.plan_unclear = plan_edits(root)
    return found


def second_table(found: RoundTwo) -> str:
    lines = ["", "round two", "  spec size  check, s  peak RSS, MB  output, bytes"]
    lines += [f"  {r.bytes:>9,}  {r.seconds:>8.2f}  {r.peak_rss_mb:>12.0f}  {r.output_bytes:>13,}" for r in found.sizes]
    lines.append(f"  hostile JSON cases (inputs x kinds): {found.json_cases}, one clear error: {found.json_cases - len(found.json_unclear)}")
    lines += [f"  config of {layers:,} layers: {seconds:.2f} s, refused by the bound: {refused}" for layers, seconds, refused in found.counts]
    for name, (rounds, refused, lost) in found.concurrency.items():
        lines.append(f"  {name}: {rounds} rounds, racing run refused / change detected {refused}, outputs lost {lost}")
    lines.append(f"  hand-edited plans: {found.plan_cases}, refused in one line with nothing written: {found.plan_cases - len(found.plan_unclear)}")
    return "\n".join(lines)


def second_missed(found: RoundTwo) -> list[str]:
    misses = [f"hostile JSON: {line}" for line in found.json_unclear] + [f"hand-edited plan: {line}" for line in found.plan_unclear]
    misses += [f"{layers:,} layers not refused by the bound" for layers, _, refused in found.counts if not refused]
    for name, (rounds, refused, lost) in found.concurrency.items():
        if refused < rounds or lost:
            misses.append(f"{name}: {rounds - refused} rounds not refused, {lost} outputs lost")
    large = found.sizes[-1]
    if large.output_bytes > large.bytes or large.peak_rss_mb > 1024:
        misses.append(f"a {large.bytes:,}-byte spec: {large.output_bytes:,} bytes of output, {large.peak_rss_mb:.0f} MB peak")
    return misses


if __name__ == "__main__":
    sys.exit(main())
