"""Atomic outputs: the usual permissions, nothing half-written, stale siblings swept."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from hpspec.core.errors import HpspecError
from hpspec.core.io import TMP_MARKER, atomic_directory, write_text_atomic


def umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_new_files_and_directories_get_the_usual_mode(tmp_path: Path) -> None:
    write_text_atomic(tmp_path / "a.txt", "x")
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o666 & ~umask()
    with atomic_directory(tmp_path / "out") as tmp:
        (tmp / "f").write_text("y")
    assert (tmp_path / "out").stat().st_mode & 0o777 == 0o777 & ~umask()


def test_a_failure_leaves_nothing_and_an_existing_output_needs_force(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with pytest.raises(RuntimeError):
        with atomic_directory(out) as tmp:
            (tmp / "half").write_text("written")
            raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []
    with atomic_directory(out) as tmp:
        (tmp / "v").write_text("1")
    with pytest.raises(HpspecError, match="already exists"):
        with atomic_directory(out):
            pass
    with atomic_directory(out, force=True) as tmp:
        (tmp / "v").write_text("2")
    assert (out / "v").read_text() == "2" and [p.name for p in tmp_path.iterdir()] == ["out"]


def test_stale_temporary_siblings_are_swept(tmp_path: Path) -> None:
    stale = tmp_path / f".out{TMP_MARKER}abc"
    stale.mkdir()
    (stale / "junk").write_text("from a killed run")
    with atomic_directory(tmp_path / "out") as tmp:
        (tmp / "ok").write_text("")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
