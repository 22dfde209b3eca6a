"""Small, randomly initialised Qwen3 checkpoints with the real tokenizer, built offline.

The embedding model is a normal Hugging Face + sentence-transformers directory with the same meaning as the
official Qwen3-Embedding checkpoints; the reranker (build_dev_reranker) a Qwen3ForCausalLM directory like
Qwen3-Reranker's. Every code path (export, serving, reference comparison) is the one real checkpoints take.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from export.prompts import OFFICIAL_PROMPTS
from export.qwen_tokenizer_offline import ENDOFTEXT_ID, TOTAL_IDS, save_tokenizer


@dataclass(frozen=True)
class DevModelShape:
    hidden_size: int = 64
    layers: int = 2
    heads: int = 4
    kv_heads: int = 2
    # Deliberately != hidden_size / heads, as in the real 0.6B and 4B configs.
    head_dim: int = 32
    intermediate_size: int = 128
    vocab_size: int = TOTAL_IDS
    max_position_embeddings: int = 32768
    seed: int = 0
    # With the usual init (std 0.02) a tiny model returns nearly the same vector (cosine > 0.999) for
    # every text, since the pooled token is always EOS; wider weights keep different texts apart
    # (cosine ~0.4-0.9), so a mixed-up or mis-pooled vector makes a test fail.
    init_std: float = 0.1
    embed_std: float = 1.0


# Real Qwen3-Embedding configs (shared doc), for random-init models at real scale.
REAL_SHAPES: dict[str, DevModelShape] = {
    "0.6B": DevModelShape(1024, 28, 16, 8, 128, 3072, 151669, 32768, init_std=0.02, embed_std=0.02),
    "4B": DevModelShape(2560, 36, 32, 8, 128, 9728, 151665, 40960, init_std=0.02, embed_std=0.02),
    "8B": DevModelShape(4096, 36, 32, 8, 128, 12288, 151665, 40960, init_std=0.02, embed_std=0.02),
}


def write_sentence_transformers_files(directory: Path, hidden_size: int, max_seq_length: int = 8192) -> None:
    """Transformer -> last-token Pooling (include_prompt) -> Normalize, prompts as in the official repo."""
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
    ]
    (directory / "modules.json").write_text(json.dumps(modules, indent=2) + "\n")
    (directory / "sentence_bert_config.json").write_text(
        json.dumps({"max_seq_length": max_seq_length, "do_lower_case": False}, indent=2) + "\n"
    )
    (directory / "config_sentence_transformers.json").write_text(
        json.dumps(
            {"prompts": OFFICIAL_PROMPTS, "default_prompt_name": None, "similarity_fn_name": "cosine"},
            indent=2,
        )
        + "\n"
    )
    pooling = directory / "1_Pooling"
    pooling.mkdir(exist_ok=True)
    pooling_config = {
        "word_embedding_dimension": hidden_size,
        "pooling_mode_cls_token": False,
        "pooling_mode_mean_tokens": False,
        "pooling_mode_max_tokens": False,
        "pooling_mode_mean_sqrt_len_tokens": False,
        "pooling_mode_weightedmean_tokens": False,
        "pooling_mode_lasttoken": True,
        "include_prompt": True,
    }
    (pooling / "config.json").write_text(json.dumps(pooling_config, indent=2) + "\n")
    (directory / "2_Normalize").mkdir(exist_ok=True)


def qwen3_config(shape: DevModelShape, dtype: str, tie_word_embeddings: bool = True) -> Any:
    from transformers import Qwen3Config

    return Qwen3Config(
        vocab_size=shape.vocab_size,
        hidden_size=shape.hidden_size,
        intermediate_size=shape.intermediate_size,
        num_hidden_layers=shape.layers,
        num_attention_heads=shape.heads,
        num_key_value_heads=shape.kv_heads,
        head_dim=shape.head_dim,
        max_position_embeddings=shape.max_position_embeddings,
        rms_norm_eps=1e-6,
        initializer_range=shape.init_std,
        tie_word_embeddings=tie_word_embeddings,
        # The id the dev tokenizer appends, as in the official config.json.
        bos_token_id=ENDOFTEXT_ID,
        eos_token_id=ENDOFTEXT_ID,
        dtype=dtype,
        # transformers 5 files this under rope_parameters; 4.x takes it as is.
        **{"rope_theta": 1_000_000.0},  # type: ignore[arg-type]
    )


def build_dev_model(output: Path, shape: DevModelShape = DevModelShape(), dtype: str = "float32") -> Path:
    """Writes config, weights (safetensors), tokenizer and sentence-transformers files to `output`."""
    import torch
    from transformers import Qwen3Model

    output.mkdir(parents=True, exist_ok=True)
    config = qwen3_config(shape, dtype)
    torch.manual_seed(shape.seed)
    previous = torch.get_default_dtype()
    # Build directly in the target dtype: a 4B/8B model built in fp32 first would need twice the RAM.
    torch.set_default_dtype(getattr(torch, dtype))
    try:
        with torch.no_grad():
            model = Qwen3Model(config).eval()
            model.embed_tokens.weight.normal_(0.0, shape.embed_std)
    finally:
        torch.set_default_dtype(previous)
    model.save_pretrained(output, safe_serialization=True)
    save_tokenizer(output)
    write_sentence_transformers_files(output, shape.hidden_size)
    return output


# Spread of the dev reranker's logit difference (yes - no) across inputs: scores then cover much of (0, 1), so a
# swapped head (score -> 1 - score), a wrong row or a wrong pooled token changes scores and their order.
RERANK_LOGIT_SPREAD = 3.0
# Pairs the dev reranker's head is fitted to spread (export/samples.py has the ones export verifies on).
_SPREAD_PROBES = (
    ("What is the capital of China?", "The capital of China is Beijing."),
    ("What is the capital of China?", "Gravity is a force that attracts two bodies."),
    ("how to sort a list in python", "sorted(xs) returns a new list; xs.sort() sorts in place."),
    ("如何学习编程？", "多写代码，多读代码。"),
    ("best pizza in Naples", "The Eiffel Tower is in Paris."),
    ("symptoms of flu", "Fever, cough, sore throat and muscle aches are common flu symptoms."),
    ("weather tomorrow", "def add(a, b):\n    return a + b"),
    ("Who wrote Hamlet?", "Hamlet is a tragedy written by William Shakespeare."),
)


def build_dev_reranker(output: Path, shape: DevModelShape = DevModelShape(), dtype: str = "float32") -> Path:
    """A Qwen3-Reranker-like checkpoint: Qwen3ForCausalLM (config, safetensors with `model.*` and `lm_head.*`)
    and the Qwen3 base tokenizer (its post-processor appends nothing; the reranker's input is the official
    prefix + body + suffix). The LM head is NOT tied to the embeddings (as in Qwen3-Reranker-4B/8B; 0.6B ties
    them): a graph that took its head rows from the embedding table, or the wrong rows, gives other scores.

    Random weights give every input about the same yes/no logits (the last token is always the suffix's), so
    the "yes" row is set to "no" + w, with w along the direction in which the final hidden states of a few
    formatted pairs differ most (orthogonal to their mean), scaled to RERANK_LOGIT_SPREAD: scores spread over
    (0, 1) around 0.5."""
    import torch
    from transformers import Qwen3ForCausalLM

    from export.qwen_tokenizer_offline import build_tokenizer
    from export.samples import rerank_ids

    output.mkdir(parents=True, exist_ok=True)
    config = qwen3_config(shape, dtype, tie_word_embeddings=False)
    tok = build_tokenizer(append_eos=False)
    no_id, yes_id = (tok.token_to_id(label) for label in ("no", "yes"))
    torch.manual_seed(shape.seed)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(getattr(torch, dtype))
    try:
        with torch.no_grad():
            model = Qwen3ForCausalLM(config).eval()
            model.model.embed_tokens.weight.normal_(0.0, shape.embed_std)
            states = torch.stack(
                [
                    model.model(input_ids=torch.tensor([rerank_ids(tok, q, d, 512)])).last_hidden_state[0, -1]
                    for q, d in _SPREAD_PROBES
                ]
            ).double()
            mean = states.mean(dim=0)
            centered = states - mean
            direction = torch.linalg.svd(centered, full_matrices=False).Vh[0]
            # Orthogonal to the mean state: the difference is 0 there (about as many "yes" as "no").
            direction = direction - (direction @ mean) / (mean @ mean) * mean
            w = direction * (RERANK_LOGIT_SPREAD / max(float((centered @ direction).std()), 1e-6))
            head = model.lm_head.weight
            head[yes_id] = (head[no_id].double() + w).to(head.dtype)
    finally:
        torch.set_default_dtype(previous)
    model.save_pretrained(output, safe_serialization=True)
    save_tokenizer(output, append_eos=False)
    return output
