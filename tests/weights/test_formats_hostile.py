"""A source rewritten while a format writer reads it: refused before the output is committed.

Every writer records each source file's state (inode, size, times) before it reads the header,
and checks it again after the last byte is read, before the atomic rename. Here the source is
rewritten in place (same inode, same size, other bytes) just after the writer's first read, so
what was copied is a mix of the old bytes and the new; the writer must say so and leave nothing.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest

import hpspec.weights.formats.convert as convert_module
import hpspec.weights.formats.gguf as gguf_module
from hpspec.core.errors import LayoutError
from hpspec.weights.formats.convert import convert
from hpspec.weights.formats.gguf import convert_to_gguf, drop_blocks
from tests.conftest import CliResult
from tests.tiny_models import build, isolated, save

CHANGED = "changed while hpspec was reading it"


@pytest.fixture(scope="module", autouse=True)
def _isolated(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    with isolated(tmp_path_factory.mktemp("cache")):
        yield


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save(build("flux"), tmp_path_factory.mktemp("models") / "flux")


def _aged(path: Path) -> Path:
    """Its times an hour back, so that a rewrite now cannot land on the same timestamp tick."""
    past = time.time() - 3600
    os.utime(path, (past, past))
    return path


def _rewrite_in_place(path: Path) -> None:
    """Other bytes at the end of the file: same inode, same size."""
    with path.open("r+b") as handle:
        handle.seek(-64, os.SEEK_END)
        old = handle.read(64)
        handle.seek(-64, os.SEEK_END)
        handle.write(bytes(b ^ 0x55 for b in old))


def _after_first(real: Callable[..., Any], victim: Path) -> Callable[..., Any]:
    """`real`, with `victim` rewritten once, just after the first call returns."""
    done: list[bool] = []

    def wrapped(*args: Any, **kwargs: Any) -> Any:
        result = real(*args, **kwargs)
        if not done:
            done.append(True)
            _rewrite_in_place(victim)
        return result

    return wrapped


def _leftovers(directory: Path, name: str) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.startswith((name, f".{name}")))


def _copy(source: Path, to: Path) -> Path:
    to.write_bytes(source.read_bytes())
    return _aged(to)


@pytest.mark.parametrize("to", ["bfl", "diffusers"])
def test_a_layout_conversion_refuses_a_source_rewritten_mid_copy(
    tmp_path: Path, folder: Path, monkeypatch: pytest.MonkeyPatch, to: str
) -> None:
    if to == "diffusers":  # a single file in
        source = _aged(convert(folder, tmp_path / "flux-bfl.safetensors", "bfl").out)
    else:  # a folder in
        source = _copy_folder(folder, tmp_path / "in")
    victim = source if source.is_file() else source / "diffusion_pytorch_model.safetensors"
    real = convert_module.copy_ranges

    def copy_ranges(segments: Iterable[Any], destination: int, advance: Callable[[int], None]) -> None:
        items = list(segments)
        real(items[:1], destination, advance)
        _rewrite_in_place(victim)
        real(items[1:], destination, advance)

    monkeypatch.setattr(convert_module, "copy_ranges", copy_ranges)
    with pytest.raises(LayoutError, match=CHANGED) as caught:
        convert(source, tmp_path / "out", to)
    assert str(victim) in str(caught.value)
    assert _leftovers(tmp_path, "out") == []


def _copy_folder(folder: Path, to: Path) -> Path:
    to.mkdir()
    for item in folder.iterdir():
        _copy(item, to / item.name)
    return to


def test_a_gguf_write_refuses_a_source_rewritten_mid_read(
    tmp_path: Path, folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = _copy_folder(folder, tmp_path / "in")
    victim = source / "diffusion_pytorch_model.safetensors"
    monkeypatch.setattr(gguf_module, "read_into", _after_first(gguf_module.read_into, victim))
    with pytest.raises(LayoutError, match=CHANGED):
        convert_to_gguf(source, tmp_path / "out.gguf", "q8_0")
    assert _leftovers(tmp_path, "out.gguf") == []


def test_a_gguf_block_drop_refuses_a_source_rewritten_mid_copy(
    tmp_path: Path, folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import gguf

    source = _aged(convert_to_gguf(folder, tmp_path / "flux.gguf", "q8_0"))
    monkeypatch.setattr(gguf.GGUFWriter, "write_tensor_data", _after_first(gguf.GGUFWriter.write_tensor_data, source))
    with pytest.raises(LayoutError, match=CHANGED):
        drop_blocks(source, tmp_path / "dropped.gguf", {"num_single_layers": [1]})
    assert _leftovers(tmp_path, "dropped.gguf") == []


def test_compile_to_a_layout_refuses_a_source_rewritten_mid_copy(
    cli: Callable[..., CliResult], tmp_path: Path, folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    single = _aged(convert(folder, tmp_path / "flux-bfl.safetensors", "bfl").out)
    real = convert_module.copy_ranges

    def copy_ranges(segments: Iterable[Any], destination: int, advance: Callable[[int], None]) -> None:
        items = list(segments)
        real(items[:1], destination, advance)
        _rewrite_in_place(single)
        real(items[1:], destination, advance)

    monkeypatch.setattr(convert_module, "copy_ranges", copy_ranges)
    spec = tmp_path / "spec.hps"
    spec.write_text("drop single_blocks[0]\n", encoding="utf-8")
    result = cli("compile", spec, "--model", single, "--out", tmp_path / "out", "--no-report", "--to", "bfl")
    assert result.code == 1 and result.err.count("\n") == 1 and CHANGED in result.err, result.err
    assert not (tmp_path / "out").exists()
