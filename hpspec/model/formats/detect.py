"""detect: which key layout a single-file checkpoint uses, read from its safetensors header alone.

`detect(header)` strips a known prefix (ComfyUI's `model.diffusion_model.`), sets aside the other
models of an all-in-one file (text encoders, VAE: listed, not read), decides the layout (diffusers,
bfl, sai) from marker names, counts the blocks (gaps allowed: they are renumbered contiguously),
and infers the transformer's diffusers config from names and shapes. An unknown layout, mixed
layouts, or a pickle file is one line of LayoutError.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hpspec.core.errors import LayoutError
from hpspec.core.paths import PICKLE_SUFFIXES
from hpspec.model.arch import family_of_tensors
from hpspec.model.formats.infer import diffusers_shapes, infer_config
from hpspec.model.formats.keymap import block_indices
from hpspec.model.formats.rules import KeyMap, key_map, key_map_of_family, layouts
from hpspec.model.safetensors_header import Header, TensorEntry, read_header

DIFFUSERS = "diffusers"
PICKLE_MAGICS = (b"\x80", b"PK\x03\x04")  # a pickle's protocol opcode; torch.save's zip archive
GGUF_MAGIC = b"GGUF"


@dataclass(frozen=True)
class SingleFile:
    """A transformer found in one safetensors file, in a known layout, with its inferred config."""

    header: Header
    layout: str  # diffusers, bfl, sai
    family: str  # sd3, flux
    prefix: str  # stripped from every transformer name ("" for none)
    prefix_name: str | None  # the prefix rule's name (comfyui)
    tensors: Mapping[str, TensorEntry]  # transformer tensors by their name without the prefix
    counts: Mapping[str, tuple[int, ...]]  # per count key, the block numbers found, sorted
    ignored: Mapping[str, int]  # what was not read ("text encoders (text_encoders.*)") -> tensor count
    config: Mapping[str, Any]
    assumed: tuple[str, ...]  # config facts not read from shapes, and whence they came

    @property
    def layout_name(self) -> str:
        """The name `--to` would use for this file's own layout: comfyui, bfl, sai or diffusers."""
        return self.prefix_name if self.prefix_name and self.layout != DIFFUSERS else self.layout

    @property
    def dtypes(self) -> tuple[str, ...]:
        return tuple(sorted({e.dtype for e in self.tensors.values()}))

    @property
    def gaps(self) -> bool:
        """True when some stack's block numbers are not 0..n-1 (they are renumbered on output)."""
        return any(found != tuple(range(len(found))) for found in self.counts.values())

    @property
    def rule(self) -> KeyMap | None:
        return None if self.layout == DIFFUSERS else key_map(self.layout)


def refuse_unreadable(path: Path) -> None:
    """A pickle (torch.save) file is refused by name before anything parses it; so is a GGUF here."""
    path = Path(path)
    try:
        with path.open("rb") as handle:
            start = handle.read(9)
    except OSError:
        return  # read_header reports it with its own words
    if start[8:9] == b"{":  # a safetensors header length, then its JSON: whatever the length's bytes are
        return
    if path.suffix.lower() in PICKLE_SUFFIXES or start.startswith(PICKLE_MAGICS):
        raise LayoutError(
            f"{path}: a pickle (torch.save) checkpoint: hpspec never unpickles (it can run code); "
            "save it as safetensors first (safetensors.torch.save_file)"
        )
    if start.startswith(GGUF_MAGIC):
        raise LayoutError(f"{path}: a GGUF file, not safetensors: read it with hpspec.weights.formats.gguf")


def detect_file(path: Path) -> SingleFile:
    """`detect` on a file, with pickle and GGUF files refused first."""
    refuse_unreadable(path)
    return detect(read_header(Path(path)))


def layout_of(header: Header) -> tuple[str, str]:
    """(layout, prefix) of a file's transformer names, without inferring its config: cheap, and
    what says whether a file is read as diffusers or through a key map."""
    prefix, _, tensors, _ = _split(header)
    return _layout(header.path, tensors), prefix


def detect(header: Header) -> SingleFile:
    prefix, prefix_name, tensors, ignored = _split(header)
    layout = _layout(header.path, tensors)
    rule = None if layout == DIFFUSERS else key_map(layout)
    family = rule.family if rule else _diffusers_family(header.path, tensors)
    counts = block_indices(rule or key_map_of_family(family), list(tensors), "original" if rule else "diffusers")
    shapes = diffusers_shapes(rule, {n: e.shape for n, e in tensors.items()}, counts)
    named = prefix_name if prefix_name and layout != DIFFUSERS else layout
    inferred = infer_config(family, shapes, counts, f"{header.path} ({named} layout)")
    return SingleFile(
        header, layout, family, prefix, prefix_name, tensors, counts, ignored, inferred.config, inferred.assumed
    )


def _diffusers_family(path: Path, tensors: Mapping[str, TensorEntry]) -> str:
    family = family_of_tensors(tensors)
    if family is None:
        raise LayoutError(f"{path}: diffusers names, but of no model family hpspec knows ({_found_prefixes(tensors)})")
    return family


def _split(header: Header) -> tuple[str, str | None, dict[str, TensorEntry], dict[str, int]]:
    """(prefix, its rule's name, transformer tensors without the prefix, what was set aside)."""
    names = header.tensors
    for rule in layouts().prefixes:
        if any(n.startswith(rule.prefix) for n in names):
            kept = {n[len(rule.prefix) :]: e for n, e in names.items() if n.startswith(rule.prefix)}
            rest = [n for n in names if not n.startswith(rule.prefix)]
            return rule.prefix, rule.name, kept, _ignored(rest)
    other = layouts().ignored
    rest = [n for n in names if any(n.startswith(p) for p in other)]
    kept = {n: e for n, e in names.items() if not any(n.startswith(p) for p in other)}
    return "", None, kept, _ignored(rest)


def _ignored(names: list[str]) -> dict[str, int]:
    other = layouts().ignored
    counts: Counter[str] = Counter()
    for name in names:
        prefix = next((p for p in other if name.startswith(p)), name.split(".", 1)[0] + ".")
        counts[f"{other.get(prefix, 'other tensors')} ({prefix}*)"] += 1
    return dict(sorted(counts.items()))


def _layout(path: Path, tensors: Mapping[str, TensorEntry]) -> str:
    """The one layout whose markers the names carry; LayoutError for none or several."""
    markers = {name: key_map(name).markers for name in layouts().maps}
    markers[DIFFUSERS] = layouts().diffusers_markers
    hits = {}
    for layout, prefixes in markers.items():
        found = next((n for n in tensors if n.startswith(prefixes)), None)
        if found is not None:
            hits[layout] = found
    if len(hits) == 1:
        return next(iter(hits))
    if len(hits) > 1:
        said = " and ".join(f"{layout} ({name!r})" for layout, name in hits.items())
        raise LayoutError(f"{path}: mixed key layouts in one file: {said}; a checkpoint holds one")
    raise LayoutError(f"{path}: unknown single-file layout: {_found_prefixes(tensors)}; {_known_layouts()}")


def _found_prefixes(tensors: Mapping[str, TensorEntry]) -> str:
    if not tensors:
        return "no transformer tensors"
    counts = Counter(n.split(".", 1)[0] + "." for n in tensors)
    shown = ", ".join(f"{p}* ({c})" for p, c in counts.most_common(6))
    more = f" and {len(counts) - 6} more" if len(counts) > 6 else ""
    return f"tensor name prefixes found: {shown}{more}"


def _known_layouts() -> str:
    said = [f"{DIFFUSERS} ({layouts().diffusers_markers[0]}*)"]
    said += [f"{name} ({key_map(name).markers[0]}*)" for name in layouts().maps]
    prefixes = ", ".join(f"{r.prefix}* ({r.name})" for r in layouts().prefixes)
    return f"layouts known: {', '.join(said)}, each also under {prefixes}"
