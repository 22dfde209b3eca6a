"""Property-based fuzzing against the running session facade: hypothesis over EmbedRequest (gRPC) and
schemathesis over the HTTP API's own OpenAPI document. Bounded example counts, no deadlines, no database."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from service.gen.embedding.v1 import embedding_pb2 as pb
from tests.helpers import Facade, cosine, vectors

FUZZ = settings(
    max_examples=60,
    deadline=None,
    database=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
HIDDEN, MIN_DIM = 64, 32
PACKED_BYTES = {
    pb.ENCODING_FLOAT16: lambda d: 2 * d,
    pb.ENCODING_BINARY: lambda d: d // 8,
    pb.ENCODING_UBINARY: lambda d: d // 8,
    pb.ENCODING_INT8: lambda d: d,
    pb.ENCODING_UINT8: lambda d: d,
}

# Any text protobuf can carry (no lone surrogates): control characters, CJK, emoji, special-token spellings.
text = st.one_of(
    st.text(st.characters(blacklist_categories=("Cs",)), max_size=60),
    st.sampled_from(["", " ", "<|endoftext|>", "<think>", "<|im_start|>", "\x00", "word " * 600]),
)
plain_text = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=60)
# Mostly valid values, so that OK responses are common enough to check, with invalid ones mixed in.
requests = st.builds(
    pb.EmbedRequest,
    inputs=st.one_of(st.lists(plain_text, min_size=1, max_size=5), st.lists(text, max_size=5)),
    instruction=st.one_of(st.just(""), st.just(""), text),
    prompt_name=st.sampled_from(["", "", "", "query", "document", "nope"]),
    dimensions=st.one_of(
        st.sampled_from([0, 0, 32, 48, 64]), st.sampled_from([1, 31, 65, 2**32 - 1]), st.integers(0, 2**32 - 1)
    ),
    normalize=st.one_of(st.none(), st.booleans()),
    truncate=st.one_of(st.integers(0, 2), st.integers(0, 4)),
    encoding=st.one_of(st.integers(0, 5), st.integers(0, 7)),
    request_id=st.text(st.characters(blacklist_categories=("Cs",)), max_size=20),
)


@pytest.fixture(scope="module")
def stub(facade: Facade) -> Iterator[Any]:
    with grpc.insecure_channel(facade.target) as channel:
        yield facade.stub(channel)


def test_hypothesis_embed_request(stub: Any, facade: Facade) -> None:
    """Every EmbedRequest ends OK with one correctly sized embedding per input (each equal to that input's
    single-call vector) or INVALID_ARGUMENT, never INTERNAL/UNKNOWN or anything else."""
    seen: Counter[str] = Counter()

    @FUZZ
    @given(request=requests)
    def check(request: pb.EmbedRequest) -> None:
        try:
            response = stub.Embed(request, timeout=60)
        except grpc.RpcError as exc:
            seen[exc.code().name] += 1
            assert exc.code() == grpc.StatusCode.INVALID_ARGUMENT, (exc.code(), exc.details(), request)
            return
        seen["OK"] += 1
        dims = request.dimensions or HIDDEN
        assert response.dimensions == dims and MIN_DIM <= dims <= HIDDEN
        assert [e.index for e in response.embeddings] == list(range(len(request.inputs)))
        assert response.request_id == request.request_id and response.encoding == request.encoding
        for e in response.embeddings:
            if request.encoding == pb.ENCODING_FLOAT:
                assert len(e.values) == dims and np.isfinite(e.values).all()
            else:
                assert len(e.packed) == PACKED_BYTES[request.encoding](dims)
        if request.encoding == pb.ENCODING_FLOAT and len(request.inputs) > 1:
            got = vectors(response)
            for i, t in enumerate(request.inputs):
                alone = pb.EmbedRequest()
                alone.CopyFrom(request)
                del alone.inputs[:]
                alone.inputs.append(t)
                assert cosine(vectors(stub.Embed(alone, timeout=60))[0], got[i]) >= 0.9999

    check()
    assert seen["OK"] >= 5 and seen["INVALID_ARGUMENT"] >= 5, seen
    assert facade.process.poll() is None


@pytest.fixture(scope="module")
def schema(facade: Facade) -> Any:
    return schemathesis.openapi.from_url(f"{facade.base_url}/openapi.json")


@pytest.fixture(scope="module")
def served_model(facade: Facade) -> dict[str, str]:
    """The first served model of each kind ("embedding", "reranker") by name."""
    models = httpx.get(f"{facade.base_url}/v1/models").json()["data"]
    return {kind: next(str(m["id"]) for m in models if m["kind"] == kind) for kind in ("embedding", "reranker")}


# JSON endpoints whose responses the document describes; /metrics is Prometheus text and /health/ready
# answers 503 (documented in docs/clients.md, not in the document) only while not ready.
SCHEMA_CHECKED = {
    "POST /v1/embeddings",
    "POST /v1/rerank",
    "POST /rerank",
    "GET /v1/models",
    "GET /info",
    "GET /health/live",
    "POST /v1/embed",
    "POST /v2/embed",
    "POST /v2/rerank",
    "POST /v1/ranking",
}
# Routes with a JSON body: negative cases (invalid per the schema) must be refused cleanly.
BODY_ROUTES = {
    "POST /v1/embeddings",
    "POST /v1/rerank",
    "POST /rerank",
    "POST /v1/embed",
    "POST /v2/embed",
    "POST /v2/rerank",
    "POST /v1/ranking",
}


@pytest.mark.parametrize("mode", ["positive", "negative"])
def test_schemathesis_openapi(schema: Any, facade: Facade, served_model: dict[str, str], mode: str) -> None:
    """Cases generated from /openapi.json (positive: valid per schema; negative: invalid), half of the
    embeddings bodies naming the served model so they reach the pipeline. No 5xx; documented status codes,
    content types and response bodies."""
    generation = schemathesis.GenerationMode.POSITIVE if mode == "positive" else schemathesis.GenerationMode.NEGATIVE
    statuses: Counter[int] = Counter()
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.label for op in operations} >= {"POST /v1/embeddings", "GET /v1/models"}
    for operation in operations:
        if mode == "negative" and operation.label not in BODY_ROUTES:
            continue  # the GET endpoints take no parameters: nothing to negate

        checks = [not_a_server_error]
        if operation.label in SCHEMA_CHECKED:
            checks += [status_code_conformance, content_type_conformance, response_schema_conformance]

        @settings(
            max_examples=40 if operation.label in BODY_ROUTES else 3,
            deadline=None,
            database=None,
            derandomize=True,
            suppress_health_check=list(HealthCheck),
        )
        @given(case=operation.as_strategy(generation_mode=generation), use_model=st.booleans())
        def check(case: Any, use_model: bool) -> None:
            if use_model and isinstance(case.body, dict) and "model" in case.body:
                kind = "reranker" if "rank" in operation.label else "embedding"  # noqa: B023
                case.body["model"] = served_model[kind]
            response = case.call(base_url=facade.base_url, timeout=60)
            statuses[response.status_code] += 1
            case.validate_response(response, checks=checks)  # noqa: B023 - called before the next loop turn

        check()
    assert all(code < 500 for code in statuses), statuses
    if mode == "positive":
        assert statuses[200] > 0, statuses
    assert facade.process.poll() is None
