"""Single-file checkpoint layouts, as data: the key maps between Black Forest Labs' (`bfl.toml`),
Stability AI's (`sai.toml`) and diffusers' tensor names, the prefixes (`layouts.toml`), and the
layout detection and config inference from a safetensors header. Nothing here imports torch; the
byte copies that use these maps are in `hpspec.weights.formats`.
"""

from __future__ import annotations

from hpspec.model.formats.detect import (
    DIFFUSERS,
    SingleFile,
    detect,
    detect_file,
    refuse_unreadable,
)
from hpspec.model.formats.infer import Inferred, infer_config
from hpspec.model.formats.keymap import (
    Fused,
    Slice,
    block_indices,
    expand,
    to_diffusers,
    to_original,
)
from hpspec.model.formats.rules import KeyMap, key_map, key_map_of_family, layouts

__all__ = [
    "DIFFUSERS",
    "Fused",
    "Inferred",
    "KeyMap",
    "SingleFile",
    "Slice",
    "block_indices",
    "detect",
    "detect_file",
    "expand",
    "infer_config",
    "key_map",
    "key_map_of_family",
    "layouts",
    "refuse_unreadable",
    "to_diffusers",
    "to_original",
]
