"""The one settings object: CLI flags override `QWEN3_EMBED_*` environment variables override defaults."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from service import keys_file


class ApiKeysError(ValueError):
    """An API keys file that cannot be used: a start-up error, never a silent 'auth off'."""


def parse_api_keys(text: str, source: str) -> list[str]:
    """One key per line (service/keys_file.py); any problem, an unterminated last line included, is an error."""
    parsed = keys_file.parse(text, source)
    if parsed.problems:
        raise ApiKeysError(parsed.problems[0])
    return parsed.keys


def read_api_keys_file(path: Path) -> list[str]:
    """The file's keys, possibly none; raises ApiKeysError when it is not a regular file, cannot be read or
    parsed. Never blocks (a FIFO at the path is refused, not read)."""
    return read_api_keys(path).keys


def read_api_keys(path: Path) -> keys_file.Parsed:
    """As read_api_keys_file, with the keys' priority pins."""
    try:
        text = keys_file.read_text(path)
    except keys_file.KeysFileUnreadable as exc:
        raise ApiKeysError(str(exc)) from None
    parsed = keys_file.parse(text, str(path))
    if parsed.problems:
        raise ApiKeysError(parsed.problems[0])
    return parsed


class ApiKeys(list[str]):
    """The keys in force at start-up, plus where they came from: KeyChecker re-reads `file` when it changes
    (rotation without a restart), every `reload_s` seconds at most."""

    def __init__(self, fixed: list[str], file: Path | None, reload_s: float) -> None:
        parsed = read_api_keys(file) if file is not None else keys_file.Parsed()
        from_file = parsed.keys
        self.pins = dict(parsed.pins)  # key -> priority class name (service/keys_file.py)
        if file is not None and not from_file:
            # Auth must never turn itself off because a file lost its keys.
            raise ApiKeysError(
                f"the API keys file {file} holds no key (only comments or blank lines); add a key, "
                "or unset api_keys_file to run without API keys"
            )
        super().__init__([*fixed, *from_file])
        self.fixed = list(fixed)
        self.file = file
        self.reload_s = reload_s


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="QWEN3_EMBED_", extra="ignore")

    # Model and Triton
    model_repository: Path = Path("model_repository")
    model_name: str = Field("qwen3_embedding", description="The default embedding model (a Triton model name)")
    served_model_name: str = Field(
        "", description="Name clients see for model_name; default (every model): the source model's basename"
    )
    models: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Triton models to serve (embedding models and rerankers); empty = every model of the "
        "repository (local Triton) or of Triton's repository index (triton_url)",
    )
    rerank_model_name: str = Field("", description="The default reranker; empty = the first one by name")
    triton_url: str = Field("", description="host:port of Triton's gRPC endpoint; empty = start one locally")
    triton_log: Path = Path(".cache/triton.log")
    triton_start_timeout_s: float = 180.0
    tokenizer_dir: Path | None = Field(None, description="Default: <repository>/<model>/tokenizer")

    # Listeners
    host: str = "0.0.0.0"
    grpc_port: int = 50051
    http_port: int = Field(8080, description="OpenAI-compatible HTTP API and /metrics; 0 disables it")

    # Request limits
    max_batch_inputs: int = Field(2048, ge=1)
    max_in_flight: int = Field(64, ge=1, description="Concurrent requests per process; beyond -> overloaded")
    max_message_bytes: int = Field(
        16 * 1024 * 1024, ge=1024, description="gRPC request size; refused from the length prefix"
    )
    max_http_body_bytes: int = Field(16 * 1024 * 1024, ge=1024)
    max_request_tokens: int = Field(
        1 << 20, ge=16, description="Tokens (or token ids) in one request, all inputs together"
    )
    default_timeout_s: float = Field(60.0, gt=0, description="Deadline when the client sets none")
    stream_window: int = Field(8, ge=1, description="EmbedStream messages in progress per stream")

    # gRPC calls, each counted from its start (its message may still be arriving); over a bound a call gets
    # RESOURCE_EXHAUSTED at once (service/api/grpc/limits.py, docs/reliability.md)
    grpc_max_calls: int = Field(
        0,
        ge=0,
        description="API unary calls (Embed, Tokenize, Rerank, GetInfo) held at once, messages being received "
        "included; 0 = 2 x max_in_flight + 32",
    )
    grpc_max_streams: int = Field(64, ge=1, description="EmbedStream calls open at once")
    grpc_max_streams_per_connection: int = Field(
        8,
        ge=1,
        description="Open streams (EmbedStream, health Watch, reflection) per client connection; raise it for a "
        "proxy that carries many clients on one connection",
    )
    grpc_max_probe_calls: int = Field(
        64,
        ge=1,
        description="Health and reflection calls at once: a pool of their own, so probes answer whatever the "
        "API calls and streams hold",
    )
    grpc_idle_timeout_s: float = Field(
        30.0,
        gt=0,
        description="A call whose request message has not arrived, or a stream with no message and none of its "
        "work in progress, for this long ends with DEADLINE_EXCEEDED",
    )

    # Token-id input (HTTP): off by default. OpenAI clients that tokenize first (LangChain's default) send
    # tiktoken ids, which would embed as Qwen ids: wrong vectors, no error (service/api/http/token_ids.py).
    allow_token_ids: bool = Field(
        False, description="Accept OpenAI token-id input on the HTTP API (Qwen3 tokenizer ids only)"
    )

    # HTTP connections
    http_max_connections: int = Field(
        0, ge=0, description="Open HTTP connections; beyond, new ones are closed at once. 0 = from the fd limit"
    )
    http_request_timeout_s: float = Field(
        30.0, gt=0, description="Time a client has to send a whole request (headers and body)"
    )
    http_keepalive_s: float = Field(5.0, gt=0, description="Idle time before a kept-alive connection is closed")
    http_parser: Literal["httptools", "h11"] = Field(
        "httptools", description="HTTP/1.1 parser: httptools (C, llhttp) or h11 (pure Python, slower)"
    )
    http_max_head_bytes: int = Field(
        16384, ge=1024, description="Request line and headers together; beyond -> 431 and the connection closed"
    )
    http_max_url_bytes: int = Field(8192, ge=256, description="Path and query of a request; beyond -> 414")
    http_max_headers: int = Field(100, ge=8, description="Header fields in one request; beyond -> 431")

    # Pipeline
    buckets: Annotated[list[int], NoDecode] = Field(
        default_factory=list,
        description="Padded lengths; default: the model's length_buckets parameter (export writes 4 per octave "
        "from 16 to max tokens, multiples of 8)",
    )
    token_budget: int = Field(16384, ge=16, description="Padded tokens per Triton request")
    max_triton_batch: int = Field(0, ge=0, description="Rows per Triton request; 0 = the model's max_batch_size")
    tokenizer_threads: int = Field(2, ge=1)
    triton_calls_in_flight: int = Field(
        2,
        ge=0,
        description="Triton calls in flight per model before requests' rows of one padded width are "
        "gathered into the next call (fewer, fuller calls under load; about the model's instance count); "
        "0 = no limit, one call per chunk",
    )

    # Embedding cache (service/pipeline/cache.py, docs/configuration.md "Cache")
    embedding_cache_bytes: int = Field(
        0,
        ge=0,
        description="Memory for cached embedding vectors (text inputs; keyed by model load, template, text and "
        "truncation), least recently used evicted first; per worker process. 0 = off",
    )

    # Priority classes (service/priority.py, docs/configuration.md "Priority classes")
    priority_classes: bool = Field(
        True,
        description="Honour requests' priority classes (interactive, bulk); off: every request is interactive",
    )
    bulk_calls_in_flight: int = Field(
        1,
        ge=1,
        description="Triton calls of bulk rows in flight per model while interactive work is around (below "
        "Triton's instance count leaves an instance free for interactive calls); otherwise "
        "triton_calls_in_flight",
    )
    bulk_token_budget: int = Field(
        2048,
        ge=16,
        description="Padded tokens per Triton call of bulk rows while interactive work is around: bounds how long "
        "an interactive call can wait behind one (a Triton execution cannot be preempted); otherwise token_budget",
    )
    bulk_window_s: float = Field(
        2.0,
        ge=0,
        description="Interactive work seen within this many seconds holds bulk to bulk_calls_in_flight and "
        "bulk_token_budget",
    )

    # Processes
    workers: int = Field(
        0,
        ge=0,
        le=64,
        description="Facade worker processes on the same gRPC and HTTP ports, sharing only Triton; 0 = auto "
        "(the usable CPUs: affinity and cgroup quota, halved when Triton shares them, at most 8). Every request "
        "limit (max_in_flight, HTTP connections, ...) applies per worker",
    )

    # Lifecycle
    drain_seconds: float = Field(10.0, ge=0)
    health_poll_s: float = Field(1.0, gt=0)

    # Supervision (local Triton)
    triton_max_restarts: int = Field(
        5, ge=0, description="Restarts in a row (Triton up < 1 min in between) before the facade exits non-zero"
    )
    triton_restart_backoff_s: float = Field(1.0, gt=0, description="Delay before the 2nd restart in a row")
    triton_restart_backoff_max_s: float = Field(30.0, gt=0, description="The delay doubles up to this")
    triton_hang_s: float = Field(
        30.0,
        ge=3,
        description="A model with no progress at all (no execution completed, its stubs using no CPU) for this "
        "long after a liveness probe was sent to it is hung, as is a stub stopped (SIGSTOP) for 5 s (or this, if "
        "shorter): Triton is restarted (counts toward triton_max_restarts). Idle models are probed every third "
        "of it",
    )

    # Security
    api_keys: Annotated[list[str], NoDecode] = Field(default_factory=list, repr=False)
    api_keys_file: Path | None = None
    auth_exempt: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: [
            "/grpc.health.v1.Health/",
            "/grpc.reflection.v1alpha.ServerReflection/",
            "/grpc.reflection.v1.ServerReflection/",
            "/health/",
            "/v1/health/",  # NIM's probe paths
        ]
    )
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = None
    log_level: str = "INFO"
    log_format: Literal["text", "json"] = Field("text", description="json: one JSON object per line")

    # Tracing (OpenTelemetry, service/tracing.py, docs/configuration.md "Tracing"): off by default. The standard
    # OTEL_* variables apply too (service name, sampler, exporter headers and certificates, batch delay).
    tracing: bool = Field(False, description="Export OpenTelemetry spans of each API request over OTLP/gRPC")
    otlp_endpoint: str = Field(
        "",
        description="OTLP/gRPC collector (http://host:4317; https:// for TLS); empty: "
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, else OTEL_EXPORTER_OTLP_ENDPOINT, else http://localhost:4317",
    )
    tracing_queue_spans: int = Field(
        2048, ge=1, description="Finished spans waiting for export; beyond, new spans are dropped (never waited on)"
    )
    tracing_export_timeout_s: float = Field(
        5.0, gt=0, description="One export to the collector, retries included; also bounds the flush at shutdown"
    )

    # Network exposure: what listens where (docs/reliability.md, docs/security.md)
    metrics_port: int = Field(
        0,
        ge=0,
        le=65535,
        description="Plaintext listener serving only /metrics and /health/* (no TLS, no API key), for "
        "Prometheus and kubelet probes; 0 = off (/metrics on the HTTP API port, behind the API keys)",
    )
    metrics_host: str = Field("", description="Address of the metrics/health listener; default: host")
    triton_grpc_port: int = Field(0, ge=0, le=65535, description="Local Triton's gRPC port (127.0.0.1); 0 = free")
    triton_http_port: int = Field(0, ge=0, le=65535, description="Local Triton's HTTP port (127.0.0.1); 0 = free")
    triton_metrics_port: int = Field(0, ge=0, le=65535, description="Local Triton's metrics port (127.0.0.1); 0 = free")
    api_keys_reload_s: float = Field(
        1.0, gt=0, description="How often the API keys file is checked for changes (rotation without restart)"
    )

    @field_validator("buckets", "api_keys", "auth_exempt", "models", mode="before")
    @classmethod
    def _split_csv(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [v.strip() for v in value.split(",") if v.strip()]
        return value

    @field_validator("buckets")
    @classmethod
    def _sorted_buckets(cls, value: list[int]) -> list[int]:
        if any(int(v) < 1 for v in value):
            raise ValueError("buckets must be positive")
        return sorted({int(v) for v in value})

    @field_validator("otlp_endpoint")
    @classmethod
    def _otlp_url(cls, value: str) -> str:
        # The exporter reads a bare host:port as a TLS target: say which one is meant instead.
        if value and not value.startswith(("http://", "https://")):
            raise ValueError("otlp_endpoint is a URL: http://host:4317 (plaintext) or https://host:4317 (TLS)")
        return value

    @model_validator(mode="after")
    def _tls_pair(self) -> Settings:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key go together")
        if self.tls_client_ca is not None and self.tls_cert is None:
            raise ValueError("tls_client_ca (mTLS) needs tls_cert and tls_key")
        return self

    def all_api_keys(self) -> ApiKeys:
        """Keys from api_keys and api_keys_file. Raises ApiKeysError for a file that is unreadable or holds
        no key. The result carries the file, so every KeyChecker built from it follows its rotation."""
        return ApiKeys(list(self.api_keys), self.api_keys_file, self.api_keys_reload_s)

    def resolved_tokenizer_dir(self, model: str = "") -> Path:
        """tokenizer_dir applies to model_name; every other model reads the tokenizer its export wrote."""
        model = model or self.model_name
        if self.tokenizer_dir is not None and model == self.model_name:
            return self.tokenizer_dir
        return self.model_repository / model / "tokenizer"

    def describe(self) -> dict[str, Any]:
        """For the start-up log: secrets are counted, never printed."""
        out = self.model_dump(mode="json")
        try:
            out["api_keys"] = f"{len(self.all_api_keys())} configured"
        except ApiKeysError as exc:
            out["api_keys"] = f"unusable: {exc}"
        return out
