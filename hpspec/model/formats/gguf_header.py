"""gguf_header: a GGUF file's header read without torch: its architecture, its tensors as byte
ranges, its key-value fields, and the diffusers config inferred from names and shapes.

The `gguf` package (and numpy, which it imports) is imported only when a GGUF is read, so the
torch-free commands that pass through here (`hpspec check` on a GGUF target) pay for it only then.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hpspec.core.errors import LayoutError
from hpspec.core.io import parse_json
from hpspec.model.formats.infer import METADATA_CONFIG, Inferred, diffusers_shapes, infer_config, with_hints
from hpspec.model.formats.keymap import block_indices
from hpspec.model.formats.rules import key_map, key_map_of_family, layouts

GGUF_MAGIC = b"GGUF"


@dataclass(frozen=True)
class GGUFTensor:
    name: str
    type: str  # lowercase GGML type name (q8_0, f16, ...)
    shape: tuple[int, ...]  # torch order (rows first)
    begin: int  # absolute byte offsets in the file
    end: int


@dataclass(frozen=True)
class GGUFFile:
    path: Path
    arch: str
    tensors: Mapping[str, GGUFTensor]
    fields: Mapping[str, Any]  # the key-value metadata, as Python values


def is_gguf(path: Path) -> bool:
    """A regular file that starts with the GGUF magic (whatever its name)."""
    try:
        with Path(path).open("rb") as handle:
            return handle.read(4) == GGUF_MAGIC
    except OSError:
        return False


def known_architectures() -> tuple[str, ...]:
    """The GGUF `general.architecture` values hpspec reads: the families with a key map (flux, sd3)."""
    return tuple(key_map(name).family for name in layouts().maps)


def read_gguf(path: Path) -> GGUFFile:
    """The header of a GGUF file: its architecture, tensors as byte ranges, its key-value fields."""
    import gguf

    path = Path(path)
    try:
        reader = gguf.GGUFReader(path)
    except (OSError, ValueError) as error:
        raise LayoutError(f"{path}: not a readable GGUF file: {error}") from None
    fields = {name: _field_value(field) for name, field in reader.fields.items() if not name.startswith("GGUF.")}
    arch = fields.get("general.architecture")
    known = known_architectures()
    if arch not in known:
        raise LayoutError(f"{path}: a GGUF of architecture {arch!r}; hpspec knows {', '.join(known)}")
    tensors = {}
    for t in reader.tensors:
        shape = tuple(int(d) for d in reversed(t.shape.tolist()))
        tensors[t.name] = GGUFTensor(
            t.name, t.tensor_type.name.lower(), shape, int(t.data_offset), int(t.data_offset) + int(t.n_bytes)
        )
    return GGUFFile(path, str(arch), tensors, fields)


def gguf_config(found: GGUFFile) -> Inferred:
    """The diffusers config of a GGUF's transformer, from its names and shapes (as for a single
    file); a config hpspec wrote into the file supplies what shapes cannot say."""
    rule = key_map_of_family(found.arch)
    shapes = {name: t.shape for name, t in found.tensors.items()}
    counts = block_indices(rule, list(shapes))
    inferred = infer_config(found.arch, diffusers_shapes(rule, shapes, counts), counts, str(found.path))
    written = found.fields.get(METADATA_CONFIG)
    return (
        with_hints(inferred, parse_json(written, str(found.path), METADATA_CONFIG, LayoutError), str(found.path))
        if isinstance(written, str)
        else inferred
    )


def _field_value(field: Any) -> Any:
    try:
        return field.contents()
    except (ValueError, TypeError, IndexError):  # a field this gguf version cannot render: None
        return None
