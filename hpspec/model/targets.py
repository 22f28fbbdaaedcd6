"""targets: what a spec's `target` or a `--target` names, found on disk and read into a graph.

A built-in name (models.toml), `demo` (the embedded model), or a path: a transformer directory, a
pipeline root (its `transformer/`), one .safetensors file or a sharded index. Pickles are refused;
so are FIFOs and devices, which would block or never end.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from hpspec.core.diagnostics import did_you_mean
from hpspec.core.errors import CheckpointError, TargetError
from hpspec.core.io import read_json_input
from hpspec.core.paths import CONFIG_NAME, PICKLE_SUFFIXES, WEIGHTS_INDEX_SUFFIX
from hpspec.demo.paths import transformer_dir
from hpspec.model.arch import builtin_models
from hpspec.model.formats.graph import foreign_kind, graph_of_file
from hpspec.model.graph import (
    ModelGraph,
    graph_from_builtin,
    graph_from_config,
    graph_from_headers,
)
from hpspec.model.safetensors_header import TORCH_DTYPES, read_header

DEMO = "demo"


def target_names() -> tuple[str, ...]:
    return (*builtin_models(), DEMO)


def demo_directory() -> Path:
    """The embedded demo transformer's directory (a function, so that tests can point it elsewhere)."""
    return Path(transformer_dir())


def resolve_target(value: str, base: Path | None = None, quoted: bool = False) -> ModelGraph:
    """A built-in name, `demo`, or (quoted, or containing a path separator) a path relative to `base`."""
    if not quoted and value in builtin_models():
        return graph_from_builtin(value)
    if not quoted and value == DEMO:
        # Named by the package, not by where it is installed, so plans are the same everywhere.
        return replace(graph_from_path(demo_directory(), name=DEMO), source="hpspec:demo")
    path = Path(value)
    if not quoted and not _exists(path) and "/" not in value:
        suggestion = did_you_mean(value, target_names())
        raise TargetError(
            f"unknown target `{value}`"
            + (f"; did you mean `{suggestion}`?" if suggestion else "")
            + f" Built-in targets: {', '.join(target_names())}; or a quoted path to a model"
        )
    if not path.is_absolute() and base is not None:
        path = base / path
    return graph_from_path(path)


def find_transformer(path: Path) -> tuple[Path | None, list[Path]]:
    """(config.json or None, safetensors files) of a transformer directory, pipeline root or file."""
    path = Path(path)
    if not _exists(path):
        raise TargetError(f"{path}: no such file or directory")
    if path.is_file():
        if path.name.endswith(WEIGHTS_INDEX_SUFFIX):
            return _config_in(path.parent), _index_shards(path)
        _refuse_unsupported_file(path)
        return _config_in(path.parent), [path]
    if not path.is_dir():  # a FIFO, a device: listing or reading it would fail or never end
        raise TargetError(f"{path}: not a regular file or a directory")
    if (path / "transformer").is_dir() and not (path / CONFIG_NAME).is_file():
        return find_transformer(path / "transformer")
    config = _config_in(path)
    indexes = sorted(path.glob(f"*{WEIGHTS_INDEX_SUFFIX}"))
    if indexes:
        return config, _index_shards(indexes[0])
    weights = sorted(path.glob("*.safetensors"))
    if not weights:
        pickles = sorted(p.name for p in path.iterdir() if p.suffix in PICKLE_SUFFIXES)
        if pickles:
            raise CheckpointError(
                f"{path / pickles[0]}: pickle checkpoints are refused (they can run code); convert it to safetensors"
            )
    if config is None and not weights:
        raise TargetError(
            f"{path}: holds no config.json and no .safetensors files (not a diffusers transformer or pipeline)"
        )
    return config, weights


def _exists(path: Path) -> bool:
    """Path.exists, but a name the system cannot even look up (ENAMETOOLONG) names nothing, not a crash."""
    try:
        return path.exists()
    except OSError:
        return False


def _config_in(directory: Path) -> Path | None:
    """config.json if there is anything by that name: one that is not a regular file is refused when read."""
    config = directory / CONFIG_NAME
    return config if os.path.lexists(config) else None


def require_regular(path: Path) -> None:
    """Follow symlinks (a Hugging Face snapshot links to blobs), but only to regular files: a FIFO
    would block the read, a device never end."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise CheckpointError(f"{path}: missing (a broken symlink?)") from None
    except OSError as error:
        raise CheckpointError(f"{path}: cannot read: {error.strerror or error}") from None
    if not stat.S_ISREG(mode):
        raise CheckpointError(f"{path}: not a regular file")


def _refuse_unsupported_file(path: Path) -> None:
    if path.suffix in PICKLE_SUFFIXES:
        raise CheckpointError(f"{path}: pickle checkpoints are refused (they can run code); convert it to safetensors")
    if path.suffix != ".safetensors":
        raise TargetError(f"{path}: expected a .safetensors file, a {WEIGHTS_INDEX_SUFFIX} index, or a directory")


def _index_shards(index: Path) -> list[Path]:
    require_regular(index)
    data = read_json_input(index, "safetensors index")
    weight_map = data.get("weight_map") if isinstance(data, dict) else None
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise CheckpointError(f"{index}: not a safetensors index: no `weight_map` of tensor -> shard file")
    shards = []
    for shard in sorted(set(weight_map.values())):
        shard_path = index.parent / shard
        if Path(shard).is_absolute() or ".." in Path(shard).parts:
            raise CheckpointError(f"{index}: shard {shard!r} lies outside the checkpoint directory")
        if not os.path.lexists(shard_path):
            raise CheckpointError(f"{index}: names shard {shard!r}, which is missing")
        require_regular(shard_path)
        shards.append(shard_path)
    return shards


def read_config(path: Path) -> dict[str, Any]:
    require_regular(path)
    config = read_json_input(path, CONFIG_NAME)
    if not isinstance(config, dict):
        raise TargetError(f"{path}: config.json is not a JSON object")
    return config


def graph_from_path(path: Path, name: str | None = None) -> ModelGraph:
    """The graph of a transformer on disk: headers when weights are there, else its config; a single
    file in another layout (bfl, sai, comfyui) or a GGUF from its header alone (model.formats)."""
    if foreign_kind(path) is not None:
        return graph_of_file(path, name)
    config_path, weights = find_transformer(path)
    config = read_config(config_path) if config_path is not None else None
    label = name or _model_name(Path(path))
    if weights:
        headers = [read_header(w) for w in weights]
        graph = graph_from_headers(headers, label, f"safetensors:{path}", config)
        if config is not None and config_path is not None:
            check_config_counts(graph, config, config_path)
        return graph
    assert config is not None and config_path is not None
    dtype = TORCH_DTYPES.get(str(config.get("torch_dtype", "bfloat16")), "BF16")
    return graph_from_config(config, label, f"config:{config_path}", dtype)


def check_config_counts(graph: ModelGraph, config: Mapping[str, Any], config_path: Path) -> None:
    for stack in graph.stacks:
        declared = config.get(stack.count_key)
        if declared is not None and declared != len(stack):
            raise CheckpointError(
                f"{config_path}: says {stack.count_key}={declared} but the weights hold {len(stack)} {stack.name}"
            )


def _model_name(path: Path) -> str:
    path = path.resolve() if path.exists() else path
    if path.is_file():
        path = path.parent
    if path.name == "transformer":
        path = path.parent
    return path.name or str(path)
