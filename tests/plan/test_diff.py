"""`hpspec diff`: semantic, on compiled plans, by the original model's block identity."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hpspec.plan.diff import diff_plans, load_pair

from tests.conftest import GOLDEN, assert_golden

DIFF = GOLDEN / "diff"
BASE = DIFF / "base.hps"
EQUIVALENT = ("reordered", "reformatted", "comments", "expanded")


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize("case", EQUIVALENT)
def test_same_meaning_is_no_change(cli, case: str) -> None:
    """Reordering, reformatting, editing comments, `blocks[25:29]` vs `blocks[25, 26, 27, 28]`."""
    for form in ("text", "markdown"):
        result = cli("diff", BASE, DIFF / f"{case}.hps", "--labels", "base.hps", f"{case}.hps", "--format", form, "--exit-code")
        assert result.code == 0
        assert "No semantic change: both compile to the same plan." in result.out
    as_json = json.loads(cli("diff", BASE, DIFF / f"{case}.hps", "--format", "json").out)
    assert as_json["empty"] is True and as_json["dropped"] == [] and as_json["settings"] == []


@pytest.mark.parametrize("form,suffix", [("markdown", "md"), ("text", "txt"), ("json", "json")])
def test_golden_change(cli, form: str, suffix: str) -> None:
    result = cli("diff", BASE, DIFF / "changed.hps", "--labels", "base.hps", "changed.hps", "--format", form)
    assert result.code == 0  # a difference is not a failure...
    assert_golden(DIFF / f"changed.{suffix}", result.out)
    assert cli("diff", BASE, DIFF / "changed.hps", "--exit-code").code == 1  # ...unless asked


def test_plan_json_inputs_diff_like_their_specs(cli, tmp_path: Path) -> None:
    plans = [tmp_path / "base.json", tmp_path / "changed.json"]
    for spec, plan in zip((BASE, DIFF / "changed.hps"), plans):
        assert cli("plan", "--format", "json", "-o", plan, spec).code == 0
    from_specs = cli("diff", BASE, DIFF / "changed.hps", "--labels", "a", "b", "--format", "json").out
    assert cli("diff", plans[0], DIFF / "changed.hps", "--labels", "a", "b", "--format", "json").out == from_specs
    assert cli("diff", *plans, "--labels", "a", "b", "--format", "json").out == from_specs


def test_a_spec_without_target_is_the_uncompressed_model(cli, tmp_path: Path) -> None:
    for empty in ("/dev/null", _write(tmp_path, "empty.hps", "# nothing yet\n")):
        added = json.loads(cli("diff", empty, BASE, "--format", "json").out)
        assert [r["block"] for r in added["dropped"] if r["part"] is None] == [25, 26, 27, 28, 31, 32, 33, 34]
        assert added["params"] == {"before": 8_056_627_520, "after": 6_305_300_928}
    plan = tmp_path / "base.json"
    cli("plan", "--format", "json", "-o", plan, BASE)
    removed = cli("diff", plan, "/dev/null")  # the target comes from the plan
    assert "blocks[25:29, 31:35] (8 blocks): 1,703,997,440 parameters" in removed.out.split("Restored:")[1]
    assert "preserve: auto → none" in removed.out


def test_two_specs_without_target_need_one(cli) -> None:
    result = cli("diff", "/dev/null", "/dev/null")
    assert result.code == 1 and "names no target" in result.out
    assert cli("diff", "/dev/null", "/dev/null", "--target", "sd3.5-medium", "--exit-code").code == 0


def test_target_override_and_target_change(cli, tmp_path: Path) -> None:
    result = cli("diff", BASE, BASE, "--target", "sd3.5-large")
    assert result.code == 0 and "No semantic change" in result.out  # --target applies to both sides
    other = _write(tmp_path, "large.hps", BASE.read_text().replace("-turbo", ""))
    changed = cli("diff", BASE, other, "--format", "markdown")
    assert "**target `sd3.5-large-turbo` → `sd3.5-large`; parameters unchanged.**" in changed.out


def test_freeze_is_compared_by_original_block(tmp_path: Path) -> None:
    """Dropping block 5 renumbers every later block; blocks 10 and 11 stay the frozen ones."""
    a = _write(tmp_path, "a.hps", "target sd3.5-medium\ndrop blocks[3]\npreserve blocks[10:12]\n")
    b = _write(tmp_path, "b.hps", "target sd3.5-medium\ndrop blocks[3, 5]\npreserve blocks[10:12]\n")
    result = diff_plans(*load_pair(a, b))
    assert [r.selector for r in result.dropped] == ["block[5]"]
    assert result.freeze == () and result.settings == ()
    c = _write(tmp_path, "c.hps", "target sd3.5-medium\ndrop blocks[3, 5]\npreserve blocks[10], block[11].mlp\n")
    (change,) = diff_plans(*load_pair(b, c)).freeze
    assert (change.module, change.before, change.after) == ("transformer_blocks.11", "frozen", "partly frozen (ff)")


def test_whole_block_versus_its_parts(tmp_path: Path) -> None:
    parts = _write(tmp_path, "p.hps", "target sd3.5-medium\ndrop block[7].mlp, block[7].attn\n")
    whole = _write(tmp_path, "w.hps", "target sd3.5-medium\ndrop block[7]\n")
    forward = diff_plans(*load_pair(parts, whole))
    (dropped,) = forward.dropped
    assert (dropped.selector, dropped.parts) == ("block[7]", ("attn", "attn2", "mlp"))  # attn took attn2 along
    back = diff_plans(*load_pair(whole, parts))
    (restored,) = back.restored
    assert restored.params == dropped.params and restored.parts == dropped.parts
    assert forward.params.delta == -dropped.params


def test_last_block_conversion_is_reported(cli, tmp_path: Path) -> None:
    spec = _write(tmp_path, "last.hps", "target sd3.5-large-turbo\ndrop block[37]\n")
    result = cli("diff", "/dev/null", spec)
    assert "block[36] becomes the context-pre-only last block: " in result.out
    assert "block[36] is no longer converted to the last block" in cli("diff", spec, "/dev/null").out


def test_flux_stacks_are_kept_apart(tmp_path: Path) -> None:
    a = _write(tmp_path, "a.hps", "target flux.1-schnell\ndrop single_blocks[28:36]\n")
    b = _write(tmp_path, "b.hps", "target flux.1-schnell\ndrop single_blocks[28:34], double_blocks[3]\n")
    result = diff_plans(*load_pair(a, b))
    assert [r.selector for r in result.dropped] == ["double_block[3]"]
    assert [r.selector for r in result.restored] == ["single_block[34]", "single_block[35]"]
    assert {k: (c.before, c.after) for k, c in result.blocks_dropped.items()} == {"double_blocks": (0, 1), "single_blocks": (8, 6)}


def test_inputs_that_do_not_compile(cli, tmp_path: Path) -> None:
    bad = _write(tmp_path, "bad.hps", "target sd3.5-large-turbo\ndrop blocks[40]\n")
    result = cli("diff", BASE, bad)
    assert result.code == 1 and f"{bad}:2:13: error: block 40 is out of range" in result.out
    broken = _write(tmp_path, "broken.json", '{"schema_version": 1}')
    assert cli("diff", broken, BASE).code == 1
    assert cli("diff", tmp_path / "missing.hps", BASE).code == 1
