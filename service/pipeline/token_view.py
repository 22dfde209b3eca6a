"""A text's tokens as the embedding route feeds them to the model, for clients that count or inspect tokens
before they send (TEI `/tokenize`, vLLM `/tokenize`): the same prefix (named prompt), the same ids, and the
EOS an embedding model pools appended as the one special token. Pure functions over the model's tokenizer."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from service.errors import invalid
from service.pipeline.tokenization import TextTokenizer


@dataclass(frozen=True)
class Token:
    id: int
    text: str
    special: bool
    start: int | None  # UTF-8 byte offsets into the prefixed text, as TEI reports them; None for special tokens
    stop: int | None


def byte_offsets(text: str) -> list[int]:
    """UTF-8 byte offset of every character position of `text` (len(text) + 1 entries)."""
    out = [0]
    for ch in text:
        out.append(out[-1] + len(ch.encode("utf-8", "surrogatepass")))
    return out


def tokens_of(tokenizer: TextTokenizer, text: str, eos: int | None) -> list[Token]:
    """`text` (already prefixed) as the pipeline tokenizes it (no special tokens added by the tokenizer),
    then `eos` as a special token when given: exactly the ids an embedding request sends for it untruncated."""
    encoding = tokenizer.tokenizer.encode(text, add_special_tokens=False)
    raw = text.encode("utf-8", "surrogatepass")
    offsets = byte_offsets(text)
    tokens: list[Token] = []
    for token_id, (start, stop) in zip(encoding.ids, encoding.offsets, strict=True):
        lo, hi = offsets[start], offsets[stop]
        piece = raw[lo:hi].decode("utf-8", "replace")
        tokens.append(Token(token_id, piece, False, lo, hi))
    if eos is not None:
        tokens.append(Token(eos, tokenizer.id_to_token(eos), True, None, None))
    return tokens


def token_strings(tokenizer: TextTokenizer, ids: Sequence[int]) -> list[str]:
    """The vocabulary entries of `ids` (vLLM's token_strs: byte-level BPE pieces, e.g. 'Ġworld')."""
    return [tokenizer.id_to_token(i) for i in ids]


def check_ids(ids: Sequence[int], vocabulary: int, param: str) -> None:
    bad = next((i for i in ids if not 0 <= i < vocabulary), None)
    if bad is not None:
        raise invalid(f"{param}: token id {bad} is outside the vocabulary [0, {vocabulary})", param)


def decode(tokenizer: TextTokenizer, ids: Sequence[int], skip_special_tokens: bool) -> str:
    return str(tokenizer.tokenizer.decode(list(ids), skip_special_tokens=skip_special_tokens))
