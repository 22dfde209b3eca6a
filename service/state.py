"""Process-wide serving state: the Triton backend, the Embedder once the model is known, readiness,
admission control and draining. Both APIs go through it."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from service.metrics import Metrics
from service.model_info import ModelInfo
from service.pipeline.embedder import Embedder
from service.pipeline.errors import ErrorKind, ServiceError
from service.pipeline.tokenization import TextTokenizer, load_tokenizer
from service.settings import Settings
from service.triton.client import TritonBackend

log = logging.getLogger(__name__)


class ServiceState:
    def __init__(self, settings: Settings, backend: TritonBackend, metrics: Metrics) -> None:
        self.settings = settings
        self.backend = backend
        self.metrics = metrics
        self.embedder: Embedder | None = None
        self.ready = False
        self.draining = False
        self._slots = asyncio.Semaphore(settings.max_in_flight)
        self._readiness_listeners: list[asyncio.Queue[bool]] = []

    async def _load_model(self) -> Embedder:
        s = self.settings
        config = await self.backend.model_config()
        info = ModelInfo.from_triton_config(config, s.served_model_name)
        tokenizer = TextTokenizer(
            load_tokenizer(s.resolved_tokenizer_dir(), info.embedding_rows), info.eos_id, info.embedding_rows
        )
        log.info(
            "model %s (%s): dim %d, min dim %d, max tokens %d, prompts %s",
            info.served_name,
            info.source_model,
            info.hidden_size,
            info.min_dimensions,
            info.max_input_tokens,
            sorted(info.prompts),
        )
        return Embedder(
            info,
            tokenizer,
            self.backend,
            self.metrics,
            max_batch_inputs=s.max_batch_inputs,
            buckets=s.buckets,
            token_budget=s.token_budget,
            max_triton_batch=s.max_triton_batch,
            tokenizer_threads=s.tokenizer_threads,
        )

    async def refresh(self) -> bool:
        """Checks Triton; loads the model facts the first time it is ready. Returns readiness."""
        ready = await self.backend.is_ready()
        if ready and self.embedder is None:
            try:
                self.embedder = await self._load_model()
            except Exception:
                log.exception("could not load the model description from Triton")
                ready = False
        ready = ready and self.embedder is not None and not self.draining
        if ready != self.ready:
            log.log(logging.INFO if ready else logging.WARNING, "backend %s", "ready" if ready else "NOT ready")
        self.ready = ready
        self.metrics.triton_up.set(1 if ready else 0)
        return ready

    async def watch(self, on_change: object = None) -> None:
        """Polls readiness forever; calls on_change(ready) when it flips."""
        last: bool | None = None
        while True:
            try:
                ready = await self.refresh()
            except Exception:
                log.exception("readiness check failed")
                ready = False
            if ready != last and callable(on_change):
                await on_change(ready)
            last = ready
            await asyncio.sleep(self.settings.health_poll_s)

    def require_embedder(self) -> Embedder:
        if self.draining:
            raise ServiceError(ErrorKind.UNAVAILABLE, "the server is shutting down; retry on another replica")
        if self.embedder is None:
            raise ServiceError(ErrorKind.UNAVAILABLE, "the model is not loaded yet; retry shortly")
        return self.embedder

    @asynccontextmanager
    async def admit(self, wait: bool = False) -> AsyncIterator[None]:
        """One in-flight slot. Unary calls are refused at once when full (wait=False); stream messages
        wait for a slot instead (backpressure)."""
        if not wait and self._slots.locked():
            raise ServiceError(
                ErrorKind.RESOURCE_EXHAUSTED,
                f"server overloaded: {self.settings.max_in_flight} requests in flight; retry after a short backoff",
            )
        await self._slots.acquire()
        self.metrics.in_flight.inc()
        try:
            yield
        finally:
            self.metrics.in_flight.dec()
            self._slots.release()
