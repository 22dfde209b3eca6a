"""The facade's hand-written response bytes decode, with the generated stubs, exactly as the messages built
the slow way (a Python float per value) do; and the HTTP JSON keeps every float32 value."""

from __future__ import annotations

import json

import numpy as np
import pytest

from service.api.grpc.servicer import encode_response
from service.api.http.embeddings import embeddings_json
from service.gen.embedding.v1 import embedding_pb2 as pb
from service.lifecycle import EmbedOutcome
from service.pipeline.embedder import EmbedResult
from service.pipeline.params import EmbedParams, Encoding
from tests.oracles import response_from_result


def embedded(vectors: np.ndarray, encoding: Encoding, request_id: str = "") -> EmbedOutcome:
    params = EmbedParams(texts=("x",) * len(vectors), encoding=encoding, request_id=request_id)
    result = EmbedResult(
        vectors=vectors,
        dimensions=vectors.shape[1],
        prompt_tokens=1234,
        tokenize_ms=0.25,
        inference_ms=1.5,
        total_ms=2.0,
    )
    return EmbedOutcome(params, result, "qwen3-embedding-dev")


def random_vectors(rng: np.random.Generator, rows: int, dims: int) -> np.ndarray:
    vectors = rng.standard_normal((rows, dims)).astype(np.float32)
    vectors[0, 0] = -0.0  # the sign of zero survives
    vectors[-1, -1] = 0.0
    return vectors / np.float32(7)


@pytest.mark.parametrize("encoding", list(Encoding))
@pytest.mark.parametrize(("rows", "dims"), [(1, 1), (1, 32), (3, 64), (200, 1024), (130, 3)])
def test_encoded_response_is_the_message_bytes(encoding: Encoding, rows: int, dims: int) -> None:
    rng = np.random.default_rng(rows * 7919 + dims)
    item = embedded(random_vectors(rng, rows, dims), encoding, request_id="req-ü" * (rows % 3))
    fast = encode_response(item)
    slow = response_from_result(item)
    assert fast == slow.SerializeToString()
    parsed = pb.EmbedResponse.FromString(fast)
    assert parsed == slow
    if encoding is Encoding.FLOAT:
        got = np.array([list(e.values) for e in parsed.embeddings], dtype=np.float32)
        assert got.tobytes() == item.result.vectors.tobytes()  # bit for bit, -0.0 included


def test_encoded_response_from_a_strided_view() -> None:
    """finalize() may hand over a slice of a wider array: the bytes are the row values, not the buffer."""
    wide = random_vectors(np.random.default_rng(1), 4, 64)
    item = embedded(wide[:, :16], Encoding.FLOAT)
    assert encode_response(item) == response_from_result(item).SerializeToString()


@pytest.mark.parametrize("encoding_format", ["float", "base64"])
def test_http_json_matches_the_stdlib_encoding(encoding_format: str) -> None:
    vectors = random_vectors(np.random.default_rng(3), 5, 48)
    vectors[1, 1] = np.float32(1e-38)
    vectors[2, 2] = np.float32(3.4e38)
    body = embeddings_json(vectors, encoding_format, "m", 17)
    data = [{"object": "embedding", "index": i, "embedding": e} for i, e in enumerate(vectors.tolist())]
    parsed = json.loads(body)
    if encoding_format == "float":
        reference = {
            "object": "list",
            "data": data,
            "model": "m",
            "usage": {"prompt_tokens": 17, "total_tokens": 17},
        }
        assert parsed == json.loads(json.dumps(reference))
        got = np.array([d["embedding"] for d in parsed["data"]], dtype=np.float32)
        assert got.tobytes() == vectors.tobytes()
    else:
        import base64

        got = np.stack([np.frombuffer(base64.b64decode(d["embedding"]), dtype="<f4") for d in parsed["data"]])
        assert got.tobytes() == vectors.tobytes()


def test_triton_output_is_read_from_the_raw_contents() -> None:
    from tritonclient.grpc import service_pb2

    from service.triton.client import output_array

    values = np.arange(6, dtype=np.float32).reshape(2, 3)
    tensor = service_pb2.ModelInferResponse.InferOutputTensor
    response = service_pb2.ModelInferResponse(
        outputs=[
            tensor(name="other", datatype="INT64", shape=[1]),
            tensor(name="embedding", datatype="FP32", shape=[2, 3]),
        ],
        raw_output_contents=[np.zeros(1, dtype=np.int64).tobytes(), values.tobytes()],
    )
    got = output_array(response, "embedding")
    assert got is not None and got.dtype == np.float32 and got.tobytes() == values.tobytes()
    assert output_array(response, "missing") is None
    short = service_pb2.ModelInferResponse(
        outputs=[tensor(name="embedding", datatype="FP32", shape=[2, 3])], raw_output_contents=[values.tobytes()[:-4]]
    )
    assert output_array(short, "embedding") is None  # bytes that do not fill the shape: malformed, not a guess


async def test_grpc_errors_map_as_tritonclient_reported_them() -> None:
    import grpc

    from service.errors import ErrorKind
    from service.triton.client import map_triton_error, rpc_exception

    def error(code: grpc.StatusCode, details: str) -> grpc.RpcError:
        return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details=details)

    cases = {
        grpc.StatusCode.UNAVAILABLE: ErrorKind.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED: ErrorKind.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED: ErrorKind.RESOURCE_EXHAUSTED,
        grpc.StatusCode.CANCELLED: ErrorKind.CANCELLED,
        grpc.StatusCode.INVALID_ARGUMENT: ErrorKind.INTERNAL,
    }
    for code, kind in cases.items():
        assert map_triton_error(rpc_exception(error(code, "x"))).kind is kind
    queue_full = error(grpc.StatusCode.UNAVAILABLE, "Exceeds maximum queue size")
    assert map_triton_error(rpc_exception(queue_full)).kind is ErrorKind.RESOURCE_EXHAUSTED
