"""The traced (eager) graph: Qwen3Model + last-token pooling computed from the attention mask, ending with the
embedding (LastTokenEmbedder) or with a reranker's two LM-head rows (LastTokenReranker)."""

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

    def pool(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """The hidden state at each row's last real token, in the model's dtype."""
        hidden = self.model(
            input_ids=input_ids, attention_mask=attention_mask, use_cache=False
        ).last_hidden_state
        rows = torch.arange(hidden.shape[0], device=hidden.device)
        return hidden[rows, last_token_index(attention_mask)]

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        # Always return fp32 so fp16/bf16 graphs normalise in full precision downstream.
        return self.pool(input_ids, attention_mask).float()


class LastTokenReranker(LastTokenEmbedder):
    """input_ids, attention_mask (int64 [batch, seq]) -> logits float32 [batch, 2]: the LM head's logits of the
    RERANK_LABELS tokens ("no", "yes") at the last real token. `rows` [2, hidden] are those LM-head rows."""

    def __init__(self, model: nn.Module, rows: torch.Tensor) -> None:
        super().__init__(model)
        self.head = nn.Linear(rows.shape[1], rows.shape[0], bias=False, device=rows.device, dtype=rows.dtype)
        with torch.no_grad():
            self.head.weight.copy_(rows)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self.head(self.pool(input_ids, attention_mask))
        return logits.float()


def rerank_head_rows(causal_lm: nn.Module, token_ids: tuple[int, int]) -> torch.Tensor:
    """The LM-head rows of `token_ids` (RERANK_LABELS order), copied out of the causal LM: the reranker graph's
    whole head. A function of its own so a test can break it and see verification refuse the export."""
    lm: Any = causal_lm
    head: Any = lm.get_output_embeddings()
    return head.weight[list(token_ids)].detach().clone()


def load_causal_lm(model_id: str, dtype: torch.dtype, attention: str = "eager", **kwargs: Any) -> nn.Module:
    """A reranker checkpoint as transformers' causal LM (backbone `.model` + full LM head): the reference the
    reranker graph is verified against, and where its two head rows come from."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_id, dtype=dtype, attn_implementation=attention, **kwargs)
    return model.eval()


def load_backbone(model_id: str, dtype: torch.dtype, attention: str = "eager", **kwargs: Any) -> nn.Module:
    """The bare Qwen3Model (no LM head). Eager attention (the default) so a traced graph has plain ops; the
    fused graph is built from the weights, so its reference may run with "sdpa" (memory linear in tokens)."""
    from transformers import AutoModel

    model = AutoModel.from_pretrained(model_id, dtype=dtype, attn_implementation=attention, **kwargs)
    return model.eval()
