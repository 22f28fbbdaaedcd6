"""Hostile input, round two, as rounds that bench/fuzz.py repeats and counts: specs up to 1 MB
(time and peak memory per size), hostile JSON at every JSON input, configs with huge counts,
concurrent writers (driven by the `stop` fault action, never by sleeps) and hand-edited plans.

Each function returns plain numbers; the tests in tests/test_hostile_round2.py are the single
reproductions, this is the same at volume. Torch is not needed.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hpspec.core.faults import ENV as FAULT_ENV
from tests.hostile_checkpoints import TINY_SD3, compile_in_process, contents, leftovers, write_checkpoint

REPO = Path(__file__).resolve().parent.parent
WATCHDOG_S = 120
HOSTILE_JSON = {
    "long-integer": '{"num_layers": ' + "9" * 5000 + "}",
    "deep-nesting": '{"a": ' + "[" * 10_000 + "]" * 10_000 + "}",  # an object, so that a plan input reads it as JSON
}


def cli(*args: object) -> tuple[int, str, str]:
    """`hpspec ARGS` in this process: exit code, stdout, stderr."""
    from hpspec.cli.app import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in args])
    return code, out.getvalue(), err.getvalue()


def one_error_line(code: int, err: str, named: Path) -> bool:
    return code == 1 and err.startswith("error: ") and err.count("\n") == 1 and str(named) in err


# --------------------------------------------------------------------------------------------
# Specs up to 1 MB: time and peak memory of `hpspec check`, each in its own process


@dataclass(frozen=True)
class SizeRun:
    bytes: int
    seconds: float
    peak_rss_mb: float
    output_bytes: int


def spec_of_size(size: int) -> str:
    """`drop blocks[1:2, 1:2, ...]` on one line, `size` bytes long (every item a repeated diagnostic)."""
    head = "target sd3-medium\ndrop blocks["
    items = max(1, (size - len(head) - 2) // 5)
    return head + ", ".join(["1:2"] * items) + "]\n"


def check_sized(directory: Path, size: int) -> SizeRun:
    spec = directory / f"spec-{size}.hps"
    spec.write_text(spec_of_size(size), encoding="utf-8")
    started = time.monotonic()
    process = subprocess.Popen(
        [sys.executable, "-m", "hpspec.cli", "check", str(spec)], stdout=subprocess.PIPE, cwd=REPO
    )
    output = process.stdout.read() if process.stdout else b""
    _, _, usage = os.wait4(process.pid, 0)
    process.returncode = 0  # reaped above
    return SizeRun(spec.stat().st_size, time.monotonic() - started, usage.ru_maxrss / 1024, len(output))


# --------------------------------------------------------------------------------------------
# Hostile JSON at every JSON input


def _header_file(path: Path, text: str) -> Path:
    raw = text.encode()
    path.write_bytes(len(raw).to_bytes(8, "little") + raw)
    return path


def _plan(directory: Path) -> Path:
    spec = directory / "p.hps"
    spec.write_text("target sd3-medium\ndrop block[3]\n", encoding="utf-8")
    plan = directory / "plan.json"
    assert cli("plan", spec, "--format", "json", "-o", plan)[0] == 0
    return plan


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


JSON_INPUTS: dict[str, Callable[[Path, str], tuple[list[object], Path]]] = {
    "config": lambda d, t: (["graph", d], _write(d / "config.json", t)),
    "safetensors-header": lambda d, t: (["graph", _header_file(d / "m.safetensors", t)], d / "m.safetensors"),
    "index": lambda d, t: (["graph", d], _write(d / "diffusion_pytorch_model.safetensors.index.json", t)),
    "plan": lambda d, t: (["report", _write(d / "hand.json", t), "-o", d / "r.html"], d / "hand.json"),
    "sensitivity": lambda d, t: (
        ["suggest", "--target", "sd3-medium", "--sensitivity", _write(d / "s.json", t), "--keep", "0.8"],
        d / "s.json",
    ),
    "eval": lambda d, t: (["report", _plan(d), "--eval", _write(d / "e.json", t), "-o", d / "r.html"], d / "e.json"),
}


def hostile_json(directory: Path) -> tuple[int, list[str]]:
    """Every hostile JSON at every input: (cases, those not one `error:` line naming the file)."""
    unclear = []
    for where, make in JSON_INPUTS.items():
        for kind, text in HOSTILE_JSON.items():
            case = directory / f"json-{where}-{kind}"
            case.mkdir(parents=True)
            args, named = make(case, text)
            code, _, err = cli(*args)
            if not one_error_line(code, err, named):
                unclear.append(f"{where}/{kind}: exit {code}: {err[:200]!r}")
    return len(JSON_INPUTS) * len(HOSTILE_JSON), unclear


# --------------------------------------------------------------------------------------------
# Configs with huge counts


def huge_count(directory: Path, layers: int) -> tuple[float, bool]:
    """`hpspec check` of a config-only target with `layers` blocks: (seconds, refused by the bound)."""
    model = directory / f"layers-{layers}"
    model.mkdir(parents=True)
    (model / "config.json").write_text(json.dumps({**TINY_SD3, "num_layers": layers}), encoding="utf-8")
    spec = model / "s.hps"
    spec.write_text(f'target "{model}"\ndrop block[1]\n', encoding="utf-8")
    started = time.monotonic()
    code, out, _ = cli("check", spec)
    return time.monotonic() - started, code == 1 and "sanity bound" in out


# --------------------------------------------------------------------------------------------
# Concurrent runs


def paused(spec: Path, model: Path, out: Path, point: str, *flags: str) -> subprocess.Popen[str]:
    """A compile in its own process, stopped (SIGSTOP, alive) at fault `point` the first time it gets there."""
    env = {**os.environ, FAULT_ENV: f"{point}:stop"}
    command = [
        sys.executable,
        "-m",
        "hpspec.cli",
        "compile",
        str(spec),
        "--model",
        str(model),
        "--out",
        str(out),
        *flags,
    ]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO)
    stat = Path(f"/proc/{process.pid}/stat")
    deadline = time.monotonic() + WATCHDOG_S  # a watchdog only: the run stops at its point long before
    while process.poll() is None and stat.read_text().split(")")[-1].split()[0] != "T":
        if time.monotonic() > deadline:
            process.kill()
            raise TimeoutError("the paused run never reached its fault point")
        time.sleep(0.01)
    return process


def resume(process: subprocess.Popen[str]) -> tuple[int, str]:
    process.send_signal(signal.SIGCONT)
    _, err = process.communicate(timeout=WATCHDOG_S)
    return process.returncode, err


@dataclass(frozen=True)
class Round:
    second_refused: bool  # the racing run was refused (lock) or the changed source detected
    output_kept: bool  # OUT holds a complete output (the first run's, or the old one), or nothing where expected


def two_writers(root: Path, spec: Path, model: Path, reference: dict[str, bytes]) -> Round:
    out = root / "out"
    first = paused(spec, model, out, "stage.before_rename")
    second = compile_in_process(spec, model, out)
    code, _ = resume(first)
    refused = second.code == 1 and f"another hpspec (pid {first.pid})" in second.err
    return Round(refused, code == 0 and contents(out / "pruned") == reference)


def force_racing_failure(root: Path, spec: Path, model: Path, reference: dict[str, bytes]) -> Round:
    out = root / "out"
    assert compile_in_process(spec, model, out).code == 0
    forced = paused(spec, model, out, "stage.after_set_aside", "--force")
    failing = compile_in_process(spec, model, out)
    code, _ = resume(forced)
    whole = code == 0 and contents(out / "pruned") == reference and leftovers(out / "pruned") == [out / "pruned"]
    return Round(failing.code == 1 and "another hpspec" in failing.err, whole)


def source_rewritten(root: Path, spec: Path, model: Path, other: Path) -> Round:
    copy = root / "model"
    shutil.copytree(model, copy)
    shard = sorted(copy.glob("*.safetensors"))[0]
    out = root / "out"
    run = paused(spec, copy, out, "prune.after_shard")
    with shard.open("r+b") as handle:  # in place: same inode, same size, other bytes
        handle.write(sorted(other.glob("*.safetensors"))[0].read_bytes())
    code, err = resume(run)
    return Round(code == 1 and "changed while hpspec was reading it" in err, leftovers(out / "pruned") == [])


SCENARIOS = {"two writers": two_writers, "--force racing a failing run": force_racing_failure}


@contextlib.contextmanager
def checkpoints(root: Path) -> Iterator[tuple[Path, Path, Path, dict[str, bytes]]]:
    """A tiny checkpoint, one of other values, the spec and an undisturbed output's contents."""
    model, other = write_checkpoint(root / "tiny"), write_checkpoint(root / "other", seed=1)
    spec = root / "spec.hps"
    spec.write_text("drop blocks[1]\n", encoding="utf-8")
    assert compile_in_process(spec, model, root / "reference").code == 0
    yield model, other, spec, contents(root / "reference" / "pruned")


def concurrency(root: Path, rounds: int) -> dict[str, tuple[int, int, int]]:
    """Each scenario `rounds` times: (rounds, racing run refused or change detected, outputs lost)."""
    found: dict[str, tuple[int, int, int]] = {}
    with checkpoints(root) as (model, other, spec, reference):
        for name, scenario in SCENARIOS.items():
            results = [scenario(_fresh(root, name, i), spec, model, reference) for i in range(rounds)]
            found[name] = (rounds, sum(r.second_refused for r in results), sum(not r.output_kept for r in results))
        results = [source_rewritten(_fresh(root, "rewrite", i), spec, model, other) for i in range(rounds)]
        found["source rewritten mid-copy"] = (
            rounds,
            sum(r.second_refused for r in results),
            sum(not r.output_kept for r in results),
        )
    return found


def _fresh(root: Path, name: str, i: int) -> Path:
    directory = root / f"{name.replace(' ', '-')}-{i}"
    directory.mkdir(parents=True)
    return directory


def _swap(plan: dict[str, Any]) -> None:
    index = plan["stacks"]["blocks"]["index_map"]
    index["0"], index["2"] = index["2"], index["0"]


def _gap(plan: dict[str, Any]) -> None:
    plan["stacks"]["blocks"]["index_map"]["3"] = 3  # kept blocks 0, 2, 3 must become 0, 1, 2


def _minus_one(plan: dict[str, Any]) -> None:
    plan["stacks"]["blocks"]["index_map"]["2"] = -1


def _fake_part(word: str, module: str) -> Callable[[dict[str, Any]], None]:
    def edit(plan: dict[str, Any]) -> None:  # `params` fixed to match, so that the counts alone cannot tell
        params = {"transformer_blocks": 40_000, "pos_embed": 1_000}[word]
        plan["ops"].append({"kind": "drop_part", "stack": "blocks", "block": 2, "part": word, "modules": [module],
                            "params": params, "reason": "spec", "new_index": None})  # fmt: skip
        plan["params"]["after_prune"] -= params

    return edit


def _config_override(plan: dict[str, Any]) -> None:
    plan["config"]["in_channels"] = 8


def _layer_count(plan: dict[str, Any]) -> None:
    plan["config"]["num_layers"] = 4


EDITS = {
    "index-swap": _swap,
    "index-gap": _gap,
    "index-minus-one": _minus_one,
    "part-transformer_blocks": _fake_part("transformer_blocks", "transformer_blocks"),
    "part-pos_embed": _fake_part("pos_embed", "pos_embed"),
    "config-override": _config_override,
    "config-layer-count": _layer_count,
}


def plan_edits(root: Path) -> tuple[int, list[str]]:
    """Each hand edit of a compiled plan, pruned: (cases, those not refused in one line with nothing written)."""
    model = write_checkpoint(root / "plans-model")
    spec = root / "plans.hps"
    spec.write_text("drop blocks[1]\n", encoding="utf-8")
    unclear = []
    for name, edit in EDITS.items():
        plan = root / f"plan-{name}.json"
        assert cli("plan", spec, "--target", model, "--format", "json", "-o", plan)[0] == 0
        data = json.loads(plan.read_text(encoding="utf-8"))
        edit(data)
        plan.write_text(json.dumps(data), encoding="utf-8")
        out = root / f"plan-out-{name}"
        code, _, err = cli("prune", plan, "--model", model, "--out", out)
        if not one_error_line(code, err, plan) or out.exists():
            unclear.append(f"{name}: exit {code}: {err[:200]!r}")
    return len(EDITS), unclear
