"""gRPC API end to end: real facade process, real Triton, real ONNX Runtime, dev model, loopback sockets."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2
from sentence_transformers import SentenceTransformer

from service.contract import default_buckets
from service.gen.embedding.v1 import embedding_pb2 as pb
from service.pipeline.params import Encoding
from tests.conftest import TEST_MAX_TOKENS
from tests.helpers import Facade, cosine, embed, health_status, vectors
from tests.oracles import unpack

QUERIES = ["What is the capital of China?", "Explain gravity", "最好的编程语言是什么？", "emoji 🚀 test"]
DOCS = [
    "The capital of China is Beijing.",
    "Gravity is a force that attracts two bodies towards each other.",
    "def add(a, b):\n    return a + b",
]


@pytest.fixture(scope="module")
def channel(facade: Facade):  # type: ignore[no-untyped-def]
    with grpc.insecure_channel(facade.target) as ch:
        yield ch


@pytest.fixture(scope="module")
def stub(facade: Facade, channel: grpc.Channel):  # type: ignore[no-untyped-def]
    return facade.stub(channel)


def test_query_parity_with_sentence_transformers(stub, reference: SentenceTransformer) -> None:  # type: ignore[no-untyped-def]
    ours = vectors(embed(stub, QUERIES, prompt_name="query"))
    ref = reference.encode(QUERIES, prompt_name="query")
    for a, b in zip(ours, ref, strict=True):
        assert cosine(a, b) >= 0.99999


def test_custom_instruction_parity(stub, reference: SentenceTransformer) -> None:  # type: ignore[no-untyped-def]
    instruction = "Given a question, retrieve Python code that answers it"
    ours = vectors(embed(stub, QUERIES, instruction=instruction))
    ref = reference.encode(QUERIES, prompt=f"Instruct: {instruction}\nQuery:")
    for a, b in zip(ours, ref, strict=True):
        assert cosine(a, b) >= 0.99999


def test_document_parity(stub, reference: SentenceTransformer) -> None:  # type: ignore[no-untyped-def]
    for response in (embed(stub, DOCS), embed(stub, DOCS, prompt_name="document")):
        for a, b in zip(vectors(response), reference.encode(DOCS), strict=True):
            assert cosine(a, b) >= 0.99999
        assert response.usage.prompt_tokens > 0 and response.dimensions == 64 and response.model


def test_mixed_batch_in_order_equals_single_calls(stub) -> None:  # type: ignore[no-untyped-def]
    words = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota", "kappa"]
    # 1 token to near the max, spanning every bucket 16..512.
    texts = ["x"] + [" ".join(words[j % 10] for j in range(n)) for n in (5, 20, 40, 90, 200, 300, 450)]
    batch = embed(stub, texts)
    assert [e.index for e in batch.embeddings] == list(range(len(texts)))
    tok = stub.Tokenize(pb.TokenizeRequest(inputs=texts), timeout=30)
    lengths = [i.count for i in tok.inputs]
    assert lengths[0] == 2 and max(lengths) > TEST_MAX_TOKENS // 2 and max(lengths) <= TEST_MAX_TOKENS
    batch_vecs = vectors(batch)
    for i, text in enumerate(texts):
        alone = vectors(embed(stub, [text]))[0]
        assert cosine(alone, batch_vecs[i]) >= 0.99999
        for j in range(len(texts)):
            if j != i:
                assert cosine(alone, batch_vecs[j]) < 0.99999


def test_dimensions_normalize_and_encodings(stub) -> None:  # type: ignore[no-untyped-def]
    full = vectors(embed(stub, DOCS))
    raw = vectors(embed(stub, DOCS, normalize=False))
    assert not np.allclose(np.linalg.norm(raw, axis=1), 1.0)
    np.testing.assert_allclose(raw / np.linalg.norm(raw, axis=1, keepdims=True), full, atol=1e-5)
    d32 = embed(stub, DOCS, dimensions=32)
    assert d32.dimensions == 32
    expected = raw[:, :32] / np.linalg.norm(raw[:, :32], axis=1, keepdims=True)
    np.testing.assert_allclose(vectors(d32), expected, atol=1e-5)
    half = embed(stub, DOCS, encoding=pb.ENCODING_FLOAT16)
    decoded = np.stack([unpack(e.packed, Encoding.FLOAT16, 64) for e in half.embeddings])
    np.testing.assert_allclose(decoded, full, atol=2e-3)
    for enc, kind in ((pb.ENCODING_BINARY, Encoding.BINARY), (pb.ENCODING_UBINARY, Encoding.UBINARY)):
        response = embed(stub, DOCS, encoding=enc)
        assert all(len(e.packed) == 8 and not e.values for e in response.embeddings)
        bits = np.stack([unpack(e.packed, kind, 64) for e in response.embeddings])
        assert (bits == (full > 0)).all()


def test_32_concurrent_clients_get_their_own_vectors(facade: Facade, stub) -> None:  # type: ignore[no-untyped-def]
    texts = [[f"client {c} sentence {k}: {'lorem ipsum ' * (c % 7)}" for k in range(1 + c % 4)] for c in range(32)]
    expected = [[vectors(embed(stub, [t]))[0] for t in group] for group in texts]
    barrier = threading.Barrier(32)

    def client(c: int) -> np.ndarray:
        with grpc.insecure_channel(facade.target) as ch:  # one connection per client
            barrier.wait(timeout=30)
            return vectors(embed(facade.stub(ch), texts[c]))

    with ThreadPoolExecutor(32) as pool:
        results = list(pool.map(client, range(32)))
    for c in range(32):
        for got, want in zip(results[c], expected[c], strict=True):
            assert cosine(got, want) >= 0.99999


def test_tokenize_counts_equal_usage(stub) -> None:  # type: ignore[no-untyped-def]
    tok = stub.Tokenize(pb.TokenizeRequest(inputs=QUERIES, prompt_name="query", return_tokens=True), timeout=30)
    emb = embed(stub, QUERIES, prompt_name="query")
    assert tok.usage.prompt_tokens == emb.usage.prompt_tokens == sum(i.count for i in tok.inputs)
    assert all(i.ids[-1] == 151643 and len(i.tokens) == i.count for i in tok.inputs)
    assert "".join(tok.inputs[0].tokens[:3]).startswith("Instruct")


def test_truncation_modes(stub) -> None:  # type: ignore[no-untyped-def]
    long_text = "word " * 2000
    with pytest.raises(grpc.RpcError) as err:
        embed(stub, ["short", long_text])
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "input 1 has more than the model's limit of 512 tokens" in err.value.details()
    for mode in (pb.TRUNCATE_END, pb.TRUNCATE_START):
        tok = stub.Tokenize(pb.TokenizeRequest(inputs=[long_text], truncate=mode), timeout=30)
        assert tok.inputs[0].count == TEST_MAX_TOKENS and tok.inputs[0].truncated
        assert tok.inputs[0].ids[-1] == 151643
        assert embed(stub, [long_text], truncate=mode).usage.prompt_tokens == TEST_MAX_TOKENS


def test_get_info(stub) -> None:  # type: ignore[no-untyped-def]
    info = stub.GetInfo(pb.GetInfoRequest(), timeout=10)
    assert (info.dimensions, info.min_dimensions, info.max_input_tokens) == (64, 32, TEST_MAX_TOKENS)
    assert info.max_batch_inputs == 2048 and set(info.prompt_names) == {"query", "document"}
    assert info.precision == "fp32" and info.backend == "python" and info.service_version
    # The ladder the export wrote (config.pbtxt length_buckets): the default for the test's max tokens.
    assert list(info.length_buckets) == default_buckets(TEST_MAX_TOKENS)


def test_embed_stream_100_messages(stub) -> None:  # type: ignore[no-untyped-def]
    requests = [pb.EmbedRequest(inputs=[f"stream message {i}"], request_id=f"r{i}") for i in range(100)]
    responses = list(stub.EmbedStream(iter(requests), timeout=120))
    assert sorted(r.request_id for r in responses) == sorted(f"r{i}" for i in range(100))
    by_id = {r.request_id: vectors(r)[0] for r in responses}
    for i in (0, 57, 99):
        assert cosine(by_id[f"r{i}"], vectors(embed(stub, [f"stream message {i}"]))[0]) >= 0.99999


def test_embed_stream_bad_message_gets_its_own_reply_and_the_stream_goes_on(stub) -> None:  # type: ignore[no-untyped-def]
    good = [pb.EmbedRequest(inputs=[f"good {i}"], request_id=f"g{i}") for i in range(20)]
    bad = pb.EmbedRequest(inputs=["x"], dimensions=7, request_id="bad")
    for _ in range(3):  # the old stream lost earlier replies most of the time: repeat to make that visible
        responses = list(stub.EmbedStream(iter([*good[:10], bad, *good[10:]]), timeout=120))
        assert len(responses) == 21
        errors = [r for r in responses if r.HasField("error")]
        assert [e.request_id for e in errors] == ["bad"]
        assert errors[0].error.code == "INVALID_ARGUMENT" and "dimensions" in errors[0].error.message
        assert not errors[0].embeddings
        ok = {r.request_id: vectors(r)[0] for r in responses if not r.HasField("error")}
        assert sorted(ok) == sorted(f"g{i}" for i in range(20))
    for i in (0, 10, 19):
        assert cosine(ok[f"g{i}"], vectors(embed(stub, [f"good {i}"]))[0]) >= 0.99999


def test_embed_stream_malformed_message_is_answered(facade) -> None:  # type: ignore[no-untyped-def]
    with grpc.insecure_channel(facade.target) as channel:
        call = channel.stream_stream("/embedding.v1.EmbeddingService/EmbedStream")
        good = pb.EmbedRequest(inputs=["fine"], request_id="ok").SerializeToString()
        replies = [pb.EmbedResponse.FromString(r) for r in call(iter([good, b"\x0a\x05ab", good]), timeout=60)]
    assert len(replies) == 3
    failed = [r for r in replies if r.HasField("error")]
    assert len(failed) == 1 and failed[0].error.code == "INVALID_ARGUMENT"
    assert "not a valid EmbedRequest" in failed[0].error.message


@pytest.mark.parametrize(
    ("request_kwargs", "needle"),
    [
        ({"inputs": []}, "no inputs"),
        ({"inputs": ["a", ""]}, "input 1 is an empty string"),
        ({"inputs": ["a"], "dimensions": 16}, "dimensions must be between 32 and 64"),
        ({"inputs": ["a"], "dimensions": 65}, "dimensions must be between 32 and 64"),
        ({"inputs": ["a"], "prompt_name": "nope"}, "unknown prompt_name"),
        ({"inputs": ["a"], "prompt_name": "query", "instruction": "x"}, "not both"),
        ({"inputs": ["a"] * 2049}, "more than the limit of 2048"),
    ],
)
def test_invalid_argument(stub, request_kwargs: dict[str, object], needle: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.RpcError) as err:
        stub.Embed(pb.EmbedRequest(**request_kwargs), timeout=30)  # type: ignore[arg-type]
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert needle in err.value.details()


def test_deadline_exceeded(stub) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.RpcError) as err:
        stub.Embed(pb.EmbedRequest(inputs=["word " * 400] * 64), timeout=0.05)
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert embed(stub, ["still fine"]).embeddings  # the service carries on


def test_health_and_reflection(facade: Facade, channel: grpc.Channel) -> None:
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

    assert health_status(facade.target) == health_pb2.HealthCheckResponse.SERVING
    assert health_status(facade.target, "embedding.v1.EmbeddingService") == health_pb2.HealthCheckResponse.SERVING
    services = ProtoReflectionDescriptorDatabase(channel).get_services()
    assert "embedding.v1.EmbeddingService" in services and "grpc.health.v1.Health" in services
