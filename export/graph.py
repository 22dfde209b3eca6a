"""The exported graph: Qwen3Model + last-token pooling computed from the attention mask."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of the last position whose mask is 1, per row.

    Computed from the mask rather than by branching on the padding side: a traced branch would freeze
    whichever side the sample input had. Correct for left padding, right padding and no padding.
    """
    positions = torch.arange(attention_mask.shape[1], device=attention_mask.device, dtype=torch.int64)
    return (attention_mask.to(torch.int64) * positions).argmax(dim=1)


class LastTokenEmbedder(nn.Module):
    """input_ids, attention_mask (int64 [batch, seq]) -> embedding [batch, hidden], un-normalised."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.model(
            input_ids=input_ids, attention_mask=attention_mask, use_cache=False
        ).last_hidden_state
        rows = torch.arange(hidden.shape[0], device=hidden.device)
        pooled = hidden[rows, last_token_index(attention_mask)]
        # Always return fp32 so fp16/bf16 graphs normalise in full precision downstream.
        return pooled.float()


def load_backbone(model_id: str, dtype: torch.dtype, attention: str = "eager", **kwargs: Any) -> nn.Module:
    """The bare Qwen3Model (no LM head). Eager attention (the default) so a traced graph has plain ops; the
    fused graph is built from the weights, so its reference may run with "sdpa" (memory linear in tokens)."""
    from transformers import AutoModel

    model = AutoModel.from_pretrained(model_id, dtype=dtype, attn_implementation=attention, **kwargs)
    return model.eval()
