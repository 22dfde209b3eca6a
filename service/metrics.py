"""Prometheus metrics shared by the gRPC and HTTP APIs (one registry per facade process).

With `serve --workers N` every process keeps its values in files under PROMETHEUS_MULTIPROC_DIR (prometheus
client's multiprocess mode) and /metrics, on any worker or the ops port, renders the sum over all of them."""

from __future__ import annotations

import os

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, multiprocess, values

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def enable_multiprocess(path: str) -> None:
    """Metrics created from now on, in this process and in the processes it starts (they inherit the
    variable and read it when prometheus_client is imported), keep their values in files under `path`."""
    os.environ[MULTIPROC_ENV] = path
    values.ValueClass = values.MultiProcessValue()


def multiprocess_dir() -> str | None:
    path = os.environ.get(MULTIPROC_ENV)
    return path if path and os.path.isdir(path) else None


LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
COUNT_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048)
TOKEN_BUCKETS = (16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.multiprocess_dir = multiprocess_dir()
        r = self.registry
        self.requests = Counter(
            "qwen3_embed_requests",
            "Requests by API, method and status code",
            ["api", "method", "code"],
            registry=r,
        )
        self.request_seconds = Histogram(
            "qwen3_embed_request_duration_seconds",
            "Total request latency",
            ["api", "method"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.tokenize_seconds = Histogram(
            "qwen3_embed_tokenize_duration_seconds",
            "Templating + tokenization + truncation per request",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.triton_seconds = Histogram(
            "qwen3_embed_triton_duration_seconds",
            "One Triton call (queue + inference), by padded length",
            ["bucket"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.inputs = Histogram(
            "qwen3_embed_inputs_per_request", "Inputs per request", buckets=COUNT_BUCKETS, registry=r
        )
        self.tokens = Histogram(
            "qwen3_embed_tokens_per_request", "Real tokens per request", buckets=TOKEN_BUCKETS, registry=r
        )
        self.real_tokens = Counter("qwen3_embed_real_tokens", "Tokens sent to the model, without padding", registry=r)
        self.padded_tokens = Counter(
            "qwen3_embed_padded_tokens", "Tokens sent to the model, padding included", registry=r
        )
        self.triton_requests = Counter(
            "qwen3_embed_triton_requests", "Triton calls by padded length", ["bucket"], registry=r
        )
        self.rerank_documents = Histogram(
            "qwen3_embed_rerank_documents_per_request",
            "Documents per rerank request, by served model",
            ["model"],
            buckets=COUNT_BUCKETS,
            registry=r,
        )
        # Priority classes (service/priority.py): what each class gets from admission and Triton.
        self.priority_requests = Counter(
            "qwen3_embed_priority_requests", "Requests admitted, by priority class", ["priority"], registry=r
        )
        self.priority_request_seconds = Histogram(
            "qwen3_embed_priority_request_duration_seconds",
            "Request latency from asking admission for a slot to giving it back, by priority class",
            ["priority"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.admission_wait_seconds = Histogram(
            "qwen3_embed_admission_wait_seconds",
            "Wait for an admission slot (bulk requests and stream messages wait; interactive calls do not)",
            ["priority"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.priority_triton_calls = Counter(
            "qwen3_embed_priority_triton_calls",
            "Triton calls by the priority they were sent with (a call carrying any interactive row is interactive)",
            ["priority"],
            registry=r,
        )
        # Gauge modes say how the values of several worker processes combine (ignored with one process).
        self.in_flight = Gauge(
            "qwen3_embed_in_flight_requests", "Requests being served", registry=r, multiprocess_mode="livesum"
        )
        self.priority_in_flight = Gauge(
            "qwen3_embed_priority_in_flight_requests",
            "Requests holding an admission slot, by priority class",
            ["priority"],
            registry=r,
            multiprocess_mode="livesum",
        )
        self.triton_up = Gauge(
            "qwen3_embed_triton_up",
            "1 when Triton and the model are ready (in some worker, with several)",
            registry=r,
            multiprocess_mode="livemax",
        )
        self.worker_processes = Gauge(
            "qwen3_embed_worker_processes",
            "Facade processes serving the API (serve --workers N; 1 with one process)",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.worker_restarts = Counter(
            "qwen3_embed_worker_restarts",
            "Facade worker processes started again after they died (serve --workers N)",
            registry=r,
        )
        # Supervision of the local Triton (both stay 0 with --triton-url).
        self.triton_restarts = Counter(
            "qwen3_embed_triton_restarts",
            "Starts of the local Triton after it died, hung or failed to start",
            registry=r,
        )
        self.triton_failures = Gauge(
            "qwen3_embed_triton_consecutive_failures",
            "Local Triton deaths and failed starts since it last stayed up a minute; "
            "past triton_max_restarts the facade exits non-zero",
            registry=r,
            multiprocess_mode="livemax",
        )

        # The embedding cache (service/pipeline/cache.py; off unless embedding_cache_bytes is set).
        self.cache_hits = Counter("qwen3_embed_cache_hits", "Embedding inputs answered from the cache", registry=r)
        self.cache_misses = Counter(
            "qwen3_embed_cache_misses", "Embedding inputs looked up in the cache and not found", registry=r
        )
        self.cache_evictions = Counter(
            "qwen3_embed_cache_evictions",
            "Cache entries evicted (least recently used) to stay under the bound",
            registry=r,
        )
        self.cache_bytes = Gauge(
            "qwen3_embed_cache_bytes", "Memory charged to the cache's entries", registry=r, multiprocess_mode="livesum"
        )
        self.cache_entries = Gauge(
            "qwen3_embed_cache_entries", "Entries in the cache", registry=r, multiprocess_mode="livesum"
        )
        self.cache_limit_bytes = Gauge(
            "qwen3_embed_cache_limit_bytes",
            "The cache's byte bound (embedding_cache_bytes; per worker process)",
            registry=r,
            multiprocess_mode="livesum",
        )

    def render(self) -> bytes:
        if self.multiprocess_dir is None:
            return generate_latest(self.registry)
        merged = CollectorRegistry()
        multiprocess.MultiProcessCollector(merged, self.multiprocess_dir)
        return generate_latest(merged)
