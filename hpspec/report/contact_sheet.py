"""The contact sheet: the images `hpspec analyze --save-images N` kept per entry, beside the table.

`TABLE.images/index.json` (written by `hpspec.method.kept_images`) names each entry's PNG files;
they are embedded as base64, checked as PNGs, in the table's order (the unpruned model first).
A table without the folder has no contact sheet.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

from hpspec.core.errors import ImageError
from hpspec.core.io import read_json_input
from hpspec.method.kept_images import INDEX, images_dir
from hpspec.report.images import checked_png

MAX_BYTES = 8 << 20  # one image file at most: a report stays one page


def load_contact_sheet(table: Path) -> dict[str, Any] | None:
    """{prompts, seeds, rows: [{key, images: [base64 PNG]}]} from the folder beside `table`, or None."""
    folder = images_dir(Path(table))
    if not (folder / INDEX).is_file():
        return None
    index = read_json_input(folder / INDEX, "contact sheet index")
    entries = index.get("entries") if isinstance(index, dict) else None
    if not isinstance(entries, dict):
        raise ImageError(f"{folder / INDEX}: expected an object with `entries`: {{KEY: [PNG file names]}}")
    rows = []
    for key, names in entries.items():
        if not isinstance(names, list) or not all(isinstance(n, str) and "/" not in n for n in names):
            raise ImageError(f"{folder / INDEX}: entry {key!r} lists file names (strings without '/')")
        rows.append({"key": "unpruned model" if key == "__full__" else key,
                     "images": [_png(folder / name) for name in names]})  # fmt: skip
    return {"prompts": index.get("prompts", []), "seeds": index.get("seeds", []), "rows": rows}


def _png(path: Path) -> str:
    if not path.is_file() or path.stat().st_size > MAX_BYTES:
        raise ImageError(f"{path}: missing, or over {MAX_BYTES >> 20} MiB")
    return checked_png(base64.b64encode(path.read_bytes()).decode("ascii"), str(path))
