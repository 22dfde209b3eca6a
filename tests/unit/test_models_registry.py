"""service/models.py: picking a served model by name and kind, defaults, and the errors clients get."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from service.contract import ModelInfo, ModelKind
from service.errors import ErrorKind, ServiceError
from service.models import Models


@dataclass
class FakeServed:
    info: ModelInfo
    buckets: list[int] = field(default_factory=lambda: [16, 32])
    closed: bool = False

    def close(self) -> None:
        self.closed = True


def served(triton_name: str, kind: ModelKind, source: str = "") -> FakeServed:
    info = ModelInfo(
        source_model=source or f"Qwen/{triton_name}",
        hidden_size=64,
        max_input_tokens=512,
        embedding_rows=1000,
        pad_id=1,
        eos_id=1,
        kind=kind,
        triton_name=triton_name,
        served_name=(source or triton_name).split("/")[-1],
        max_batch_size=8,
    )
    return FakeServed(info)


@pytest.fixture
def models() -> Models:
    return Models(
        [
            served("small", ModelKind.EMBEDDING),
            served("qwen3_embedding", ModelKind.EMBEDDING, "Qwen/Qwen3-Embedding-4B"),
            served("qwen3_reranker", ModelKind.RERANKER, "Qwen/Qwen3-Reranker-4B"),
        ],
        default_embedding="qwen3_embedding",
    )


def test_defaults_per_kind(models: Models) -> None:
    assert models.embedder().info.triton_name == "qwen3_embedding"
    assert models.reranker().info.triton_name == "qwen3_reranker"  # the only one: default without a setting
    assert [m.info.triton_name for m in models.all()] == ["qwen3_embedding", "qwen3_reranker", "small"]
    assert models.is_default(models.embedder()) and not models.is_default(models.embedder("small"))


def test_found_by_served_triton_or_source_name(models: Models) -> None:
    for name in ("Qwen3-Embedding-4B", "qwen3_embedding", "Qwen/Qwen3-Embedding-4B"):
        assert models.embedder(name).info.triton_name == "qwen3_embedding"
    assert models.embedder("small").info.triton_name == "small"


def test_unknown_or_wrong_kind_is_refused_by_name(models: Models) -> None:
    with pytest.raises(ServiceError) as unknown:
        models.embedder("text-embedding-3-small")
    assert unknown.value.kind is ErrorKind.NOT_FOUND and unknown.value.param == "model"
    assert "text-embedding-3-small" in unknown.value.message and "Qwen3-Reranker-4B" in unknown.value.message
    with pytest.raises(ServiceError) as wrong:
        models.embedder("qwen3_reranker")  # a reranker asked to embed
    assert wrong.value.kind is ErrorKind.INVALID_ARGUMENT and "reranker" in wrong.value.message
    with pytest.raises(ServiceError) as long_name:
        models.embedder("x" * 10_000)
    assert len(long_name.value.message) < 400  # an error does not grow with the client's input


def test_no_model_of_a_kind() -> None:
    only = Models([served("qwen3_embedding", ModelKind.EMBEDDING)])
    with pytest.raises(ServiceError) as missing:
        only.reranker()
    assert missing.value.kind is ErrorKind.NOT_FOUND and "no reranker model" in missing.value.message


def test_unknown_default_setting_falls_back_to_the_first_by_name() -> None:
    models = Models([served("b", ModelKind.EMBEDDING), served("a", ModelKind.EMBEDDING)], default_embedding="zz")
    assert models.embedder().info.triton_name == "a"


def test_close_closes_every_model(models: Models) -> None:
    models.close()
    assert all(m.closed for m in models.all())  # type: ignore[attr-defined]
