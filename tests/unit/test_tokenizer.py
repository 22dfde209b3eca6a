"""The offline Qwen3 tokenizer reproduces tiktoken's ids on the official ranks and appends EOS."""

from __future__ import annotations

import pytest
import tiktoken
from tiktoken.load import load_tiktoken_bpe

from export.qwen_tokenizer_offline import ADDED_TOKENS, QWEN2_PATTERN, TOTAL_IDS, build_tokenizer, ranks_file

TEXTS = [
    "Hello world, how are you today? It's 2026 and we're testing.",
    "北京是中华人民共和国的首都，也是全国的政治中心。",
    "def fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)  # 12345\n\n\tx = {'a': [1, 2]}",
    "emoji 🤖🚀👍🏽 and café naïve 𝔘𝔫𝔦𝔠𝔬𝔡𝔢",
    "   leading spaces, trailing   \n\n  and blank lines \r\n",
    "数字 1234567890 und Übergrößen",
]


@pytest.fixture(scope="module")
def tokenizer():  # type: ignore[no-untyped-def]
    return build_tokenizer()


@pytest.fixture(scope="module")
def reference() -> tiktoken.Encoding:
    return tiktoken.Encoding(
        "qwen", pat_str=QWEN2_PATTERN, mergeable_ranks=load_tiktoken_bpe(str(ranks_file())), special_tokens={}
    )


@pytest.mark.parametrize("text", TEXTS)
def test_ids_match_tiktoken_and_end_with_endoftext(tokenizer, reference, text: str) -> None:  # type: ignore[no-untyped-def]
    ids = tokenizer.encode(text).ids
    assert ids[-1] == 151643
    assert ids[:-1] == reference.encode(text)


def test_added_tokens_in_id_order(tokenizer) -> None:  # type: ignore[no-untyped-def]
    assert tokenizer.get_vocab_size(with_added_tokens=True) == TOTAL_IDS == 151669
    for i, (content, _) in enumerate(ADDED_TOKENS):
        assert tokenizer.token_to_id(content) == 151643 + i
    assert tokenizer.token_to_id("</think>") == 151668
    assert tokenizer.token_to_id("<|im_end|>") == 151645


def test_nfc_normalisation(tokenizer) -> None:  # type: ignore[no-untyped-def]
    # "é" composed and decomposed must tokenize identically.
    assert tokenizer.encode("cafe\u0301").ids == tokenizer.encode("caf\u00e9").ids
