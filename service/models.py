"""What the facade serves: every Triton model of the repository it was pointed at (embedding models and
rerankers), found by name, with one default per kind. A `Models` is an immutable snapshot: a request picks its
model from the snapshot in force when it was admitted, and a redeploy swaps in a new snapshot."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from service.contract import ModelKind
from service.errors import ErrorKind, ServiceError
from service.pipeline.inference import ServedModel

if TYPE_CHECKING:
    from service.pipeline.embedder import Embedder
    from service.pipeline.reranker import Reranker


def _shown(name: str) -> str:
    """Client-chosen names quoted in errors are cut: an error must not grow with the input."""
    return name if len(name) <= 64 else name[:64] + "…"


class Models:
    def __init__(self, served: Iterable[ServedModel], default_embedding: str = "", default_reranker: str = "") -> None:
        """`served` keyed by their Triton names; the defaults are Triton names ("" = the first of the kind)."""
        self.by_triton_name: dict[str, ServedModel] = {m.info.triton_name: m for m in served}
        self.defaults: dict[ModelKind, str] = {}
        for kind, wanted in ((ModelKind.EMBEDDING, default_embedding), (ModelKind.RERANKER, default_reranker)):
            of_kind = sorted(n for n, m in self.by_triton_name.items() if m.info.kind is kind)
            if of_kind:
                self.defaults[kind] = wanted if wanted in of_kind else of_kind[0]

    def all(self) -> list[ServedModel]:
        """Defaults first (the default embedding model leads), then by name."""
        defaults = set(self.defaults.values())
        return sorted(
            self.by_triton_name.values(),
            key=lambda m: (
                m.info.triton_name not in defaults,
                m.info.kind is not ModelKind.EMBEDDING,
                m.info.triton_name,
            ),
        )

    def of_kind(self, kind: ModelKind) -> list[ServedModel]:
        return [m for m in self.all() if m.info.kind is kind]

    def is_default(self, model: ServedModel) -> bool:
        return self.defaults.get(model.info.kind) == model.info.triton_name

    def find(self, name: str) -> ServedModel | None:
        """By the name clients see, the Triton name or the source checkpoint (what OpenAI clients send)."""
        for model in self.all():
            info = model.info
            if name in (info.served_name, info.triton_name, info.source_model):
                return model
        return None

    def pick(self, kind: ModelKind, name: str = "") -> ServedModel:
        """The model `name` of `kind`, or the default of `kind` when `name` is empty."""
        if not name:
            default = self.defaults.get(kind)
            if default is None:
                raise ServiceError(
                    ErrorKind.NOT_FOUND, f"no {kind.value} model is served here; served: {self.names()}", "model"
                )
            return self.by_triton_name[default]
        model = self.find(name)
        if model is None:
            raise ServiceError(
                ErrorKind.NOT_FOUND, f"model {_shown(name)!r} is not served here; served: {self.names()}", "model"
            )
        if model.info.kind is not kind:
            raise ServiceError(
                ErrorKind.INVALID_ARGUMENT,
                f"model {_shown(name)!r} is a {model.info.kind.value} model, not a {kind.value} model; "
                f"{kind.value} models served: {self.names(kind) or 'none'}",
                "model",
            )
        return model

    def embedder(self, name: str = "") -> Embedder:
        return self.pick(ModelKind.EMBEDDING, name)  # type: ignore[return-value]

    def reranker(self, name: str = "") -> Reranker:
        return self.pick(ModelKind.RERANKER, name)  # type: ignore[return-value]

    def names(self, kind: ModelKind | None = None) -> str:
        return ", ".join(m.info.served_name for m in self.all() if kind is None or m.info.kind is kind)

    def close(self) -> None:
        for model in self.by_triton_name.values():
            model.close()
