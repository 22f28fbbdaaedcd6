"""export: the last stage's diffusers folder written in another layout (`compile --to` with distill
or quantize declared).

Distill and quantize read and write diffusers folders, so with either declared the prune stage
writes one, and the export writes the last float stage's folder (OUT/distilled, else OUT/pruned)
in the layout asked for, through the same writers as `hpspec convert`: a byte-range copy into one
.safetensors file (bfl, sai, comfyui), or one .gguf. A spec's `quantize` then becomes the GGUF's
quantization where its scheme has a GGUF counterpart of the same kind (`GGUF_OF_SCHEME`), its
`except` modules kept in float; every other combination is an error, said before anything runs.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from pathlib import Path

from hpspec.core.errors import LayoutError
from hpspec.core.io import dumps_json
from hpspec.core.paths import CONFIG_NAME, GGUF_SUFFIX, PLAN_NAME, SAFETENSORS_SUFFIX, SINGLE_FILE_NAME
from hpspec.plan.plan import Plan
from hpspec.weights.checkpoint.source import source_sha256
from hpspec.weights.checkpoint.writer import Written, provenance_metadata
from hpspec.weights.formats.convert import (
    layout_tensors,
    metadata,
    open_model,
    require_sources_unchanged,
    source_states,
    write_safetensors,
)
from hpspec.weights.formats.gguf import write_gguf
from hpspec.weights.formats.pruned import DEFAULT_GGUF_TYPE, GGUF, refuse_part_drops

# A spec's quantize scheme -> the GGUF types that store the same kind of code (the first: the
# default for `--to gguf`), or why none does. int8 (bitsandbytes' LLM.int8: symmetric 8-bit codes,
# an absmax scale per row) is Q8_0's kind (symmetric 8-bit codes, an absmax scale per 32 weights);
# int4 (quanto: affine 4-bit codes, a scale and zero point per group) is Q4_K's and Q4_1's kind
# (affine 4-bit codes, a scale and minimum per 32), and Q4_0 (symmetric) is 4 bits too.
GGUF_OF_SCHEME: Mapping[str, tuple[str, ...] | str] = {
    "int8": ("q8_0",),
    "int4": ("q4_k", "q4_1", "q4_0"),
    "nf4": "bitsandbytes' NormalFloat-4 code book, which no GGUF type hpspec writes holds (IQ4_NL, the nearest, "
    "cannot be written)",
    "fp4": "bitsandbytes' 4-bit float code book, which no GGUF type hpspec writes holds",
}


def export_type(plan: Plan, to: str) -> str | None:
    """The GGUF type an export to `to` writes (None: a safetensors layout), or a LayoutError saying
    which combination of the spec and `--to` is not possible, and why. Checked before any stage runs."""
    refuse_part_drops(plan, to)
    asked = to.partition(":")[2]
    if plan.quantize is None:
        return (asked or DEFAULT_GGUF_TYPE) if to.startswith(GGUF) else None
    scheme = plan.quantize.scheme
    kinds = GGUF_OF_SCHEME.get(scheme, "a scheme with no GGUF counterpart known to hpspec")
    if not to.startswith(GGUF):
        raise LayoutError(
            f"--to {to} with `quantize {scheme}`: a {to} file holds float weights, and a model quantized "
            f"with {scheme} is a diffusers folder only; write --to diffusers, or --to gguf"
            + (f" (`quantize {scheme}` is GGUF {kinds[0]})" if isinstance(kinds, tuple) else "")
        )
    if isinstance(kinds, str):
        raise LayoutError(
            f"--to {to} with `quantize {scheme}`: {scheme} stores {kinds}; write --to diffusers, or quantize "
            f"int8 (GGUF q8_0) or int4 (GGUF q4_k, q4_1, q4_0) for a GGUF"
        )
    if asked and asked not in kinds:
        raise LayoutError(
            f"--to {to} with `quantize {scheme}`: {asked} is another kind of quantization; `quantize {scheme}` "
            f"is GGUF {', '.join(kinds)} (--to gguf writes {kinds[0]})"
        )
    return asked or kinds[0]


def export_folder(plan: Plan, source: Path, out: Path, to: str, kind: str | None) -> Written:
    """The diffusers folder `source` as one file in layout `to` (bfl, sai, comfyui, gguf with GGUF
    type `kind`) in the directory `out`, with config.json and plan.json beside it."""
    model = open_model(Path(source))
    hashes = {s.name: source_sha256(s) for s in sorted(source_states(model))}
    provenance = provenance_metadata(plan, hashes)
    if to.startswith(GGUF):
        assert kind is not None
        name = SINGLE_FILE_NAME + GGUF_SUFFIX
        kept = plan.quantize.except_modules if plan.quantize is not None else ()
        write_gguf(model, out / name, kind, fields=provenance, keep=_kept_tensors(model.tensors, kept))
        count = len(model.tensors)
    else:
        name = SINGLE_FILE_NAME + SAFETENSORS_SUFFIX
        tensors = layout_tensors(model, to)
        states = source_states(model)
        write_safetensors(out / name, tensors, {**metadata(model, to), **provenance})
        require_sources_unchanged(states)
        count = len(tensors)
    (out / CONFIG_NAME).write_text(dumps_json(dict(model.config)), encoding="utf-8")
    (out / PLAN_NAME).write_text(plan.to_json(), encoding="utf-8")
    return Written((name,), count, plan.params.after_prune, (out / name).stat().st_size, hashes)


def _kept_tensors(tensors: Collection[str], modules: Collection[str]) -> frozenset[str]:
    """The diffusers tensor names under the `except` modules (kept in float)."""
    return frozenset(n for n in tensors if any(n == m or n.startswith(m + ".") for m in modules))
