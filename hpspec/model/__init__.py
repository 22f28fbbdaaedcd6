"""Model facts: what hpspec knows about a transformer without its weights.

- `arch/`: the architecture data (sd3.toml, flux.toml, models.toml) and its pydantic rule models.
- `graph`: a model description (config, headers, live module) -> `ModelGraph`.
- `targets`: what a `target` names (built-in, demo, path), found on disk and read into a graph.
- `conversion`: what dropping blocks rewrites besides them (the last-block conversion, index lists).
- `flops`, `safetensors_header`: the FLOP estimate; safetensors headers read without torch.
- `families/`: per-family code for what the data cannot say (live-module surgery, latent packing).

Imports `core` (and the demo's paths). Never imports torch at module level.
"""
