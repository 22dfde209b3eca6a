"""Wire encodings of the vectors: float32 values, or packed float16 / int8 / uint8 / sign bits."""

from __future__ import annotations

import base64

import numpy as np

from service.errors import invalid
from service.pipeline.params import Encoding

# int8 / uint8 scaling: sentence-transformers' quantize_embeddings with the fixed range [-1, 1] in every dimension.
# Fixed (not calibrated on the request's own vectors, as quantize_embeddings does without `ranges`), so a vector's
# bytes never depend on the other inputs of its batch, and model-independent: [-1, 1] holds every component of an
# L2-normalised vector, so nothing is clipped. 256 buckets of width 2/255, float32 arithmetic as the reference.
INT8_LOW = np.float32(-1.0)
INT8_HIGH = np.float32(1.0)
_INT8_STEP = (INT8_HIGH - INT8_LOW) / np.float32(255)

_BYTE_ENCODINGS = (Encoding.INT8, Encoding.UINT8)


def int8_ranges(dimensions: int) -> np.ndarray:
    """The `ranges` argument of sentence_transformers' quantize_embeddings that gives the same bytes as pack()."""
    return np.stack([np.full(dimensions, INT8_LOW), np.full(dimensions, INT8_HIGH)]).astype(np.float32)


def check_encoding(encoding: Encoding, normalize: bool) -> None:
    """The fixed [-1, 1] range is only right for unit vectors: raw (unnormalised) pooled values would be
    clipped to garbage, so that combination is refused instead."""
    if encoding in _BYTE_ENCODINGS and not normalize:
        raise invalid(
            f"the {encoding.value.lower()} encoding quantizes the range [-1, 1] of normalised vectors; "
            "it needs normalize true",
            "normalize",
        )


def _buckets(vectors: np.ndarray) -> np.ndarray:
    values = np.asarray(vectors, dtype=np.float32)
    return np.clip(np.floor((values - INT8_LOW) / _INT8_STEP), 0, 255)


def pack(vectors: np.ndarray, encoding: Encoding) -> list[bytes]:
    """One bytes object per row. Bits are MSB first (numpy.packbits), as sentence-transformers packs them:
    UBINARY = uint8 of the sign bits (value > 0), BINARY = the same minus 128 as int8. UINT8 = the bucket
    (0..255) of each value in [-1, 1], INT8 = the bucket minus 128 (see INT8_LOW)."""
    if encoding is Encoding.FLOAT16:
        return [row.astype("<f2").tobytes() for row in vectors]
    if encoding in (Encoding.BINARY, Encoding.UBINARY):
        bits = np.packbits(vectors > 0, axis=-1)
        if encoding is Encoding.BINARY:
            bits = (bits.astype(np.int16) - 128).astype(np.int8)
        return [row.tobytes() for row in bits]
    if encoding is Encoding.UINT8:
        return [row.tobytes() for row in _buckets(vectors).astype(np.uint8)]
    if encoding is Encoding.INT8:
        return [row.tobytes() for row in (_buckets(vectors) - 128).astype(np.int8)]
    raise ValueError(f"{encoding} is not a packed encoding")


def float32_base64(vector: np.ndarray) -> str:
    """OpenAI's base64 encoding: little-endian float32 bytes."""
    return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode("ascii")
