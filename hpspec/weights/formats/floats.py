"""floats: a tensor's source bytes as numpy arrays, and the float casts GGUF writing needs.

`read_into` reads a tensor's byte ranges into a buffer; `decode` widens bf16, f16 and fp8 to float32 (exact);
`bf16_to_f16` casts bfloat16 bits to float16 bits without a float32 round trip. numpy is imported
where used (a torch- and numpy-free command may import this module's users).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache
from typing import Any

from hpspec.core.errors import LayoutError
from hpspec.weights.checkpoint.tensors import Segment

F16_REBASE = (127 - 15) << 7  # bf16 exponent bias minus float16's, in a bf16's exponent position
NORMAL_LOW = 0x3880  # |bf16| bits of 2**-14, float16's smallest normal
NORMAL_SPAN = 0x0F00  # 30 exponents of 128 mantissas: the bf16 values float16 holds as normals
CAST_BLOCK = 1 << 17  # elements per step of a cast


def bf16_to_f16(bits: Any, out: Any | None = None) -> Any:
    """float16 bits (uint16) of bfloat16 bits (uint16), as numpy rounds float32 to float16.

    Every bf16 whose magnitude is a float16 normal (2**-14 to 65280) is exact in float16: its
    exponent is rebased and its 7 mantissa bits shifted up, in integer arithmetic. The rest (zeros,
    float16 subnormals, which round, overflow to infinity, infinities, NaN) are looked up in a
    table built by numpy's own float32 -> float16 cast. So values are exact where float16 can hold
    them, and rounded exactly as a cast through float32 rounds them elsewhere. Worked in blocks
    that stay in a core's cache; `out` (uint16, of `bits`' size) is filled when given."""
    import numpy as np

    out = np.empty_like(bits) if out is None else out
    scratch, outside = np.empty(min(bits.size, CAST_BLOCK), np.uint16), np.empty(min(bits.size, CAST_BLOCK), bool)
    table = _bf16_to_f16_table()
    for begin in range(0, bits.size, CAST_BLOCK):
        b, o = bits[begin : begin + CAST_BLOCK], out[begin : begin + CAST_BLOCK]
        m, k = scratch[: b.size], outside[: b.size]
        np.bitwise_and(b, 0x7FFF, out=m)
        np.subtract(m, F16_REBASE, out=o)  # wraps where the value is outside, fixed below
        np.left_shift(o, 3, out=o)
        np.subtract(m, NORMAL_LOW, out=m)
        np.greater_equal(m, NORMAL_SPAN, out=k)
        np.bitwise_and(b, 0x8000, out=m)
        np.bitwise_or(o, m, out=o)
        fix = np.flatnonzero(k)
        o[fix] = table[b[fix]]
    return out


@cache
def _bf16_to_f16_table() -> Any:
    """float16 bits of every bfloat16 bit pattern, through numpy's float32 -> float16 cast."""
    import numpy as np

    every = np.arange(1 << 16, dtype=np.uint32) << 16
    with np.errstate(over="ignore"):
        return every.view(np.float32).astype(np.float16).view(np.uint16)


def read_into(segments: Sequence[Segment], into: memoryview) -> None:
    """The bytes of `segments`, one after another, into the start of `into`."""
    offset = 0
    for segment in segments:
        with segment.path.open("rb", buffering=0) as handle:
            handle.seek(segment.begin)
            start, end = offset, offset + segment.end - segment.begin
            while offset < end:
                count = handle.readinto(into[offset:end])
                if not count:
                    raise LayoutError(
                        f"{segment.path}: ended at byte {segment.begin + offset - start} while being read (changed on disk?)"
                    )
                offset += count


def decode(raw: Any, dtype: str, out: Any | None = None) -> Any:
    """Raw bytes of a safetensors dtype as float32 (exact for every float type but F64), written
    into `out` (float32, as many elements) when given."""
    import numpy as np

    count = raw.size // {"F32": 4, "F16": 2, "BF16": 2}.get(dtype, 1)
    out = np.empty(count, np.float32) if out is None else out
    if dtype == "F32":
        out[:] = raw.view(np.float32)
    elif dtype == "F16":
        out[:] = raw.view(np.float16)
    elif dtype == "BF16":  # the 16 bits of a bfloat16 are the top half of its float32
        np.left_shift(raw.view(np.uint16), 16, out=out.view(np.uint32), dtype=np.uint32)
    elif dtype in ("F8_E4M3", "F8_E5M2"):
        np.take(_fp8_table(dtype), raw, out=out)
    else:
        raise LayoutError(f"cannot write a {dtype} tensor as GGUF (float tensors only)")
    return out


@cache
def _fp8_table(dtype: str) -> Any:
    """float32 value of each of the 256 fp8 codes (E4M3 'fn': no infinities, 0x7f/0xff NaN)."""
    import numpy as np

    exponent_bits, bias = (4, 7) if dtype == "F8_E4M3" else (5, 15)
    mantissa_bits = 7 - exponent_bits
    codes = np.arange(256)
    sign = np.where(codes & 0x80, -1.0, 1.0)
    exponent = (codes >> mantissa_bits) & ((1 << exponent_bits) - 1)
    mantissa = codes & ((1 << mantissa_bits) - 1)
    normal = (1 + mantissa / (1 << mantissa_bits)) * np.exp2(exponent.astype(float) - bias)
    subnormal = mantissa / (1 << mantissa_bits) * 2.0 ** (1 - bias)
    values = sign * np.where(exponent == 0, subnormal, normal)
    top = (1 << exponent_bits) - 1
    if dtype == "F8_E4M3":
        values[(exponent == top) & (mantissa == (1 << mantissa_bits) - 1)] = np.nan
    else:
        values[(exponent == top) & (mantissa == 0)] = sign[(exponent == top) & (mantissa == 0)] * np.inf
        values[(exponent == top) & (mantissa != 0)] = np.nan
    return values.astype(np.float32)
