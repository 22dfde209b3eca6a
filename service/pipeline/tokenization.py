"""The model's tokenizer, restricted to ids its embedding table has, with batched encoding.

Text that spells an added token whose id is past the table (e.g. `<think>` on the 4B/8B models, whose
tables have 151,665 rows) is tokenized as plain text instead: an out-of-range id would index past the
table on the GPU.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from tokenizers import Tokenizer


def load_tokenizer(directory: Path, embedding_rows: int) -> Tokenizer:
    path = directory / "tokenizer.json"
    if not path.exists():
        raise FileNotFoundError(f"no tokenizer.json in {directory}")
    spec = json.loads(path.read_text(encoding="utf-8"))
    added = spec.get("added_tokens", [])
    spec["added_tokens"] = [t for t in added if int(t["id"]) < embedding_rows]
    tok = Tokenizer.from_str(json.dumps(spec))
    # EOS is appended by the pipeline after truncation, so the tokenizer itself adds nothing; no
    # truncation or padding here either (both are pipeline steps).
    tok.no_truncation()
    tok.no_padding()
    return tok


@dataclass
class TextTokenizer:
    tokenizer: Tokenizer
    eos_id: int
    embedding_rows: int
    _max_token_bytes: int = 0

    def content_ids(self, texts: list[str]) -> list[list[int]]:
        """Ids without special tokens added (the EOS comes after truncation). Rust-parallel batch encode."""
        if not texts:
            return []
        return [e.ids for e in self.tokenizer.encode_batch(texts, add_special_tokens=False)]

    def surely_longer_than(self, text: str, max_tokens: int) -> bool:
        """True when `text` has more than max_tokens tokens whatever they are: no token is longer than
        the longest vocabulary entry, so the normalised UTF-8 length bounds the count from below."""
        if len(text) <= max_tokens:
            return False
        if self._max_token_bytes == 0:
            vocab = self.tokenizer.get_vocab(with_added_tokens=True)
            self._max_token_bytes = max(len(token.encode()) for token in vocab)
        normalizer = self.tokenizer.normalizer
        size = len((normalizer.normalize_str(text) if normalizer is not None else text).encode())
        return size > max_tokens * self._max_token_bytes

    def prefix_length(self, prefix: str) -> int:
        """Tokens of the prefix that are stable when text follows it: the last one may merge with the
        text's first characters, so it is not counted."""
        if not prefix:
            return 0
        return max(0, len(self.tokenizer.encode(prefix, add_special_tokens=False).ids) - 1)

    def id_to_token(self, token_id: int) -> str:
        return self.tokenizer.id_to_token(token_id) or ""
