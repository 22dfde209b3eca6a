"""The admitted step the HTTP embedding routes share (service/api/http/admitted.py): the size check in each
API's own field name, and the default-model pick, over fake models (no Triton)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

import pytest

from service.api.http.admitted import check_size, on_embedder
from service.errors import ErrorKind, ServiceError
from service.models import Models
from service.pipeline.embedder import Embedder
from service.pipeline.params import EmbedParams


@dataclass(frozen=True)
class Info:
    min_dimensions: int = 32
    hidden_size: int = 64
    triton_name: str = "qwen3-embedding-dev"


@dataclass(frozen=True)
class FakeEmbedder:
    info: Info = Info()


class FakeModels:
    def __init__(self) -> None:
        self.asked: list[str] = []

    def embedder(self, name: str = "") -> Any:
        self.asked.append(name)
        return FakeEmbedder()


EMBEDDER = cast(Embedder, FakeEmbedder())


@pytest.mark.parametrize("dimensions", [None, 32, 48, 64])
def test_a_size_in_range_or_none_passes(dimensions: int | None) -> None:
    check_size(EMBEDDER, dimensions)


@pytest.mark.parametrize("dimensions", [0, 31, 65])
def test_a_size_out_of_range_is_refused_and_zero_is_not_full(dimensions: int) -> None:
    with pytest.raises(ServiceError) as refused:
        check_size(EMBEDDER, dimensions)
    assert refused.value.kind is ErrorKind.INVALID_ARGUMENT and refused.value.param == "dimensions"
    assert refused.value.message == f"dimensions must be between 32 and 64, got {dimensions}"


def test_the_refusal_names_the_field_as_the_api_calls_it() -> None:
    with pytest.raises(ServiceError) as refused:
        check_size(EMBEDDER, 4096, "output_dimension")
    assert refused.value.kind is ErrorKind.INVALID_ARGUMENT and refused.value.param == "output_dimension"
    assert refused.value.message == "output_dimension must be between 32 and 64, got 4096"


async def test_on_embedder_picks_the_named_model_and_binds_the_params() -> None:
    models = FakeModels()
    params = EmbedParams(texts=("a", "b"), dimensions=48)
    bound, embedder = await on_embedder(params, "", 48)(cast(Models, models))
    assert models.asked == [""]  # empty: the default model
    assert bound == EmbedParams(texts=("a", "b"), dimensions=48, model="qwen3-embedding-dev")
    assert embedder.info.triton_name == "qwen3-embedding-dev"
    with pytest.raises(ServiceError, match=r"^output_dimension must be"):
        await on_embedder(params, "named", 16, "output_dimension")(cast(Models, models))
    assert models.asked == ["", "named"]
