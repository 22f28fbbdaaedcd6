"""Mutation check: plant plausible bugs, one at a time, and see which tests catch each.

    python bench/mutations.py [--only NAME ...] [--list] [--check] [--no-baseline]

Each mutation is a (file, exact old text, new text) triple and the tests that should catch it.
Nothing in the checkout is ever modified: for each mutation the repository's files (git ls-files,
untracked ones included, ignored ones not) are copied into a new temporary directory, the bug is
planted there, and pytest runs in that copy with the copy first on PYTHONPATH (the venv's
editable install points at the checkout; the script checks that `hpspec` is imported from the
copy). A mutation whose old text is not found exactly once is reported as "no longer applies",
not as caught: update its triple when the code it names moves.

First the tests of every mutation run on an unmutated copy (the baseline; they must pass, or a
failure would read as "caught"). Then one table: bug, tests run, caught by. Exits 1 when the
baseline fails, a mutation no longer applies, or a planted bug is caught by no test.
Runs in bench, not in CI (a few minutes on 2 cores). docs/testing.md says more.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Mutation:
    name: str
    file: str  # relative to the repository root
    old: str  # exact text, found exactly once in `file`
    new: str
    tests: tuple[str, ...]  # pytest node ids or files, relative to the root
    why: str  # the plausible bug, in words


QUANTIZE_TESTS = ("tests/weights/test_quantize.py::test_each_linear_is_the_back_ends_own_module",
                  "tests/weights/test_quantize.py::test_whole_model_error",
                  "tests/weights/test_quantize.py::test_whole_model_error_on_the_trained_demo")  # fmt: skip

MUTATIONS: tuple[Mutation, ...] = (
    Mutation(
        "renumbering", "hpspec/weights/checkpoint/layout.py",
        'return None if new is None else f"{stack.module}.{new}{dot}{rest}"',
        'return None if new is None else f"{stack.module}.{index}{dot}{rest}"',
        ("tests/weights/test_checkpoint.py",),
        "the streamed rewrite keeps a kept block's old index",
    ),
    Mutation(
        "last-block rows", "hpspec/model/arch/sd3.toml", "keeps = [1, 0]", "keeps = [0, 1]",
        ("tests/weights/test_apply.py", "tests/weights/test_checkpoint.py"),
        "the new last block's norm1_context keeps shift and scale swapped",
    ),
    Mutation(
        "stand-in gate", "hpspec/weights/surgery.py",
        'return tuple({"x": normed, "1": ones, "0": zeros}[slot] for slot in self.layout)',
        'return tuple({"x": normed, "1": zeros, "0": zeros}[slot] for slot in self.layout)',
        ("tests/weights/test_apply.py",),
        "a dropped norm's stand-in gates its branch with 0 instead of 1",
    ),
    Mutation(
        "freeze rule", "hpspec/plan/freeze.py", "frozen.update(range(first))", "frozen.update(range(first - 1))",
        ("tests/method/test_distill.py::test_frozen_parameters_do_not_change_by_a_single_bit",
         "tests/method/test_distill.py::test_the_optimiser_holds_only_trainable_parameters"),
        "PWP freezes one unit fewer than everything before the first removal",
    ),
    Mutation(
        "cosine flipped", "hpspec/method/probes.py",
        "return float(torch.nn.functional.cosine_similarity(a.float(), b.float(), dim=-1).mean())",
        "return 1 - float(torch.nn.functional.cosine_similarity(a.float(), b.float(), dim=-1).mean())",
        ("tests/method/test_analyze.py::test_cosines_are_recorded_per_block", "tests/method/test_suggest.py"),
        "the cosine recorded as ShortGPT's 1 - cos (flips KOALA's ranking)",
    ),
    Mutation(
        "cosine over tokens", "hpspec/method/probes.py",
        "return float(torch.nn.functional.cosine_similarity(a.float(), b.float(), dim=-1).mean())",
        "return float(torch.nn.functional.cosine_similarity(a.float(), b.float(), dim=1).mean())",
        ("tests/method/test_analyze.py::test_cosines_are_recorded_per_block", "tests/method/test_suggest.py"),
        "the cosine taken over tokens instead of channels",
    ),
    Mutation(
        "CLIP normalisation", "hpspec/method/evaluate.py", "return (x - mean) / std", "return x",
        ("tests/method/test_evaluate.py",),
        "CLIP's pixel mean/std normalisation left out",
    ),
    Mutation(
        "skipped quantized module", "hpspec/weights/quantize.py",
        "if under(path, quantize.except_modules):", 'if under(path, quantize.except_modules) or ".attn." in path:',
        QUANTIZE_TESTS,
        "quantize leaves every attention Linear unquantized",
    ),
    Mutation(
        "no Linear quantized", "hpspec/weights/quantize.py",
        "if under(path, quantize.except_modules):", "if True:",
        QUANTIZE_TESTS,
        "quantize replaces no Linear at all",
    ),
    Mutation(
        "mis-scaled weights", "hpspec/weights/backends/bnb.py",
        "weight = linear.weight.data.to(compute)", "weight = 0.9 * linear.weight.data.to(compute)",
        QUANTIZE_TESTS,
        "bitsandbytes quantizes 0.9 times the weight",
    ),
    Mutation(
        "mis-scaled int4 weights", "hpspec/weights/backends/quanto.py",
        "weight = linear.weight.data.to(compute)", "weight = 0.9 * linear.weight.data.to(compute)",
        QUANTIZE_TESTS,
        "quanto quantizes 0.9 times the weight",
    ),
    Mutation(
        "dropped format key", "hpspec/model/formats/sai.toml",
        '  ["y_embedder.mlp.2", "time_text_embed.text_embedder.linear_2"],\n', "",
        ("tests/model/test_formats.py", "tests/weights/test_formats.py::test_original_layout_matches_diffusers_converter_and_loader"),
        "the SD3 single-file key map loses one tensor (the pooled-text embedder's second Linear)",
    ),
    Mutation(
        "LoRA on a dropped part", "hpspec/weights/lora/remap.py",
        "if new is None or under(full, removed):", "if new is None:",
        ("tests/weights/test_lora.py",),
        "an adapter on a dropped part is kept and renamed into the pruned model",
    ),
    Mutation(
        "LoRA last-block rows", "hpspec/weights/lora/remap.py",
        "for k in rule.keeps]", "for k in reversed(rule.keeps)]",
        ("tests/weights/test_lora.py",),
        "the converted last block's modulation adapter keeps its rows in the wrong order",
    ),
)


def repository_files(root: Path) -> list[str]:
    """Tracked and untracked files, ignored ones apart (so the venv, caches and outputs stay out)."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                            cwd=root, capture_output=True, check=True).stdout  # fmt: skip
    return sorted({name for name in listed.decode("utf-8").split("\0") if name})


def copy_repository(repo: Path, destination: Path) -> None:
    for name in repository_files(repo):
        source = repo / name
        if not source.is_file():  # deleted in the work tree, or a submodule
            continue
        target = destination / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)


def plant(root: Path, mutation: Mutation) -> bool:
    """Apply the mutation in the copy; False when its old text is not there exactly once."""
    path = root / mutation.file
    if not path.is_file():
        return False
    text = path.read_text(encoding="utf-8")
    if text.count(mutation.old) != 1:
        return False
    path.write_text(text.replace(mutation.old, mutation.new), encoding="utf-8")
    return True


def environment(root: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(root), "PYTHONDONTWRITEBYTECODE": "1"}


def check_imported_from(root: Path) -> None:
    """`hpspec` (and the tests) must come from the copy, not from the checkout's editable install."""
    code = "import hpspec, tests; print(hpspec.__file__); print(tests.__file__)"
    done = subprocess.run([sys.executable, "-c", code], cwd=root, env=environment(root), capture_output=True, text=True, check=False)
    paths = done.stdout.split()
    if done.returncode != 0 or len(paths) != 2 or not all(Path(p).resolve().is_relative_to(root.resolve()) for p in paths):
        raise SystemExit(f"mutations: hpspec is not imported from the copy {root}: {done.stdout.strip()} {done.stderr[-500:]}")


@dataclass(frozen=True)
class Outcome:
    ran: int
    failed: tuple[str, ...]  # test ids that failed or errored
    seconds: float
    note: str = ""


def run_tests(root: Path, tests: Sequence[str]) -> Outcome:
    check_imported_from(root)
    report = root / ".mutations-junit.xml"
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={report}", *tests]
    start = time.perf_counter()
    done = subprocess.run(command, cwd=root, env=environment(root), capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - start
    if not report.is_file():
        return Outcome(0, (), seconds, f"pytest exited {done.returncode} without a report: {done.stdout[-300:]}")
    ran, failed = 0, []
    for case in ET.parse(report).getroot().iter("testcase"):
        if case.find("skipped") is not None:
            continue
        ran += 1
        if case.find("failure") is not None or case.find("error") is not None:
            module = case.get("classname", "").removeprefix("tests.").replace(".", "/")
            failed.append(f"{module}::{case.get('name')}")
    if done.returncode not in (0, 1):  # 2: interrupted or a collection error, 5: nothing collected
        return Outcome(ran, tuple(failed), seconds, f"pytest exited {done.returncode}: {done.stdout[-300:]}")
    return Outcome(ran, tuple(failed), seconds)


def in_copy(repo: Path, mutation: Mutation | None, tests: Sequence[str]) -> Outcome | None:
    """Copy the repository, plant `mutation` (none: the baseline), run `tests`; None if it no longer applies."""
    with tempfile.TemporaryDirectory(prefix="hpspec-mutation-") as tmp:
        root = Path(tmp) / "repo"
        copy_repository(repo, root)
        if mutation is not None and not plant(root, mutation):
            return None
        return run_tests(root, tests)


def check_applies(repo: Path, mutations: Sequence[Mutation]) -> int:
    """Each mutation's old text found exactly once in the work tree (read only)."""
    missing = 0
    for mutation in mutations:
        path = repo / mutation.file
        count = path.read_text(encoding="utf-8").count(mutation.old) if path.is_file() else 0
        missing += count != 1
        print(f"{mutation.name:<26} {'applies' if count == 1 else 'NO LONGER APPLIES'}  ({mutation.file})")
    return 1 if missing else 0


def grouped(failed: Sequence[str], most: int = 4) -> str:
    """Failed test ids, parametrized ones folded: `test_x::f[a, b]`; at most `most` functions."""
    by_function: dict[str, list[str]] = {}
    for test in failed:
        function, _, params = test.partition("[")
        by_function.setdefault(function, []).extend([params.rstrip("]")] if params else [])
    parts = [f"{f}[{', '.join(p)}]" if p else f for f, p in by_function.items()]
    return ", ".join(parts[:most]) + (f" and {len(parts) - most} more" if len(parts) > most else "")


def table(rows: Sequence[tuple[str, str, str]]) -> str:
    header = ("bug", "tests run", "caught by")
    widths = [max(len(r[i]) for r in (header, *rows)) for i in range(2)]
    lines = [f"{header[0]:<{widths[0]}}  {header[1]:<{widths[1]}}  {header[2]}"]
    lines += [f"{a:<{widths[0]}}  {b:<{widths[1]}}  {c}" for a, b, c in rows]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="+", metavar="NAME", help="run only these mutations (names as --list prints them)")
    parser.add_argument("--list", action="store_true", help="print the mutations and exit")
    parser.add_argument("--no-baseline", action="store_true", help="skip the unmutated run")
    parser.add_argument("--check", action="store_true", help="only say whether every mutation still applies (no tests run)")
    parser.add_argument("--repo", type=Path, default=REPO, help="the git work tree to copy (default: this checkout)")
    args = parser.parse_args(argv)
    chosen = [m for m in MUTATIONS if not args.only or m.name in args.only]
    if args.list or not chosen:
        for m in MUTATIONS:
            print(f"{m.name:<26} {m.file}: {m.why}")
        return 0 if args.list else 2
    if args.check:
        return check_applies(args.repo, chosen)
    ok = True
    if not args.no_baseline:
        union = list(dict.fromkeys(t for m in chosen for t in m.tests))
        base = in_copy(args.repo, None, union)
        assert base is not None
        print(f"baseline: {base.ran} tests in {base.seconds:.0f} s, {len(base.failed)} failed {base.note}", flush=True)
        if base.failed or base.note or base.ran == 0:
            print("the baseline must pass first: " + ", ".join(base.failed))
            return 1
    rows = []
    for mutation in chosen:
        outcome = in_copy(args.repo, mutation, mutation.tests)
        if outcome is None:
            caught = "MUTATION NO LONGER APPLIES (update its old text)"
            ok = False
        elif outcome.note:
            caught = f"ERROR: {outcome.note}"
            ok = False
        elif not outcome.failed:
            caught = f"NOT CAUGHT ({outcome.ran} tests passed)"
            ok = False
        else:
            caught = grouped(outcome.failed)
        ran = f"{outcome.ran} in {outcome.seconds:.0f} s" if outcome else "-"
        rows.append((f"{mutation.name}: {mutation.why}", ran, caught))
        print(f"{mutation.name}: {caught}", flush=True)
    print()
    print(table(rows))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
