"""Process-wide serving state: the Triton backend, the Embedder once the model is known, readiness and
draining. Admission lives in service/admission.py, the request lifecycle in service/lifecycle.py."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from service.metrics import Metrics
from service.model_info import ModelInfo
from service.pipeline.embedder import Embedder
from service.pipeline.errors import ErrorKind, ServiceError
from service.pipeline.tokenization import TextTokenizer, load_tokenizer
from service.settings import Settings
from service.triton.client import TritonBackend
from service.triton.supervisor import Misconfiguration

log = logging.getLogger(__name__)

# Re-reading the model config on each readiness poll must not stall the poll loop.
CONFIG_TIMEOUT_S = 2.0


class ServiceState:
    def __init__(self, settings: Settings, backend: TritonBackend, metrics: Metrics) -> None:
        self.settings = settings
        self.backend = backend
        self.metrics = metrics
        self.embedder: Embedder | None = None
        self.ready = False
        self.draining = False
        self.unready_reason = ""  # why the model facts in force cannot serve (logged once per reason)

    async def load_model(self, config: Any = None) -> Embedder:
        """The Embedder: the model description from Triton's model config (or `config`, read from a local
        repository before Triton starts) and the tokenizer. Raises Misconfiguration when they are unusable,
        which no retry fixes; a Triton that does not answer raises its client's (passing) error."""
        s = self.settings
        if config is None:
            config = await self.backend.model_config()
        try:
            info = ModelInfo.from_triton_config(config, s.served_model_name)
        except (ValueError, KeyError) as exc:  # missing parameters, bad numbers or JSON
            raise Misconfiguration(f"the model description of {s.model_name!r} is unusable: {exc}") from None
        tokenizer_dir = s.resolved_tokenizer_dir()
        try:
            tokenizer = TextTokenizer(load_tokenizer(tokenizer_dir, info.embedding_rows))
        except Exception as exc:  # missing, unreadable or corrupt files: none of it heals by itself
            raise Misconfiguration(f"cannot load the tokenizer from {tokenizer_dir}: {exc}") from None
        log.info(
            "model %s (%s): dim %d, min dim %d, max tokens %d, prompts %s",
            info.served_name,
            info.source_model,
            info.hidden_size,
            info.min_dimensions,
            info.max_input_tokens,
            sorted(info.prompts),
        )
        try:
            return Embedder(
                info,
                tokenizer,
                self.backend,
                self.metrics,
                max_batch_inputs=s.max_batch_inputs,
                max_request_tokens=s.max_request_tokens,
                buckets=s.buckets,
                token_budget=s.token_budget,
                max_triton_batch=s.max_triton_batch,
                tokenizer_threads=s.tokenizer_threads,
            )
        except ValueError as exc:  # settings that do not fit this model (buckets)
            raise Misconfiguration(f"settings do not fit model {s.model_name!r}: {exc}") from None

    async def refresh(self) -> bool:
        """Checks Triton; loads the model facts the first time it is ready, and again whenever Triton's model
        config says something else (a redeploy with another export). Returns readiness. Raises
        Misconfiguration when the model facts can never be loaded at start: better to exit than stay unready."""
        ready = await self.backend.is_ready()
        if ready and self.embedder is None and not self.unready_reason:
            try:
                self.embedder = await self.load_model()
            except Misconfiguration:
                raise
            except Exception as exc:  # Triton went away between the two calls: the next poll retries
                log.warning("could not read the model description from Triton: %s", exc)
                ready = False
        elif ready:
            ready = await self._facts_current()
        ready = ready and self.embedder is not None and not self.draining
        if ready != self.ready:
            log.log(logging.INFO if ready else logging.WARNING, "backend %s", "ready" if ready else "NOT ready")
        self.ready = ready
        self.metrics.triton_up.set(1 if ready else 0)
        return ready

    async def _facts_current(self) -> bool:
        """Compares the facts in force with Triton's model config (one cheap gRPC call per poll) and
        rebuilds the Embedder when they differ: stale facts would fail every request (wrong hidden size)
        or, worse, cut vectors wrongly. A new export that cannot be used leaves the facade NOT_SERVING
        with the reason in the log, and is tried again on each poll (it may still be being published)."""
        s = self.settings
        try:
            config = await asyncio.wait_for(self.backend.model_config(), CONFIG_TIMEOUT_S)
        except Exception as exc:  # a slow or passing failure: keep the facts, Triton said it is ready
            log.debug("could not re-read the model config: %s", exc)
            return True
        try:
            info: ModelInfo | None = ModelInfo.from_triton_config(config, s.served_model_name)
        except (ValueError, KeyError):
            info = None  # unusable: load_model below says why
        if self.embedder is not None and info == self.embedder.info:
            return True
        if self.embedder is not None:
            log.warning(
                "Triton's model %r changed (hidden size %s -> %s, max tokens %s -> %s): reloading its facts",
                s.model_name,
                self.embedder.info.hidden_size,
                info.hidden_size if info else "?",
                self.embedder.info.max_input_tokens,
                info.max_input_tokens if info else "?",
            )
        try:
            embedder = await self.load_model(config)
        except Misconfiguration as exc:
            self._retire()
            reason = f"the model Triton now serves cannot be used: {exc}"
            if reason != self.unready_reason:
                log.error("%s; NOT_SERVING until that changes", reason)
            self.unready_reason = reason
            return False
        self._retire()
        self.embedder, self.unready_reason = embedder, ""
        return True

    def _retire(self) -> None:
        """Drops the Embedder in force; its threads end after the longest deadline its requests may have."""
        old, self.embedder = self.embedder, None
        if old is not None:
            asyncio.get_running_loop().call_later(self.settings.default_timeout_s * 10, old.close)

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

    def require_embedder(self) -> Embedder:
        if self.draining:
            raise ServiceError(ErrorKind.UNAVAILABLE, "the server is shutting down; retry on another replica")
        if self.embedder is None and self.unready_reason:
            raise ServiceError(ErrorKind.UNAVAILABLE, "the served model changed and cannot be used yet; retry later")
        if self.embedder is None:
            raise ServiceError(ErrorKind.UNAVAILABLE, "the model is not loaded yet; retry shortly")
        return self.embedder
