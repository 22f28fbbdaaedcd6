"""Hostile input and faults: fuzzed specs, corrupt checkpoints, a compile killed at every point,
a full disk, planted pickles, and hostile strings in the report.

The spec corpus here is a sample (bench/fuzz.py runs 10,000 and prints the figures); the corrupt
checkpoints and fault points are all of them. Timing is not asserted: a generous watchdog only
turns a hang into a failure instead of a stuck run.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from html.parser import HTMLParser
from pathlib import Path
from typing import Iterator

import pytest

from hpspec.core import faults
from hpspec.core.errors import CheckpointError, SpecError
from hpspec.core.faults import ENV as FAULT_ENV, POINTS, InjectedFault
from hpspec.lang.fmt import format_source
from hpspec.lang.parse import parse
from hpspec.model.safetensors_header import read_header

from tests.conftest import REPO
from tests.hostile_checkpoints import CORRUPTIONS, PWNED, SPEC, Corruption, clear_error, compile_in_process, compile_in_subprocess, contents, damaged, leftovers, pickle_weights, write_checkpoint, write_safetensors
from tests.hostile_corpus import HOSTILE_STRINGS, KINDS, Vocabulary, corpus, load_graphs, run_corpus, seed_specs, watchdog

SAMPLE = 1000  # specs per test run; bench/fuzz.py runs 10,000
WATCHDOG_S = 120  # per spec or per compile: only a stuck run trips it


@pytest.fixture(autouse=True, scope="module")
def _isolated(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """hpspec's cache (digests, grammar tables) in a private directory; no fault configured."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HPSPEC_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
        patch.delenv(FAULT_ENV, raising=False)
        yield


@pytest.fixture(scope="module")
def good(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny, valid SD3 checkpoint in two shards with an index (written without torch)."""
    return write_checkpoint(tmp_path_factory.mktemp("good") / "model")


@pytest.fixture(scope="module")
def spec(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One spec file for every compile, so that every plan.json names the same spec path."""
    path = tmp_path_factory.mktemp("spec") / "spec.hps"
    path.write_text(SPEC, encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def compiled(good: Path, spec: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An undisturbed compile's OUT/pruned."""
    out = tmp_path_factory.mktemp("reference") / "out"
    run = compile_in_process(spec, good, out)
    assert run.code == 0, run.err
    return out / "pruned"


@pytest.fixture(scope="module")
def reference(compiled: Path) -> dict[str, bytes]:
    """What every complete output must hold: tensor bytes, config and plan."""
    return contents(compiled)


# --------------------------------------------------------------------------------------------
# Specs: generated and mutated, through read, parse, check, plan and fmt


def test_fuzzed_specs_only_ever_raise_hpspec_errors() -> None:
    graphs = load_graphs()
    vocabularies = {name: Vocabulary.of(graph) for name, graph in graphs.items()}
    tally = run_corpus(corpus(SAMPLE, 7, vocabularies, seed_specs(REPO)), graphs, limit=WATCHDOG_S, hang_seconds=math.inf)
    assert not tally.crashes, "\n".join(f"{case.kind} {case.data[:200]!r}: {crash}" for case, crash in tally.crashes[:10])
    assert not tally.fmt_problems, "\n".join(f"{case.data[:200]!r}: {problem}" for case, problem in tally.fmt_problems[:10])
    assert not tally.hangs, [(case.number, seconds) for case, seconds in tally.hangs]
    assert set(tally.kinds) == set(KINDS) and tally.tried == SAMPLE
    # Not junk rejected at the first character: most specs parse, many reach a plan.
    assert tally.reached["parse"] >= 0.3 * SAMPLE and tally.reached["plan"] >= 0.1 * SAMPLE, dict(tally.reached)
    assert tally.formatted == tally.reached["parse"]


@pytest.mark.parametrize(
    "text",
    [
        "drop blocks[" + "9" * 5000 + "]",  # int() refuses more than 4300 digits: was a ValueError
        "drop blocks[1:" + "9" * 4301 + "]",
        "distill steps=" + "9" * 5000,
        "quantize nf4 compute=" + "1" * 200,
    ],
    ids=["index", "slice", "int-option", "number-option"],
)
def test_numbers_too_long_to_read_are_diagnostics(text: str) -> None:
    with pytest.raises(SpecError, match="a number of"):
        parse(text)
    assert format_source(text).text is None


@pytest.mark.parametrize(
    "argv",
    [
        ["check", "{tmp}/long-name.hps"],  # target eee...: a name too long to look up was an OSError
        ["check", "{tmp}/long-path.hps"],
        ["plan", "{tmp}/long-name.hps", "-o", "{tmp}/no/such/directory/plan.json"],
        ["compile", "{tmp}/spec.hps", "--model", "{good}", "--out", "{tmp}/" + "o" * 300],
        ["compile", "{tmp}/spec.hps", "--model", "{tmp}/" + "m" * 300, "--out", "{tmp}/out"],
    ],
    ids=["long-target", "long-target-path", "output-in-missing-directory", "long-output", "long-model"],
)
def test_paths_the_system_cannot_use_are_one_line_errors(
    tmp_path: Path, good: Path, capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    from hpspec.cli.app import main

    (tmp_path / "long-name.hps").write_text(f"target {'e' * 300}\ndrop blocks[1]\n", encoding="utf-8")
    (tmp_path / "long-path.hps").write_text(f'target "{"e/" * 3000}"\ndrop blocks[1]\n', encoding="utf-8")
    (tmp_path / "spec.hps").write_text(SPEC, encoding="utf-8")
    assert main([a.format(tmp=tmp_path, good=good) for a in argv]) == 1
    captured = capsys.readouterr()
    assert "Traceback" not in captured.out + captured.err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["long-name.hps", "long-path.hps", "spec.hps"]


# --------------------------------------------------------------------------------------------
# Corrupt checkpoints: one message naming the file and the problem, exit 1, nothing left


@pytest.mark.parametrize("corruption", CORRUPTIONS, ids=lambda c: c.name)
def test_corrupt_checkpoint_is_one_clear_error(tmp_path: Path, good: Path, spec: Path, corruption: Corruption) -> None:
    out = tmp_path / "out"
    with damaged(tmp_path, good, corruption) as (model, named), watchdog(WATCHDOG_S):
        run = compile_in_process(spec, model, out, *corruption.flags)
        assert not (model / PWNED).exists()
    assert clear_error(run, named, corruption.problem) is None
    assert leftovers(out) == []


def test_the_good_checkpoint_compiles_and_verifies(tmp_path: Path, good: Path, spec: Path, reference: dict[str, bytes]) -> None:
    run = compile_in_process(spec, good, tmp_path / "out", "--verify")
    assert run.code == 0, run.err
    assert contents(tmp_path / "out" / "pruned") == reference


def test_prune_verify_refuses_nan(tmp_path: Path, good: Path, spec: Path) -> None:
    from hpspec.cli.app import main

    nan = next(c for c in CORRUPTIONS if c.name == "nan-weight")
    with damaged(tmp_path, good, nan) as (model, named):
        assert main(["prune", str(spec), "--model", str(model), "--out", str(tmp_path / "pruned")]) == 0  # not asked
        assert main(["prune", str(spec), "--model", str(model), "--out", str(tmp_path / "verified"), "--verify"]) == 1
    assert not (tmp_path / "verified").exists()


# dtype -> (numpy dtype, or the width of raw integers), NaN, infinity (None: the format has none)
FLOATS = {
    "F64": ("<f8", math.nan, -math.inf), "F32": ("<f4", math.nan, -math.inf), "F16": ("<f2", math.nan, -math.inf),
    "BF16": (2, 0x7FC0, 0xFF80), "F8_E5M2": (1, 0x7E, 0xFC), "F8_E4M3": (1, 0xFF, None),
}  # fmt: skip
ORDINARY = {2: 0x3F80, 1: 0x38}  # 1.0 in BF16; 1.0 in E5M2, 0.5 in E4M3


def _values(dtype: str, count: int, bad: int | None = None, kind: str = "NaN") -> bytes:
    """`count` finite values of `dtype`, with a NaN or an infinity at `bad`."""
    import numpy

    layout, nan, inf = FLOATS[dtype]
    if isinstance(layout, str):
        values = numpy.linspace(-1, 1, count).astype(layout)
    else:
        values = numpy.full(count, ORDINARY[layout], dtype=f"<u{layout}")
    if bad is not None:
        values[bad] = nan if kind == "NaN" else inf
    return values.tobytes()


@pytest.mark.parametrize("dtype,kind", [(d, k) for d in FLOATS for k in ("NaN", "infinity") if k == "NaN" or FLOATS[d][2] is not None])
def test_verify_finds_the_first_bad_element_across_chunks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, dtype: str, kind: str) -> None:
    from hpspec.weights import verify

    monkeypatch.setattr(verify, "CHUNK_BYTES", 24)  # the bad element lies chunks in
    path = tmp_path / "w.safetensors"
    write_safetensors(path, {
        "clean": (dtype, [3, 50], _values(dtype, 150)),
        "ints": ("U8", [64], b"\xff" * 64),  # every bit set, but not a float
        "bad": (dtype, [3, 50], _values(dtype, 150, 2 * 50 + 17, kind)),
    })  # fmt: skip
    with pytest.raises(CheckpointError) as error:
        verify.verify_finite([read_header(path)])
    assert str(error.value) == f"{path}: tensor 'bad' holds {kind} at index [2, 17] (element 117 of 150; found by --verify)"


def test_verify_memory_is_bounded(tmp_path: Path) -> None:
    import tracemalloc

    from hpspec.weights import verify

    path = tmp_path / "big.safetensors"
    size = 64 << 20  # 8x the chunk
    write_safetensors(path, {"w": ("F32", [size // 4], bytes(size))})
    tracemalloc.start()
    try:
        verify.verify_finite([read_header(path)])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4 * verify.CHUNK_BYTES, peak


# --------------------------------------------------------------------------------------------
# Faults during compile, injected at named points


BEFORE_RENAME = POINTS[: POINTS.index("stage.before_rename") + 1]


@pytest.mark.parametrize("point", POINTS)
def test_sigkill_leaves_the_whole_output_or_none_and_the_next_run_sweeps(
    tmp_path: Path, good: Path, spec: Path, reference: dict[str, bytes], point: str
) -> None:
    out, flags = tmp_path / "out", ()
    if point == "stage.after_set_aside":  # only reached when --force replaces an output
        assert compile_in_process(spec, good, out).code == 0
        flags = ("--force",)
    killed = compile_in_subprocess(spec, good, out, f"{point}:kill", *flags, timeout=WATCHDOG_S)
    assert killed.code == -signal.SIGKILL, killed.err
    pruned = out / "pruned"
    if point in BEFORE_RENAME or point == "stage.after_set_aside":
        assert not pruned.exists()
    else:
        assert contents(pruned) == reference
        import hpspec  # the complete output loads, through hpspec as a user would

        pytest.importorskip("diffusers")
        assert sum(p.numel() for p in hpspec.load_pretrained(pruned).parameters()) == 115_472
    if point != "stage.after_rename":
        assert any(p.name.startswith(".pruned.hpspec-tmp-") for p in out.iterdir())  # what the kill left

    rerun = compile_in_process(spec, good, out)
    assert rerun.code == 0, rerun.err
    assert contents(pruned) == reference
    assert leftovers(pruned) == [pruned]  # the stale temporary siblings are swept


@pytest.mark.parametrize("point", POINTS)
@pytest.mark.parametrize("action", ["raise", "enospc"])
def test_an_error_at_any_point_leaves_nothing_half_written(
    tmp_path: Path, good: Path, spec: Path, reference: dict[str, bytes], monkeypatch: pytest.MonkeyPatch, point: str, action: str
) -> None:
    out, flags = tmp_path / "out", ()
    if point == "stage.after_set_aside":
        assert compile_in_process(spec, good, out).code == 0
        flags = ("--force",)
    monkeypatch.setenv(FAULT_ENV, f"{point}:{action}")
    if action == "raise":  # a bug: the exception escapes, but the cleanup ran
        with pytest.raises(InjectedFault):
            compile_in_process(spec, good, out, *flags)
    else:
        assert clear_error(compile_in_process(spec, good, out, *flags), out, "No space left on device") is None
    pruned = out / "pruned"
    if point in BEFORE_RENAME:
        assert leftovers(out) == []  # not even OUT, which this run created
    else:  # the new output was renamed in, or (after_set_aside) the old one put back
        assert contents(pruned) == reference and leftovers(pruned) == [pruned]


def test_an_unknown_fault_point_is_refused(tmp_path: Path, good: Path, spec: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(FAULT_ENV, "stage.before_renam:kill")
    run = compile_in_process(spec, good, tmp_path / "out")
    assert run.code == 1 and "stage.before_renam:kill" in run.err and "stage.before_rename" in run.err
    monkeypatch.delenv(FAULT_ENV)
    for name in POINTS:  # unset, a point does nothing
        faults.point(name)


def _tmpfs_allowed() -> bool:
    """Can this process mount a size-limited tmpfs (root, and a sandbox that allows it)?"""
    if sys.platform != "linux" or shutil.which("mount") is None or os.geteuid() != 0:
        return False
    with tempfile.TemporaryDirectory() as directory:
        if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", directory], capture_output=True).returncode:
            return False
        subprocess.run(["umount", directory], check=True)
    return True


# The test says in its id which way it fills the disk: a real full filesystem where allowed.
DISK_FULL = "tmpfs" if _tmpfs_allowed() else "injected-enospc"


@pytest.mark.parametrize("method", [DISK_FULL])
def test_a_full_disk_is_a_clear_error_and_nothing_half_written(
    tmp_path: Path, good: Path, spec: Path, reference: dict[str, bytes], monkeypatch: pytest.MonkeyPatch, method: str
) -> None:
    disk = tmp_path / "disk"
    disk.mkdir()
    out = disk / "out"
    if method == "injected-enospc":
        for point in BEFORE_RENAME[1:]:  # every point after the first write
            monkeypatch.setenv(FAULT_ENV, f"{point}:enospc")
            assert clear_error(compile_in_process(spec, good, out), out, "No space left on device") is None
            assert leftovers(out) == []
        return
    needed = sum(len(v) for v in reference.values())  # weights and JSON; README, provenance and report come on top
    for fraction in (0.3, 0.7, 0.98, 1.02):  # full while copying, while patching headers, while writing the report
        size_kb = max(16, int(needed * fraction) // 4096 * 4)
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_kb}k", "tmpfs", str(disk)], check=True)
        try:
            run = compile_in_process(spec, good, out)
            assert clear_error(run, out / "pruned", "No space left on device") is None, (size_kb, run)
            assert list(disk.iterdir()) == [] and shutil.disk_usage(disk).used == 0  # every byte written was removed
        finally:
            subprocess.run(["umount", "-l", str(disk)], check=True)


# --------------------------------------------------------------------------------------------
# Security: pickles refused, spec paths only read, no spec text run, the report escaped


def test_pickle_weights_are_refused_everywhere(tmp_path: Path, good: Path, compiled: Path) -> None:
    from hpspec.cli.app import main
    from hpspec.model.targets import graph_from_path

    model, pruned = tmp_path / "model", tmp_path / "pruned"
    shutil.copytree(good, model)
    shutil.copytree(compiled, pruned)
    for directory in (model, pruned):
        pickle_weights(directory)
    (tmp_path / "spec.hps").write_text('target "model"\ndrop blocks[1]\n', encoding="utf-8")
    assert main(["check", str(tmp_path / "spec.hps")]) == 1
    assert main(["graph", str(model)]) == 1
    with pytest.raises(CheckpointError, match="pickle checkpoints are refused"):
        graph_from_path(model)
    pytest.importorskip("diffusers")
    import hpspec

    with pytest.raises(CheckpointError, match="pickle checkpoints are refused"):
        hpspec.load_pretrained(pruned)  # a pruned directory whose weights were swapped for a pickle
    assert not (model / PWNED).exists() and not (pruned / PWNED).exists()


PLANT = """
import pickle, sys
import hpspec.lang.parse as parse
marker = sys.argv[1]
if sys.argv[2] == "lark-default":
    parse._grammar_cache = lambda: True  # lark's own choice: a predictable name in the temp dir
parse._parser()
if sys.argv[3] == "plant":
    import glob, os, tempfile
    class Payload:
        def __reduce__(self):
            return (open, (marker, "w"))
    for name in glob.glob(os.path.join(tempfile.gettempdir(), ".lark_*")):
        with open(name, "wb") as handle:
            handle.write(b"x\\n")
            pickle.dump(Payload(), handle)
"""


def test_a_pickle_planted_in_the_shared_temp_dir_is_never_loaded(tmp_path: Path) -> None:
    """lark's default cache is a predictable name in $TMPDIR, loaded with pickle before any check."""
    shared, marker = tmp_path / "shared-tmp", tmp_path / "ran"
    shared.mkdir()
    env = {**os.environ, "TMPDIR": str(shared), "HPSPEC_CACHE_DIR": str(tmp_path / "cache")}

    def python(*args: str) -> None:
        subprocess.run([sys.executable, "-c", PLANT, str(marker), *args], env=env, cwd=REPO, check=True, capture_output=True)

    python("lark-default", "plant")  # an attacker's file where lark would look
    assert list(shared.iterdir()) and not marker.exists()
    python("hpspec", "no")  # hpspec, as it is: never reads it
    assert not marker.exists()
    python("lark-default", "no")  # the test can fail: lark's default would have run it
    assert marker.exists()


AUDIT = """
import json, os, sys
request = json.load(sys.stdin)
from hpspec.cli import main
import hpspec.report.html, hpspec.weights.checkpoint, hpspec.lang.fmt  # imported before the hook: their code is not the spec's
WRITE = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC
CHANGES = {"os.rename", "os.remove", "os.rmdir", "os.chmod", "os.truncate", "os.utime", "os.symlink", "os.link",
           "os.mkdir", "shutil.rmtree", "shutil.copyfile", "shutil.copymode"}
PROCESSES = {"os.system", "subprocess.Popen", "os.exec", "os.posix_spawn", "os.spawn", "os.fork", "os.forkpty", "pty.spawn"}
seen = {"changed": [], "code": [], "processes": [], "unpickled": []}

def texts(value):
    if isinstance(value, (str, bytes)):
        yield value if isinstance(value, str) else value.decode("latin-1")
    elif hasattr(value, "co_consts"):
        for const in value.co_consts:
            yield from texts(const)

def paths(args):
    return [os.path.abspath(os.fsdecode(a)) for a in args[:2] if isinstance(a, (str, bytes, os.PathLike))]

def hook(event, args):
    if event == "open":
        mode, flags = args[1], args[2]
        if (isinstance(mode, str) and set(mode) & set("wax+")) or (not isinstance(mode, str) and flags & WRITE):
            seen["changed"] += paths(args[:1])
    elif event in CHANGES:
        seen["changed"] += paths(args)
    elif event in ("compile", "exec"):
        if any(m in text for text in texts(args[0]) for m in request["markers"]):
            seen["code"].append(event)
    elif event in PROCESSES:
        seen["processes"].append(event)
    elif event == "pickle.find_class":
        seen["unpickled"].append(f"{args[0]}.{args[1]}")

sys.addaudithook(hook)
codes = [main(argv) for argv in request["commands"]]
print(json.dumps({"codes": codes, **seen}))
"""


def test_spec_paths_are_only_read_and_no_spec_text_is_ever_run(tmp_path: Path, good: Path) -> None:
    """Under an audit hook: check, plan, fmt, report and compile of specs naming a model, a table and
    hostile strings, then check, fmt and report of a sample of the fuzz corpus."""
    commands, read_only = _audited_commands(tmp_path, good)
    before = {p: p.read_bytes() for p in read_only}
    seen = _audit(commands, tmp_path)
    assert seen["codes"][:7] == [0] * 7, seen["codes"]  # the hand-written specs all succeed
    assert {p: p.read_bytes() for p in read_only} == before
    written = [Path(p) for p in seen["changed"]]
    allowed = [tmp_path / name for name in ("out", "cache", "plan.json", "report.html", "lt.html", "fuzzed.html")]
    assert [p for p in written if not _inside(p, allowed)] == []
    assert any(tmp_path / "out" in p.parents for p in written)  # the hook does see writes
    assert seen["code"] == [] and seen["processes"] == []
    assert all(name.startswith("lark.") for name in seen["unpickled"]), seen["unpickled"]  # its grammar tables only


def _audited_commands(tmp_path: Path, good: Path) -> tuple[list[list[str]], list[Path]]:
    """The commands to audit, and the inputs they must leave untouched."""
    model, table, spec, lt = tmp_path / "model", tmp_path / "table.json", tmp_path / "spec.hps", tmp_path / "lt.hps"
    shutil.copytree(good, model)
    shutil.copyfile(REPO / "specs" / "sd3.5-large-turbo" / "hpsv2-sensitivity.json", table)
    comments = "".join(f"# {h}\n" for h in HOSTILE_STRINGS)
    spec.write_text(format_source(f'{comments}target "model"\ndrop blocks[1]  # {HOSTILE_STRINGS[0]}\npreserve auto\n').text or "")
    lt.write_text(f'target sd3.5-large-turbo\ndrop blocks[30]\ndistill weight=sensitivity table="table.json"\n{comments}')
    fuzzed = tmp_path / "fuzzed"
    fuzzed.mkdir()
    vocabulary = Vocabulary.of(load_graphs(["sd3.5-large-turbo"])["sd3.5-large-turbo"])
    for case in corpus(40, 11, {"sd3.5-large-turbo": vocabulary}):
        (fuzzed / f"{case.number}.hps").write_bytes(case.data)
    specs = [str(p) for p in sorted(fuzzed.iterdir())]
    commands = [
        ["check", str(spec)], ["plan", str(spec), "--format", "json", "-o", str(tmp_path / "plan.json")],
        ["fmt", str(spec)], ["fmt", "--check", str(spec)], ["report", str(spec), "-o", str(tmp_path / "report.html")],
        ["report", str(lt), "--sensitivity", str(table), "-o", str(tmp_path / "lt.html")],
        ["compile", str(spec), "--model", str(model), "--out", str(tmp_path / "out")],
        ["check", *specs], ["fmt", "--check", *specs], *[["report", s, "-o", str(tmp_path / "fuzzed.html")] for s in specs],
    ]  # fmt: skip
    return commands, [spec, lt, table, *sorted(model.iterdir()), *map(Path, specs)]


def _audit(commands: list[list[str]], cwd: Path) -> dict[str, list]:
    request = {"commands": commands, "markers": ["hpspec-pwned", "alert(", "7*7"]}
    env = {**os.environ, "HPSPEC_CACHE_DIR": str(cwd / "cache")}
    done = subprocess.run([sys.executable, "-c", AUDIT], input=json.dumps(request), capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=WATCHDOG_S)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.splitlines()[-1])


def _inside(path: Path, allowed: list[Path]) -> bool:
    """`path` is one of `allowed`, lies under one, or is one's temporary sibling."""
    return any(path == a or a in path.parents or path.name.startswith(f".{a.name}.hpspec-tmp-") for a in allowed)


class _Structure(HTMLParser):
    """Every tag with its attribute names, and every attribute value and text, of a page."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, tuple[str, ...]]] = []
        self.values: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, tuple(name for name, _ in attrs)))
        self.values += [value or "" for _, value in attrs]

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def _page(tmp_path: Path, strings: list[str]) -> _Structure:
    """A report whose every user-supplied string (comments, file name, target, evidence, prompts) is from `strings`."""
    from hpspec.cli.app import main
    from hpspec.report.html import render_report
    from hpspec.report.inputs import load_inputs
    from hpspec.report.images import image_grid_payload

    directory = tmp_path / hashlib.sha256("".join(strings).encode()).hexdigest()[:8]
    directory.mkdir()
    comments = "".join(f"# {s}\n" for s in strings)
    spec = directory / (strings[0].replace("/", "_")[:80] + ".hps")
    spec.write_text(f"{comments}target sd3.5-large-turbo\ndrop block[30]  # {strings[1]}\npreserve auto\n", encoding="utf-8")
    plan = directory / "plan.json"
    assert main(["plan", str(spec), "--format", "json", "-o", str(plan)]) == 0
    data = json.loads(plan.read_text())
    data["target"]["name"] = strings[2]
    data["target"]["source"] = "config:/nonexistent/" + strings[3]
    plan.write_text(json.dumps(data))
    evidence = directory / "evidence.json"
    evidence.write_text(json.dumps([{"method": s, s: 1, "note": s} for s in strings]))
    evaluation = directory / "eval.json"
    grey = [[[[0.5]]]] * len(strings)
    evaluation.write_text(json.dumps({"metrics": ["quality"], "quality": 0.5, "images": image_grid_payload(strings, grey, grey)}))
    page = _Structure()
    page.feed(render_report(load_inputs(str(plan), None, str(evaluation), str(evidence), None, None)))
    return page


def test_the_report_shows_hostile_strings_as_text_and_adds_no_structure(tmp_path: Path) -> None:
    strings = [s.replace("\n", " ") for s in HOSTILE_STRINGS]
    hostile, benign = _page(tmp_path, strings), _page(tmp_path, [f"benign{i}" for i in range(len(strings))])
    assert hostile.tags == benign.tags  # the same elements and attributes, whatever the strings hold
    text = "".join(hostile.text) + "".join(hostile.values)
    for string in strings:
        assert string.strip() in text, string  # shown, as text
    assert not any(name.startswith("on") for _, names in hostile.tags for name in names)
