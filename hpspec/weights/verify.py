"""`--verify`: every floating-point tensor of a checkpoint scanned for NaN and infinity.

The scan reads each tensor's bytes in fixed-size chunks, so memory stays bounded whatever the
model's size, and decodes nothing: a float is NaN or infinite exactly when all its exponent bits
are set, which numpy tests on the raw integers of every width safetensors stores.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hpspec.core.errors import CheckpointError, HpspecError
from hpspec.model.safetensors_header import Header, TensorEntry

CHUNK_BYTES = 8 << 20  # about 3x this is held at once: the chunk, a masked copy and a boolean array


@dataclass(frozen=True)
class FloatBits:
    view: str  # numpy dtype of the same width, little-endian unsigned
    exponent: int  # all bits set: NaN or infinity
    mantissa: int  # any bit set as well: NaN (0 where the format has no infinity)


FLOAT_BITS: dict[str, FloatBits] = {
    "F64": FloatBits("<u8", 0x7FF0_0000_0000_0000, 0x000F_FFFF_FFFF_FFFF),
    "F32": FloatBits("<u4", 0x7F80_0000, 0x007F_FFFF),
    "F16": FloatBits("<u2", 0x7C00, 0x03FF),
    "BF16": FloatBits("<u2", 0x7F80, 0x007F),
    "F8_E5M2": FloatBits("u1", 0x7C, 0x03),
    "F8_E4M3": FloatBits("u1", 0x7F, 0),  # the `fn` variant: no infinity, NaN is S.1111.111
}


def verify_finite(headers: Sequence[Header]) -> None:
    """Raise CheckpointError naming the file, the tensor and the first NaN or infinite element."""
    try:
        import numpy
    except ImportError:
        raise HpspecError("--verify needs numpy: pip install numpy (it comes with hpspec[torch])") from None
    buffer = bytearray(CHUNK_BYTES)
    for header in headers:
        try:
            with header.path.open("rb", buffering=0) as handle:
                for entry in sorted(header.tensors.values(), key=lambda e: e.begin):
                    if entry.dtype in FLOAT_BITS:
                        _scan(numpy, handle, header.path, entry, buffer)
        except OSError as error:
            raise CheckpointError(f"{header.path}: cannot read: {error.strerror or error}") from None


def _scan(numpy: Any, handle: Any, path: Path, entry: TensorEntry, buffer: bytearray) -> None:
    bits = FLOAT_BITS[entry.dtype]
    width = numpy.dtype(bits.view).itemsize
    chunk = len(buffer) // width * width
    view = memoryview(buffer)
    handle.seek(entry.begin)
    done = 0  # bytes of this tensor scanned
    while done < entry.nbytes:
        count = _read_exactly(handle, view[: min(chunk, entry.nbytes - done)], path, entry.begin + done)
        values = numpy.frombuffer(buffer, dtype=bits.view, count=count // width)
        special = (values & bits.exponent) == bits.exponent
        if special.any():
            at = int(special.argmax())
            nan = bits.mantissa == 0 or bool(values[at] & bits.mantissa)
            element = done // width + at
            raise CheckpointError(
                f"{path}: tensor {entry.name!r} holds {'NaN' if nan else 'infinity'} at index "
                f"{_unravel(element, entry.shape)} (element {element} of {math.prod(entry.shape)}; found by --verify)"
            )
        done += count


def _read_exactly(handle: Any, into: memoryview, path: Path, offset: int) -> int:
    filled = 0
    while filled < len(into):
        count = handle.readinto(into[filled:])
        if not count:
            raise CheckpointError(f"{path}: ended at byte {offset + filled} while being verified (changed on disk?)")
        filled += count
    return filled


def _unravel(element: int, shape: tuple[int, ...]) -> list[int]:
    """The row-major multi-index of a flat element index."""
    index = []
    for size in reversed(shape):
        element, position = divmod(element, size)
        index.append(position)
    return index[::-1]
