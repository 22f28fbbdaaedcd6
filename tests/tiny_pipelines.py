"""Seeded tiny diffusers pipelines (SD3 with CLIP-L, CLIP-G and T5; FLUX with CLIP and T5) and a
tiny CLIP scorer, built from configs and saved with `save_pretrained`, as diffusers' own tests do.

Every weight is a few thousand numbers: a 16x16 image in 2 steps takes milliseconds. The
tokenizers are built here too (a character-level CLIP BPE and a T5 unigram over characters), so
nothing is downloaded. `tests/conftest.py` builds each directory once per session
(`tiny_sd3_dir`, `tiny_flux_dir`, `tiny_clip_dir`); other tests may call the builders.
"""

from __future__ import annotations

import string
from pathlib import Path
from typing import Any

import torch

CHARS = string.ascii_lowercase + string.digits + string.punctuation
TEXT_TOKENS = 16  # CLIP's max_position_embeddings here; also a good --max-sequence-length for T5
SIZE = 16  # image side in pixels (the VAE has one level: latents are 16x16 too)

# SD3 without its T5 encoder: the pipeline then feeds zeros in T5's place.
NO_T5 = {"text_encoder_3": None, "tokenizer_3": None}


def tiny_clip_tokenizer(path: Path | None = None) -> Any:
    """A character-level CLIP BPE tokenizer (no merges): enough to run real CLIP code offline."""
    from transformers import CLIPTokenizer

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in CHARS:
        vocab.setdefault(c, len(vocab))
        vocab.setdefault(c + "</w>", len(vocab))
    if path is None:
        import tempfile

        path = Path(tempfile.mkdtemp(prefix="hpspec-tok-"))
    tokenizer = CLIPTokenizer(vocab=vocab, merges=[], model_max_length=TEXT_TOKENS)
    tokenizer.save_pretrained(path)
    return CLIPTokenizer.from_pretrained(path)  # as a pipeline loads it


def tiny_t5_tokenizer() -> Any:
    """A T5 unigram tokenizer over single characters (no sentencepiece file needed)."""
    from transformers import T5TokenizerFast

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -1.0)]
    pieces += [(c, -2.0) for c in CHARS] + [("\u2581" + c, -1.5) for c in string.ascii_lowercase]
    return T5TokenizerFast(vocab=pieces, extra_ids=0)


def tiny_clip_text_config(vocab_size: int, hidden: int = 32) -> Any:
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=vocab_size, hidden_size=hidden, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=TEXT_TOKENS, projection_dim=hidden, bos_token_id=0, eos_token_id=1, pad_token_id=1,
    )  # fmt: skip


def tiny_t5(vocab_size: int, d_model: int = 32) -> Any:
    from transformers import T5Config, T5EncoderModel

    config = T5Config(
        vocab_size=vocab_size, d_model=d_model, d_kv=8, d_ff=37, num_layers=2, num_heads=4,
        relative_attention_num_buckets=8, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
    )  # fmt: skip
    return T5EncoderModel(config)


def tiny_vae(latent_channels: int) -> Any:
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3, out_channels=3, block_out_channels=(4,), layers_per_block=1, latent_channels=latent_channels,
        norm_num_groups=1, sample_size=SIZE, use_quant_conv=False, use_post_quant_conv=False, shift_factor=0.0609,
        scaling_factor=1.5035,
    )  # fmt: skip


def tiny_sd3_pipeline(seed: int = 0) -> Any:
    """A StableDiffusion3Pipeline: 2 MMDiT blocks (RMS qk-norm, SD3.5's), two CLIPs and a T5."""
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline
    from transformers import CLIPTextModelWithProjection

    torch.manual_seed(seed)
    tokenizer = tiny_clip_tokenizer()
    t5_tokenizer = tiny_t5_tokenizer()
    text_config = tiny_clip_text_config(len(tokenizer))
    transformer = SD3Transformer2DModel(
        sample_size=SIZE, patch_size=1, in_channels=4, out_channels=4, num_layers=2, attention_head_dim=8,
        num_attention_heads=4, caption_projection_dim=32, joint_attention_dim=32, pooled_projection_dim=64,
        pos_embed_max_size=SIZE, qk_norm="rms_norm",
    )  # fmt: skip
    return StableDiffusion3Pipeline(
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(),
        vae=tiny_vae(4),
        text_encoder=CLIPTextModelWithProjection(text_config),
        tokenizer=tokenizer,
        text_encoder_2=CLIPTextModelWithProjection(text_config),
        tokenizer_2=tokenizer,
        text_encoder_3=tiny_t5(len(t5_tokenizer)),
        tokenizer_3=t5_tokenizer,
    )


def tiny_flux_pipeline(seed: int = 0) -> Any:
    """A FluxPipeline: 2 double and 2 single blocks, CLIP (pooled) and T5 (tokens), guidance embeds."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextModel

    torch.manual_seed(seed)
    tokenizer = tiny_clip_tokenizer()
    t5_tokenizer = tiny_t5_tokenizer()
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=16, num_layers=2, num_single_layers=2, attention_head_dim=16, num_attention_heads=2,
        joint_attention_dim=32, pooled_projection_dim=32, guidance_embeds=True, axes_dims_rope=(4, 6, 6),
    )  # fmt: skip
    return FluxPipeline(
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(),
        vae=tiny_vae(4),  # FLUX packs 2x2 latent patches: in_channels 16 = 4 latent channels x 4
        text_encoder=CLIPTextModel(tiny_clip_text_config(len(tokenizer))),
        tokenizer=tokenizer,
        text_encoder_2=tiny_t5(len(t5_tokenizer)),
        tokenizer_2=t5_tokenizer,
    )


def save_pipeline(pipeline: Any, directory: Path) -> Path:
    pipeline.save_pretrained(directory, safe_serialization=True)
    return Path(directory)


def tiny_clip_model(directory: Path, seed: int = 0) -> Path:
    """A CLIPModel (16px vision tower) with its tokenizer and image processor, saved in `directory`."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPVisionConfig

    torch.manual_seed(seed)
    tokenizer = tiny_clip_tokenizer(directory)
    vision = CLIPVisionConfig(
        image_size=16, patch_size=4, hidden_size=32, intermediate_size=37,
        num_hidden_layers=2, num_attention_heads=4, projection_dim=32,
    )  # fmt: skip
    config = CLIPConfig(
        text_config=tiny_clip_text_config(len(tokenizer)).to_dict(), vision_config=vision.to_dict(), projection_dim=32
    )
    CLIPModel(config).save_pretrained(directory)
    # The model's own processor: CLIP's pixel mean/std (its defaults) at the vision tower's size.
    image_processor = CLIPImageProcessor(size={"shortest_edge": 16}, crop_size={"height": 16, "width": 16})
    CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(directory)
    return Path(directory)
