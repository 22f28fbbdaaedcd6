"""Where a command's text goes: stdout, or atomically a file (`-o`). Every command writes through here."""

from __future__ import annotations

import sys
from pathlib import Path

from hpspec.core.io import write_text_atomic


def write_output(text: str, output: str | None) -> None:
    """To stdout, or atomically to a file."""
    if output in (None, "-"):
        sys.stdout.write(text)
        return
    write_text_atomic(Path(output), text)
