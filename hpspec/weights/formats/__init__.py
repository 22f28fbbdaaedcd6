"""Checkpoints written in other formats than a diffusers folder: single-file layouts (bfl, sai,
comfyui) by byte-range copy (`convert`), and GGUF files (`gguf`), streamed tensor by tensor."""
