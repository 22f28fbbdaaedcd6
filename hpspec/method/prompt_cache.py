"""Prompt embeddings computed once, cached on disk, and the text encoders released.

Analysis generates the same prompts for every entry, so the text encoders (T5-XXL alone is 4.7B
parameters) run once per prompt, before any ablation: ``pipeline.encode_prompt`` (SD3's and
FLUX's own signatures) fills a safetensors file in the analysis output's folder, keyed by prompt
(``sha256(prompt)``), encoder (a fingerprint of the encoders and tokenizers) and settings
(``max_sequence_length``) hashes; then the encoders leave the pipeline. Generation passes
``prompt_embeds``/``pooled_prompt_embeds`` (and, for SD3's classifier-free guidance, the empty
prompt's as ``negative_*``, what the pipeline itself encodes for no negative prompt).

Under several processes rank 0 encodes and writes the file; the others wait at the barrier and
read it (a prompt still missing there is encoded in memory, not written).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hpspec.core.errors import PipelineError
from hpspec.core.paths import EMBEDDINGS_CACHE_PREFIX, SAFETENSORS_SUFFIX

if TYPE_CHECKING:
    import torch

FIELDS = ("prompt_embeds", "pooled_prompt_embeds")
NEGATIVE = ""  # the negative prompt SD3 encodes when none is given
ENCODER_NAMES = ("text_encoder", "text_encoder_2", "text_encoder_3", "tokenizer", "tokenizer_2", "tokenizer_3")
FINGERPRINT_TEXT = "Az 09 ?!"  # how each tokenizer splits it joins the fingerprint


def _encode_sd3(pipeline: Any, prompts: list[str], max_sequence_length: int | None) -> tuple[Any, Any]:
    extra = {} if max_sequence_length is None else {"max_sequence_length": max_sequence_length}
    embeds, _, pooled, _ = pipeline.encode_prompt(
        prompt=prompts, prompt_2=None, prompt_3=None, do_classifier_free_guidance=False, **extra
    )
    return embeds, pooled


def _encode_flux(pipeline: Any, prompts: list[str], max_sequence_length: int | None) -> tuple[Any, Any]:
    extra = {} if max_sequence_length is None else {"max_sequence_length": max_sequence_length}
    embeds, pooled, _text_ids = pipeline.encode_prompt(prompt=prompts, prompt_2=None, **extra)
    return embeds, pooled


@dataclass(frozen=True)
class Family:
    """How a family's pipeline encodes prompts, and whether its guidance needs negative embeddings."""

    encode: Callable[[Any, list[str], int | None], tuple[Any, Any]]
    negatives: bool  # classifier-free guidance over a negative prompt when guidance_scale > 1


FAMILIES = {"sd3": Family(_encode_sd3, True), "flux": Family(_encode_flux, False)}


def prompt_key(prompt: str) -> str:
    return hashlib.sha256(prompt.encode("utf-8")).hexdigest()[:32]


def encoder_fingerprint(pipeline: Any) -> str:
    """The text encoders and tokenizers, cheaply: each class and config, every parameter's name, shape
    and dtype with its first and last 8 values, and how each tokenizer splits a fixed text."""
    import torch

    digest = hashlib.sha256()
    for name in ENCODER_NAMES:
        component = getattr(pipeline, name, None)
        digest.update(f"{name}={type(component).__name__}".encode())
        if component is None:
            continue
        if name.startswith("tokenizer"):
            digest.update(json.dumps(component(FINGERPRINT_TEXT)["input_ids"]).encode())
            digest.update(str(getattr(component, "model_max_length", "")).encode())
            continue
        digest.update(component.config.to_json_string(use_diff=False).encode())
        for key, tensor in component.state_dict().items():
            flat = tensor.detach().reshape(-1)
            ends = torch.cat([flat[:8], flat[-8:]]).float().cpu()
            digest.update(f"{key}{tuple(tensor.shape)}{tensor.dtype}".encode() + ends.numpy().tobytes())
    return digest.hexdigest()


class PromptEmbeddings:
    """Each prompt's embeddings (CPU tensors), and the pipeline keyword arguments for a batch."""

    def __init__(self, tensors: dict[str, dict[str, torch.Tensor]], negatives: bool) -> None:
        self.tensors, self.negatives = tensors, negatives

    def call_kwargs(self, prompts: Sequence[str], device: Any, dtype: Any = None) -> dict[str, Any]:
        import torch

        def stacked(texts: Sequence[str], field: str) -> torch.Tensor:
            batch = torch.stack([self.tensors[prompt_key(t)][field] for t in texts])
            return batch.to(device=device, dtype=dtype or batch.dtype)

        kwargs = {field: stacked(prompts, field) for field in FIELDS}
        if self.negatives:
            kwargs.update({f"negative_{f}": stacked([NEGATIVE] * len(prompts), f) for f in FIELDS})
        return kwargs


def cache_path(output: Path, digest: str) -> Path:
    """In the analysis output's folder, `.hpspec-embeds-DIGEST.safetensors`: shared by every table
    there measured with the same encoders and settings (an analysis and its probe pass)."""
    return output.with_name(f"{EMBEDDINGS_CACHE_PREFIX}{digest[:16]}{SAFETENSORS_SUFFIX}")


def embeddings_digest(family: str, fingerprint: str, max_sequence_length: int | None) -> str:
    settings = {"family": family, "encoders": fingerprint, "max_sequence_length": max_sequence_length}
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()


def prompt_embeddings(
    pipeline: Any,
    family: str,
    prompts: Sequence[str],
    output: Path,
    *,
    max_sequence_length: int | None = None,
    cfg: bool = False,
    batch_size: int = 8,
    rank: int = 0,
    barrier: Callable[[], None] = lambda: None,
) -> PromptEmbeddings:
    """Every prompt's embeddings, from the cache beside `output` or encoded now (rank 0 writes)."""
    from hpspec.core.io import atomic_file

    if family not in FAMILIES:
        raise PipelineError(f"prompt embeddings for {family!r} pipelines: expected one of {', '.join(FAMILIES)}")
    spec = FAMILIES[family]
    negatives = cfg and spec.negatives
    wanted = list(dict.fromkeys([*prompts, *([NEGATIVE] if negatives else [])]))
    digest = embeddings_digest(family, encoder_fingerprint(pipeline), max_sequence_length)
    path = cache_path(output, digest)
    if rank != 0:
        barrier()  # rank 0 writes the file first
    tensors = _read(path, digest)
    missing = [p for p in wanted if prompt_key(p) not in tensors]
    if missing:
        tensors.update(_encode(pipeline, spec, missing, max_sequence_length, batch_size))
        if rank == 0:
            with atomic_file(path, force=True) as tmp:
                _write(Path(tmp), tensors, digest)
    if rank == 0:
        barrier()
    return PromptEmbeddings({prompt_key(p): tensors[prompt_key(p)] for p in wanted}, negatives)


def _encode(
    pipeline: Any, spec: Family, prompts: list[str], max_sequence_length: int | None, batch_size: int
) -> dict[str, dict[str, torch.Tensor]]:
    import torch

    out: dict[str, dict[str, torch.Tensor]] = {}
    with torch.no_grad():
        for start in range(0, len(prompts), batch_size):
            chunk = prompts[start : start + batch_size]
            embeds, pooled = spec.encode(pipeline, chunk, max_sequence_length)
            for i, prompt in enumerate(chunk):
                out[prompt_key(prompt)] = {"prompt_embeds": embeds[i].cpu(), "pooled_prompt_embeds": pooled[i].cpu()}
    return out


def _read(path: Path, digest: str) -> dict[str, dict[str, torch.Tensor]]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file, safe_open

    if not path.is_file():
        return {}
    try:
        with safe_open(str(path), framework="pt") as handle:
            if (handle.metadata() or {}).get("digest") != digest:
                return {}
        flat = load_file(str(path))
    except (OSError, SafetensorError, ValueError):  # torn or foreign: encode again
        return {}
    tensors: dict[str, dict[str, torch.Tensor]] = {}
    for name, tensor in flat.items():
        key, _, field = name.partition("/")
        tensors.setdefault(key, {})[field] = tensor
    return {k: v for k, v in tensors.items() if set(v) == set(FIELDS)}


def _write(path: Path, tensors: dict[str, dict[str, torch.Tensor]], digest: str) -> None:
    from safetensors.torch import save_file

    flat = {f"{key}/{field}": t.contiguous() for key, fields in tensors.items() for field, t in fields.items()}
    save_file(flat, str(path), metadata={"hpspec": "prompt embeddings", "digest": digest})


def release_encoders(pipeline: Any) -> None:
    """The text encoders leave the pipeline (generation from embeddings does not need them); their
    memory is freed once nothing else holds them."""
    import gc

    import torch

    for name in ("text_encoder", "text_encoder_2", "text_encoder_3"):
        if getattr(pipeline, name, None) is not None:
            setattr(pipeline, name, None)
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
