"""Wire encodings of the vectors: float32 values, or packed float16 / sign bits."""

from __future__ import annotations

import base64

import numpy as np

from service.pipeline.params import Encoding


def pack(vectors: np.ndarray, encoding: Encoding) -> list[bytes]:
    """One bytes object per row. Bits are MSB first (numpy.packbits), as sentence-transformers packs them:
    UBINARY = uint8 of the sign bits (value > 0), BINARY = the same minus 128 as int8."""
    if encoding is Encoding.FLOAT16:
        return [row.astype("<f2").tobytes() for row in vectors]
    if encoding in (Encoding.BINARY, Encoding.UBINARY):
        bits = np.packbits(vectors > 0, axis=-1)
        if encoding is Encoding.BINARY:
            bits = (bits.astype(np.int16) - 128).astype(np.int8)
        return [row.tobytes() for row in bits]
    raise ValueError(f"{encoding} is not a packed encoding")


def float32_base64(vector: np.ndarray) -> str:
    """OpenAI's base64 encoding: little-endian float32 bytes."""
    return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode("ascii")
