"""The CLI: exit codes, outputs, and the torch-free fast path."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from hpspec.plan.schema import load_plan

from tests.conftest import REPO

MODERATE = REPO / "specs/sd3.5-large-turbo/moderate.hps"


def test_check_plan_graph_import_no_torch(tmp_path: Path) -> None:
    program = f"""
import sys
from hpspec.cli import main
codes = [main(["check", {str(MODERATE)!r}]), main(["plan", {str(MODERATE)!r}]), main(["graph", "flux.1-dev"]),
         main(["plan", "--format", "json", "-o", {str(tmp_path / "p.json")!r}, {str(MODERATE)!r}])]
heavy = sorted(m for m in ("torch", "diffusers", "transformers", "safetensors") if m in sys.modules)
print(codes, heavy)
"""
    out = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, check=True, cwd=REPO).stdout
    assert out.strip().splitlines()[-1] == "[0, 0, 0, 0] []"


def test_check_loads_no_command_group_and_no_stage() -> None:
    program = f"""
import sys
from hpspec.cli import main
code = main(["check", {str(MODERATE)!r}])
loaded = sorted(m for m in sys.modules if m.startswith(("hpspec.cli.", "hpspec.stages", "hpspec.method", "hpspec.report", "hpspec.weights")))
print(code, loaded)
"""
    out = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, check=True, cwd=REPO).stdout
    assert out.strip().splitlines()[-1] == "0 ['hpspec.cli.app', 'hpspec.cli.groups', 'hpspec.cli.output']"


def test_the_command_table_names_what_each_group_registers() -> None:
    import argparse

    from hpspec.cli import groups

    registered: dict[str, str] = {}
    for name in groups.GROUPS:
        commands = argparse.ArgumentParser().add_subparsers()
        groups.group_modules(next(c for c, g in groups.COMMANDS.items() if g == name))[0].register(commands)
        registered.update({command: name for command in commands.choices})
    assert registered == groups.COMMANDS
    assert not set(groups.CORE) & set(registered)


def test_plan_json_output_is_written_atomically_and_reads_back(cli, tmp_path: Path) -> None:
    out = tmp_path / "plan.json"
    assert cli("plan", "--format", "json", "-o", out, MODERATE).code == 0
    plan = load_plan(out.read_text())
    assert plan.params.after_prune == 6_352_630_080
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plan.json"]  # no temporary left behind
    again = cli("plan", "--format", "json", MODERATE)
    assert again.out == out.read_text()


def test_plan_text_is_a_short_table(cli) -> None:
    result = cli("plan", MODERATE)
    assert result.code == 0
    assert "blocks      38     30    25–28, 31–34" in result.out
    assert "parameters           8,056,627,520  6,352,630,080  78.8%" in result.out
    assert "weight bytes (BF16)       16.11 GB       12.71 GB  78.8%" in result.out


def test_graph_lists_blocks_and_parts(cli) -> None:
    result = cli("graph", "sd3.5-large-turbo")
    assert result.code == 0
    lines = result.out.splitlines()
    last = next(line for line in lines if line.strip().startswith("block[37]"))
    assert "context_pre_only" in last and last.split()[-1] == "136,085,248"
    assert any(line.strip().startswith("block[0] ") and "212,999,680" in line for line in lines)
    as_json = json.loads(cli("graph", "--format", "json", "flux.1-schnell").out)
    assert [len(v) for v in as_json["stacks"].values()] == [19, 38]
    assert as_json["params"] == 11_891_178_560


def test_exit_codes(cli, tmp_path: Path) -> None:
    bad = tmp_path / "bad.hps"
    bad.write_text("target sd3.5-large\ndrop blocks[99]\n")
    warn = tmp_path / "warn.hps"
    warn.write_text("target sd3.5-large\ndrop blocks[3]\ndrop blocks[3]\n")
    assert cli("check", bad).code == 1
    assert cli("check", warn).code == 0
    assert cli("check", "--strict", warn).code == 1
    assert cli("check", tmp_path / "missing.hps").code == 1
    assert cli("frobnicate").code == 2
    assert cli("check").code == 2
    assert cli("plan", bad).code == 1
    usage = cli("check", "--format", "yaml", warn)
    assert usage.code == 2 and "invalid choice: 'yaml'" in usage.err


def test_check_formats_for_ci(cli, tmp_path: Path) -> None:
    bad = tmp_path / "bad.hps"
    bad.write_text("target sd3.5-large\ndrop blocks[99]\n")
    github = cli("check", "--format", "github", bad)
    assert github.out == (
        f"::error file={bad},line=2,col=13,endColumn=15,title=hpspec::block 99 is out of range "
        "(sd3.5-large has blocks 0–37; negative indices count from the end)\n"
    )
    (entry,) = json.loads(cli("check", "--format", "json", bad).out)
    assert entry["ok"] is False and entry["diagnostics"][0]["line"] == 2


def test_target_option_wins_and_unknown_target_is_named(cli, tmp_path: Path) -> None:
    spec = tmp_path / "s.hps"
    spec.write_text("drop blocks[30]\n")
    assert cli("check", "--target", "sd3.5-large", spec).code == 0
    result = cli("check", "--target", "sd3.5-larg", spec)
    assert result.code == 1 and "unknown target `sd3.5-larg`; did you mean `sd3.5-large`?" in result.out


def test_console_script_smoke() -> None:
    done = subprocess.run([str(Path(sys.executable).parent / "hpspec"), "check", str(MODERATE)], capture_output=True, text=True)
    assert (done.returncode, done.stdout) == (0, f"{MODERATE}: ok\n")
