"""The dev model is a normal checkpoint sentence-transformers loads with the official configuration."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from sentence_transformers import SentenceTransformer

from export.prompts import OFFICIAL_PROMPTS
from tests.helpers import cosine


def test_sentence_transformers_config(dev_model_dir: Path, reference: SentenceTransformer) -> None:
    st_config = json.loads((dev_model_dir / "config_sentence_transformers.json").read_text())
    assert st_config["prompts"] == {
        "query": "Instruct: Given a web search query, retrieve relevant passages that answer the query\nQuery:",
        "document": "",
    }
    pooling = json.loads((dev_model_dir / "1_Pooling" / "config.json").read_text())
    assert pooling["pooling_mode_lasttoken"] is True and pooling["pooling_mode_mean_tokens"] is False
    assert pooling["include_prompt"] is True
    modules = [m["type"] for m in json.loads((dev_model_dir / "modules.json").read_text())]
    assert modules[-1].endswith("Normalize")
    assert reference.tokenizer.padding_side == "left"
    assert reference.tokenizer("hello")["input_ids"][-1] == 151643


def test_query_prompt_is_applied(reference: SentenceTransformer) -> None:
    text = "What is the capital of China?"
    with_prompt = reference.encode([text], prompt_name="query")[0]
    manual = reference.encode([OFFICIAL_PROMPTS["query"] + text])[0]
    plain = reference.encode([text])[0]
    assert cosine(with_prompt, manual) > 0.999999
    assert cosine(with_prompt, plain) < 0.999  # the prompt changes the vector
    assert abs(np.linalg.norm(with_prompt) - 1) < 1e-5


def test_seed_determinism_and_distinct_texts(dev_model_dir: Path, reference: SentenceTransformer) -> None:
    config = json.loads((dev_model_dir / "config.json").read_text())
    assert config["head_dim"] * config["num_attention_heads"] != config["hidden_size"]
    a, b = reference.encode(["The capital of China is Beijing.", "def f(x): return x"])
    # Different texts must give clearly different vectors, or mix-up tests could not fail.
    assert cosine(a, b) < 0.99
