"""The model's tokenizer, restricted to ids its embedding table has, with bounded, interruptible encoding.

Text that spells an added token whose id is past the table (e.g. `<think>` on the 4B/8B models, whose
tables have 151,665 rows) is tokenized as plain text instead: an out-of-range id would index past the
table on the GPU.

Cost bound: a text is never tokenized much beyond what the request can use. When only the first `cap`
tokens matter (truncation at the end, or proving an input too long), a growing prefix of the text is
encoded instead of all of it (`head_ids`), so a 10 MB input costs about as much as a 50 kB one.
"""

from __future__ import annotations

import json
import threading
import time
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from tokenizers import Tokenizer

# Characters per token on the first try of a prefix encode: ordinary text has 3-5, so one try is usual.
HEAD_CHARS_PER_TOKEN = 6
# Tokens past the cap that a prefix must yield: room for a special token split by the cut.
HEAD_MARGIN = 16
# Pre-tokens dropped at the end of a prefix: their split may depend on the text after the cut.
HEAD_UNSTABLE_WORDS = 2
# Characters per encode_batch call: the granularity at which cancellation is noticed.
BATCH_CHARS = 256 * 1024


class Stopped(Exception):
    """The request was cancelled or ran past its deadline while its text was being tokenized."""


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


def never_stop() -> bool:
    return False


@dataclass
class TextTokenizer:
    tokenizer: Tokenizer
    _max_token_bytes: int = 0

    def surely_longer_than(self, text: str, max_tokens: int) -> bool:
        """True when `text` has more than max_tokens tokens whatever they are: no token is longer than the
        longest vocabulary entry, so the NFC-normalised UTF-8 size bounds the count from below. Costs a few
        ms per MB (CPython's NFC), where a prefix encode of one giant word would cost seconds."""
        if len(text) <= max_tokens:
            return False
        if self._max_token_bytes == 0:
            vocab = self.tokenizer.get_vocab(with_added_tokens=True)
            self._max_token_bytes = max(len(token.encode()) for token in vocab)
        size = len(unicodedata.normalize("NFC", text).encode("utf-8", "surrogatepass"))
        return size > max_tokens * self._max_token_bytes

    def content_ids(self, texts: Sequence[str], should_stop: Callable[[], bool] = never_stop) -> list[list[int]]:
        """Ids without special tokens added (the EOS comes after truncation). Rust-parallel batch encode in
        groups of about BATCH_CHARS characters; `should_stop` is asked between groups."""
        out: list[list[int]] = []
        start = 0
        while start < len(texts):
            end, size = start, 0
            while end < len(texts) and (end == start or size + len(texts[end]) <= BATCH_CHARS):
                size += len(texts[end])
                end += 1
            if should_stop():
                raise Stopped
            # encode_batch_fast skips the character offsets nothing here reads: the same ids, a third less
            # time for a batch of 8 short texts.
            batch = self.tokenizer.encode_batch_fast(list(texts[start:end]), add_special_tokens=False)
            out += [e.ids for e in batch]
            start = end
        return out

    def head_ids(self, text: str, cap: int, should_stop: Callable[[], bool] = never_stop) -> list[int] | None:
        """The first `cap` content ids of `text`, exactly as tokenizing all of it would give them, from a
        prefix of the text; None when the text is short enough to tokenize whole.

        Why it is exact: the pre-tokenizer splits left to right and each split looks at most one character
        past its end, and BPE works inside one split. So the splits of a prefix equal those of the whole
        text except the last few, which are dropped before counting.
        """
        chars = cap * HEAD_CHARS_PER_TOKEN + 1024
        while chars < len(text):
            if should_stop():
                raise Stopped
            encoding = self.tokenizer.encode(text[:chars], add_special_tokens=False)
            words = encoding.word_ids
            last = next((w for w in reversed(words) if w is not None), None)
            stable = len(words)
            if last is not None:
                unstable_from = last - HEAD_UNSTABLE_WORDS + 1
                while stable > 0 and (words[stable - 1] is None or words[stable - 1] >= unstable_from):  # type: ignore[operator]
                    stable -= 1
            if stable >= cap + HEAD_MARGIN:
                return encoding.ids[:cap]
            chars *= 4
        return None

    def prefix_length(self, prefix: str) -> int:
        """Tokens of the prefix that are stable when text follows it: the last one may merge with the
        text's first characters, so it is not counted."""
        if not prefix:
            return 0
        return max(0, len(self.tokenizer.encode(prefix, add_special_tokens=False).ids) - 1)

    def id_to_token(self, token_id: int) -> str:
        return self.tokenizer.id_to_token(token_id) or ""


class StopFlag:
    """Set by the event loop when a request is cancelled; read by the tokenizer thread between steps.
    A deadline (time.monotonic value) stops it too."""

    def __init__(self, deadline: float | None = None) -> None:
        self._event = threading.Event()
        self.deadline = deadline

    def set(self) -> None:
        self._event.set()

    def __call__(self) -> bool:
        return self._event.is_set() or (self.deadline is not None and time.monotonic() > self.deadline)
