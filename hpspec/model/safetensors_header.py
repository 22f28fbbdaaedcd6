"""Reading safetensors headers without torch: what tensors a file holds, and where their bytes are.

A safetensors file is an 8-byte little-endian header length, a JSON header (name -> dtype, shape,
data_offsets relative to the end of the header), then the raw bytes. Every header is validated
before it is trusted: offsets in range, contiguous and non-overlapping, byte lengths that agree
with dtype and shape.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hpspec.core.errors import CheckpointError
from hpspec.core.io import parse_json

DTYPE_BYTES: Mapping[str, int] = {
    "F64": 8, "F32": 4, "F16": 2, "BF16": 2, "F8_E4M3": 1, "F8_E5M2": 1,
    "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U64": 8, "U32": 4, "U16": 2, "U8": 1, "BOOL": 1,
}  # fmt: skip

# torch / config.json dtype names -> safetensors names
TORCH_DTYPES: Mapping[str, str] = {
    "float64": "F64", "float32": "F32", "float16": "F16", "bfloat16": "BF16", "float8_e4m3fn": "F8_E4M3",
    "float8_e5m2": "F8_E5M2", "int64": "I64", "int32": "I32", "int16": "I16", "int8": "I8", "uint8": "U8",
    "bool": "BOOL",
}  # fmt: skip

MAX_HEADER_BYTES = 100 << 20  # the format's own limit


@dataclass(frozen=True)
class TensorEntry:
    name: str
    dtype: str
    shape: tuple[int, ...]
    begin: int  # absolute byte offsets in the file
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.begin


@dataclass(frozen=True)
class Header:
    path: Path
    tensors: Mapping[str, TensorEntry]
    metadata: Mapping[str, str]
    data_start: int
    file_size: int


def read_header(path: Path) -> Header:
    """Read and validate one file's header. Raises CheckpointError naming the file and the problem."""
    path = Path(path)
    try:
        with path.open("rb") as handle:
            size = path.stat().st_size
            prefix = handle.read(8)
            if len(prefix) < 8:
                raise CheckpointError(f"{path}: truncated: {len(prefix)} bytes, not even a safetensors header length")
            (length,) = struct.unpack("<Q", prefix)
            if length > MAX_HEADER_BYTES:
                raise CheckpointError(
                    f"{path}: header length {length} exceeds the safetensors limit of {MAX_HEADER_BYTES}"
                )
            if 8 + length > size:
                raise CheckpointError(f"{path}: header length {length} runs past the end of the file ({size} bytes)")
            raw = handle.read(length)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise CheckpointError(f"{path}: is a directory, expected a safetensors file") from None
    except OSError as error:
        raise CheckpointError(f"{path}: cannot read: {error.strerror or error}") from None
    header = parse_json(raw, str(path), "header (of a safetensors file?)", CheckpointError)
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: header is not a JSON object")
    return _validate(path, header, 8 + length, size)


def _validate(path: Path, header: dict[str, Any], data_start: int, size: int) -> Header:
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise CheckpointError(f"{path}: __metadata__ must map strings to strings")
    entries: dict[str, TensorEntry] = {}
    for name, info in header.items():
        entries[name] = _entry(path, name, info, data_start)
    spans = sorted((e.begin, e.end, e.name) for e in entries.values())
    cursor = data_start
    for begin, end, name in spans:
        if begin < cursor:
            raise CheckpointError(
                f"{path}: tensor {name!r} overlaps the tensor before it (offset {begin - data_start})"
            )
        if begin > cursor:
            if end > size:  # not a truncation: the offsets point beyond the file
                offsets = [begin - data_start, end - data_start]
                raise CheckpointError(
                    f"{path}: tensor {name!r} has data_offsets {offsets} past the end of the file ({size - data_start} bytes of data)"
                )
            raise CheckpointError(f"{path}: {begin - cursor} unaccounted bytes before tensor {name!r}")
        cursor = end
    if cursor > size:
        raise CheckpointError(f"{path}: truncated: tensors need {cursor} bytes, the file has {size}")
    if cursor < size:
        raise CheckpointError(f"{path}: {size - cursor} trailing bytes after the last tensor")
    return Header(path, entries, dict(metadata), data_start, size)


def _entry(path: Path, name: str, info: object, data_start: int) -> TensorEntry:
    if not isinstance(info, dict):
        raise CheckpointError(f"{path}: entry for {name!r} is not an object")
    dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
    if not isinstance(dtype, str) or dtype not in DTYPE_BYTES:
        raise CheckpointError(f"{path}: tensor {name!r} has unknown dtype {dtype!r}; known: {', '.join(DTYPE_BYTES)}")
    if not (isinstance(shape, list) and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)):
        raise CheckpointError(f"{path}: tensor {name!r} has an invalid shape {shape!r}")
    if not (
        isinstance(offsets, list)
        and len(offsets) == 2
        and all(isinstance(o, int) and not isinstance(o, bool) and o >= 0 for o in offsets)
        and offsets[0] <= offsets[1]
    ):
        raise CheckpointError(f"{path}: tensor {name!r} has invalid data_offsets {offsets!r}")
    expected = math.prod(shape) * DTYPE_BYTES[dtype]
    if offsets[1] - offsets[0] != expected:
        raise CheckpointError(
            f"{path}: tensor {name!r} has {offsets[1] - offsets[0]} bytes but {dtype} {list(shape)} needs {expected}"
        )
    return TensorEntry(name, dtype, tuple(shape), data_start + offsets[0], data_start + offsets[1])
