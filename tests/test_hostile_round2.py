"""Hostile input, round two: resources bounded by the input's size, hostile JSON at every JSON
input, absurd counts, odd characters and files, concurrent runs and hand-edited plans.

Each test is the reproduction of a failure seen once (issue 18); each compares with an
independent measure (a byte count, a hand-written expectation, the file on disk), never with
hpspec's own output only. Concurrency is driven by fault points (`HPSPEC_FAULT_AT`), not sleeps.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from hpspec.core.diagnostics import MAX_LINE_COLUMNS, MAX_SHOWN, MERGE_AFTER
from hpspec.core.errors import CheckpointError
from hpspec.core.faults import ENV as FAULT_ENV
from hpspec.core.io import atomic_directory, sweep_stale_siblings
from hpspec.model.graph import MAX_BLOCKS
from tests.conftest import REPO
from tests.hostile_checkpoints import (
    TINY_SD3,
    compile_in_process,
    contents,
    leftovers,
    read_raw,
    write_checkpoint,
    write_raw,
)
from tests.hostile_rounds import EDITS, HOSTILE_JSON, JSON_INPUTS, WATCHDOG_S, paused, resume

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

@pytest.mark.parametrize("kind", sorted(HOSTILE_JSON))
@pytest.mark.parametrize("where", sorted(JSON_INPUTS))
def test_hostile_json_is_one_error_line_naming_the_file(tmp_path: Path, cli, where: str, kind: str) -> None:
    args, named = JSON_INPUTS[where](tmp_path, HOSTILE_JSON[kind])
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


# --------------------------------------------------------------------------------------------
# Concurrent runs: one writer per output, a live run's files never swept, sources re-checked

SPEC_TEXT = "drop blocks[1]\n"  # no target: checked against the checkpoint itself


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_checkpoint(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture
def spec_file(tmp_path: Path) -> Path:
    path = tmp_path / "spec.hps"
    path.write_text(SPEC_TEXT, encoding="utf-8")
    return path


def test_two_writers_into_one_fresh_out_the_second_is_refused(tmp_path: Path, tiny: Path, spec_file: Path) -> None:
    out = tmp_path / "out"
    first = paused(spec_file, tiny, out, "stage.before_rename")
    second = compile_in_process(spec_file, tiny, out)
    assert second.code == 1 and f"another hpspec (pid {first.pid}) is writing {out / 'pruned'}" in second.err
    _one_error_line(second.err, out / "pruned")
    code, err = resume(first)
    assert code == 0, err
    assert contents(out / "pruned") == contents_of_fresh(tmp_path, spec_file, tiny)


def contents_of_fresh(tmp_path: Path, spec: Path, model: Path) -> dict[str, bytes]:
    """An undisturbed compile's output, for comparison."""
    fresh = tmp_path / "fresh"
    assert compile_in_process(spec, model, fresh).code == 0
    return contents(fresh / "pruned")


def test_force_racing_a_failing_run_keeps_the_output(tmp_path: Path, tiny: Path, spec_file: Path) -> None:
    out = tmp_path / "out"
    assert compile_in_process(spec_file, tiny, out).code == 0
    before = contents(out / "pruned")
    forced = paused(spec_file, tiny, out, "stage.after_set_aside", "--force")  # the old output is moved aside
    failing = compile_in_process(spec_file, tiny, out)  # it used to sweep the set-aside output and the temporary
    assert failing.code == 1 and "another hpspec" in failing.err
    code, err = resume(forced)
    assert code == 0, err
    assert contents(out / "pruned") == before and leftovers(out / "pruned") == [out / "pruned"]


def test_a_killed_force_run_gets_its_old_output_back(tmp_path: Path, tiny: Path, spec_file: Path) -> None:
    out = tmp_path / "out"
    assert compile_in_process(spec_file, tiny, out).code == 0
    before = contents(out / "pruned")
    forced = paused(spec_file, tiny, out, "stage.after_set_aside", "--force")
    forced.kill()
    forced.communicate()
    assert not (out / "pruned").exists()
    assert sweep_stale_siblings(out / "pruned")  # the next run (of anything) finds what the kill left ...
    assert contents(out / "pruned") == before  # ... and puts the old output back instead of deleting it


def test_a_source_shard_rewritten_during_the_copy_is_refused(tmp_path: Path, tiny: Path, spec_file: Path) -> None:
    model = tmp_path / "model"
    shutil.copytree(tiny, model)
    other = write_checkpoint(tmp_path / "other", seed=1)  # same shapes, other values
    shard = sorted(model.glob("*.safetensors"))[0]
    out = tmp_path / "out"
    run = paused(spec_file, model, out, "prune.after_shard")
    with shard.open("r+b") as handle:  # in place: same inode, same size, other bytes
        handle.write(sorted(other.glob("*.safetensors"))[0].read_bytes())
    code, err = resume(run)
    assert code == 1 and "changed while hpspec was reading it" in err, err
    _one_error_line(err, shard)
    assert leftovers(out / "pruned") == []


# --------------------------------------------------------------------------------------------
# Odd files and characters


@pytest.mark.parametrize("command", ["check", "fmt"])
def test_a_fifo_is_refused_not_waited_on(tmp_path: Path, command: str) -> None:
    fifo = tmp_path / "spec.hps"
    os.mkfifo(fifo)
    done = subprocess.run(
        [sys.executable, "-m", "hpspec.cli", command, str(fifo)], capture_output=True, text=True, timeout=WATCHDOG_S
    )  # it used to hang here, waiting for a writer
    assert done.returncode == 1 and "not a regular file" in done.stdout + done.stderr


def test_a_byte_order_mark_first_is_accepted(tmp_path: Path, cli) -> None:
    spec = tmp_path / "bom.hps"
    spec.write_bytes(b"\xef\xbb\xbftarget sd3-medium\ndrop block[3]\n")
    assert (cli("check", spec).code, cli("check", spec).out) == (0, f"{spec}: ok\n")


def test_cr_only_line_endings_are_named_as_such(tmp_path: Path, cli) -> None:
    spec = tmp_path / "mac.hps"
    spec.write_bytes(b"target sd3-medium\rdrop block[3]\r")
    result = cli("check", spec)
    assert result.code == 1 and "CR-only line endings" in result.out
    assert "names no target" not in result.out and result.out.count(": error: ") == 1
    assert "\r" not in result.out  # the echoed line would jump the terminal's cursor back


def test_an_invisible_unexpected_character_is_named_by_its_code_point(tmp_path: Path, cli) -> None:
    spec = tmp_path / "zw.hps"
    spec.write_text("target sd3-medium\ndrop block[3]\u200b\n", encoding="utf-8")
    assert "unexpected character U+200B" in cli("check", spec).out


@pytest.mark.parametrize("separator", ["\u2028", "\u2029", "\x0c", "\x85"])
def test_a_line_separator_inside_a_comment_does_not_shift_the_lines(tmp_path: Path, cli, separator: str) -> None:
    spec = tmp_path / "sep.hps"
    spec.write_text(f"target sd3-medium  # a{separator}b\ndrop block[99]\n", encoding="utf-8")
    lines = cli("check", spec).out.splitlines()  # the test's own split: on "\n" these are real lines
    head = next(i for i, line in enumerate(lines) if ": error: " in line)
    assert lines[head].startswith(f"{spec}:2:") and lines[head + 1] == " 2 | drop block[99]"


def test_a_closed_pipe_is_quiet(tmp_path: Path) -> None:
    spec = tmp_path / "s.hps"
    spec.write_text("target sd3-medium\ndrop block[3]\n", encoding="utf-8")
    process = subprocess.Popen(
        [sys.executable, "-m", "hpspec.cli", "check", *[str(spec)] * 20_000],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=REPO,
    )
    assert process.stdout is not None
    process.stdout.readline()  # `| head -1`
    process.stdout.close()
    _, err = process.communicate(timeout=WATCHDOG_S)
    assert err == b"" and process.returncode == 141  # 128 + SIGPIPE, what a shell reports for `yes | head -1`


def test_the_printed_continue_command_is_shell_quoted(tmp_path: Path) -> None:
    from hpspec.plan.front import plan_file
    from hpspec.stages.pipeline import _continue_command

    model = "ms/My Models/sd3;touch PWNED"
    spec = tmp_path / "a spec.hps"
    spec.write_text("target sd3-medium\ndrop block[3]\n", encoding="utf-8")
    plan, _ = plan_file(spec)
    own = type("Own", (), {"data": None, "teacher": "t $(x)"})()
    command = _continue_command(plan, model, tmp_path / "o u t", None, own, ("data", "teacher"))  # type: ignore[arg-type]
    shell = subprocess.run(  # the shell's own reading, as a paste would run it (`set --` runs nothing)
        ["sh", "-c", f'set -- {command}; printf "%s\\0" "$@"'], capture_output=True, text=True, cwd=tmp_path, check=True
    )
    words = shell.stdout.split("\0")[:-1]
    assert not (tmp_path / "PWNED").exists()
    assert words == ["hpspec", "compile", str(spec), "--model", model, "--out", str(tmp_path / "o u t"),
                     "--data", "DATA", "--teacher", "t $(x)"]  # fmt: skip


# --------------------------------------------------------------------------------------------
# Hand-edited plans: validated against themselves and the model before anything is written


@pytest.mark.parametrize("edit", sorted(EDITS))
def test_a_hand_edited_plan_is_refused_before_prune_writes(tmp_path: Path, tiny: Path, spec_file: Path, cli, edit: str) -> None:
    plan = tmp_path / "plan.json"
    assert cli("plan", spec_file, "--target", tiny, "--format", "json", "-o", plan).code == 0
    assert cli("prune", plan, "--model", tiny, "--out", tmp_path / "as-compiled").code == 0  # the unedited plan runs
    data = json.loads(plan.read_text(encoding="utf-8"))
    EDITS[edit](data)
    plan.write_text(json.dumps(data), encoding="utf-8")
    out = tmp_path / "out"
    result = cli("prune", plan, "--model", tiny, "--out", out)
    assert result.code == 1, result
    _one_error_line(result.err, plan)
    assert not out.exists()


# --------------------------------------------------------------------------------------------
# Also: errors that name the right thing, and `check` refusing what `compile` refuses


def test_an_error_inside_an_output_names_the_output_not_the_removed_temporary(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with pytest.raises(CheckpointError) as caught:
        with atomic_directory(out) as tmp:
            raise CheckpointError(f"{tmp / 'model.safetensors'}: header is broken")
    assert str(caught.value) == f"{out / 'model.safetensors'}: header is broken"
    assert not out.exists() and leftovers(out) == []


def test_a_flux_checkpoint_labelled_sd3_is_said_as_such(tmp_path: Path, cli, spec_file: Path) -> None:
    from tests.tiny_models import FLUX_CONFIG  # here: that module imports torch

    model = write_checkpoint(tmp_path / "flux", config={"_class_name": "FluxTransformer2DModel", **FLUX_CONFIG})
    config = json.loads((model / "config.json").read_text(encoding="utf-8"))
    (model / "config.json").write_text(json.dumps({**config, "_class_name": "SD3Transformer2DModel"}), encoding="utf-8")
    checked = cli("check", "--target", model, spec_file)
    compiled = compile_in_process(spec_file, model, tmp_path / "out")
    for said in (checked.out, compiled.err):
        assert "TypeError" not in said and "FluxTransformer2DModel" in said and "SD3Transformer2DModel" in said, said
    assert checked.code == compiled.code == 1


def test_a_stray_zero_sized_tensor_is_refused_by_check_as_by_compile(tmp_path: Path, cli, spec_file: Path) -> None:
    model = write_checkpoint(tmp_path / "model", shards=1)
    shard = next(model.glob("*.safetensors"))
    header, body = read_raw(shard)
    header["stray"] = {"dtype": "F32", "shape": [0], "data_offsets": [len(body), len(body)]}
    write_raw(shard, header, body)
    checked = cli("check", "--target", model, spec_file)
    compiled = compile_in_process(spec_file, model, tmp_path / "out")
    assert checked.code == compiled.code == 1
    assert "'stray'" in checked.out and "'stray'" in compiled.err


def test_a_refused_stage_leaves_no_directory_it_created(tmp_path: Path, tiny: Path, spec_file: Path, cli) -> None:
    other = write_checkpoint(tmp_path / "six", config={**TINY_SD3, "num_layers": 6})
    plan = tmp_path / "plan.json"
    assert cli("plan", spec_file, "--target", tiny, "--format", "json", "-o", plan).code == 0
    result = cli("prune", plan, "--model", other, "--out", tmp_path / "new" / "deeper" / "out")
    assert result.code == 1 and "is not the model the plan" in result.err
    assert not (tmp_path / "new").exists()  # the lock's parent directories went with it
