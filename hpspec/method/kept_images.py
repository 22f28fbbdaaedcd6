"""`hpspec analyze --save-images N`: each entry's first N images, kept as PNG files for a contact sheet.

Beside the table `OUT.json`, the folder `OUT.images/` holds `KEY.K.png` (image K of the entry KEY,
`__full__` for the unpruned model; images in generation order: every prompt for seed 0, then seed
1, ...) and `index.json`: {prompts, seeds, entries: {KEY: [file names]}}. An entry's files are
written before its line joins the `.partial` file, so a resumed run has them all.
"""

from __future__ import annotations

import glob
import io
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hpspec.core.io import atomic_file, write_text_atomic

if TYPE_CHECKING:
    import torch

INDEX = "index.json"


def images_dir(output: Path) -> Path:
    return output.with_name(output.stem + ".images")


class ImageKeeper:
    """Collects an entry's first `count` images from the batches it sees, then writes them."""

    def __init__(self, output: Path, count: int) -> None:
        self.directory, self.count = images_dir(output), count
        self.kept: list[torch.Tensor] = []

    def sink(self, key: str) -> Callable[[Any], None] | None:
        if self.count <= 0:
            return None
        self.kept = []

        def keep(images: torch.Tensor) -> None:
            room = self.count - sum(len(k) for k in self.kept)
            if room > 0:
                self.kept.append(images[:room].detach().float().cpu().clone())

        return keep

    def save(self, key: str) -> None:
        if self.count <= 0:
            return
        from hpspec.method.scorers import pil_images

        self.directory.mkdir(exist_ok=True)
        images = [image for batch in self.kept for image in pil_images(batch)]
        for index, image in enumerate(images):
            buffer = io.BytesIO()
            image.save(buffer, format="PNG")
            with atomic_file(self.directory / f"{key}.{index}.png", force=True) as tmp:
                Path(tmp).write_bytes(buffer.getvalue())
        self.kept = []

    def write_index(self, prompts: Sequence[str], seeds: Sequence[int], keys: Sequence[str]) -> None:
        if self.count <= 0:
            return
        entries = {key: sorted((p.name for p in self.directory.glob(f"{glob.escape(key)}.*.png")), key=_number) for key in keys}
        index = {"prompts": list(prompts), "seeds": list(seeds), "entries": entries}
        write_text_atomic(self.directory / INDEX, json.dumps(index, indent=2, ensure_ascii=False) + "\n")


def _number(name: str) -> int:
    return int(name.rsplit(".", 2)[-2])
