"""Shared test helpers: run the CLI in-process, locate the repository, golden files."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

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


@pytest.fixture(scope="session")
def tiny_sd3_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A StableDiffusion3Pipeline directory (2 blocks, two CLIPs, T5; tests/tiny_pipelines.py), built once."""
    from tests.tiny_pipelines import save_pipeline, tiny_sd3_pipeline

    return save_pipeline(tiny_sd3_pipeline(), tmp_path_factory.mktemp("tiny-sd3") / "pipe")


@pytest.fixture(scope="session")
def tiny_flux_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A FluxPipeline directory (2 double + 2 single blocks, CLIP, T5; tests/tiny_pipelines.py), built once."""
    from tests.tiny_pipelines import save_pipeline, tiny_flux_pipeline

    return save_pipeline(tiny_flux_pipeline(), tmp_path_factory.mktemp("tiny-flux") / "pipe")


@pytest.fixture(scope="session")
def tiny_clip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CLIPModel directory (16px vision tower, tokenizer, image processor) for CLIP scorers, built once."""
    from tests.tiny_pipelines import tiny_clip_model

    return tiny_clip_model(tmp_path_factory.mktemp("tiny-clip"))


def assert_golden(path: Path, actual: str) -> None:
    if UPDATE_GOLDEN:
        path.write_text(actual, encoding="utf-8")
    expected = path.read_text(encoding="utf-8")
    assert actual == expected, f"output differs from {path.relative_to(REPO)}"
