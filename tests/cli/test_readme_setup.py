"""The README's first set-up command, which `.ci/run` runs in a fresh copy of the checkout: that CI
reads the command the README shows, and that the `demo` extra it installs has what `hpspec demo` runs."""

from __future__ import annotations

import importlib.metadata
import os
import re
import shutil
import subprocess
import tomllib

import pytest

from tests.conftest import REPO

CI = REPO / ".ci" / "run"


def test_ci_runs_the_readme_command_as_written() -> None:
    if shutil.which("bash") is None:
        pytest.skip("needs bash")
    script = CI.read_text(encoding="utf-8")
    function = re.search(r"^readme_command\(\) \{\n.*?^\}\n", script, re.M | re.S)
    assert function is not None, ".ci/run defines readme_command()"
    assert "COMMAND=$(readme_command)" in script and '-c "$COMMAND"' in script
    out = subprocess.run(["bash", "-c", function.group(0) + "readme_command"], capture_output=True, text=True,
                         env={**os.environ, "REPO": str(REPO)}, check=True)  # fmt: skip
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    setup = readme[readme.index("\n## Set-up") :]
    first = setup[setup.index("```sh\n") + len("```sh\n") :].split("```", 1)[0].strip()
    assert out.stdout.strip() == first
    assert first.startswith("python3 -m venv .venv && ") and 'pip install -e ".[demo]"' in first and first.endswith("hpspec demo")


def closure(name: str) -> set[str]:
    """The distributions the extra `name` names, through the extras it includes (`hpspec[...]`)."""
    extras = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]["optional-dependencies"]
    found: set[str] = set()
    for requirement in extras[name]:
        inner = re.fullmatch(r"hpspec\[([^\]]+)\]", requirement)
        if inner:
            for extra in inner.group(1).split(","):
                found |= closure(extra.strip())
        else:
            found.add(re.split(r"[<>=!~ ;\[]", requirement, maxsplit=1)[0])
    return found


def test_the_demo_extra_brings_both_quantization_back_ends() -> None:
    demo = closure("demo")
    assert {"bitsandbytes", "optimum-quanto", "torch", "diffusers", "jinja2"} <= demo  # the nf4 and int4 rows
    assert demo <= closure("test") and {"ruff", "mypy"} <= closure("test")


def test_every_module_a_test_may_skip_without_is_in_the_test_extra() -> None:
    # A test file that `importorskip`s a package the `test` extra lacks is skipped in CI, unseen
    # (the LoRA tests were, for want of peft).
    skipped = set()
    for path in (REPO / "tests").rglob("*.py"):
        skipped |= set(re.findall(r'importorskip\("([A-Za-z0-9_]+)"', path.read_text(encoding="utf-8")))
    distributions = importlib.metadata.packages_distributions()
    names = {re.sub(r"[-_.]+", "-", d).lower() for module in skipped for d in distributions.get(module, [module])}
    wanted = {re.sub(r"[-_.]+", "-", d).lower() for d in closure("test")}
    assert {"peft", "torch", "diffusers"} <= names
    assert names <= wanted, f"importorskip'd by tests but not in the test extra: {sorted(names - wanted)}"
