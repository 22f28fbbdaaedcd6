"""flux: FLUX's latent packing, `pack` x `pack` latent pixels into one token ([latents] pack).

    (B, C, H, W) -> (B, H/pack * W/pack, C * pack * pack)

Works on any tensor with `view`/`permute`/`reshape` (torch); imports nothing itself.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


def pack_latents(latents: torch.Tensor, pack: int) -> torch.Tensor:
    """The tokens a transformer takes for `latents`; `pack` 1 leaves them as they are."""
    if pack == 1:
        return latents
    b, c, h, w = latents.shape
    tokens = latents.view(b, c, h // pack, pack, w // pack, pack).permute(0, 2, 4, 1, 3, 5)
    return tokens.reshape(b, (h // pack) * (w // pack), c * pack * pack)
