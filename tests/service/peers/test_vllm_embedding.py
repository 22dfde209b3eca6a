"""vLLM's own online embedding tests (vllm-project/vllm, tests/entrypoints/pooling/embed/test_online.py and
test_online_dimensions.py, Apache-2.0), ported to this service: the assertions are vLLM's, unchanged; the
server fixture is the session's facade, the model its dev model, and the model-specific data (the model name,
the vector width 384 -> 64, the token ids of `input_text` under the model's tokenizer, e5's 384-wide
Matryoshka refusals -> this model's dimension range) follow the model swap. vLLM's test helpers
(check_embeddings_close, run_embedding_correctness_test, binary2tensor, the EmbeddingResponse model) are
re-implemented below with vLLM's meaning; `hf_model` is sentence-transformers on the same checkpoint.

Not ported, each a documented refusal (docs/clients.md, "Drop-in for peers' clients"): the chat-shaped
`messages` body and `/invocations` (test_chat_request, test_invocations_*), `/pooling` (test_pooling_*),
`encoding_format` bytes / bytes_only (test_bytes_*; run below as strict xfails that prove the refusal), and the
fp8 `embed_dtype`s (refused with a 400 naming embed_dtype, asserted below). test_basic's `/tokenize` belongs to
the tokenize routes' tests."""

from __future__ import annotations

import base64
import sys
import time
import uuid
from collections.abc import Sequence
from typing import Any

import httpx
import numpy as np
import openai
import pytest
import requests
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field

from service.gen.embedding.v1 import embedding_pb2 as pb
from tests.helpers import Facade

input_text = "The best thing about vLLM is that it supports many different models"
WIDTH = 64  # the dev model's hidden size (vLLM's e5-small: 384)
EMBED_DTYPES = ("float32", "float16", "bfloat16")  # vLLM's list less fp8_e4m3 / fp8_e5m2 (refused here)
REFUSED_EMBED_DTYPES = ("fp8_e4m3", "fp8_e5m2")
ENDIANNESS = ("native", "big", "little")


# -- vLLM's helpers, with vLLM's meaning --------------------------------------------------------------------


class UsageInfo(BaseModel):
    prompt_tokens: int = 0
    total_tokens: int = 0
    completion_tokens: int | None = 0


class EmbeddingResponseData(BaseModel):
    index: int
    object: str = "embedding"
    embedding: list[float] | str


class EmbeddingResponse(BaseModel):
    """vLLM's response model: id and created have defaults, extra fields are allowed."""

    model_config = ConfigDict(extra="allow")
    id: str = Field(default_factory=lambda: f"embd-{uuid.uuid4().hex}")
    object: str = "list"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    data: list[EmbeddingResponseData]
    usage: UsageInfo


def check_embeddings_close(
    *, embeddings_0_lst: Sequence[Any], embeddings_1_lst: Sequence[Any], name_0: str, name_1: str, tol: float = 1e-3
) -> None:
    assert len(embeddings_0_lst) == len(embeddings_1_lst)
    for prompt_idx, (e0, e1) in enumerate(zip(embeddings_0_lst, embeddings_1_lst, strict=True)):
        assert len(e0) == len(e1), f"Length mismatch: {len(e0)} vs. {len(e1)}"
        sim = F.cosine_similarity(
            torch.tensor(np.asarray(e0, dtype=np.float32)), torch.tensor(np.asarray(e1, dtype=np.float32)), dim=0
        )
        assert sim >= 1 - tol, f"Test{prompt_idx}: {name_0} vs {name_1}: cosine similarity {float(sim)}"


def matryoshka_fy(outputs: Any, dimensions: int) -> list[Any]:
    cut = torch.tensor(np.asarray(outputs, dtype=np.float32))[..., :dimensions]
    return F.normalize(cut, p=2, dim=-1).tolist()


def run_embedding_correctness_test(
    hf_model: Any, inputs: list[str], vllm_outputs: Sequence[Any], dimensions: int | None = None
) -> None:
    hf_outputs = hf_model.encode(inputs)
    if dimensions:
        hf_outputs = matryoshka_fy(hf_outputs, dimensions)
    check_embeddings_close(
        embeddings_0_lst=hf_outputs, embeddings_1_lst=vllm_outputs, name_0="hf", name_1="vllm", tol=1e-2
    )


def binary2tensor(binary: bytes, shape: tuple[int, ...], embed_dtype: str, endianness: str) -> torch.Tensor:
    """vLLM's decoder: numpy has no bfloat16, so its bytes are read as float16 and viewed as bfloat16."""
    np_dtype = {"float32": np.float32, "float16": np.float16, "bfloat16": np.float16}[embed_dtype]
    torch_dtype = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[embed_dtype]
    array = np.frombuffer(binary, dtype=np_dtype).reshape(shape)
    if endianness != "native" and endianness != sys.byteorder:
        array = array.byteswap()
    return torch.from_numpy(array.copy()).view(torch_dtype)


# -- the server fixture, swapped for the facade --------------------------------------------------------------


class RemoteServer:
    def __init__(self, facade: Facade) -> None:
        self.base = facade.base_url

    def url_for(self, *parts: str) -> str:
        return "/".join([self.base, *(p.strip("/") for p in parts)])


@pytest.fixture(scope="module")
def server(facade: Facade) -> RemoteServer:
    return RemoteServer(facade)


@pytest.fixture
async def client(facade: Facade) -> Any:
    async with openai.AsyncOpenAI(base_url=f"{facade.base_url}/v1", api_key="EMPTY", max_retries=0) as c:
        yield c


@pytest.fixture(scope="module")
def model_name(facade: Facade) -> str:
    return str(httpx.get(f"{facade.base_url}/v1/models").json()["data"][0]["id"])


@pytest.fixture(scope="module")
def hf_model(reference: Any) -> Any:
    return reference


@pytest.fixture(scope="module")
def input_tokens(stub: Any) -> list[int]:
    """input_text's ids under the served model's tokenizer (EOS included), as vLLM's list is e5's."""
    return list(stub.Tokenize(pb.TokenizeRequest(inputs=[input_text]), timeout=30).inputs[0].ids)


# -- vLLM's tests ------------------------------------------------------------------------------------------------


async def test_completion_request(
    client: openai.AsyncOpenAI, model_name: str, hf_model: Any, input_tokens: list[int]
) -> None:
    # test input: str
    embedding_response = await client.embeddings.create(model=model_name, input=input_text, encoding_format="float")
    embeddings = EmbeddingResponse.model_validate(embedding_response.model_dump(mode="json"))

    assert embeddings.id is not None
    assert len(embeddings.data) == 1
    assert len(embeddings.data[0].embedding) == WIDTH
    assert embeddings.usage.completion_tokens == 0
    assert embeddings.usage.prompt_tokens == len(input_tokens)
    assert embeddings.usage.total_tokens == len(input_tokens)

    vllm_outputs = [d.embedding for d in embeddings.data]
    run_embedding_correctness_test(hf_model, [input_text], vllm_outputs)

    # test input: list[int]
    embedding_response = await client.embeddings.create(model=model_name, input=input_tokens, encoding_format="float")
    embeddings = EmbeddingResponse.model_validate(embedding_response.model_dump(mode="json"))

    assert embeddings.id is not None
    assert len(embeddings.data) == 1
    assert len(embeddings.data[0].embedding) == WIDTH
    assert embeddings.usage.completion_tokens == 0
    assert embeddings.usage.prompt_tokens == len(input_tokens)
    assert embeddings.usage.total_tokens == len(input_tokens)

    vllm_outputs = [d.embedding for d in embeddings.data]
    run_embedding_correctness_test(hf_model, [input_text], vllm_outputs)


async def test_completion_request_batched(
    client: openai.AsyncOpenAI, model_name: str, hf_model: Any, input_tokens: list[int]
) -> None:
    N = 10
    input_texts = [input_text] * N

    # test input: list[str]
    embedding_response = await client.embeddings.create(model=model_name, input=input_texts, encoding_format="float")
    embeddings = EmbeddingResponse.model_validate(embedding_response.model_dump(mode="json"))

    assert embeddings.id is not None
    assert len(embeddings.data) == N
    assert len(embeddings.data[0].embedding) == WIDTH
    assert embeddings.usage.completion_tokens == 0
    assert embeddings.usage.prompt_tokens == len(input_tokens) * N
    assert embeddings.usage.total_tokens == len(input_tokens) * N

    vllm_outputs = [d.embedding for d in embeddings.data]
    run_embedding_correctness_test(hf_model, input_texts, vllm_outputs)

    # test list[list[int]]
    embedding_response = await client.embeddings.create(
        model=model_name, input=[input_tokens] * N, encoding_format="float"
    )
    embeddings = EmbeddingResponse.model_validate(embedding_response.model_dump(mode="json"))

    assert embeddings.id is not None
    assert len(embeddings.data) == N
    assert len(embeddings.data[0].embedding) == WIDTH
    assert embeddings.usage.completion_tokens == 0
    assert embeddings.usage.prompt_tokens == len(input_tokens) * N
    assert embeddings.usage.total_tokens == len(input_tokens) * N

    vllm_outputs = [d.embedding for d in embeddings.data]
    run_embedding_correctness_test(hf_model, input_texts, vllm_outputs)


async def test_truncate_prompt_tokens(client: openai.AsyncOpenAI, model_name: str) -> None:
    input_texts = [
        "Como o Brasil pode fomentar o desenvolvimento de modelos de IA?",
    ]

    # test single embedding
    embedding_response = await client.embeddings.create(
        model=model_name, input=input_texts, extra_body={"truncate_prompt_tokens": 10}
    )
    embeddings = EmbeddingResponse.model_validate(embedding_response.model_dump(mode="json"))

    assert embeddings.id is not None
    assert len(embeddings.data) == 1
    assert len(embeddings.data[0].embedding) == WIDTH
    assert embeddings.usage.completion_tokens == 0
    assert embeddings.usage.prompt_tokens == 10
    assert embeddings.usage.total_tokens == 10

    input_tokens = [
        1,
        24428,
        289,
        18341,
        26165,
        285,
        19323,
        283,
        289,
        26789,
        3871,
        28728,
        9901,
        340,
        2229,
        385,
        340,
        315,
        28741,
        28804,
        2,
    ]
    embedding_response = await client.embeddings.create(
        model=model_name, input=input_tokens, extra_body={"truncate_prompt_tokens": 10}
    )
    embeddings = EmbeddingResponse.model_validate(embedding_response.model_dump(mode="json"))

    assert embeddings.id is not None
    assert len(embeddings.data) == 1
    assert len(embeddings.data[0].embedding) == WIDTH
    assert embeddings.usage.completion_tokens == 0
    assert embeddings.usage.prompt_tokens == 10
    assert embeddings.usage.total_tokens == 10

    # invalid_truncate_prompt_tokens
    input_texts = [
        "Como o Brasil pode fomentar o desenvolvimento de modelos de IA?",
    ]

    with pytest.raises(openai.BadRequestError):
        await client.embeddings.create(
            model=model_name,
            input=input_texts,
            extra_body={"truncate_prompt_tokens": 8193},
        )


async def test_base64_embedding(hf_model: Any, client: openai.AsyncOpenAI, model_name: str) -> None:
    input_texts = [
        "Hello my name is",
        "The best thing about vLLM is that it supports many different models",
    ]

    responses_float = await client.embeddings.create(input=input_texts, model=model_name, encoding_format="float")
    float_data = [d.embedding for d in responses_float.data]
    run_embedding_correctness_test(hf_model, input_texts, float_data)

    responses_base64 = await client.embeddings.create(input=input_texts, model=model_name, encoding_format="base64")
    base64_data = []
    for data in responses_base64.data:
        base64_data.append(np.frombuffer(base64.b64decode(data.embedding), dtype="float32").tolist())

    run_embedding_correctness_test(hf_model, input_texts, base64_data)

    # Default response is float32 decoded from base64 by OpenAI Client
    responses_default = await client.embeddings.create(input=input_texts, model=model_name)
    default_data = [d.embedding for d in responses_default.data]
    run_embedding_correctness_test(hf_model, input_texts, default_data)


async def test_base64_embed_dtype_and_endianness(
    server: RemoteServer, client: openai.AsyncOpenAI, model_name: str
) -> None:
    input_texts = [input_text] * 3
    responses_float = await client.embeddings.create(input=input_texts, model=model_name, encoding_format="float")
    float_data = [d.embedding for d in responses_float.data]

    for embed_dtype in EMBED_DTYPES:
        for endianness in ENDIANNESS:
            responses_base64 = requests.post(
                server.url_for("/v1/embeddings"),
                json={
                    "model": model_name,
                    "input": input_texts,
                    "encoding_format": "base64",
                    "embed_dtype": embed_dtype,
                    "endianness": endianness,
                },
            )

            base64_data = []
            for data in responses_base64.json()["data"]:
                binary = base64.b64decode(data["embedding"])
                tensor = binary2tensor(binary, (-1,), embed_dtype, endianness)
                base64_data.append(tensor.to(torch.float32).tolist())

            check_embeddings_close(
                embeddings_0_lst=float_data,
                embeddings_1_lst=base64_data,
                name_0="float_data",
                name_1="base64_data",
                tol=1e-2,
            )


@pytest.mark.parametrize("embed_dtype", REFUSED_EMBED_DTYPES)
def test_fp8_embed_dtypes_are_refused(server: RemoteServer, model_name: str, embed_dtype: str) -> None:
    """Not vLLM's: the refusal of the two EMBED_DTYPES left out above."""
    response = requests.post(
        server.url_for("/v1/embeddings"),
        json={"model": model_name, "input": input_text, "encoding_format": "base64", "embed_dtype": embed_dtype},
    )
    assert response.status_code == 400 and response.json()["error"]["param"] == "embed_dtype"


@pytest.mark.xfail(strict=True, raises=KeyError, reason="refused: encoding_format bytes / bytes_only (a 400)")
@pytest.mark.parametrize("encoding_format", ["bytes", "bytes_only"])
def test_bytes_encoding_formats(server: RemoteServer, model_name: str, encoding_format: str) -> None:
    """vLLM's test_bytes_*: a binary body (with a `metadata` header for bytes). Refused here: the body stays
    JSON, so the header lookup fails (the strict xfail proves the refusal)."""
    responses_bytes = requests.post(
        server.url_for("/v1/embeddings"),
        json={"model": model_name, "input": [input_text] * 3, "encoding_format": encoding_format},
    )
    assert responses_bytes.status_code == 400
    responses_bytes.headers["metadata"]


@pytest.mark.parametrize("param_name", ["encoding_format", "embed_dtype", "endianness"])
async def test_params_not_supported(server: RemoteServer, model_name: str, param_name: str) -> None:
    responses_base64 = requests.post(
        server.url_for("/v1/embeddings"),
        json={
            "model": model_name,
            "input": input_text,
            "encoding_format": "base64",
            param_name: f"bad_{param_name}",
        },
    )

    assert responses_base64.status_code == 400
    assert "literal_error" in responses_base64.json()["error"]["message"]
    assert f"bad_{param_name}" in responses_base64.json()["error"]["message"]


async def test_use_activation(server: RemoteServer, model_name: str) -> None:
    async def get_outputs(use_activation: bool | None) -> torch.Tensor:
        request_args = {
            "model": model_name,
            "input": input_text,
            "encoding_format": "float",
            "use_activation": use_activation,
        }

        response = requests.post(server.url_for("v1/embeddings"), json=request_args)
        outputs = response.json()

        return torch.tensor([x["embedding"] for x in outputs["data"]])

    default = await get_outputs(use_activation=None)
    w_normal = await get_outputs(use_activation=True)
    wo_normal = await get_outputs(use_activation=False)

    assert torch.allclose(default, w_normal, atol=1e-2), "Default should use normal."
    assert not torch.allclose(w_normal, wo_normal, atol=1e-2), "wo_normal should not use normal."
    assert torch.allclose(w_normal, F.normalize(wo_normal, p=2, dim=-1), atol=1e-2), (
        "w_normal should be close to normal(wo_normal)."
    )


# test_online_dimensions.py: the Matryoshka model case (this model is Matryoshka: 32 to 64 dimensions).
MATRYOSHKA_DIMENSIONS = [32]
matryoshka_input_texts = [
    "The chef prepared a delicious meal.",
]


async def test_matryoshka(model_name: str, facade: Facade, hf_model: Any) -> None:
    client = openai.AsyncOpenAI(base_url=f"{facade.base_url}/v1", api_key="EMPTY", max_retries=0)

    async def make_request_and_correctness_test(dimensions: int | None) -> None:
        prompts = matryoshka_input_texts * 3

        embedding_response = await client.embeddings.create(
            model=model_name,
            input=prompts,
            dimensions=dimensions,  # type: ignore[arg-type]
            encoding_format="float",
        )
        embeddings = EmbeddingResponse.model_validate(embedding_response.model_dump(mode="json"))

        assert embeddings.id is not None
        assert len(embeddings.data) == 3
        assert len(embeddings.data[0].embedding) > 0
        assert embeddings.usage.completion_tokens == 0
        assert embeddings.usage.prompt_tokens > 0
        assert embeddings.usage.total_tokens > 0

        if dimensions is not None:
            assert len(embeddings.data[0].embedding) == dimensions

        vllm_outputs = [d.embedding for d in embeddings.data]
        run_embedding_correctness_test(hf_model, prompts, vllm_outputs, dimensions)

    valid_dimensions: list[int | None] = [None]
    valid_dimensions += MATRYOSHKA_DIMENSIONS[:2]

    for dimensions in valid_dimensions:
        await make_request_and_correctness_test(dimensions)

    invalid_dimensions: list[int | None] = [-1]
    assert 5 not in MATRYOSHKA_DIMENSIONS
    invalid_dimensions.append(5)

    for dimensions in invalid_dimensions:
        with pytest.raises(openai.BadRequestError):
            await make_request_and_correctness_test(dimensions)
    await client.close()
