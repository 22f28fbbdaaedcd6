"""flux: FLUX's latent packing, `pack` x `pack` latent pixels into one token ([latents] pack),
and the positions of those tokens.

    (B, C, H, W) -> (B, H/pack * W/pack, C * pack * pack)

torch is imported only inside the functions that build tensors.
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


def image_ids(height: int, width: int, pack: int) -> torch.Tensor:
    """FLUX's positions of the packed image tokens, (H/pack * W/pack, 3): (0, row, column) each."""
    import torch

    ids = torch.zeros(height // pack, width // pack, 3)
    ids[..., 1] += torch.arange(height // pack)[:, None]
    ids[..., 2] += torch.arange(width // pack)[None, :]
    return ids.reshape(-1, 3)
