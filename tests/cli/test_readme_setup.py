"""The README's first set-up command, which `.ci/run` runs in a fresh copy of the checkout: that CI
reads the command the README shows, and that the `demo` extra it installs has what `hpspec demo` runs."""

from __future__ import annotations

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


def test_the_demo_extra_brings_both_quantization_back_ends() -> None:
    extras = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]["optional-dependencies"]

    def closure(name: str) -> set[str]:
        found: set[str] = set()
        for requirement in extras[name]:
            inner = re.fullmatch(r"hpspec\[([^\]]+)\]", requirement)
            if inner:
                for extra in inner.group(1).split(","):
                    found |= closure(extra.strip())
            else:
                found.add(re.split(r"[<>=!~ ;\[]", requirement, maxsplit=1)[0])
        return found

    demo = closure("demo")
    assert {"bitsandbytes", "optimum-quanto", "torch", "diffusers", "jinja2"} <= demo  # the nf4 and int4 rows
    assert demo <= closure("test") and {"ruff", "mypy"} <= closure("test")
