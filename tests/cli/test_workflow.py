"""The review workflow as a team adopts it: the pre-commit hooks, the CI job, machine-readable checks."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from tests.conftest import REPO

EXAMPLES = REPO / "examples"
WORKFLOW = EXAMPLES / "ci" / "hpspec.yml"
HOOKS = EXAMPLES / "pre-commit" / ".pre-commit-config.yaml"

BEFORE = "target sd3.5-large-turbo\ndrop blocks[25:29, 31:33]\npreserve auto\n"
AFTER = "# one block more\ntarget sd3.5-large-turbo\ndrop blocks[25:29, 31:34]\npreserve auto\n"


def _git(repo: Path, *args: str) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.com"}  # fmt: skip
    return subprocess.run(["git", *args], cwd=repo, env=env, check=True, capture_output=True, text=True).stdout.strip()


def _commit(repo: Path, files: dict[str, str | None], message: str) -> str:
    for name, text in files.items():
        path = repo / name
        if text is None:
            path.unlink()
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    _git(repo, "add", "-A")
    _git(repo, "commit", "-q", "-m", message)
    return _git(repo, "rev-parse", "HEAD")


def _steps() -> dict[str, dict[str, Any]]:
    workflow = yaml.safe_load(WORKFLOW.read_text())
    assert workflow["defaults"]["run"]["shell"] == "bash"
    (job,) = workflow["jobs"].values()
    return {step["id"]: step for step in job["steps"] if "id" in step}


def _run_step(step: dict[str, Any], repo: Path, base: str) -> subprocess.CompletedProcess[str]:
    """A `run:` step as GitHub runs it with `shell: bash`, with hpspec from this environment."""
    assert set(step.get("env", {})) == {"BASE"}
    env = {**os.environ, "BASE": base, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    command = ["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", step["run"]]
    return subprocess.run(command, cwd=repo, env=env, capture_output=True, text=True, timeout=120)


def test_ci_job_checks_changed_specs_and_writes_the_comment(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    _git(repo, "init", "-q")
    base = _commit(repo, {"specs/main.hps": BEFORE, "specs/untouched.hps": BEFORE, "specs/gone.hps": BEFORE}, "base")
    _commit(
        repo,
        {"specs/main.hps": AFTER, "specs/new.hps": "target sd3.5-medium\ndrop blocks[13]\n", "specs/gone.hps": None,
         "specs/broken.hps": "target sd3.5-large-turbo\ndrop blocks[40]\n"},
        "change the specs",
    )  # fmt: skip
    steps = _steps()

    check = _run_step(steps["check"], repo, base)
    assert check.returncode != 0  # the broken spec fails the job (xargs says 123), with an inline annotation
    assert check.stdout == (
        "::error file=specs/broken.hps,line=2,col=13,endColumn=15,title=hpspec::block 40 is out of range "
        "(sd3.5-large-turbo has blocks 0–37; negative indices count from the end)\n"
    )

    diff = _run_step(steps["diff"], repo, base)
    assert diff.returncode == 0, diff.stderr
    comment = (repo / "hpspec-comment.md").read_text()
    sections = dict(re.findall(r"### hpspec diff: `[^`]*` → `([^`]*)`\n\n(.*?)(?=\n### |\Z)", comment, re.S))
    assert sorted(sections) == ["specs/gone.hps (deleted)", "specs/main.hps", "specs/new.hps"]
    main = sections["specs/main.hps"]
    assert main.startswith("**1 block newly dropped; parameters -212,999,680 (-2.64% of the model).**")
    assert "| blocks dropped | 6 | 7 | +1 |" in main
    assert "| parameters | 6,778,629,440 (84.1%) | 6,565,629,760 (81.5%) | -212,999,680 |" in main
    assert "**Newly dropped**\n\n- `block[33]`: 212,999,680 parameters\n" in main
    assert "- `block[33]`: trainable → frozen" not in main  # a dropped block is not a freeze change
    assert "- `blocks[13]`" not in sections["specs/new.hps"] and "- `block[13]`: 84,980,992 parameters" in sections["specs/new.hps"]
    assert "**Restored**\n\n- `blocks[25:29, 31, 32]` (6 blocks): 1,277,998,080 parameters" in sections["specs/gone.hps (deleted)"]
    assert "### `specs/broken.hps`\n\nDoes not compile: see the annotations of the check step." in comment
    assert "untouched" not in comment
    assert _git(repo, "status", "--porcelain") == "?? hpspec-comment.md"  # no base copies left behind


def test_pre_commit_hooks_format_then_check(cli, tmp_path: Path) -> None:
    hooks = {hook["id"]: hook for repo in yaml.safe_load(HOOKS.read_text())["repos"] for hook in repo["hooks"]}
    assert list(hooks) == ["hpspec-fmt", "hpspec-check"]
    spec = tmp_path / "a.hps"
    spec.write_text("target sd3.5-medium;drop blocks[ 13 ]\n")
    for hook in hooks.values():
        assert hook["language"] == "system" and re.search(hook["files"], spec.name)
    program, *args = hooks["hpspec-fmt"]["entry"].split()
    assert program == "hpspec"
    assert cli(*args, spec).code == 0  # pre-commit sees the file changed and stops the commit
    assert spec.read_text() == "target sd3.5-medium\ndrop blocks[13]\n"
    assert cli(*args, spec).code == 0 and spec.read_text() == "target sd3.5-medium\ndrop blocks[13]\n"
    assert cli(*hooks["hpspec-check"]["entry"].split()[1:], spec).out == f"{spec}: ok\n"


def test_check_formats_for_other_tools(cli, tmp_path: Path) -> None:
    bad = tmp_path / "bad.hps"
    bad.write_text("target sd3.5-large-turbo\ndrop blocks[2], blocks[2]\npreserve blocks[2]\n")
    unknown = tmp_path / "missing.hps"  # not a spec problem: an annotation without a line
    github = cli("check", "--format", "github", bad, unknown)
    assert github.code == 1
    lines = github.out.splitlines()
    assert lines[0].startswith(f"::warning file={bad},line=2,col=24,endColumn=25,title=hpspec::block[2] is dropped twice")
    assert lines[1].startswith(f"::error file={bad},line=3,col=17,")
    assert lines[2].startswith(f"::error file={unknown},title=hpspec::") and len(lines) == 3
    report = json.loads(cli("check", "--format", "json", bad, unknown).out)
    assert [(r["path"], r["ok"]) for r in report] == [(str(bad), False), (str(unknown), False)]
    assert [d["severity"] for d in report[0]["diagnostics"]] == ["warning", "error"]
    assert report[0]["diagnostics"][1]["line"] == 3 and report[1]["error"] is not None


def test_review_commands_import_no_torch(tmp_path: Path) -> None:
    spec = REPO / "specs" / "sd3.5-large-turbo" / "moderate.hps"
    program = f"""
import sys
from hpspec.cli import main
codes = [main(["fmt", "--check", {str(spec)!r}]), main(["diff", "/dev/null", {str(spec)!r}, "--format", "markdown"]),
         main(["init", "flux.1-dev", "-o", {str(tmp_path / "new.hps")!r}])]
heavy = sorted(m for m in ("torch", "diffusers", "transformers", "safetensors") if m in sys.modules)
print(codes, heavy)
"""
    out = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, check=True, cwd=REPO).stdout
    assert out.strip().splitlines()[-1] == "[0, 0, 0] []"
