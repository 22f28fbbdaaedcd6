"""LoRA adapters through a plan: read an adapter in any of the formats of `model/formats/lora.toml`
(diffusers/peft, kohya, the original layouts), apply the plan to its modules exactly as the prune
stage applies it to the weights, and write it back in its own format (or diffusers'), with its
coverage. Torch-free: renames and row slices are byte ranges; numpy computes the update norms.
"""

from __future__ import annotations

from hpspec.weights.lora.run import Remapped, prepare, remap_adapters, summary, write

__all__ = ["Remapped", "prepare", "remap_adapters", "summary", "write"]
