"""Hostile input, round two: resources bounded by the input's size, hostile JSON at every JSON
input, absurd counts, odd characters and files, concurrent runs and hand-edited plans.

Each test is the reproduction of a failure seen once (issue 18); each compares with an
independent measure (a byte count, a hand-written expectation, the file on disk), never with
hpspec's own output only. Concurrency is driven by fault points (`HPSPEC_FAULT_AT`), not sleeps.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Callable

import pytest

from hpspec.core.diagnostics import MAX_LINE_COLUMNS, MAX_SHOWN, MERGE_AFTER
from hpspec.core.faults import ENV as FAULT_ENV
from hpspec.model.graph import MAX_BLOCKS

from tests.conftest import REPO
from tests.hostile_checkpoints import TINY_SD3, write_checkpoint

ITEMS = 8000  # the reproduction: one line repeating an item 8,000 times (a 40 KB spec)


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HPSPEC_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv(FAULT_ENV, raising=False)


def _one_error_line(err: str, named: Path | str) -> None:
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert str(named) in err, err
    assert "Traceback" not in err


# --------------------------------------------------------------------------------------------
# One long line: output linear in the input


@pytest.mark.parametrize(
    "statement, message",
    [
        ("drop blocks[" + ", ".join(["1:2"] * ITEMS) + "]", "block[1] is dropped twice"),
        ("quantize nf4 except " + ", ".join(['"x"'] * ITEMS), None),
    ],
    ids=["drop", "quantize-except"],
)
def test_a_line_repeating_an_item_gives_output_linear_in_the_input(
    tmp_path: Path, cli, statement: str, message: str | None
) -> None:
    spec = tmp_path / "big.hps"
    spec.write_text(f"target sd3-medium\n{statement}\n", encoding="utf-8")
    result = cli("check", spec)
    size = spec.stat().st_size
    assert len(result.out) < size / 4, len(result.out)  # was 481 MB for this 40 KB spec
    lines = result.out.splitlines()
    assert max(len(line) for line in lines) < MAX_LINE_COLUMNS + 40
    heads = [line for line in lines if line.startswith(f"{spec}:2:")]
    assert len(heads) <= MERGE_AFTER
    if message is not None:
        assert all(message in head for head in heads)
    more = [int(line.split("and ")[1].split(" more")[0].replace(",", "")) for line in lines if "more like it" in line]
    if message is not None:  # every item but the first drops block 1 again: ITEMS - 1 warnings, all accounted for
        assert len(heads) + sum(more) == ITEMS - 1, result.out
    assert more and len(heads) + sum(more) >= ITEMS - 1, result.out
    github = cli("check", "--format", "github", spec).out
    assert len(github) < size / 4 and github.count("\n") <= MAX_SHOWN + 1


def test_the_long_line_is_cut_around_the_column_and_the_caret_still_points_at_it(tmp_path: Path, cli) -> None:
    filler = ", ".join(["0"] * 400)
    spec = tmp_path / "long.hps"
    spec.write_text(f"target sd3-medium\ndrop blocks[{filler}, 99]\n", encoding="utf-8")
    result = cli("check", spec)
    line = next(line for line in result.out.splitlines() if line.startswith(" 2 | "))
    caret = result.out.splitlines()[result.out.splitlines().index(line) + 1]
    shown = line[len(" 2 | ") :]
    at = caret.index("^") - len(" 2 | ")
    assert shown.startswith("...") and shown[at : at + 2] == "99", (shown, caret)


def test_many_different_diagnostics_are_capped(tmp_path: Path, cli) -> None:
    lines = [f"drop block[{1000 + i}]" for i in range(3 * MAX_SHOWN)]  # each message names its own index
    spec = tmp_path / "many.hps"
    spec.write_text("target sd3-medium\n" + "\n".join(lines) + "\n", encoding="utf-8")
    result = cli("check", spec)
    assert result.out.count(": error: ") == MAX_SHOWN
    assert f"{2 * MAX_SHOWN:,} more diagnostics not shown" in result.out
    assert result.out.splitlines()[-1] == f"{spec}: {3 * MAX_SHOWN} errors"


# --------------------------------------------------------------------------------------------
# Hostile JSON at every JSON input: one `error:` line naming the file

HOSTILE_JSON = {
    "long-integer": '{"num_layers": ' + "9" * 5000 + "}",
    "deep-nesting": '{"a": ' + "[" * 10_000 + "]" * 10_000 + "}",  # an object, so that a plan input reads it as JSON
}


def _plan_json(tmp_path: Path, cli) -> Path:
    spec = tmp_path / "p.hps"
    spec.write_text("target sd3-medium\ndrop block[3]\n", encoding="utf-8")
    plan = tmp_path / "plan.json"
    assert cli("plan", spec, "--format", "json", "-o", plan).code == 0
    return plan


def _header_file(tmp_path: Path, text: str) -> Path:
    raw = text.encode()
    path = tmp_path / "m.safetensors"
    path.write_bytes(len(raw).to_bytes(8, "little") + raw)
    return path


INPUTS: dict[str, Callable[[Path, str, Callable], tuple[list[str], Path]]] = {
    "config": lambda d, t, cli: (["graph", d], _write(d / "config.json", t)),
    "safetensors-header": lambda d, t, cli: (["graph", _header_file(d, t)], d / "m.safetensors"),
    "index": lambda d, t, cli: (["graph", d], _write(d / "diffusion_pytorch_model.safetensors.index.json", t)),
    "plan": lambda d, t, cli: (["report", _write(d / "hand.json", t), "-o", d / "r.html"], d / "hand.json"),
    "sensitivity": lambda d, t, cli: (
        ["suggest", "--target", "sd3-medium", "--sensitivity", _write(d / "s.json", t), "--keep", "0.8"],
        d / "s.json",
    ),
    "eval": lambda d, t, cli: (
        ["report", _plan_json(d, cli), "--eval", _write(d / "e.json", t), "-o", d / "r.html"],
        d / "e.json",
    ),
}


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize("kind", sorted(HOSTILE_JSON))
@pytest.mark.parametrize("where", sorted(INPUTS))
def test_hostile_json_is_one_error_line_naming_the_file(tmp_path: Path, cli, where: str, kind: str) -> None:
    args, named = INPUTS[where](tmp_path, HOSTILE_JSON[kind], cli)
    result = cli(*args)
    assert result.code == 1, result
    _one_error_line(result.err, named)


# --------------------------------------------------------------------------------------------
# Absurd counts: refused before anything is expanded


def test_a_config_with_a_million_layers_is_refused_by_the_sanity_bound(tmp_path: Path, cli) -> None:
    config = tmp_path / "config.json"
    config.write_text(json.dumps({**TINY_SD3, "num_layers": 1_000_000}), encoding="utf-8")
    spec = tmp_path / "s.hps"
    spec.write_text(f'target "{tmp_path}"\ndrop block[1]\n', encoding="utf-8")
    result = cli("check", spec)
    assert result.code == 1
    assert f"at most {MAX_BLOCKS:,}" in result.out and "1,000,000" in result.out and "sanity bound" in result.out
    within = {**TINY_SD3, "num_layers": 6}
    config.write_text(json.dumps(within), encoding="utf-8")
    assert cli("check", spec).code == 0
