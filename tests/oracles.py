"""Test oracles: the plain, slow ways of what production does fast, kept out of the production modules."""

from __future__ import annotations

import numpy as np

from service.api.grpc.servicer import ENCODING_PB
from service.gen.embedding.v1 import embedding_pb2 as pb
from service.lifecycle import EmbedOutcome
from service.pipeline.encoding import pack
from service.pipeline.params import Encoding


def response_from_result(embedded: EmbedOutcome) -> pb.EmbedResponse:
    """The EmbedResponse as a message built field by field (a Python float per value): the bytes the
    handlers send (encode_response) must equal its SerializeToString()."""
    params, result = embedded.params, embedded.result
    response = pb.EmbedResponse(
        model=embedded.model,
        dimensions=result.dimensions,
        request_id=params.request_id,
        encoding=ENCODING_PB[params.encoding],
        usage=pb.Usage(prompt_tokens=result.prompt_tokens, total_tokens=result.prompt_tokens),
        timings=pb.Timings(tokenize_ms=result.tokenize_ms, inference_ms=result.inference_ms, total_ms=result.total_ms),
    )
    if params.encoding is Encoding.FLOAT:
        response.embeddings.extend(pb.Embedding(index=i, values=row) for i, row in enumerate(result.vectors.tolist()))
    else:
        response.embeddings.extend(
            pb.Embedding(index=i, packed=data) for i, data in enumerate(pack(result.vectors, params.encoding))
        )
    return response


def unpack(data: bytes, encoding: Encoding, dimensions: int) -> np.ndarray:
    """Inverse of pack() for FLOAT16 (values), INT8/UINT8 (bucket centres in [-1, 1]) and BINARY/UBINARY
    (0/1 bits)."""
    if encoding is Encoding.FLOAT16:
        return np.frombuffer(data, dtype="<f2").astype(np.float32)
    if encoding in (Encoding.INT8, Encoding.UINT8):
        dtype, offset = (np.int8, 128) if encoding is Encoding.INT8 else (np.uint8, 0)
        buckets = np.frombuffer(data, dtype=dtype).astype(np.float32) + offset
        return (buckets + 0.5) * np.float32(2 / 255) - 1
    if encoding is Encoding.BINARY:
        raw = (np.frombuffer(data, dtype=np.int8).astype(np.int16) + 128).astype(np.uint8)
    else:
        raw = np.frombuffer(data, dtype=np.uint8)
    return np.unpackbits(raw)[:dimensions].astype(np.float32)
