"""LangChain, LlamaIndex and LiteLLM, configured as docs/clients.md says (its code blocks run as they are, aimed at
a test facade), get the vectors gRPC Embed returns; LangChain's default configuration, which sends OpenAI
tiktoken ids, gets a clear 400 rather than wrong vectors.

Offline: tiktoken's cl100k_base file comes from the copy llama-index-core ships (nothing is downloaded)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import openai
import pytest

from service.settings import Settings
from service.triton.runtime import TritonProcess
from tests.doc_pages import CLIENTS, code_blocks, section
from tests.helpers import Facade, cosine, embed, run_facade, vectors

# litellm's own pydantic models warn when first used (ReadOnly TypedDict items): nothing of ours.
pytestmark = pytest.mark.filterwarnings("ignore:.*ReadOnly.*:UserWarning")

SAME = 0.99999
SECTION = "## Using it from LangChain, LlamaIndex, LiteLLM"
LIBRARIES = ["langchain_openai", "llama_index", "litellm"]
TEXTS = ["How are you today?", "The capital of China is Beijing."]


def readme_blocks() -> dict[str, str]:
    """The section's Python blocks, by the library each imports."""
    blocks = code_blocks(section(CLIENTS, SECTION), "python")
    return {next(lib for lib in LIBRARIES if f"import {lib}" in b or f"from {lib}" in b): b for b in blocks}


@pytest.fixture(scope="module")
def strict(model_repository: Path, triton: TritonProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Facade]:
    """A facade with the default settings: token-id input refused."""
    with run_facade(model_repository, triton.grpc_url, tmp_path_factory.mktemp("strict")) as running:
        yield running


@pytest.fixture(scope="module")
def permissive(
    model_repository: Path, triton: TritonProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Facade]:
    env = {"QWEN3_EMBED_ALLOW_TOKEN_IDS": "true"}
    with run_facade(model_repository, triton.grpc_url, tmp_path_factory.mktemp("permissive"), env=env) as running:
        yield running


def served_name(facade: Facade) -> str:
    return str(httpx.get(f"{facade.base_url}/v1/models").json()["data"][0]["id"])


def grpc_vectors(facade: Facade, texts: list[str], **kwargs: Any) -> np.ndarray:
    with grpc.insecure_channel(facade.target) as channel:
        return vectors(embed(facade.stub(channel), texts, **kwargs))


def assert_same(got: list[list[float]], want: np.ndarray) -> None:
    assert len(got) == len(want)
    for a, b in zip(got, want, strict=True):
        assert len(a) == len(b) and cosine(np.asarray(a), b) >= SAME


@pytest.fixture(scope="module")
def litellm_imported() -> None:
    # Importing litellm fetches a price list unless told to use its bundled one, and points
    # TIKTOKEN_CACHE_DIR at its own directory for the whole process: both undone after the import.
    saved = {k: os.environ.get(k) for k in ("TIKTOKEN_CACHE_DIR", "LITELLM_LOCAL_MODEL_COST_MAP")}
    os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"
    try:
        import litellm  # noqa: F401
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture
def tiktoken_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    # cl100k_base under the (hash-checked) file name tiktoken looks for, so LangChain's default runs offline.
    cache = resources.files("llama_index.core") / "_static" / "tiktoken_cache"
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(cache))


def test_the_section_has_a_block_per_library() -> None:
    assert sorted(readme_blocks()) == sorted(LIBRARIES)


@pytest.mark.parametrize("library", LIBRARIES)
def test_readme_block_gives_the_grpc_vectors(strict: Facade, library: str, litellm_imported: None) -> None:
    code = readme_blocks()[library]
    # Aimed at this facade: its address, its served name, a dimension the 64-dimension dev model has.
    for readme, here in [
        ("http://localhost:8080/v1", f"{strict.base_url}/v1"),
        ("Qwen3-Embedding-0.6B", served_name(strict)),
        ("dimensions=256", "dimensions=32"),
    ]:
        assert readme in code, f"the {library} block lacks {readme!r}"
        code = code.replace(readme, here)
    namespace: dict[str, Any] = {}
    exec(compile(code, f"{CLIENTS} ({library})", "exec"), namespace)
    texts, question = namespace["texts"], namespace["question"]
    assert_same(namespace["doc_vectors"], grpc_vectors(strict, texts))
    assert_same([namespace["query_vector"]], grpc_vectors(strict, [question], prompt_name="query", dimensions=32))


def test_token_ids_are_refused_by_default() -> None:
    assert Settings.model_fields["allow_token_ids"].default is False


def test_langchain_default_gets_a_clear_error(strict: Facade, tiktoken_offline: None) -> None:
    from langchain_openai import OpenAIEmbeddings

    default = OpenAIEmbeddings(model=served_name(strict), base_url=f"{strict.base_url}/v1", api_key="EMPTY")
    with pytest.raises(openai.BadRequestError) as err:
        default.embed_documents(TEXTS)
    assert err.value.status_code == 400
    message = str(err.value)
    assert "token-id input is turned off" in message and "check_embedding_ctx_length=False" in message


def test_why_langchain_default_is_refused(permissive: Facade, tiktoken_offline: None) -> None:
    """With token ids allowed they embed as Qwen3 ids: LangChain's default (cl100k ids) gets other vectors,
    silently. Text from the same client is still right."""
    from langchain_openai import OpenAIEmbeddings

    url, name = f"{permissive.base_url}/v1", served_name(permissive)
    want = grpc_vectors(permissive, TEXTS)
    got = OpenAIEmbeddings(model=name, base_url=url, api_key="EMPTY").embed_documents(TEXTS)
    assert all(cosine(np.asarray(a), b) < 0.999 for a, b in zip(got, want, strict=True))
    text = OpenAIEmbeddings(model=name, base_url=url, api_key="EMPTY", check_embedding_ctx_length=False)
    assert_same(text.embed_documents(TEXTS), want)


def test_llamaindex_refuses_a_custom_name_as_model(strict: Facade) -> None:
    from llama_index.embeddings.openai import OpenAIEmbedding

    with pytest.raises(ValueError, match="not a valid"):
        OpenAIEmbedding(model=served_name(strict), api_base=f"{strict.base_url}/v1", api_key="EMPTY")


def test_llamaindex_sends_newlines_as_spaces(strict: Facade) -> None:
    from llama_index.embeddings.openai import OpenAIEmbedding

    model = OpenAIEmbedding(model_name=served_name(strict), api_base=f"{strict.base_url}/v1", api_key="EMPTY")
    assert_same([model.get_text_embedding("two\nlines")], grpc_vectors(strict, ["two lines"]))


def test_litellm_needs_dimensions_allowed(strict: Facade, litellm_imported: None) -> None:
    import litellm

    server: dict[str, Any] = {
        "model": f"openai/{served_name(strict)}",
        "api_base": f"{strict.base_url}/v1",
        "api_key": "EMPTY",
    }
    with pytest.raises(litellm.UnsupportedParamsError):
        litellm.embedding(input=TEXTS, dimensions=32, **server)
    # drop_params drops dimensions without a word: full-size vectors.
    dropped = litellm.embedding(input=TEXTS, dimensions=32, drop_params=True, **server)
    assert len(dropped.data[0]["embedding"]) == 64
