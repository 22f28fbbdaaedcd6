"""Shared test helpers: run the CLI in-process, locate the repository, golden files."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest

REPO = Path(__file__).resolve().parent.parent
GOLDEN = Path(__file__).resolve().parent / "golden"
# HPSPEC_UPDATE_GOLDEN=1 rewrites golden files from the current output (then review the git diff).
UPDATE_GOLDEN = os.environ.get("HPSPEC_UPDATE_GOLDEN") == "1"


@dataclass
class CliResult:
    code: int
    out: str
    err: str


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> Callable[..., CliResult]:
    """Run `hpspec ARGS...` in-process; returns exit code, stdout and stderr."""
    from hpspec.cli.app import main

    def run(*args: str) -> CliResult:
        capsys.readouterr()
        code = main([str(a) for a in args])
        captured = capsys.readouterr()
        return CliResult(code, captured.out, captured.err)

    return run


def assert_golden(path: Path, actual: str) -> None:
    if UPDATE_GOLDEN:
        path.write_text(actual, encoding="utf-8")
    expected = path.read_text(encoding="utf-8")
    assert actual == expected, f"output differs from {path.relative_to(REPO)}"
