"""build: a distillation data folder (data.py's pinned format) encoded from images and captions.

`write_data_folder` encodes (image, caption) pairs with any pair of encoders into the folder,
written atomically; `pipeline_encoders` makes both encoders from a diffusers SD3 / SD3.5 or FLUX
pipeline (its VAE and text encoders).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hpspec.core.errors import DataError
from hpspec.core.io import atomic_directory, dumps_json
from hpspec.demo.models import DemoModel
from hpspec.method.distill.data import (
    DEFAULT_UNCONDITIONAL_FRACTION,
    FORMAT,
    LATENTS,
    MANIFEST_NAME,
    POOLED,
    STATES,
    UNCONDITIONAL_NAME,
    VERSION,
    Shapes,
)
from hpspec.model.targets import DEMO

if TYPE_CHECKING:
    import torch

ImageEncoder = Callable[[Sequence[Any]], "torch.Tensor"]  # images -> latents (B, C, H, W), model space
TextEncoder = Callable[[Sequence[str]], tuple["torch.Tensor", "torch.Tensor"]]  # -> (states, pooled)


@dataclass(frozen=True)
class Written:
    directory: Path
    count: int
    shapes: Shapes


def write_data_folder(
    out: Path,
    examples: Iterable[tuple[Any, str]],
    encode_images: ImageEncoder,
    encode_text: TextEncoder,
    *,
    batch_size: int = 16,
    shard_size: int = 4096,
    unconditional: bool = True,
    dtype: torch.dtype | None = None,
    description: str | None = None,
) -> Written:
    """Encode (image, caption) pairs into a data folder at `out`, written atomically.

    `encode_images` maps a list of images to latents in the transformer's input space and
    `encode_text` a list of captions to (token states, pooled); `pipeline_encoders` makes both from
    a diffusers pipeline. `dtype` (default: as encoded) is what the files store. With
    `unconditional`, the empty prompt's embedding is stored too, for classifier-free guidance.
    """
    import torch
    from safetensors.torch import save_file

    out = Path(out)
    with atomic_directory(out) as tmp:
        shards: list[dict[str, Any]] = []
        pending: list[dict[str, torch.Tensor]] = []
        shapes: Shapes | None = None
        for chunk in _chunks(examples, batch_size):
            images, captions = [c[0] for c in chunk], [c[1] for c in chunk]
            with torch.inference_mode():
                latents = encode_images(images)
                states, pooled = encode_text(captions)
            shapes = _shapes_of(latents, states, pooled, shapes, len(chunk))
            pending.append({LATENTS: latents, STATES: states, POOLED: pooled})
            while sum(p[LATENTS].shape[0] for p in pending) >= shard_size:
                pending = _flush(tmp, shards, pending, shard_size, dtype, save_file)
        while pending:
            pending = _flush(tmp, shards, pending, shard_size, dtype, save_file)
        if shapes is None:
            raise DataError(f"{out}: no examples to encode")
        if unconditional:
            with torch.inference_mode():
                states, pooled = encode_text([""])
            save_file({STATES: _stored(states, dtype), POOLED: _stored(pooled, dtype)}, str(tmp / UNCONDITIONAL_NAME))
        count = sum(s["count"] for s in shards)
        manifest = {
            "format": FORMAT,
            "version": VERSION,
            "count": count,
            "latent_shape": list(shapes.latent),
            "text_shape": list(shapes.text),
            "pooled_dim": shapes.pooled,
            "shards": shards,
            "unconditional": UNCONDITIONAL_NAME if unconditional else None,
            "unconditional_fraction": DEFAULT_UNCONDITIONAL_FRACTION if unconditional else 0.0,
            "description": description,
        }
        (tmp / MANIFEST_NAME).write_text(dumps_json(manifest), encoding="utf-8")
    return Written(out, count, shapes)


def _chunks(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    chunk: list[Any] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _shapes_of(
    latents: torch.Tensor, states: torch.Tensor, pooled: torch.Tensor, known: Shapes | None, n: int
) -> Shapes:
    if (
        latents.dim() != 4
        or states.dim() != 3
        or pooled.dim() != 2
        or not latents.shape[0] == states.shape[0] == pooled.shape[0] == n
    ):
        raise DataError(
            f"encoders returned latents {list(latents.shape)}, states {list(states.shape)}, pooled {list(pooled.shape)} "
            f"for {n} examples; expected (n, C, H, W), (n, T, D), (n, P)"
        )
    shapes = Shapes(tuple(latents.shape[1:]), tuple(states.shape[1:]), pooled.shape[1])  # type: ignore[arg-type]
    if known is not None and shapes != known:
        raise DataError(
            f"encoders returned {shapes} after {known}: every example must have the same shapes (one resolution)"
        )
    return shapes


def _flush(
    tmp: Path, shards: list[dict[str, Any]], pending: list[dict[str, torch.Tensor]], size: int, dtype: Any, save: Any
) -> list[dict[str, torch.Tensor]]:
    """Write the first `size` pending rows as the next shard; return the rest."""
    import torch

    joined = {name: torch.cat([p[name] for p in pending]) for name in (LATENTS, STATES, POOLED)}
    head = {name: _stored(t[:size], dtype) for name, t in joined.items()}
    name = f"data-{len(shards):05d}.safetensors"
    save(head, str(tmp / name))
    shards.append({"file": name, "count": head[LATENTS].shape[0]})
    rest = {name: t[size:] for name, t in joined.items()}
    return [rest] if rest[LATENTS].shape[0] else []


def _stored(tensor: torch.Tensor, dtype: Any) -> torch.Tensor:
    tensor = tensor.detach().cpu()
    return (tensor.to(dtype) if dtype is not None else tensor).contiguous()


def pipeline_encoders(pipe: Any, resolution: int, max_sequence_length: int = 256) -> tuple[ImageEncoder, TextEncoder]:
    """A diffusers SD3 / SD3.5 or FLUX pipeline's VAE and text encoders as `write_data_folder` encoders.

    Images (PIL, or anything `pipe.image_processor.preprocess` takes) are resized and centre-cropped
    to `resolution` squared, encoded by the VAE (posterior mean: a deterministic dataset), then
    shifted and scaled into the transformer's input space as the pipeline undoes it when decoding.
    Captions go through `pipe.encode_prompt` without classifier-free guidance.
    """
    import torch

    vae = pipe.vae
    scaling = float(vae.config.scaling_factor)
    shift = float(getattr(vae.config, "shift_factor", None) or 0.0)
    device = getattr(pipe, "_execution_device", None) or torch.device("cpu")
    flux = type(pipe).__name__.startswith("Flux")

    def encode_images(images: Sequence[Any]) -> torch.Tensor:
        pixels = torch.cat([_square(pipe, image, resolution) for image in images]).to(device, vae.dtype)
        latents = vae.encode(pixels).latent_dist.mode()
        return ((latents - shift) * scaling).float().cpu()

    def encode_text(captions: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        captions = list(captions)
        if flux:
            states, pooled, _ = pipe.encode_prompt(
                prompt=captions, prompt_2=captions, device=device, max_sequence_length=max_sequence_length
            )
        else:
            states, _, pooled, _ = pipe.encode_prompt(
                prompt=captions, prompt_2=captions, prompt_3=captions, device=device,
                do_classifier_free_guidance=False, max_sequence_length=max_sequence_length,
            )  # fmt: skip
        return states.float().cpu(), pooled.float().cpu()

    return encode_images, encode_text


def _square(pipe: Any, image: Any, resolution: int) -> torch.Tensor:
    """Resize the short side to `resolution`, centre-crop, and normalise to [-1, 1] as the pipeline does."""
    if hasattr(image, "size") and not callable(image.size):  # PIL
        width, height = image.size
        scale = resolution / min(width, height)
        image = image.convert("RGB").resize(
            (max(resolution, round(width * scale)), max(resolution, round(height * scale)))
        )
        left, top = (image.size[0] - resolution) // 2, (image.size[1] - resolution) // 2
        image = image.crop((left, top, left + resolution, top + resolution))
    return pipe.image_processor.preprocess(image, height=resolution, width=resolution)


def demo_data_folder(model: DemoModel, out: Path) -> str:
    """`--data` for distilling an embedded demo: `demo` for the digits (built in), else the model's
    own examples (`DemoModel.distill_set`) encoded by the demo's text encoder into a folder at
    `out`, written once and reused."""
    if model.distill_examples is None:
        return DEMO
    if not (Path(out) / MANIFEST_NAME).is_file():
        import torch

        from hpspec.demo.text import load_text_encoder

        images, prompts = model.distill_set() or ((), [])
        encoder = load_text_encoder()

        def encode_text(captions: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
            text = encoder.encode(captions)
            return text.states, text.pooled

        write_data_folder(out, zip(images, prompts), torch.stack, encode_text, batch_size=256, description=model.name)
    return str(out)
