"""How many values a JSON body holds, counted on its bytes before it is parsed.

Parsing builds a Python object per value: 16 MB of `1,` is 8 million ints (gigabytes, seconds of a held
GIL) before any limit can look at them. Counting with vectorised numpy, block by block, costs a few ms per
MB and a few MB of memory, and lets the request be refused first.
"""

from __future__ import annotations

import json

import numpy as np

BLOCK = 1 << 20
_QUOTE, _BACKSLASH = ord('"'), ord("\\")
# Bytes that start or continue a bare JSON scalar (number, true, false, null).
_SCALAR = np.zeros(256, dtype=bool)
for _c in b"0123456789+-.eEtrufalsn":
    _SCALAR[_c] = True
_OPENER = np.zeros(256, dtype=bool)
_OPENER[ord("[")] = _OPENER[ord("{")] = True


def _escaped_quotes(block: np.ndarray, backslash: np.ndarray, run_in: int) -> tuple[np.ndarray, int]:
    """Positions of quotes preceded by an odd run of backslashes (`run_in` backslashes end the previous
    block), and the run of backslashes this block ends with."""
    index = np.arange(block.size, dtype=np.int64)
    last_plain = np.where(backslash, -1 - run_in, index)
    np.maximum.accumulate(last_plain, out=last_plain)
    run_before = np.empty(block.size, dtype=np.int64)
    run_before[0] = run_in
    run_before[1:] = index[:-1] - last_plain[:-1]
    run_out = int(block.size - 1 - last_plain[-1])
    return run_before % 2 == 1, run_out


class ValueCounter:
    """Counts JSON values as the body arrives, chunk by chunk: strings (keys included), bare scalars,
    arrays and objects. Exact for valid JSON; for invalid JSON some count, which is all a size check
    needs (the parser reports the error)."""

    def __init__(self) -> None:
        self.total = 0
        self._in_string = 0
        self._prev_scalar = False
        self._backslashes = 0

    def feed(self, chunk: bytes) -> int:
        data = np.frombuffer(chunk, dtype=np.uint8)
        for start in range(0, data.size, BLOCK):
            self._block(data[start : start + BLOCK])
        return self.total

    def _block(self, block: np.ndarray) -> None:
        quote = block == _QUOTE
        backslash = block == _BACKSLASH
        if self._backslashes or backslash.any():
            escaped, self._backslashes = _escaped_quotes(block, backslash, self._backslashes)
            quote &= ~escaped
        # Parity of the quotes so far: 1 inside a string (opening quote included, closing one excluded).
        parity = np.bitwise_xor.accumulate(quote.view(np.uint8))
        parity ^= self._in_string
        outside = (parity == 0) & ~quote
        self.total += int(np.count_nonzero(quote & (parity == 1)))  # opening quotes = strings
        self.total += int(np.count_nonzero(outside & _OPENER[block]))
        scalar = outside & _SCALAR[block]
        starts = scalar.copy()
        starts[1:] &= ~scalar[:-1]
        starts[0] &= not self._prev_scalar
        self.total += int(np.count_nonzero(starts))
        self._in_string, self._prev_scalar = int(parity[-1]), bool(scalar[-1])


def count_values(body: bytes) -> int:
    return ValueCounter().feed(body)


class DuplicateKey(ValueError):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


class _Keys(list[str]):
    """An object's keys, in place of the object: what the duplicate check builds (no values kept)."""


def _keys_once(pairs: list[tuple[str, object]]) -> _Keys:
    keys = _Keys(k for k, _ in pairs)
    if len(set(keys)) != len(keys):
        seen: set[str] = set()
        for key in keys:
            if key in seen:
                raise DuplicateKey(key)
            seen.add(key)
    return keys


def object_keys(body: bytes) -> list[str] | None:
    """The top-level object's keys, once no object in the body repeats a key (else DuplicateKey). None when
    the body is not a JSON object or not valid JSON: the model's own parser then reports the problem.

    A pass of the C json scanner over a body the value count has already bounded; objects become their key
    lists. Costs less than the model's parse of the same body (docs/reliability.md)."""
    try:
        parsed = json.loads(body, object_pairs_hook=_keys_once)
    except DuplicateKey:
        raise
    except (ValueError, RecursionError):
        return None
    return parsed if isinstance(parsed, _Keys) else None
