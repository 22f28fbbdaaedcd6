"""The export stage: with distill or quantize declared, `compile --to LAYOUT` ends by writing the
last float stage's diffusers folder (OUT/distilled, else OUT/pruned) into OUT/exported, in that
layout, as one file (`hpspec.weights.formats.export`). A spec's `quantize` becomes the GGUF's type
where its scheme has one (int8: q8_0; int4: q4_k, q4_1, q4_0), and the quantize stage, whose
bitsandbytes or quanto output has no single-file form, is not run; any other combination is an
error said before the first stage runs (`export_type`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hpspec.core.paths import CARD_NAME
from hpspec.stages.cards import pruned_card
from hpspec.stages.engine import Stage, StageInput, Writer
from hpspec.weights.formats.export import export_folder, export_type


def prepare_export(given: StageInput) -> Writer:
    """Check the combination now; the returned writer writes the one file."""
    to = given.options.export.to
    assert to is not None
    kind = export_type(given.plan, to)

    def write(tmp: Path) -> dict[str, Any]:
        written = export_folder(given.plan, given.source, tmp, to, kind)
        card = pruned_card(given.plan, given.source, to)
        how = f"Exported by hpspec from `{given.source}` (the last stage's diffusers folder), as {to}"
        how += f", its quantize written as GGUF {kind}." if given.plan.quantize is not None else "."
        (tmp / CARD_NAME).write_text(f"{card}\n{how}\n", encoding="utf-8")
        record = written.record(given.source, to)
        return {**record, "gguf_type": kind}

    return write


EXPORT = Stage("export", "exported", lambda plan: True, prepare_export,
               depends=("target", "stacks", "config", "ops", "params", "quantize"), keyed=("to",))  # fmt: skip
"""The export stage (compile with `--to` and distill or quantize): the last float stage -> OUT/exported."""
