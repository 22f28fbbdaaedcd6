"""Per-family code: only what the architecture data (`hpspec.model.arch`) cannot say.

`sd3`: the live-module surgery of the last-block conversion. `flux`: latent packing. Both import
torch (and diffusers) only inside the functions that need them.
"""
