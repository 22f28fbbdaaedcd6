"""kquants: the Q4_K, Q5_K and Q6_K encoders the `gguf` package lacks (it dequantizes K-quants only).

Q4_K as llama.cpp lays it out (`block_q4_K`, 144 bytes per 256 weights): a float16 scale `d` and
min scale `dmin`, eight 6-bit sub-block scales and mins packed into 12 bytes, and 256 4-bit codes
(each 64 weights: the low nibbles are the first 32, the high nibbles the next 32). A weight is
`d * sc[j] * q - dmin * m[j]` for its sub-block j of 32. The search follows llama.cpp's reference
`quantize_row_q4_K_ref` (`make_qkx2_quants`: per sub-block, a weighted least-squares scale and min
over 21 candidate scales, weights `sqrt(mean x^2) + |x|`), vectorised over every block at once.
Q5_K is Q4_K with 5-bit codes; Q6_K is symmetric (see their functions).
The tests decode the bytes with the `gguf` package's own dequantizer. numpy only.
"""

from __future__ import annotations

from typing import Any

QK_K = 256  # weights per super-block
SUB = 32  # weights per sub-block (Q4_K, Q5_K; Q6_K's are 16)
BLOCK_BYTES = 144
NMAX = 15  # 4-bit codes
RDELTA = 0.1  # llama.cpp's candidate scales: (nmax + rmin + RDELTA * k) / range
SEARCH = {15: (20, -1.0), 31: (15, -0.5)}  # per code maximum: llama.cpp's candidate steps and rmin (Q4_K, Q5_K)
Q5_BYTES, Q6_BYTES = 176, 210
GROUP_MAX_EPS = 1e-15  # llama.cpp: a (sub-)block whose largest |x| is below this is all zeros


def quantize_q4_k(data: Any) -> Any:
    """float32 rows (each a multiple of 256 long) -> Q4_K bytes, shape (rows, row_len / 256 * 144)."""
    import numpy as np

    rows = _rows(data, "Q4_K")
    head, q = _min_scale_blocks(rows, NMAX)
    out = np.concatenate([head, _pack_codes(q)], axis=1)
    return out.reshape(*rows.shape[:-1], rows.shape[-1] // QK_K * BLOCK_BYTES)


def quantize_q5_k(data: Any) -> Any:
    """float32 rows (each a multiple of 256 long) -> Q5_K bytes, shape (rows, row_len / 256 * 176).

    Q4_K's layout with 5-bit codes: after d, dmin and the 12 scale bytes, 32 bytes of high bits
    (bit j of byte i: the high bit of weight 32 j + i), then the low nibbles as Q4_K packs its codes."""
    import numpy as np

    rows = _rows(data, "Q5_K")
    head, q = _min_scale_blocks(rows, 31)
    high = (q >> 4).reshape(q.shape[0], QK_K // SUB, SUB) << np.arange(QK_K // SUB, dtype=np.uint8)[None, :, None]
    qh = np.bitwise_or.reduce(high, axis=1)
    out = np.concatenate([head, qh, _pack_codes(q & 0xF)], axis=1)
    return out.reshape(*rows.shape[:-1], rows.shape[-1] // QK_K * Q5_BYTES)


def _rows(data: Any, name: str) -> Any:
    import numpy as np

    rows = np.asarray(data, dtype=np.float32)
    if rows.shape[-1] % QK_K:
        raise ValueError(f"{name} needs rows of a multiple of {QK_K} weights, not {rows.shape[-1]}")
    return rows


def _min_scale_blocks(rows: Any, nmax: int) -> tuple[Any, Any]:
    """Q4_K/Q5_K's common part: (per block d, dmin and the packed 6-bit scales and mins: 16 bytes;
    the codes 0..nmax, shape (blocks, 256)), after llama.cpp's `quantize_row_q{4,5}_K_ref`."""
    import numpy as np

    x = rows.reshape(-1, QK_K // SUB, SUB)
    weights = np.sqrt(np.mean(x.reshape(-1, QK_K) ** 2, axis=1))[:, None, None] + np.abs(x)
    scales, mins = _scale_min(x, weights, nmax)
    max_scale, max_min = scales.max(axis=1), mins.max(axis=1)
    ls = _codes(scales, max_scale, 63)
    lm = _codes(mins, max_min, 63)
    d = (max_scale / 63).astype(np.float16)
    dmin = (max_min / 63).astype(np.float16)
    sub_scale = d.astype(np.float32)[:, None] * ls
    sub_min = dmin.astype(np.float32)[:, None] * lm
    with np.errstate(divide="ignore", invalid="ignore"):
        q = np.rint((x + sub_min[..., None]) / sub_scale[..., None])
    q = np.where(sub_scale[..., None] > 0, np.clip(q, 0, nmax), 0).astype(np.uint8)
    head = np.concatenate(
        [d.view(np.uint8).reshape(-1, 2), dmin.view(np.uint8).reshape(-1, 2), _pack_scales(ls, lm)], axis=1
    )
    return head, q.reshape(-1, QK_K)


def quantize_q6_k(data: Any) -> Any:
    """float32 rows (each a multiple of 256 long) -> Q6_K bytes, shape (rows, row_len / 256 * 210).

    `block_q6_K`: 128 bytes of low nibbles, 64 of high 2-bit pairs, sixteen int8 sub-block scales
    (16 weights each) and a float16 `d`; a weight is `d * scale[j] * (q - 32)`, q in 0..63. After
    llama.cpp's `quantize_row_q6_K_ref` (`make_qx_quants` with weights x^2 over 19 candidate scales)."""
    import numpy as np

    rows = _rows(data, "Q6_K")
    x = rows.reshape(-1, QK_K // 16, 16)
    scales = _symmetric_scales(x, 32)
    pick = np.argmax(np.abs(scales), axis=1)
    top = np.take_along_axis(scales, pick[:, None], axis=1)[:, 0]
    zero = np.abs(top) < GROUP_MAX_EPS
    with np.errstate(divide="ignore", invalid="ignore"):
        inverse = np.where(zero, 0.0, -128 / np.where(zero, 1.0, top))
        d = np.where(zero, 0.0, 1 / np.where(zero, 1.0, inverse)).astype(np.float16)
    sc = np.minimum(127, np.rint(inverse[:, None] * scales)).astype(np.int8)
    sub = d.astype(np.float32)[:, None] * sc
    with np.errstate(divide="ignore", invalid="ignore"):
        q = np.clip(np.rint(x / sub[..., None]), -32, 31)
    q = (np.where(sub[..., None] != 0, q, 0) + 32).astype(np.uint8).reshape(-1, 2, 4, SUB)  # halves of 128
    ql = (q[:, :, 0:2] & 0xF) | ((q[:, :, 2:4] & 0xF) << 4)
    qh = (q[:, :, 0] >> 4) | ((q[:, :, 1] >> 4) << 2) | ((q[:, :, 2] >> 4) << 4) | ((q[:, :, 3] >> 4) << 6)
    blocks = x.shape[0]
    out = np.concatenate(
        [ql.reshape(blocks, 128), qh.reshape(blocks, 64), sc.view(np.uint8), d.view(np.uint8).reshape(-1, 2)], axis=1
    )
    return out.reshape(*rows.shape[:-1], rows.shape[-1] // QK_K * Q6_BYTES)


def _symmetric_scales(x: Any, nmax: int) -> Any:
    """Per 16-weight sub-block, llama.cpp's `make_qx_quants(16, nmax, x, L, rmse_type=1)`: codes
    -nmax..nmax-1 with the largest |x| at -nmax, the scale a weighted (x^2) least-squares fit, the best
    of 19 candidate inverse scales -(nmax + 0.1 k) / max, k = -9..9 (k = 0 first, kept on ties)."""
    import numpy as np

    pick = np.argmax(np.abs(x), axis=-1)
    top = np.take_along_axis(x, pick[..., None], axis=-1)[..., 0]
    zero = np.abs(top) < GROUP_MAX_EPS
    top = np.where(zero, 1.0, top)
    w = x * x
    best_fit = np.full(top.shape, -np.inf)
    scale = np.zeros(top.shape)
    for k in [0, *range(-9, 0), *range(1, 10)]:
        codes = np.clip(np.rint((-(nmax + 0.1 * k) / top)[..., None] * x), -nmax, nmax - 1)
        wl = w * codes
        sum_lx, sum_l2 = _total(wl * x), _total(wl * codes)
        with np.errstate(divide="ignore", invalid="ignore"):
            fit = np.where(sum_l2 > 0, sum_lx * sum_lx / sum_l2, -np.inf if k else 0.0)
            better = fit > best_fit
            scale = np.where(better, np.where(sum_l2 > 0, sum_lx / sum_l2, 0.0), scale)
        best_fit = np.where(better, fit, best_fit)
    return np.where(zero, 0.0, scale)


def _codes(values: Any, top: Any, levels: int) -> Any:
    """6-bit codes of sub-block scales or mins against their super-block maximum."""
    import numpy as np

    with np.errstate(divide="ignore", invalid="ignore"):
        inverse = np.where(top > 0, levels / top, 0.0)
    return np.clip(np.rint(inverse[:, None] * values), 0, levels).astype(np.uint8)


def _scale_min(x: Any, w: Any, nmax: int = NMAX) -> tuple[Any, Any]:
    """Per sub-block: the scale and the (positive) min of `x ~ scale * q - min`, q in 0..nmax.

    Each candidate's weighted error comes from the sums the least-squares fit needs already
    (sum w (s q + m - x)^2 expanded), so a candidate costs one pass for its codes and three sums."""
    import numpy as np

    low = np.minimum(x.min(axis=-1), 0.0)
    span = x.max(axis=-1) - low
    flat = span <= 0
    span = np.where(flat, 1.0, span)
    wx = w * x
    sums = (_total(w), _total(wx), _total(wx * x))  # sum w, sum w x, sum w x^2
    shifted = x - low[..., None]
    scale = span / nmax
    steps, rmin = SEARCH[nmax]
    best = _error(_sums(w, x, np.clip(np.rint(shifted / scale[..., None]), 0, nmax)), sums, scale, low)
    for step in range(steps + 1):
        inverse = (rmin + RDELTA * step + nmax) / span
        sum_l, sum_l2, sum_xl = _sums(w, x, np.clip(np.rint(inverse[..., None] * shifted), 0, nmax))
        sum_w, sum_x, _ = sums
        det = sum_w * sum_l2 - sum_l * sum_l
        with np.errstate(divide="ignore", invalid="ignore"):
            this_scale = (sum_w * sum_xl - sum_x * sum_l) / det
            this_min = (sum_l2 * sum_x - sum_l * sum_xl) / det
            positive = this_min > 0
            this_scale = np.where(positive, sum_xl / sum_l2, this_scale)
            this_min = np.where(positive, 0.0, this_min)
        error = _error((sum_l, sum_l2, sum_xl), sums, this_scale, this_min)
        better = (det > 0) & (error < best)
        best = np.where(better, error, best)
        scale = np.where(better, this_scale, scale)
        low = np.where(better, this_min, low)
    return np.where(flat, 0.0, scale), -low


def _sums(w: Any, x: Any, q: Any) -> tuple[Any, Any, Any]:
    """sum w q, sum w q^2, sum w q x over each sub-block."""
    wq = w * q
    return _total(wq), _total(wq * q), _total(wq * x)


def _total(a: Any) -> Any:
    """Sums over the last (32-long) axis as a matrix-vector product: far faster than numpy's reduce there."""
    import numpy as np

    return (a @ np.ones(a.shape[-1], a.dtype)).astype(np.float64)  # the fit's sums cancel: combine them wide


def _error(codes: tuple[Any, Any, Any], sums: tuple[Any, Any, Any], scale: Any, low: Any) -> Any:
    """sum w (scale q + low - x)^2, from the sums alone; inf where the fit is not a number."""
    import numpy as np

    sum_l, sum_l2, sum_xl = codes
    sum_w, sum_x, sum_x2 = sums
    with np.errstate(invalid="ignore", over="ignore"):
        error = (
            scale * scale * sum_l2 + 2 * scale * low * sum_l - 2 * scale * sum_xl
            + low * low * sum_w - 2 * low * sum_x + sum_x2
        )  # fmt: skip
    return np.where(np.isfinite(error), error, np.inf)


def _pack_scales(ls: Any, lm: Any) -> Any:
    """Eight 6-bit scales and mins into 12 bytes (llama.cpp's `get_scale_min_k4` layout)."""
    import numpy as np

    packed = np.zeros((ls.shape[0], 12), np.uint8)
    packed[:, 0:4] = ls[:, 0:4] | ((ls[:, 4:8] >> 4) << 6)
    packed[:, 4:8] = lm[:, 0:4] | ((lm[:, 4:8] >> 4) << 6)
    packed[:, 8:12] = (ls[:, 4:8] & 0xF) | ((lm[:, 4:8] & 0xF) << 4)
    return packed


def _pack_codes(q: Any) -> Any:
    """256 codes per block into 128 bytes: per 64 weights, the first 32 low nibbles, the next 32 high."""
    flat = q.reshape(q.shape[0], QK_K // 64, 2, SUB)
    return (flat[:, :, 0, :] | (flat[:, :, 1, :] << 4)).reshape(q.shape[0], QK_K // 2)
