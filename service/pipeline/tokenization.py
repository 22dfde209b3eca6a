"""The model's tokenizer, restricted to ids its embedding table has, with bounded, interruptible encoding.

Text that spells an added token whose id is past the table (e.g. `<think>` on the 4B/8B models, whose
tables have 151,665 rows) is tokenized as plain text instead: an out-of-range id would index past the
table on the GPU.

Cost bound: a text is never tokenized much beyond what the request can use. When only the first `cap`
tokens matter (truncation at the end, or proving an input too long), a growing prefix of the text is
encoded instead of all of it (`head_ids`), so a 10 MB input costs about as much as a 50 kB one. When only the
last `cap` tokens matter (truncation at the start), a growing tail window is encoded instead, cut where the
tokenizer is sure to split whatever came before (`tail_ids`); a text without such a place is tokenized whole.
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
# How far into a tail window a safe cut (see _forced_boundary) is looked for before the window grows.
TAIL_SCAN_CHARS = 4096
# Characters around a tail cut that the tokenizer's own normalizer and pre-tokenizer check.
TAIL_CHECK_CHARS = 8
# The Qwen2/Qwen3 pre-tokenizer regex: the one _forced_boundary's rules are derived from. A tokenizer with any
# other pre-tokenization (or normalizer, or added-token options) gets no tail windows: its texts are tokenized
# whole, as the reference does.
QWEN_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)


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


def forced_boundary(before: str, after: str) -> bool:
    """Whether QWEN_PATTERN splits between the characters `before` and `after` whatever text came before them
    (the piece holding `before` always ends there), so that the pieces from `after` on are those of the text
    from `after` on alone:
    - after a number character: `\\p{N}` takes exactly one, and no other alternative takes one;
    - after a letter, before a non-letter: the pieces that hold letters (a contraction, which ends in its
      letters, or `[^\\r\\n\\p{L}\\p{N}]?\\p{L}+`) stop at the first non-letter;
    - after punctuation or a symbol, before a space or a tab: only ` ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*` holds
      it, and it stops at the first whitespace that is not a line break.
    `after` must be a starter NFC cannot join to `before` (no mark, combining class 0); the caller checks
    the rest with the tokenizer itself (TextTokenizer._cut_holds)."""
    category_after = unicodedata.category(after)
    if category_after[0] == "M" or unicodedata.combining(after):
        return False
    kind = unicodedata.category(before)[0]
    if kind == "N":
        return True
    if kind == "L":
        return category_after[0] != "L"
    return kind in "PS" and after in " \t"


@dataclass
class TextTokenizer:
    tokenizer: Tokenizer
    _max_token_bytes: int = 0
    _tail_ok: bool | None = None  # tail windows are exact for this tokenizer (decided on first use)
    _added: tuple[str, ...] = ()  # the added tokens' texts

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

    def tail_ids(self, text: str, cap: int, should_stop: Callable[[], bool] = never_stop) -> list[int] | None:
        """The last `cap` content ids of `text`, exactly as tokenizing all of it would give them, from a tail
        window; None when the text is short enough to tokenize whole, when no window has a safe cut, or when
        this tokenizer is not one whose cuts can be proven (the caller then tokenizes it whole).

        Why it is exact: the window starts at a cut where the pre-tokenizer splits whatever came before
        (forced_boundary, then checked with the tokenizer's own normalizer and pre-tokenizer), no added token
        spans the cut and NFC joins nothing across it; BPE works inside one split. So every split, and every
        token, from the cut on is the whole text's. `should_stop` is asked before each encode.
        """
        if not self._tail_windows_ok():
            return None
        return self._tail(text, cap, should_stop)

    def _tail(self, text: str, cap: int, should_stop: Callable[[], bool]) -> list[int] | None:
        chars = cap * HEAD_CHARS_PER_TOKEN + 1024
        while chars < len(text):
            if should_stop():
                raise Stopped
            begin = len(text) - chars
            cut = self._safe_cut(text, begin, min(begin + TAIL_SCAN_CHARS, len(text)))
            if cut is not None:
                ids = self.tokenizer.encode_batch_fast([text[cut:]], add_special_tokens=False)[0].ids
                if len(ids) >= cap:
                    return ids[len(ids) - cap :]
            chars *= 4
        return None

    def _safe_cut(self, text: str, lo: int, hi: int) -> int | None:
        """The first position in [lo, hi) where a tail window may start (see tail_ids)."""
        for q in range(max(lo, 1), hi):
            if forced_boundary(text[q - 1], text[q]) and self._cut_holds(text, q):
                return q
        return None

    def _cut_holds(self, text: str, q: int) -> bool:
        """The checks forced_boundary leaves to the tokenizer itself: NFC joins nothing across the cut, no
        added token's text spans it, and the tokenizer's pre-tokenizer splits the normalised text there from
        each of the TAIL_CHECK_CHARS starts before it (which also catches a character its regex engine
        classes otherwise than Python's unicodedata)."""
        pre = self.tokenizer.pre_tokenizer
        if pre is None:
            return False
        # An occurrence inside this slice necessarily spans the cut.
        if any(a in text[max(0, q - len(a) + 1) : q + len(a) - 1] for a in self._added):
            return False
        lo, end = max(0, q - TAIL_CHECK_CHARS), q + TAIL_CHECK_CHARS
        right = unicodedata.normalize("NFC", text[q:end])
        if unicodedata.normalize("NFC", text[lo:end]) != unicodedata.normalize("NFC", text[lo:q]) + right:
            return False
        for start in range(lo, q):
            left = unicodedata.normalize("NFC", text[start:q])
            if all(stop != len(left) for _, (_, stop) in pre.pre_tokenize_str(left + right)):
                return False
        return True

    def _tail_windows_ok(self) -> bool:
        if self._tail_ok is None:
            self._tail_ok = self._supports_tail_windows()
        return self._tail_ok

    def _supports_tail_windows(self) -> bool:
        """Tail windows are proven for the Qwen tokenizers' pipeline only: NFC, the Qwen pattern split then
        byte-level (no prefix space, no second regex), BPE, added tokens matched as plain text. Then a few
        probes must agree with whole-text tokenization."""
        tok = self.tokenizer
        # The components' own JSON (the whole tokenizer's, vocabulary included, would take a second to parse).
        if tok.normalizer is not None and json.loads(tok.normalizer.__getstate__()).get("type") != "NFC":
            return False
        pre = json.loads(tok.pre_tokenizer.__getstate__()) if tok.pre_tokenizer is not None else {}
        steps = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else [pre]
        expected = [("Split", {"pattern": {"Regex": QWEN_PATTERN}, "behavior": "Isolated", "invert": False})]
        expected.append(("ByteLevel", {"add_prefix_space": False, "use_regex": False}))
        if len(steps) != 2 or any(
            step.get("type") != kind or any(step.get(k) != v for k, v in want.items())
            for step, (kind, want) in zip(steps, expected, strict=True)
        ):
            return False
        if type(tok.model).__name__ != "BPE":
            return False
        added = list(tok.get_added_tokens_decoder().values())
        if any(t.lstrip or t.rstrip or t.single_word or t.normalized for t in added):
            return False
        self._added = tuple(t.content for t in added)
        probes = ("word " * 900, "数字 123, 中文。" * 300, "a\u0301 b!! \n\n<|endoftext|>x " * 200)
        for probe in probes:
            tail = self._tail(probe, 64, never_stop)
            if tail is None or tail != self.tokenizer.encode(probe, add_special_tokens=False).ids[-64:]:
                return False
        return True

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
