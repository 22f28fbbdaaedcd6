"""Generated images for the report: tensors -> PNG -> base64, and the image-grid payload.

The payload (`images` in an evaluation JSON, documented in docs/report.md)::

    {"prompts": [P strings],
     "original": [P lists of base64 PNGs], "pruned": [P lists of base64 PNGs]}

Images come in the order `hpspec.evaluate.evaluate` makes them: every prompt once per seed, so
image k belongs to prompt k % P. PNGs are written here with zlib and struct (8-bit grey or RGB):
no imaging library, and the same pixels give the same bytes on every machine.
"""

from __future__ import annotations

import base64
import binascii
import re
import struct
import zlib
from collections.abc import Mapping, Sequence
from typing import Any

from hpspec.core.errors import ImageError

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_BASE64 = re.compile(r"[A-Za-z0-9+/]+={0,2}")
Pixels = list[list[list[int]]]  # rows of pixels, each pixel a list of 1 (grey) or 3 (RGB) bytes


def png_bytes(pixels: Pixels) -> bytes:
    """An 8-bit greyscale or RGB PNG of `pixels` (rows x columns x channels, values 0-255)."""
    height, width, channels = len(pixels), len(pixels[0]), len(pixels[0][0])
    colour_type = {1: 0, 3: 2}[channels]
    raw = b"".join(b"\x00" + bytes(v for pixel in row for v in pixel) for row in pixels)
    header = struct.pack(">IIBBBBB", width, height, 8, colour_type, 0, 0, 0)
    return PNG_SIGNATURE + _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(raw, 9)) + _chunk(b"IEND", b"")


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _pixels(image: Sequence[Sequence[Sequence[float]]]) -> Pixels:
    """(C, H, W) floats in [0, 1] -> rows of 0-255 pixels; values outside are clamped."""
    channels = len(image)
    if channels not in (1, 3):
        raise ImageError(f"an image has {channels} channels; expected 1 (grey) or 3 (RGB)")
    height, width = len(image[0]), len(image[0][0])
    return [
        [[round(255 * min(1.0, max(0.0, float(image[c][y][x])))) for c in range(channels)] for x in range(width)]
        for y in range(height)
    ]


def _as_lists(images: Any) -> list[Any]:
    """A torch tensor, a numpy array or nested lists, as nested lists (no torch import here)."""
    if hasattr(images, "detach"):
        images = images.detach().cpu()
    return images.tolist() if hasattr(images, "tolist") else list(images)


def encode_images(images: Any) -> list[str]:
    """(N, C, H, W) floats in [0, 1] -> N base64 PNG strings."""
    batch = _as_lists(images)
    return [base64.b64encode(png_bytes(_pixels(image))).decode("ascii") for image in batch]


def image_grid_payload(prompts: Sequence[str], original_images: Any, pruned_images: Any) -> dict[str, Any]:
    """The report's image grid from two (N, 1|3, H, W) batches in [0, 1], N a multiple of the prompts."""
    if not prompts:
        raise ImageError("an image grid needs at least one prompt")
    columns = {}
    for name, images in (("original", original_images), ("pruned", pruned_images)):
        encoded = encode_images(images)
        if not encoded or len(encoded) % len(prompts):
            raise ImageError(f"{name}: {len(encoded)} images for {len(prompts)} prompts; expected a multiple")
        columns[name] = [encoded[i :: len(prompts)] for i in range(len(prompts))]
    return {"prompts": [str(p) for p in prompts], **columns}


def checked_grid(payload: Any, where: str) -> dict[str, Any]:
    """A grid payload read from a file, checked: matching lengths, every image a base64 PNG."""
    if not isinstance(payload, Mapping):
        raise ImageError(f"{where}: `images` is an object with prompts, original and pruned")
    prompts = payload.get("prompts")
    if not isinstance(prompts, list) or not all(isinstance(p, str) for p in prompts):
        raise ImageError(f"{where}: `images.prompts` is a list of strings")
    grid: dict[str, Any] = {"prompts": prompts}
    for name in ("original", "pruned"):
        rows = payload.get(name)
        if not isinstance(rows, list) or len(rows) != len(prompts):
            raise ImageError(f"{where}: `images.{name}` needs one list of images per prompt ({len(prompts)})")
        grid[name] = [
            [checked_png(image, f"{where}: images.{name}[{i}]") for image in _list(row, where)]
            for i, row in enumerate(rows)
        ]
    return grid


def _list(row: Any, where: str) -> list[Any]:
    if not isinstance(row, list):
        raise ImageError(f"{where}: each prompt's images are a list of base64 PNG strings")
    return row


def checked_png(image: Any, where: str) -> str:
    if not isinstance(image, str) or not _BASE64.fullmatch(image):
        raise ImageError(f"{where}: not a base64 string")
    try:
        head = base64.b64decode(image[:12], validate=True)
    except binascii.Error:
        raise ImageError(f"{where}: not valid base64") from None
    if not head.startswith(PNG_SIGNATURE):
        raise ImageError(f"{where}: not a PNG image")
    return image
