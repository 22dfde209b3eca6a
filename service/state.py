"""Process-wide serving state: the inference server (a ModelServer, service/pipeline/backend.py), the served
models (service/models.py) once Triton has described them, readiness and draining. Admission lives in
service/admission.py, the request lifecycle in service/lifecycle.py."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from service.contract import ModelInfo, ModelKind
from service.errors import ErrorKind, Misconfiguration, ServiceError
from service.metrics import Metrics
from service.model_identity import check_served_name
from service.models import Models
from service.pipeline.backend import ModelServer
from service.pipeline.cache import EmbeddingCache
from service.pipeline.embedder import Embedder
from service.pipeline.inference import ServedModel
from service.pipeline.tokenization import TextTokenizer, load_tokenizer
from service.repository import local_model_names
from service.settings import Settings

log = logging.getLogger(__name__)

# Re-reading the model config on each readiness poll must not stall the poll loop.
CONFIG_TIMEOUT_S = 2.0


class ServiceState:
    def __init__(self, settings: Settings, backend: ModelServer, metrics: Metrics) -> None:
        self.settings = settings
        self.backend = backend
        self.metrics = metrics
        self.models: Models | None = None
        self.ready = False
        self.draining = False
        self.unready_reason = ""  # why the model facts in force cannot serve (logged once per reason)
        # One embedding cache for every embedding model of the process (keys carry the model load), or None.
        self.cache = EmbeddingCache(settings.embedding_cache_bytes, metrics) if settings.embedding_cache_bytes else None

    @property
    def embedder(self) -> Embedder | None:
        """The default embedding model, when one is served."""
        if self.models is None or ModelKind.EMBEDDING not in self.models.defaults:
            return None
        return self.models.embedder()

    async def model_names(self) -> list[str]:
        """The Triton models to serve: settings.models, else the local repository's (local Triton), else
        Triton's repository index (a remote Triton)."""
        s = self.settings
        if s.models:
            return list(s.models)
        if not s.triton_url:
            return local_model_names(s)
        # A Triton in explicit model-control mode lists models it never loaded (or a folder being exported):
        # serve what it has loaded, and wait for the default embedding model whatever its state.
        states = await self.backend.model_states()
        return sorted(n for n, state in states.items() if state == "READY" or n == s.model_name)

    def build(self, config: Any) -> ServedModel:
        """One served model from its Triton config: its facts and its tokenizer. Raises Misconfiguration
        when they are unusable, which no retry fixes."""
        s = self.settings
        name = config.name
        served_name = s.served_model_name if name == s.model_name else ""
        try:
            info = ModelInfo.from_triton_config(config, served_name)
        except (ValueError, KeyError) as exc:  # missing parameters, bad numbers or JSON
            raise Misconfiguration(f"the model description of {name!r} is unusable: {exc}") from None
        check_served_name(served_name, info, name)  # a served name that contradicts the export: exit 2
        tokenizer_dir = s.resolved_tokenizer_dir(name)
        try:
            tokenizer = TextTokenizer(load_tokenizer(tokenizer_dir, info.embedding_rows))
        except Exception as exc:  # missing, unreadable or corrupt files: none of it heals by itself
            raise Misconfiguration(f"cannot load the tokenizer from {tokenizer_dir} (model {name!r}): {exc}") from None
        log.info(
            "model %s (%s, %s): %s max tokens %d, prompts %s",
            info.served_name,
            info.source_model,
            info.kind.value,
            f"dim {info.hidden_size}, min dim {info.min_dimensions}," if info.kind is ModelKind.EMBEDDING else "",
            info.max_input_tokens,
            sorted(info.prompts),
        )
        kwargs: dict[str, Any] = {
            "max_batch_inputs": s.max_batch_inputs,
            "max_request_tokens": s.max_request_tokens,
            "buckets": s.buckets,
            "token_budget": s.token_budget,
            "max_triton_batch": s.max_triton_batch,
            "tokenizer_threads": s.tokenizer_threads,
            "max_calls_in_flight": s.triton_calls_in_flight,
            "bulk_calls_in_flight": s.bulk_calls_in_flight,
            "bulk_token_budget": s.bulk_token_budget,
            "bulk_window_s": s.bulk_window_s,
        }
        backend = self.backend.for_model(info)
        try:
            if info.kind is ModelKind.RERANKER:
                from service.pipeline.reranker import Reranker

                return Reranker(info, tokenizer, backend, self.metrics, **kwargs)  # type: ignore[no-any-return]
            embedder = Embedder(info, tokenizer, backend, self.metrics, **kwargs)
            embedder.use_cache(self.cache)
            return embedder
        except ValueError as exc:  # settings that do not fit this model (buckets)
            raise Misconfiguration(f"settings do not fit model {name!r}: {exc}") from None

    def install(self, configs: dict[str, Any]) -> bool:
        """Builds the served models from their Triton configs, reusing the ones whose facts did not change.
        Returns whether anything changed. Raises Misconfiguration (nothing replaced) when one is unusable."""
        s = self.settings
        current = self.models.by_triton_name if self.models is not None else {}
        served: dict[str, ServedModel] = {}
        built: list[ServedModel] = []
        try:
            for name, config in configs.items():
                old = current.get(name)
                if old is not None and self._same_facts(old, config):
                    served[name] = old
                    continue
                if old is not None:
                    log.warning("Triton's model %r changed: reloading its facts", name)
                model = self.build(config)
                built.append(model)
                served[name] = model
        except Misconfiguration:
            for model in built:
                model.close()
            raise
        if not built and set(served) == set(current):
            return False
        infos = [m.info.served_name for m in served.values()]
        clashes = {n for n in infos if infos.count(n) > 1}
        if clashes:
            for model in built:
                model.close()
            raise Misconfiguration(
                f"several models would be served as {sorted(clashes)}: set served_model_name, or rename the "
                "Triton models (export --name)"
            )
        retired = [m for n, m in current.items() if served.get(n) is not m]
        self.models = Models(served.values(), s.model_name, s.rerank_model_name)
        self._retire(retired)
        return True

    def _same_facts(self, model: ServedModel, config: Any) -> bool:
        s = self.settings
        try:
            served_name = s.served_model_name if config.name == s.model_name else ""
            return ModelInfo.from_triton_config(config, served_name) == model.info
        except (ValueError, KeyError):
            return False  # unusable: build() says why

    async def refresh(self) -> bool:
        """Checks Triton and every served model; loads their facts the first time they are ready, and again
        whenever Triton's model config says something else (a redeploy with another export). Returns
        readiness. Raises Misconfiguration when the facts can never be loaded at start: better to exit than
        stay unready. A new export that cannot be used later leaves the facade NOT_SERVING with the reason
        in the log, tried again on each poll (it may still be being published)."""
        try:
            names = await self.model_names()
            ready = await self.backend.is_ready(names)
        except Misconfiguration:
            raise
        except Exception as exc:  # Triton not answering its index: the next poll retries
            log.debug("could not list Triton's models: %s", exc)
            names, ready = [], False
        if ready and names:
            ready = await self._load(names, first=self.models is None and not self.unready_reason)
        ready = ready and self.models is not None and bool(names) and not self.draining
        if ready != self.ready:
            log.log(logging.INFO if ready else logging.WARNING, "backend %s", "ready" if ready else "NOT ready")
        self.ready = ready
        self.metrics.triton_up.set(1 if ready else 0)
        return ready

    async def _load(self, names: list[str], first: bool) -> bool:
        try:
            configs = {
                name: await asyncio.wait_for(self.backend.model_config(name), CONFIG_TIMEOUT_S) for name in names
            }
        except Exception as exc:  # a slow or passing failure: keep the facts, Triton said it is ready
            log.debug("could not read the model configs: %s", exc)
            return self.models is not None
        try:
            self.install(configs)
        except Misconfiguration as exc:
            if first:
                raise
            self._retire(list(self.models.by_triton_name.values()) if self.models is not None else [])
            self.models = None
            reason = f"the models Triton now serves cannot be used: {exc}"
            if reason != self.unready_reason:
                log.error("%s; NOT_SERVING until that changes", reason)
            self.unready_reason = reason
            return False
        self.unready_reason = ""
        return True

    def _retire(self, models: list[ServedModel]) -> None:
        """Drops replaced models; their threads end after the longest deadline their requests may have."""
        if models:
            loop = asyncio.get_running_loop()
            for model in models:
                loop.call_later(self.settings.default_timeout_s * 10, model.close)

    async def watch(self, on_change: Callable[[bool], Awaitable[None]] | None = None) -> None:
        """Polls readiness until cancelled; calls on_change(ready) when it flips. Ends only by raising
        Misconfiguration (see refresh)."""
        last: bool | None = None
        failing = False
        while True:
            try:
                ready = await self.refresh()
                failing = False
            except Misconfiguration:
                raise
            except Exception:
                if not failing:  # one traceback per episode, not one per poll
                    log.exception("readiness check failed")
                failing, ready = True, False
            if ready != last and on_change is not None:
                await on_change(ready)
            last = ready
            await asyncio.sleep(self.settings.health_poll_s)

    def require_models(self) -> Models:
        if self.draining:
            raise ServiceError(ErrorKind.UNAVAILABLE, "the server is shutting down; retry on another replica")
        if self.models is None and self.unready_reason:
            raise ServiceError(ErrorKind.UNAVAILABLE, "the served models changed and cannot be used yet; retry later")
        if self.models is None:
            raise ServiceError(ErrorKind.UNAVAILABLE, "the models are not loaded yet; retry shortly")
        return self.models

    def close(self) -> None:
        if self.models is not None:
            self.models.close()
